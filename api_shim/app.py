"""The HTTP API, assembled: validate at the edge, create the job record, enqueue by task name, read
job records.

It never imports `tasks/`, `workers/`, the embedder or a store: work happens in the pools, and the
API only touches names, schemas, job records and the broker (`ragfleet.producer`).

Failure contract: a Redis or broker outage answers 503 with `Retry-After` within about
`Settings.redis_socket_timeout_s`, never a hang or a 500. Every Redis call has a socket timeout
(`ragfleet.redis_conn`); the enqueue is bounded (`api_shim.deps.ApiDeps.submit`). Every error
body is `{"detail": ...}` and every status the API can answer is in the OpenAPI schema.

This module only assembles: shared parts in `api_shim.deps`, routes in `api_shim.routes`, error
handlers in `api_shim.errors`, middleware in `api_shim.middleware`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, MutableMapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from api_shim import drain
from api_shim.deps import ApiDeps
from api_shim.errors import install_error_handlers
from api_shim.middleware import BodyLimitMiddleware, RequestContextMiddleware
from api_shim.readiness import ReadyCheck
from api_shim.routes.admin import admin_router
from api_shim.routes.batches import batches_router
from api_shim.routes.documents import documents_router
from api_shim.routes.feedback import feedback_router
from api_shim.routes.files import FILES_PATH, files_router
from api_shim.routes.jobs import jobs_router
from api_shim.routes.ops import ops_router
from api_shim.routes.queries import queries_router, stream_router
from ragfleet import tracing
from ragfleet.names import Queue
from ragfleet.settings import Settings, get_settings

# The queues API requests feed: a query runs on retrieval then generation, documents on indexing.
DEFAULT_REQUIRED_QUEUES: tuple[Queue, ...] = (Queue.RETRIEVAL, Queue.GENERATION, Queue.INDEXING)


def create_app(
    settings: Settings | None = None,
    *,
    ready_checks: Sequence[ReadyCheck] = (),
    required_queues: Sequence[Queue] = DEFAULT_REQUIRED_QUEUES,
) -> FastAPI:
    """Build an API bound to `settings`. Nothing connects here: clients open lazily on first use."""
    s = settings or get_settings()
    _setup_observability(s)
    deps = ApiDeps(s, ready_checks=ready_checks, required_queues=required_queues)
    app = FastAPI(
        lifespan=_lifespan,
        # FastAPI's own server span per request (it continues a caller's `traceparent`), once this
        # process has a tracer provider; metrics are Prometheus's here, logs are ours
        telemetry={"metrics": False, "logs": False, "operation_spans": False, "exclude": _untraced},
        title="ragfleet API",
        version="0.1.0",
        description=(
            "Enqueue indexing and query jobs and read their records. Work is asynchronous: "
            "POSTs answer 202 with a job id; poll `GET /v1/jobs/{job_id}` (or long-poll a query "
            "with `?wait=`)."
        ),
    )
    app.state.settings = s
    app.state.readiness = deps.readiness
    app.state.jobs = deps.jobs
    app.state.deps = deps
    # the order is the routing order and the OpenAPI schema's path order: keep it stable
    for router in (
        feedback_router(deps),
        # before documents_router: its DELETE /v1/documents/{doc_id:anypath} also matches this path, and
        # the first route that matches a path answers a wrong method (405 and its Allow header)
        files_router(deps),
        documents_router(deps),
        queries_router(deps),
        jobs_router(deps),
        stream_router(deps),
        batches_router(deps),
        admin_router(deps),
        ops_router(deps.readiness),
    ):
        app.include_router(router)
    install_error_handlers(app, jobs=deps.jobs, retry_after=deps.retry_after)
    # last added runs first: the request id and metrics wrap everything, including a 413
    upload_limit = s.files_per_task * s.upload_max_mb * 2**20 + 2**20  # files + the form's fields
    app.add_middleware(BodyLimitMiddleware, max_bytes=s.max_request_bytes, uploads={FILES_PATH: upload_limit})
    app.add_middleware(RequestContextMiddleware)
    return app


_PROBES = frozenset({"/healthz", "/readyz", "/metrics"})


def _untraced(scope: MutableMapping[str, Any]) -> bool:
    """Probes and scrapes, every few seconds from every orchestrator: no trace worth keeping."""
    return scope.get("path") in _PROBES


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Per process (uvicorn's worker processes each run the lifespan): tracing (ragfleet.tracing), and
    SIGTERM ending long polls and streams at once (api_shim/drain.py)."""
    drain.chain_signals()
    tracing.setup("api")
    try:
        yield
    finally:
        tracing.shutdown()


_observability_ready = False


def _setup_observability(s: Settings) -> None:
    """Once per process: JSON logs, request-id and enqueue-time task headers, metrics (multiprocess
    when uvicorn runs several workers), and queue depth and the dead-letter count (only the API
    exports them)."""
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
    metrics.enable_dead_letters(s)
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
