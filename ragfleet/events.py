"""Per-job event streams in Redis Streams: how answers reach any API replica as they are written.

Workers append `sources`, `answer_chunk`, `done` and `error` events to `<prefix>:events:<job_id>`;
an API process reads them with XREAD from the last id it sent, so a client that reconnects with
`Last-Event-ID` resumes exactly after the last event it saw: no gap, no repeat. Stream ids are
Redis's own, monotonic per stream. Streams expire with the job record. With tracing on, each entry
also carries the `traceparent` of the span that wrote it (ragfleet.tracing).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal, cast

import redis

from ragfleet import tracing
from ragfleet.jobs import PUSH_CALLBACK, AnyPipeline, JobStore
from ragfleet.schemas import JobRecord
from ragfleet.settings import Settings

# `replayed`: an operator replayed the job as a dead letter (`ragfleet.dead_letters`); it runs again
EventType = Literal["sources", "answer_chunk", "done", "error", "replayed"]
TERMINAL_EVENTS = frozenset({"done", "error"})
STREAM_MAXLEN = 10_000  # approximate (MAXLEN ~): a bound for a runaway producer; no answer comes near it

# Finish a query job and close its stream in one atomic round trip (the last thing on the critical
# path of every answer). KEYS: job hash, event stream, end stream (see `end_key`). ARGV: now, TTL,
# MAXLEN, the `done` event's data (JSON; `latency_ms` is filled in here from the record's
# created_at), n, the end stream's TTL, a counter to increment (or ''), the writer's `traceparent`
# (or ''; ragfleet.tracing), then n (type, data) events to append before `done` (a
# replayed answer's sources and text), then field/value pairs for the record. The end stream's
# entry carries the finished record itself, so the long poll it wakes answers without reading the
# record again. Nothing is written if the job is terminal (0) or gone (-1). Returns {applied,
# latency_ms as a string} (a Lua number would reach the client truncated to an integer).
_FINISH_QUERY = (
    """
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1, false} end
local st = redis.call('HGET', KEYS[1], 'status')
if st == 'done' or st == 'failed' or st == 'cancelled' then return {0, false} end
if ARGV[7] ~= '' then redis.call('HINCRBY', KEYS[1], ARGV[7], 1) end
local traced = {}
if ARGV[8] ~= '' then traced = {'traceparent', ARGV[8]} end
local i = 9
for _ = 1, tonumber(ARGV[5]) do
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'type', ARGV[i], 'data', ARGV[i + 1],
    unpack(traced))
  i = i + 2
end
while i < #ARGV do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  i = i + 2
end
redis.call('HSET', KEYS[1], 'status', 'done', 'updated_at', ARGV[1])
local latency = (tonumber(ARGV[1]) - tonumber(redis.call('HGET', KEYS[1], 'created_at'))) * 1000
local done = cjson.decode(ARGV[4])
done['latency_ms'] = latency
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'type', 'done', 'data', cjson.encode(done),
  unpack(traced))
redis.call('EXPIRE', KEYS[2], ARGV[2])
redis.call('XADD', KEYS[3], '*', 'type', 'done', unpack(redis.call('HGETALL', KEYS[1])))
redis.call('EXPIRE', KEYS[3], ARGV[6])
"""
    + PUSH_CALLBACK
    + """
return {1, tostring(latency)}
"""
)


def end_key(settings: Settings, job_id: str) -> str:
    """A second, tiny stream per job that gets one entry when the job's stream gets its terminal
    event. A long poll waits on this one: it wakes once, when the answer is there, instead of once
    per source list and answer chunk (an LLM streams hundreds)."""
    return settings.key("events", job_id, "end")


def end_ttl_s(settings: Settings) -> int:
    """How long a finished job's end stream lives. Only a long poll reads it, and a long poll starts
    with its job and waits at most `long_poll_max_s`: a short life keeps the copy of the finished
    record in its entry from doubling what answered jobs cost Redis over the record's own TTL."""
    return min(settings.job_ttl_s, max(60, 2 * math.ceil(settings.long_poll_max_s)))


@dataclass(frozen=True, slots=True)
class JobEvent:
    id: str
    type: EventType
    data: dict[str, Any]


