"""The HTTP API: validate at the edge, create the job record, enqueue by task name, read job records.

It never imports `tasks/`, `workers/`, the embedder or a store: work happens in the pools, and the
API only touches names, schemas, job records and the broker (`ragfleet.producer`).

Failure contract: a Redis or broker outage answers 503 with `Retry-After` within about
`Settings.redis_socket_timeout_s`, never a hang or a 500. Every Redis call has a socket timeout
(`ragfleet.redis_conn`); the publish, whose kombu connection has none, is bounded here. Every error
body is `{"detail": ...}` and every status the API can answer is in the OpenAPI schema.
"""

# No `from __future__ import annotations`: FastAPI must resolve the per-app types (request models,
# dependencies) that live in `create_app`'s scope, which string annotations cannot reach.

import logging
import math
import time
import uuid
from collections.abc import Sequence
from typing import Annotated, Any

import anyio
import kombu.exceptions
import limits.errors
import redis.exceptions
from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request, Security
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import ValidationError
from starlette.background import BackgroundTask
from starlette.convertors import Convertor, register_url_convertor

from api_shim.auth import Caller, KeyRing, key_digest, parse_api_keys
from api_shim.batch_routes import batch_router
from api_shim.middleware import BodyLimitMiddleware, RequestContextMiddleware
from api_shim.models import (
    JOB_ID_MAX,
    Accepted,
    DocId,
    HealthBody,
    NotReadyBody,
    ReadyBody,
    build_request_models,
    error_responses,
)
from api_shim.ratelimit import AsyncRateLimiter
from api_shim.readiness import Readiness, ReadyCheck, WorkerProbe, redis_probe
from api_shim.streaming import AsyncEventReader, stream_router
from ragfleet.cache import AnswerCache, answer_key_for
from ragfleet.events import JobEvents, queue_answer_at_once
from ragfleet.index_state import IndexState
from ragfleet.jobs import JobStore, parse_record
from ragfleet.names import Priority, Queue, TaskName
from ragfleet.producer import client_app, enqueue_on
from ragfleet.redis_conn import get_redis
from ragfleet.schemas import (
    TERMINAL,
    DeleteDocumentPayload,
    DocumentIn,
    ErrorCode,
    JobRecord,
    QueryPayload,
)
from ragfleet.settings import Settings, get_settings

log = logging.getLogger(__name__)
TERMINAL_STATUS_VALUES = frozenset(st.value for st in TERMINAL)

# The queues API requests feed: a query runs on retrieval then generation, documents on indexing.
DEFAULT_REQUIRED_QUEUES: tuple[Queue, ...] = (Queue.RETRIEVAL, Queue.GENERATION, Queue.INDEXING)

UNAVAILABLE_ERRORS: tuple[type[Exception], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    kombu.exceptions.OperationalError,
    limits.errors.StorageError,
)


class _AnyPath(Convertor[str]):
    """Like Starlette's `path` but also across newlines, so a bad doc id gets a 422, not a routing 404."""

    regex = r"[\s\S]*"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("anypath", _AnyPath())


class EnqueueFailedError(Exception):
    """The job record exists but its message is not (known to be) on the queue."""

    def __init__(self, job_id: str, reason: str) -> None:
        super().__init__(reason)
        self.job_id = job_id


def _validation_error(index_loc: Sequence[str | int], exc: ValidationError) -> RequestValidationError:
    return RequestValidationError(
        [
            {"type": e["type"], "loc": [*index_loc, *e["loc"]], "msg": e["msg"]}
            for e in exc.errors(include_url=False, include_input=False)
        ]
    )


