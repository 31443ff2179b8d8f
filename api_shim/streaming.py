"""`GET /v1/queries/{job_id}/stream`: a job's events as NDJSON (default) or Server-Sent Events.

Events come from the job's Redis Stream (`ragfleet.events`), read with a blocking XREAD on
`redis.asyncio`, so any API replica serves any job and a stream holds no thread while it waits.
Every event carries its stream id; a client that reconnects with `Last-Event-ID` (SSE) or
`?after=<id>` (NDJSON) continues right after the last event it saw: no gap, no repeat.

A stream ends after the terminal event (`done` or `error`) or after `Settings.stream_max_s`
(then a `timeout` line without an id: reconnect with the last id to go on). While nothing happens
the server sends a keep-alive every `Settings.stream_heartbeat_s`: an SSE comment, or an NDJSON
line `{"type": "heartbeat"}` without an id, which clients skip.

If a job ends without a terminal event (its record was failed by a path that writes no event, or
the stream expired before the record), the end is synthesized from the job record, without an id.

The route itself is `api_shim.routes.queries.stream_router`; this module holds the reader, the
follow loop and the framing.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import weakref
from collections.abc import AsyncIterator, Callable
from typing import Any

import redis.asyncio as aioredis

from api_shim import drain
from ragfleet.events import TERMINAL_EVENTS, end_key
from ragfleet.jobs import JobStore
from ragfleet.schemas import TERMINAL
from ragfleet.settings import Settings

EVENT_ID = re.compile(r"^\d{1,20}-\d{1,20}$")
RESUME_ID = r"^(\d{1,20}-\d{1,20})?$"  # a stream id, or empty for "from the start"
NDJSON = "application/x-ndjson"
SSE = "text/event-stream"
_TERMINAL_VALUES = {s.value for s in TERMINAL}


class AsyncEventReader:
    """XREAD on redis.asyncio; one client per event loop (a connection belongs to the loop it was
    opened on, and a test client may run several loops in one process)."""

    def __init__(self, settings: Settings) -> None:
        self._s = settings
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aioredis.Redis] = (
            weakref.WeakKeyDictionary()
        )
        # a blocking read must return before the socket timeout fires
        self.block_ms = max(50, int(min(1.0, settings.redis_socket_timeout_s / 2) * 1000))

    def client(self) -> aioredis.Redis:
        """This event loop's client (decode_responses=True)."""
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            timeout = self._s.redis_socket_timeout_s
            client = aioredis.Redis.from_url(
                self._s.redis_url,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                decode_responses=True,
            )
            self._clients[loop] = client
        return client

    async def read(self, job_id: str, after: str, *, block_ms: int) -> list[dict[str, Any]]:
        resp: Any = await self.client().xread(
            {events_key(self._s, job_id): after}, count=100, block=block_ms or None
        )
        out: list[dict[str, Any]] = []
        for _stream, entries in resp or []:
            for event_id, fields in entries:
                out.append({"id": event_id, "type": fields["type"], "data": json.loads(fields["data"])})
        return out

    async def wait_end(self, job_id: str, *, block_ms: int) -> dict[str, str] | None:
        """Block until the job's stream has its terminal event (its end entry: `type`, and for a
        finished query the whole record) or `block_ms` passes (None). Reads the job's small end
        stream (`ragfleet.events.end_key`), not its events."""
        resp: Any = await self.client().xread({end_key(self._s, job_id): "0-0"}, count=1, block=block_ms)
        if not resp:
            return None
        [(_stream, [(_id, fields)])] = resp
        return dict(fields)

    async def record(self, key: str) -> dict[str, str]:
        """The job record hash at `key` ({} if there is none)."""
        raw: dict[str, str] = await self.client().hgetall(key)  # type: ignore[assignment]
        return raw

    async def record_end(self, jobs: JobStore, job_id: str) -> dict[str, Any] | None:
        """A terminal event built from the job record, for jobs whose stream has none."""
        raw = await self.record(jobs.key(job_id))
        if raw.get("status") not in _TERMINAL_VALUES:
            return None
        if raw["status"] == "done":
            result = json.loads(raw.get("result") or "{}")
            created, updated = float(raw["created_at"]), float(raw["updated_at"])
            data = {
                "latency_ms": (updated - created) * 1000,
                "usage": result.get("usage"),
                "cached": result.get("cached"),
                "degraded": result.get("degraded", False),
                "coalesced_with": result.get("coalesced_with"),
            }
            return {"id": None, "type": "done", "data": data}
        error = json.loads(raw.get("error") or "null") or {"code": raw["status"], "message": raw["status"]}
        return {"id": None, "type": "error", "data": error}


def events_key(settings: Settings, job_id: str) -> str:
    """`JobEvents.key` without a synchronous client (test_streaming.py checks that they agree)."""
    return settings.key("events", job_id)


def ndjson_line(event: dict[str, Any]) -> bytes:
    return (json.dumps(event, separators=(",", ":")) + "\n").encode()


def sse_frame(event: dict[str, Any]) -> bytes:
    lines = []
    if event.get("id"):
        lines.append(f"id: {event['id']}")
    lines.append(f"event: {event['type']}")
    # json.dumps never emits a raw newline, so one data line carries the whole payload
    lines.append(f"data: {json.dumps(event.get('data', {}), separators=(',', ':'))}")
    return ("\n".join(lines) + "\n\n").encode()


async def follow(
    reader: AsyncEventReader,
    jobs: JobStore,
    job_id: str,
    after: str,
    *,
    max_s: float,
    heartbeat_s: float,
    is_disconnected: Callable[[], Any],
) -> AsyncIterator[dict[str, Any] | None]:
    """Events after `after`; `None` means "send a keep-alive". Ends after a terminal event."""
    deadline = time.monotonic() + max_s
    last_sent = time.monotonic()
    last = after
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or drain.draining.is_set():  # draining: the client resumes on another replica
            yield {"id": None, "type": "timeout", "data": {"after": last}}
            return
        block = max(1, int(min(reader.block_ms, heartbeat_s * 1000, remaining * 1000)))
        batch = await reader.read(job_id, last, block_ms=block)
        for ev in batch:
            last = ev["id"]
            yield ev
            last_sent = time.monotonic()
            if ev["type"] in TERMINAL_EVENTS:
                return
        if batch:
            continue
        if await is_disconnected():
            return
        end = await reader.record_end(jobs, job_id)
        if end is not None:
            # the terminal event may land between the record update and our check: read once more
            late = await reader.read(job_id, last, block_ms=0)
            for ev in late:
                yield ev
                if ev["type"] in TERMINAL_EVENTS:
                    return
            yield end
            return
        if time.monotonic() - last_sent >= heartbeat_s:
            yield None
            last_sent = time.monotonic()
