"""`POST /v1/queries` (ask, optionally long-poll for the answer) and its event stream.

A repeated question is answered from the two-layer answer cache without a trip through the
queues; any other is enqueued at interactive priority. With `?wait=` the request is woken once, by
the job's end stream, and answers 200 with the record if the job finishes in time, else 202: a
long poll that fails after the enqueue is a 202, never a 503 (a retry would enqueue twice).
"""

# No `from __future__ import annotations`: FastAPI must resolve the per-app types (request models,
# dependencies) that live in the router factories' scope, which string annotations cannot reach.

import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Header, HTTPException, Path, Query, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import ValidationError

from api_shim import drain
from api_shim.auth import Caller
from api_shim.deps import ApiDeps, accepted, record_response
from api_shim.errors import UNAVAILABLE_ERRORS, validation_error
from api_shim.models import JOB_ID_MAX, Accepted, error_responses
from api_shim.streaming import EVENT_ID, NDJSON, RESUME_ID, SSE, follow, ndjson_line, sse_frame
from ragfleet import tracing
from ragfleet.cache import AnswerCache, answer_key_for
from ragfleet.events import JobEvents, queue_answer_at_once
from ragfleet.index_state import IndexState
from ragfleet.jobs import parse_record
from ragfleet.names import Priority, TaskName
from ragfleet.schemas import TERMINAL, JobRecord, QueryPayload

log = logging.getLogger(__name__)
TERMINAL_STATUS_VALUES = frozenset(st.value for st in TERMINAL)
CALLBACK_FIELDS = frozenset({"callback_url", "callback_task"})


class CachedAnswers:
    """A repeated question is answered here, from the two-layer cache keyed by the live index
    version, without a round trip through the queues: on redis.asyncio in the event loop (the
    version, the Redis layer on a local miss, the finished record), so no thread either."""

    def __init__(self, deps: ApiDeps) -> None:
        s = deps.settings
        self._s = s
        self._jobs = deps.jobs
        self._reader = deps.events_reader
        self._cache = AnswerCache(deps.rds, s)
        self._index_state = IndexState(deps.rds, s)
        self._job_events = JobEvents(deps.rds, s)
        self._last_version = 0  # the index version this process read last

    async def serve(
        self, p: QueryPayload, rid: str, job_id: str, extra: dict[str, str] | None = None
    ) -> JobRecord | None:
        client = self._reader.client()
        cache, version_key = self._cache, self._index_state.version_key
        # One round trip: the live index version and the Redis entry under the version this process
        # saw last (it moves only when the index does). Served only if that guess is the version
        # read in the same MGET; otherwise the key is built again and looked up under the real one.
        guess = self._last_version
        key = answer_key_for(self._s, p, guess)
        hit = cache.get_local(key)
        if hit is not None:
            version = int(await client.get(version_key) or 0)
        else:
            raw_version, raw = await client.mget(version_key, cache.redis_key(key))
            version = int(raw_version or 0)
            if version == guess:
                hit = cache.accept_remote(key, raw)
        if version != guess:
            self._last_version = version
            key = answer_key_for(self._s, p, version)
            hit = cache.get_local(key)
            if hit is None:
                hit = cache.accept_remote(key, await client.get(cache.redis_key(key)))
        if hit is None:
            return None
        entry, layer = hit
        # the entry keeps the `traceparent` of the run that produced it: a link, not part of the answer
        answer = {k: v for k, v in entry.items() if k != tracing.TRACEPARENT}
        tracing.set_attrs(**{tracing.JOB_ID: job_id, tracing.TENANT: p.tenant, tracing.CACHE_LAYER: layer})
        tracing.link(entry.get(tracing.TRACEPARENT), "cached_answer")
        pipe = client.pipeline(transaction=True)
        record = queue_answer_at_once(
            pipe,
            self._jobs,
            self._job_events,
            job_id,
            {**answer, "cached": layer},
            tenant=p.tenant,
            request_id=rid,
            extra=extra,
        )
        await pipe.execute()
        return record


