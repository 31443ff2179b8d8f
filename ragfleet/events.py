"""Per-job event streams in Redis Streams: how answers reach any API replica as they are written.

Workers append `sources`, `answer_chunk`, `done` and `error` events to `<prefix>:events:<job_id>`;
an API process reads them with XREAD from the last id it sent, so a client that reconnects with
`Last-Event-ID` resumes exactly after the last event it saw: no gap, no repeat. Stream ids are
Redis's own, monotonic per stream. Streams expire with the job record.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal, cast

import redis

from ragfleet.jobs import JobStore
from ragfleet.schemas import JobRecord
from ragfleet.settings import Settings

EventType = Literal["sources", "answer_chunk", "done", "error"]
TERMINAL_EVENTS = frozenset({"done", "error"})


@dataclass(frozen=True, slots=True)
class JobEvent:
    id: str
    type: EventType
    data: dict[str, Any]


class JobEvents:
    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self._r = client
        self._s = settings

    def key(self, job_id: str) -> str:
        return self._s.key("events", job_id)

    def emit(self, job_id: str, type_: EventType, data: dict[str, Any]) -> str:
        pipe = self._r.pipeline()
        self.emit_to(pipe, job_id, type_, data)
        event_id, _ = pipe.execute()
        return event_id.decode() if isinstance(event_id, bytes) else str(event_id)

    def emit_to(
        self, pipe: redis.client.Pipeline, job_id: str, type_: EventType, data: dict[str, Any]
    ) -> None:
        """Queue the event onto `pipe`, to be written with whatever else goes in that round trip."""
        key = self.key(job_id)
        pipe.xadd(key, {"type": type_, "data": json.dumps(data)}, maxlen=10_000, approximate=True)
        pipe.expire(key, self._s.job_ttl_s)

    def read(self, job_id: str, after: str = "0-0", *, block_ms: int = 0, count: int = 100) -> list[JobEvent]:
        """Events after `after` (exclusive). With block_ms, waits up to that long for new ones."""
        resp: Any = self._r.xread({self.key(job_id): after}, count=count, block=block_ms or None)
        out: list[JobEvent] = []
        for _stream, entries in resp or []:
            for event_id, fields in entries:
                f = {
                    (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
                    for k, v in fields.items()
                }
                eid = event_id.decode() if isinstance(event_id, bytes) else str(event_id)
                out.append(JobEvent(eid, cast(EventType, f["type"]), json.loads(f["data"])))
        return out

    def follow(
        self, job_id: str, after: str = "0-0", *, timeout_s: float = 60.0, block_ms: int = 1_000
    ) -> Iterator[JobEvent]:
        """Yield events until a terminal one (or the timeout); what a streaming endpoint serves."""
        import time

        deadline = time.monotonic() + timeout_s
        last = after
        while time.monotonic() < deadline:
            for ev in self.read(job_id, last, block_ms=block_ms):
                last = ev.id
                yield ev
                if ev.type in TERMINAL_EVENTS:
                    return


def finish_query(
    jobs: JobStore, events: JobEvents, job_id: str, answer: dict[str, Any], *, replay: bool
) -> float | None:
    """Finish a query job and close its stream; with `replay`, also emit the sources and the whole
    answer first (answers that no generation worker streamed: cached or coalesced ones).
    Returns the job's latency in ms, or None when the job was already terminal (nothing is
    emitted twice)."""
    if replay and not jobs.is_terminal(job_id):
        events.emit(job_id, "sources", {"sources": answer.get("sources", [])})
        events.emit(job_id, "answer_chunk", {"text": answer.get("answer", "")})
    latency_ms = jobs.finish_timed(job_id, answer)
    if latency_ms is not None:
        events.emit(job_id, "done", _done_data(answer, latency_ms))
    return latency_ms


def answer_at_once(
    client: redis.Redis,
    jobs: JobStore,
    events: JobEvents,
    job_id: str,
    answer: dict[str, Any],
    *,
    tenant: str,
    request_id: str | None,
) -> JobRecord:
    """A new query job answered on the spot (the API's cache path): the finished record and the
    whole stream (sources, answer, done) go to Redis in one MULTI, so a reader sees all or none."""
    pipe = client.pipeline(transaction=True)
    rec = jobs.put_done(pipe, job_id, "query", answer, tenant=tenant, request_id=request_id)
    events.emit_to(pipe, job_id, "sources", {"sources": answer.get("sources", [])})
    events.emit_to(pipe, job_id, "answer_chunk", {"text": answer.get("answer", "")})
    events.emit_to(pipe, job_id, "done", _done_data(answer, 0.0))
    pipe.execute()
    return rec


def _done_data(answer: dict[str, Any], latency_ms: float | None) -> dict[str, Any]:
    return {
        "latency_ms": latency_ms,
        "usage": answer.get("usage"),
        "cached": answer.get("cached"),
        "degraded": answer.get("degraded", False),
        "coalesced_with": answer.get("coalesced_with"),
    }
