"""The API's error handlers: every error body is `{"detail": ...}`, and an outage is a 503.

What must stay true: a Redis or broker outage answers 503 with `Retry-After` (never a hang or a
500), a validation error never echoes the input back (a 200k-character document would return in
the error), and every status a handler answers is in the OpenAPI schema (`api_shim.models.ERRORS`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import kombu.exceptions
import limits.errors
import redis.exceptions
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.background import BackgroundTask

from api_shim.ratelimit import RateLimitedError
from ragfleet.jobs import JobStore
from ragfleet.schemas import ErrorCode

log = logging.getLogger(__name__)

UNAVAILABLE_ERRORS: tuple[type[Exception], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    kombu.exceptions.OperationalError,
    limits.errors.StorageError,
)


class EnqueueFailedError(Exception):
    """The job record exists but its message is not (known to be) on the queue."""

    def __init__(self, job_id: str, reason: str) -> None:
        super().__init__(reason)
        self.job_id = job_id


def validation_error(index_loc: Sequence[str | int], exc: ValidationError) -> RequestValidationError:
    """A second-gate pydantic error (the worker's own schema) as the 422 FastAPI's gate would give."""
    return RequestValidationError(
        [
            {"type": e["type"], "loc": [*index_loc, *e["loc"]], "msg": e["msg"]}
            for e in exc.errors(include_url=False, include_input=False)
        ]
    )


def install_error_handlers(app: FastAPI, *, jobs: JobStore, retry_after: str) -> None:
    """Register the handlers on `app`; `retry_after` is the 503's `Retry-After` (seconds)."""

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

    async def rate_limited(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RateLimitedError)
        return JSONResponse(
            {"detail": exc.detail, "limit": exc.limit, "scope": exc.scope},
            status_code=429,
            headers={"Retry-After": str(int(exc.retry_after))},
        )

    app.add_exception_handler(RateLimitedError, rate_limited)

    async def internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return JSONResponse({"detail": "internal error"}, status_code=500)

    app.add_exception_handler(Exception, internal)


def _mark_failed(jobs: JobStore, job_id: str, reason: str) -> None:
    """Best effort, after the 503 is sent: a client polling the job sees why it never ran."""
    try:
        jobs.fail(job_id, ErrorCode.UNAVAILABLE, f"could not enqueue: {reason}")
    except Exception as exc:
        log.warning("could not mark job %s failed: %s", job_id, exc)


__all__ = [
    "UNAVAILABLE_ERRORS",
    "EnqueueFailedError",
    "install_error_handlers",
    "validation_error",
]