class JobEvents:
    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self._r = client
        self._s = settings
        self._finish = client.register_script(_FINISH_QUERY)

    def key(self, job_id: str) -> str:
        return self._s.key("events", job_id)

    def emit(self, job_id: str, type_: EventType, data: dict[str, Any]) -> str:
        pipe = self._r.pipeline()
        self.emit_to(pipe, job_id, type_, data)
        event_id = pipe.execute()[0]
        return event_id.decode() if isinstance(event_id, bytes) else str(event_id)

    def emit_to(self, pipe: AnyPipeline, job_id: str, type_: EventType, data: dict[str, Any]) -> None:
        """Queue the event onto `pipe`, to be written with whatever else goes in that round trip."""
        key = self.key(job_id)
        entry: dict[Any, Any] = {"type": type_, "data": json.dumps(data)}
        traceparent = tracing.current_traceparent()  # a reader can join the writer's trace
        if traceparent:
            entry[tracing.TRACEPARENT] = traceparent
        pipe.xadd(key, entry, maxlen=STREAM_MAXLEN, approximate=True)
        pipe.expire(key, self._s.job_ttl_s)
        if type_ in TERMINAL_EVENTS:
            end = end_key(self._s, job_id)
            pipe.xadd(end, {"type": type_})
            pipe.expire(end, self._s.job_ttl_s)

    def finish(
        self,
        job_key: str,
        job_id: str,
        done: dict[str, Any],
        before: list[tuple[EventType, dict[str, Any]]],
        fields: dict[str, str],
        pipe: redis.client.Pipeline | None = None,
        *,
        incr: str = "",
    ) -> float | None:
        """Mark the job `done` with `fields`, append `before` and then `done` (its `latency_ms`
        filled in by Redis) to the stream: see _FINISH_QUERY. With `pipe`, runs it after whatever
        is queued there; `incr` names a counter field to increment with it (a stage's attempts).
        Returns the latency in ms, or None if the job was terminal or gone."""
        argv: list[str] = [
            repr(time.time()),
            str(self._s.job_ttl_s),
            str(STREAM_MAXLEN),
            json.dumps(done),
            str(len(before)),
            str(end_ttl_s(self._s)),
            incr,
            tracing.current_traceparent(),
        ]
        for type_, data in before:
            argv += [type_, json.dumps(data)]
        for k, v in fields.items():
            argv += [k, v]
        keys = [job_key, self.key(job_id), end_key(self._s, job_id)]
        if pipe is None:
            applied, latency = self._finish(keys=keys, args=argv)
        else:
            pipe.eval(_FINISH_QUERY, len(keys), *keys, *argv)  # EVAL: no SCRIPT EXISTS round trip
            applied, latency = pipe.execute()[-1]
        return float(latency) if int(applied) == 1 else None

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
        deadline = time.monotonic() + timeout_s
        last = after
        while time.monotonic() < deadline:
            for ev in self.read(job_id, last, block_ms=block_ms):
                last = ev.id
                yield ev
                if ev.type in TERMINAL_EVENTS:
                    return


def finish_query(
    jobs: JobStore,
    events: JobEvents,
    job_id: str,
    answer: dict[str, Any],
    *,
    replay: bool,
    fields: dict[str, str] | None = None,
    pipe: redis.client.Pipeline | None = None,
    incr: str = "",
) -> float | None:
    """Finish a query job and close its stream; with `replay`, also emit the sources and the whole
    answer first (answers that no generation worker streamed: cached or coalesced ones).

    One round trip, atomic (see _FINISH_QUERY): `fields` (already encoded, e.g. the last stage's
    timing) are written with the result, and whatever the caller queued on `pipe` (e.g. the answer
    cache entry) goes out in the same round trip, before the job turns done.
    Returns the job's latency in ms, or None when the job was already terminal (nothing is
    emitted twice)."""
    before: list[tuple[EventType, dict[str, Any]]] = []
    if replay:
        before = [
            ("sources", {"sources": answer.get("sources", [])}),
            ("answer_chunk", {"text": answer.get("answer", "")}),
        ]
    record = {"result": json.dumps(answer), **(fields or {})}
    return events.finish(jobs.key(job_id), job_id, _done_data(answer, None), before, record, pipe, incr=incr)


def queue_answer_at_once(
    pipe: AnyPipeline,
    jobs: JobStore,
    events: JobEvents,
    job_id: str,
    answer: dict[str, Any],
    *,
    tenant: str,
    request_id: str | None,
    extra: dict[str, str] | None = None,
) -> JobRecord:
    """A new query job answered on the spot (the API's cache path): the finished record and the
    whole stream (sources, answer, done) queued on `pipe`, a MULTI (sync or redis.asyncio) the
    caller executes, so a reader sees all or none."""
    rec = jobs.put_done(pipe, job_id, "query", answer, tenant=tenant, request_id=request_id, extra=extra)
    events.emit_to(pipe, job_id, "sources", {"sources": answer.get("sources", [])})
    events.emit_to(pipe, job_id, "answer_chunk", {"text": answer.get("answer", "")})
    events.emit_to(pipe, job_id, "done", _done_data(answer, 0.0))
    return rec


def _done_data(answer: dict[str, Any], latency_ms: float | None) -> dict[str, Any]:
    return {
        "latency_ms": latency_ms,
        "usage": answer.get("usage"),
        "cached": answer.get("cached"),
        "degraded": answer.get("degraded", False),
        "coalesced_with": answer.get("coalesced_with"),
    }