def queries_router(deps: ApiDeps) -> APIRouter:
    router = APIRouter()
    s = deps.settings
    QueryRequest = deps.models.query_request  # noqa: N806 - a class, named like one
    CallerDep = Annotated[Caller, Depends(deps.caller)]  # noqa: N806
    RequestId = Annotated[str, Depends(deps.request_id)]  # noqa: N806
    reader, jobs = deps.events_reader, deps.jobs
    cached = CachedAnswers(deps)

    def record_of_end(end: dict[str, str] | None) -> JobRecord | None:
        """The finished record an end entry carries (`ragfleet.events`), if it carries one."""
        if not end or end.get("status") not in TERMINAL_STATUS_VALUES:
            return None
        return parse_record({k: v for k, v in end.items() if k != "type"})

    async def finished_record(job_id: str) -> JobRecord | None:
        """The record if the job is terminal, else None: one HGETALL on redis.asyncio, no thread."""
        raw = await reader.record(jobs.key(job_id))
        if not raw or raw.get("status") not in TERMINAL_STATUS_VALUES:
            return None
        return parse_record(raw)

    @router.post(
        "/v1/queries",
        status_code=202,
        response_model=Accepted,
        responses={
            200: {"model": JobRecord, "description": "The job finished within `wait`."},
            **error_responses(*deps.error_codes),
        },
        summary="Ask a question",
        tags=["queries"],
    )
    async def post_query(
        body: QueryRequest,  # type: ignore[valid-type]
        who: CallerDep,
        rid: RequestId,
        request: Request,
        wait: Annotated[
            float | None,
            Query(
                ge=0,
                le=s.long_poll_max_s,
                description="Seconds to wait for the answer; 200 with the job record if it "
                "finishes in time, else 202.",
            ),
        ] = None,
    ) -> Response:
        fields = body.model_dump()  # type: ignore[attr-defined]
        payload = {**fields, "tenant": who.tenant, "request_id": rid}
        try:
            checked = QueryPayload.model_validate(payload)
        except ValidationError as exc:
            raise validation_error(["body"], exc) from exc
        job_id = uuid.uuid4().hex
        # the record carries the callbacks (its end sends them), the task's payload need not
        extra = deps.callback_fields(job_id, who.tenant, checked)
        payload = checked.model_dump(
            mode="json", exclude_none=True, exclude={"job_id", "batch_id", "stream", *CALLBACK_FIELDS}
        )
        if checked.use_cache:
            try:
                served = await cached.serve(checked, rid, job_id, extra)
            except UNAVAILABLE_ERRORS:
                served = None  # the cache is an optimisation: fall through to the queue
            if served is not None:
                if wait is not None:
                    return record_response(served)
                return accepted(served.job_id)
        job_id = await deps.submit(
            TaskName.QUERY, "query", payload, who, rid, Priority.INTERACTIVE, job_id=job_id, extra=extra
        )
        if not wait:
            return accepted(job_id)
        try:
            # Woken once, by the job's end stream (a blocking XREAD on redis.asyncio: no thread, no
            # polling interval added to the answer's latency, no wake per answer chunk). A job that
            # ends with no event (an invalid payload, a cancel) is seen in its record, re-read
            # after every block.
            # The end entry of a finished query carries its record: no read after the wake.
            deadline = time.monotonic() + wait
            while True:
                remaining_ms = int((deadline - time.monotonic()) * 1000)
                end = None
                if remaining_ms > 0:
                    block_ms = max(1, min(reader.block_ms, remaining_ms))
                    end = await reader.wait_end(job_id, block_ms=block_ms)
                record = record_of_end(end) or await finished_record(job_id)
                if record is not None:
                    return record_response(record)
                if end is not None or remaining_ms <= 0 or drain.draining.is_set():
                    break  # draining (api_shim/drain.py): 202, the caller polls another replica
                if await request.is_disconnected():
                    break
        except UNAVAILABLE_ERRORS as exc:
            # Not a 503: the job is queued already, and a retry would enqueue it twice.
            log.warning("long poll of %s gave up: %s", job_id, exc)
        return accepted(job_id)

    return router


def stream_router(deps: ApiDeps) -> APIRouter:
    """`GET /v1/queries/{job_id}/stream` (see `api_shim.streaming` for the protocol)."""
    router = APIRouter(tags=["queries"])
    s, jobs, reader = deps.settings, deps.jobs, deps.events_reader
    CallerDep = Annotated[Caller, Depends(deps.reader)]  # noqa: N806 - a stream is a read

    @router.get(
        "/v1/queries/{job_id}/stream",
        responses={
            200: {
                "description": "The job's events: NDJSON lines `{id, type, data}`, or SSE frames "
                "(`id:`, `event:`, `data:`) with `Accept: text/event-stream`.",
                "content": {NDJSON: {"schema": {"type": "string"}}, SSE: {"schema": {"type": "string"}}},
            },
            422: {"description": "`after` / `Last-Event-ID` is not a stream id."},
            **error_responses(404, *deps.error_codes),
        },
        response_class=StreamingResponse,
        summary="Stream a query's sources, answer chunks and completion",
    )
    async def stream_query(
        request: Request,
        job_id: Annotated[str, Path(min_length=1, max_length=JOB_ID_MAX)],
        who: CallerDep,
        after: Annotated[
            str,
            Query(
                max_length=41,
                pattern=RESUME_ID,
                description="Resume after this event id (NDJSON; SSE uses Last-Event-ID).",
            ),
        ] = "",
        # plain strings with "" as "absent": a header has no null, and fuzzers send the text "null"
        last_event_id: Annotated[str, Header(max_length=41, pattern=RESUME_ID)] = "",
        accept: Annotated[str | None, Header()] = None,
    ) -> StreamingResponse:
        tenant = await reader.client().hget(jobs.key(job_id), "tenant")
        if tenant is None or str(tenant) != who.tenant:
            raise HTTPException(404, "job not found")
        resume = last_event_id or after or "0-0"
        if not EVENT_ID.fullmatch(resume):
            raise HTTPException(422, "after / Last-Event-ID must be a stream id like 1700000000000-0")
        use_sse = SSE in (accept or "")
        events = follow(
            reader,
            jobs,
            job_id,
            resume,
            max_s=s.stream_max_s,
            heartbeat_s=s.stream_heartbeat_s,
            is_disconnected=request.is_disconnected,
        )

        async def body() -> AsyncIterator[bytes]:
            if use_sse:
                yield b"retry: 1000\n\n"
            async for ev in events:
                if ev is None:
                    yield b": keep-alive\n\n" if use_sse else ndjson_line({"type": "heartbeat"})
                else:
                    yield sse_frame(ev) if use_sse else ndjson_line(ev)

        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(body(), media_type=SSE if use_sse else NDJSON, headers=headers)

    return router