def create_app(
    settings: Settings | None = None,
    *,
    ready_checks: Sequence[ReadyCheck] = (),
    required_queues: Sequence[Queue] = DEFAULT_REQUIRED_QUEUES,
) -> FastAPI:
    """Build an API bound to `settings`. Nothing connects here: clients open lazily on first use."""
    s = settings or get_settings()
    _setup_observability(s)
    keyring = KeyRing(parse_api_keys(s.api_keys))
    models = build_request_models(s)
    IndexRequest = models.index_request  # noqa: N806 - a class, named like one
    QueryRequest = models.query_request  # noqa: N806
    # The API never reads Celery results (job records carry them). With a result backend, every
    # send_task subscribes to the task's result channel (a subscription per job, never released)
    # and, with Redis down, retries that subscription for ~20 s. "disabled" avoids both.
    enqueue_settings = s.model_copy(update={"result_backend_url": "disabled"})
    celery_app = client_app(enqueue_settings)
    rds = get_redis(s)
    jobs = JobStore(rds, s)
    limiter = AsyncRateLimiter(s) if s.rate_limit.strip() else None
    retry_after = str(max(1, math.ceil(s.redis_socket_timeout_s)))
    publish_timeout_s = max(0.5, s.redis_socket_timeout_s)
    readiness = Readiness(
        [
            ("redis", redis_probe(rds)),
            ("workers", WorkerProbe(celery_app, required_queues)),
            *ready_checks,
        ],
        timeout_s=max(1.5, s.redis_socket_timeout_s + 0.5),
    )

    app = FastAPI(
        title="ragfleet API",
        version="0.1.0",
        description=(
            "Enqueue indexing and query jobs and read their records. Work is asynchronous: "
            "POSTs answer 202 with a job id; poll `GET /v1/jobs/{job_id}` (or long-poll a query "
            "with `?wait=`)."
        ),
    )
    app.state.settings = s
    app.state.readiness = readiness
    app.state.jobs = jobs

    # --- auth and rate limit ----------------------------------------------------------------
    if keyring:
        bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer <key>`")
        api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False)

        async def authenticate(
            creds: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
            api_key: Annotated[str | None, Security(api_key_header)],
        ) -> Caller:
            presented = creds.credentials if creds is not None else api_key
            challenge = {"WWW-Authenticate": "Bearer"}
            if not presented:
                raise HTTPException(401, "missing API key", headers=challenge)
            tenant = keyring.tenant_for(presented)
            if tenant is None:
                raise HTTPException(401, "invalid API key", headers=challenge)
            return Caller(tenant=tenant, identity=f"key:{key_digest(presented)}")

    else:

        async def authenticate(request: Request) -> Caller:  # type: ignore[misc]
            host = request.client.host if request.client else "unknown"
            return Caller(tenant=s.default_tenant, identity=f"ip:{host}")

    async def caller(who: Annotated[Caller, Depends(authenticate)]) -> Caller:
        if limiter is not None:
            wait = await limiter.hit(who.identity)
            if wait is not None:
                raise HTTPException(
                    429,
                    f"rate limit exceeded ({limiter.describe()})",
                    headers={"Retry-After": str(int(wait))},
                )
        return who

    async def request_id(request: Request) -> str:
        rid: str | None = getattr(request.state, "request_id", None)
        return rid or uuid.uuid4().hex

    CallerDep = Annotated[Caller, Depends(caller)]  # noqa: N806
    RequestId = Annotated[str, Depends(request_id)]  # noqa: N806
    v1_errors = (400, 413, 429, 503, *((401,) if keyring else ()))
    from api_shim.feedback_routes import build_router

    app.include_router(build_router(caller=caller, request_id=request_id, error_codes=v1_errors))

    # --- enqueue ----------------------------------------------------------------------------
    async def submit(
        task: TaskName, kind: str, payload: dict[str, Any], who: Caller, rid: str, priority: Priority
    ) -> str:
        """The job record and its message in one MULTI on redis.asyncio: both or neither (a failure
        is a plain 503 that leaves nothing behind), one round trip, no worker thread."""
        job_id = uuid.uuid4().hex
        try:
            with anyio.fail_after(publish_timeout_s):  # a frozen Redis: a 503, not a hung request
                pipe = events_reader.client().pipeline(transaction=True)
                jobs.queue_create(pipe, job_id, kind, who.tenant, rid)
                enqueue_on(pipe, task, payload, settings=enqueue_settings, job_id=job_id, priority=priority)
                await pipe.execute()
        except TimeoutError as exc:
            # the MULTI may or may not have run: the job is marked failed if it exists
            raise EnqueueFailedError(job_id, f"publish took over {publish_timeout_s:g} s") from exc
        return job_id

    def accepted(job_id: str) -> JSONResponse:
        body = Accepted(job_id=job_id).model_dump(mode="json")
        return JSONResponse(body, status_code=202, headers={"Location": f"/v1/jobs/{job_id}"})

    def record_response(record: JobRecord) -> Response:
        """200 with the record, serialised by pydantic in one pass (no dict, then json.dumps)."""
        return Response(record.model_dump_json(), status_code=200, media_type="application/json")

    def record_of_end(end: dict[str, str] | None) -> JobRecord | None:
        """The finished record an end entry carries (`ragfleet.events`), if it carries one."""
        if not end or end.get("status") not in TERMINAL_STATUS_VALUES:
            return None
        return parse_record({k: v for k, v in end.items() if k != "type"})

    async def finished_record(job_id: str) -> JobRecord | None:
        """The record if the job is terminal, else None: one HGETALL on redis.asyncio, no thread."""
        raw = await events_reader.record(jobs.key(job_id))
        if not raw or raw.get("status") not in TERMINAL_STATUS_VALUES:
            return None
        return parse_record(raw)

    # --- routes -----------------------------------------------------------------------------
    @app.post(
        "/v1/documents",
        status_code=202,
        response_model=Accepted,
        responses=error_responses(*v1_errors),
        summary="Index (add or replace) documents",
        tags=["documents"],
    )
    async def post_documents(body: IndexRequest, who: CallerDep, rid: RequestId) -> JSONResponse:  # type: ignore[valid-type]
        documents: list[dict[str, Any]] = []
        for i, doc in enumerate(body.documents):  # type: ignore[attr-defined]
            try:  # second gate: the worker's own schema, so any drift surfaces here as a 422
                checked = DocumentIn.model_validate(doc.model_dump())
            except ValidationError as exc:
                raise _validation_error(["body", "documents", i], exc) from exc
            documents.append(checked.model_dump(exclude_none=True, exclude={"tenant"}))
        payload = {"documents": documents, "tenant": who.tenant, "request_id": rid}
        return accepted(await submit(TaskName.INDEX_DOCUMENTS, "index", payload, who, rid, Priority.DEFAULT))

    @app.delete(
        "/v1/documents/{doc_id:anypath}",
        status_code=202,
        response_model=Accepted,
        responses=error_responses(*v1_errors),
        summary="Delete a document of the caller's tenant",
        tags=["documents"],
    )
    async def delete_document(
        doc_id: Annotated[DocId, Path(description="The document id (may contain '/').")],
        who: CallerDep,
        rid: RequestId,
    ) -> JSONResponse:
        payload = {"doc_id": doc_id, "tenant": who.tenant, "request_id": rid}
        try:
            DeleteDocumentPayload.model_validate(payload)
        except ValidationError as exc:
            raise _validation_error(["path"], exc) from exc
        return accepted(await submit(TaskName.DELETE_DOCUMENT, "delete", payload, who, rid, Priority.DEFAULT))

    answer_cache = AnswerCache(rds, s)
    events_reader = AsyncEventReader(s)
    index_state = IndexState(rds, s)
    job_events = JobEvents(rds, s)
    last_version = [0]  # the index version this process read last (see serve_cached)

    async def serve_cached(p: QueryPayload, rid: str) -> JobRecord | None:
        """A repeated question is answered here, from the two-layer cache keyed by the live index
        version, without a round trip through the queues: on redis.asyncio in the event loop (the
        version, the Redis layer on a local miss, the finished record), so no thread either."""
        client = events_reader.client()
        # One round trip: the live index version and the Redis entry under the version this process
        # saw last (it moves only when the index does). Served only if that guess is the version
        # read in the same MGET; otherwise the key is built again and looked up under the real one.
        guess = last_version[0]
        key = answer_key_for(s, p, guess)
        hit = answer_cache.get_local(key)
        if hit is not None:
            version = int(await client.get(index_state.version_key) or 0)
        else:
            raw_version, raw = await client.mget(index_state.version_key, answer_cache.redis_key(key))
            version = int(raw_version or 0)
            if version == guess:
                hit = answer_cache.accept_remote(key, raw)
        if version != guess:
            last_version[0] = version
            key = answer_key_for(s, p, version)
            hit = answer_cache.get_local(key)
            if hit is None:
                hit = answer_cache.accept_remote(key, await client.get(answer_cache.redis_key(key)))
        if hit is None:
            return None
        answer, layer = hit
        pipe = client.pipeline(transaction=True)
        record = queue_answer_at_once(
            pipe,
            jobs,
            job_events,
            uuid.uuid4().hex,
            {**answer, "cached": layer},
            tenant=p.tenant,
            request_id=rid,
        )
        await pipe.execute()
        return record

    @app.post(
        "/v1/queries",
        status_code=202,
        response_model=Accepted,
        responses={
            200: {"model": JobRecord, "description": "The job finished within `wait`."},
            **error_responses(*v1_errors),
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
            raise _validation_error(["body"], exc) from exc
        payload = checked.model_dump(mode="json", exclude_none=True, exclude={"job_id", "batch_id", "stream"})
        if checked.use_cache:
            try:
                served = await serve_cached(checked, rid)
            except UNAVAILABLE_ERRORS:
                served = None  # the cache is an optimisation: fall through to the queue
            if served is not None:
                if wait is not None:
                    return record_response(served)
                return accepted(served.job_id)
        job_id = await submit(TaskName.QUERY, "query", payload, who, rid, Priority.INTERACTIVE)
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
                    block_ms = max(1, min(events_reader.block_ms, remaining_ms))
                    end = await events_reader.wait_end(job_id, block_ms=block_ms)
                record = record_of_end(end) or await finished_record(job_id)
                if record is not None:
                    return record_response(record)
                if end is not None or remaining_ms <= 0 or await request.is_disconnected():
                    break
        except UNAVAILABLE_ERRORS as exc:
            # Not a 503: the job is queued already, and a retry would enqueue it twice.
            log.warning("long poll of %s gave up: %s", job_id, exc)
        return accepted(job_id)

    @app.get(
        "/v1/jobs/{job_id}",
        response_model=JobRecord,
        responses=error_responses(404, *v1_errors),
        summary="Read a job record",
        tags=["jobs"],
    )
    async def get_job(
        job_id: Annotated[str, Path(min_length=1, max_length=JOB_ID_MAX)], who: CallerDep
    ) -> JobRecord:
        record = await anyio.to_thread.run_sync(jobs.get, job_id)
        # Another tenant's job is indistinguishable from a missing one.
        if record is None or record.tenant != who.tenant:
            raise HTTPException(404, "job not found")
        return record

    app.include_router(stream_router(s, jobs, caller, v1_errors, events_reader))
    app.include_router(batch_router(s, caller, request_id, v1_errors))

    @app.get("/healthz", response_model=HealthBody, tags=["ops"], summary="The process is up")
    async def healthz() -> HealthBody:
        return HealthBody()

    @app.get(
        "/readyz",
        response_model=ReadyBody,
        responses={503: {"model": NotReadyBody, "description": "A readiness check failed."}},
        tags=["ops"],
        summary="Redis answers and every required queue has a live worker",
    )
    async def readyz() -> Any:
        failing = await readiness.failing()
        if failing:
            return JSONResponse(
                {"detail": f"not ready: {', '.join(failing)}", "failing": failing}, status_code=503
            )
        return ReadyBody(checks=[name for name, _ in readiness.checks])

    @app.get(
        "/metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {}}, "description": "Prometheus exposition."}},
        tags=["ops"],
        summary="Prometheus metrics",
    )
    async def metrics() -> Response:
        try:
            from ragfleet.metrics import render_latest  # type: ignore[import-not-found,unused-ignore]
        except ImportError:  # the metrics module is optional; the default registry still works
            from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

            return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
        content, content_type = render_latest()
        return Response(content, media_type=content_type)

    # --- errors -----------------------------------------------------------------------------
    async def unavailable(request: Request, exc: Exception) -> JSONResponse:
        log.warning("unavailable: %s: %s", type(exc).__name__, exc)
        background = None
        if isinstance(exc, EnqueueFailedError):
            background = BackgroundTask(_mark_failed, jobs, exc.job_id, str(exc))
        return JSONResponse(
            {"detail": "job store or broker unavailable, retry later"},
            status_code=503,
            headers={"Retry-After": retry_after},
            background=background,
        )

    for exc_type in (*UNAVAILABLE_ERRORS, EnqueueFailedError):
        app.add_exception_handler(exc_type, unavailable)

    async def invalid(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        # Drop the echoed input: a 200k-character document must not come back in the error.
        errors = [{k: v for k, v in e.items() if k not in ("input", "url")} for e in exc.errors()]
        return JSONResponse({"detail": jsonable_encoder(errors)}, status_code=422)

    app.add_exception_handler(RequestValidationError, invalid)

    async def internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return JSONResponse({"detail": "internal error"}, status_code=500)

    app.add_exception_handler(Exception, internal)

    # last added runs first: the request id and metrics wrap everything, including a 413
    app.add_middleware(BodyLimitMiddleware, max_bytes=s.max_request_bytes)
    app.add_middleware(RequestContextMiddleware)
    return app


def _mark_failed(jobs: JobStore, job_id: str, reason: str) -> None:
    """Best effort, after the 503 is sent: a client polling the job sees why it never ran."""
    try:
        jobs.fail(job_id, ErrorCode.UNAVAILABLE, f"could not enqueue: {reason}")
    except Exception as exc:
        log.warning("could not mark job %s failed: %s", job_id, exc)


_observability_ready = False


def _setup_observability(s: Settings) -> None:
    """Once per process: JSON logs, request-id and enqueue-time task headers, metrics (multiprocess
    when uvicorn runs several workers), and queue depth (only the API exports it)."""
    global _observability_ready
    if _observability_ready:
        return
    from ragfleet import metrics
    from ragfleet.logs import configure_logging, install_celery_request_id

    configure_logging(s.log_level, process="api")
    install_celery_request_id()
    metrics.install_celery_metrics()
    if s.metrics_dir is not None:
        metrics.configure_multiproc(s.metrics_dir / "api")
    metrics.enable_queue_depth(s)
    _observability_ready = True


_app: FastAPI | None = None


def __getattr__(name: str) -> FastAPI:
    """`uvicorn api_shim.app:app` builds the app from the environment on first access, not at import."""
    global _app
    if name == "app":
        if _app is None:
            _app = create_app()
        return _app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["DEFAULT_REQUIRED_QUEUES", "create_app"]
