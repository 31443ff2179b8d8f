"""`POST /v1/feedback`: rate an answered query (1-5); the feedback pool records it.

The rated job must exist for the caller's tenant: that is checked here against its job record
(another tenant's job answers 404 exactly like a missing one), so a client learns at once that it
rated the wrong id. Whether it is an answered query is decided by the worker
(`ragfleet.feedback.record`), which fails the feedback job with `invalid_payload` otherwise.

Mount inside `create_app`, handing over the app's own dependencies so the route authenticates,
rate-limits and documents security exactly like the rest of the API:

    app.include_router(build_router(caller=caller, request_id=request_id, error_codes=v1_errors))

`router` (built with stand-ins that read `app.state`) also works with a plain
`app.include_router(router)`: it authenticates with the same key ring but applies no rate limit.
"""

# No `from __future__ import annotations`: FastAPI resolves the dependency types declared in
# `build_router`'s scope, which string annotations cannot reach.

import logging
import math
import uuid
from collections.abc import Callable, Sequence
from functools import partial
from typing import Annotated, Any

import anyio
import kombu.exceptions
import redis.exceptions
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from api_shim.auth import Caller, KeyRing, key_digest, parse_api_keys
from api_shim.models import JOB_ID_MAX, Accepted, error_responses
from ragfleet.jobs import JobStore
from ragfleet.names import Priority, TaskName
from ragfleet.producer import enqueue
from ragfleet.schemas import ErrorCode, FeedbackPayload
from ragfleet.settings import Settings

log = logging.getLogger(__name__)

PUBLISH_ERRORS: tuple[type[Exception], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    kombu.exceptions.OperationalError,
    TimeoutError,
)


def _integral(value: Any) -> Any:
    """JSON Schema counts 4.0 as an integer; strict mode would not. Strings and bools stay rejected."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


class FeedbackRequest(BaseModel):
    """A rating of one answered query job of the caller's tenant."""

    model_config = ConfigDict(extra="forbid", strict=True)

    job_id: str = Field(min_length=1, max_length=JOB_ID_MAX, description="The query job being rated.")
    rating: Annotated[int, BeforeValidator(_integral)] = Field(
        ge=1, le=5, description="1 (useless) to 5 (exactly right)."
    )
    comment: str | None = Field(default=None, max_length=5_000)


# --- stand-in dependencies for `router` (the app's own are preferred, see the module docstring) ---


def _keyring(request: Request) -> KeyRing:
    ring: KeyRing | None = getattr(request.app.state, "feedback_keyring", None)
    if ring is None:
        settings: Settings = request.app.state.settings
        ring = KeyRing(parse_api_keys(settings.api_keys))
        request.app.state.feedback_keyring = ring
    return ring


async def app_state_caller(request: Request) -> Caller:
    """Same rules as `create_app`'s `authenticate`: the key decides the tenant, never the body."""
    settings: Settings = request.app.state.settings
    ring = _keyring(request)
    if not ring:
        host = request.client.host if request.client else "unknown"
        return Caller(tenant=settings.default_tenant, identity=f"ip:{host}")
    auth = request.headers.get("authorization", "")
    scheme, _, credentials = auth.partition(" ")
    presented = credentials.strip() if scheme.lower() == "bearer" else request.headers.get("x-api-key")
    challenge = {"WWW-Authenticate": "Bearer"}
    if not presented:
        raise HTTPException(401, "missing API key", headers=challenge)
    tenant = ring.tenant_for(presented)
    if tenant is None:
        raise HTTPException(401, "invalid API key", headers=challenge)
    return Caller(tenant=tenant, identity=f"key:{key_digest(presented)}")


async def app_state_request_id(request: Request) -> str:
    rid: str | None = getattr(request.state, "request_id", None)
    return rid or uuid.uuid4().hex


# --- the router --------------------------------------------------------------------------------------


def build_router(
    *,
    caller: Callable[..., Any] = app_state_caller,
    request_id: Callable[..., Any] = app_state_request_id,
    error_codes: Sequence[int] = (400, 401, 413, 429, 503),
) -> APIRouter:
    """The feedback routes bound to `caller` (-> Caller) and `request_id` (-> str) dependencies.

    Reads `app.state.jobs` and `app.state.settings`, which `create_app` sets.
    """
    router = APIRouter()
    caller_dep = Annotated[Caller, Depends(caller)]
    request_id_dep = Annotated[str, Depends(request_id)]

    @router.post(
        "/v1/feedback",
        status_code=202,
        response_model=Accepted,
        responses=error_responses(404, *sorted(set(error_codes) - {404})),
        summary="Rate an answered query (1-5)",
        description=(
            "Queues a feedback job (poll `GET /v1/jobs/{job_id}` with the returned id). The rated "
            "job must be a query of the caller's tenant; the feedback job fails with "
            "`invalid_payload` if it has no answer yet."
        ),
        tags=["feedback"],
    )
    async def post_feedback(
        body: FeedbackRequest, who: caller_dep, rid: request_id_dep, request: Request
    ) -> JSONResponse:
        jobs: JobStore = request.app.state.jobs
        settings: Settings = request.app.state.settings
        rated = await anyio.to_thread.run_sync(jobs.get, body.job_id)
        if rated is None or rated.tenant != who.tenant:
            raise HTTPException(404, "job not found")
        payload = FeedbackPayload(
            job_id=body.job_id,
            rating=body.rating,
            comment=body.comment,
            tenant=who.tenant,
            request_id=rid,
        ).model_dump(mode="json", exclude_none=True)
        feedback_id = uuid.uuid4().hex
        await anyio.to_thread.run_sync(
            partial(jobs.create, feedback_id, "feedback", tenant=who.tenant, request_id=rid)
        )
        # the API never reads Celery results: no result-backend subscription per send (see app.py)
        enqueue_settings = settings.model_copy(update={"result_backend_url": "disabled"})
        send = partial(
            enqueue,
            TaskName.FEEDBACK_RECORD,
            payload,
            settings=enqueue_settings,
            job_id=feedback_id,
            priority=Priority.DEFAULT,
        )
        retry_after = str(max(1, math.ceil(settings.redis_socket_timeout_s)))
        try:
            # kombu's Redis channel has no socket timeout: bound the publish like app.py does
            with anyio.fail_after(max(0.5, settings.redis_socket_timeout_s)):
                await anyio.to_thread.run_sync(send, abandon_on_cancel=True)
        except PUBLISH_ERRORS as exc:
            log.warning("feedback enqueue failed: %s: %s", type(exc).__name__, exc)
            await _mark_failed(jobs, feedback_id, f"could not enqueue: {type(exc).__name__}")
            return JSONResponse(
                {"detail": "job store or broker unavailable, retry later"},
                status_code=503,
                headers={"Retry-After": retry_after},
            )
        body_out = Accepted(job_id=feedback_id).model_dump(mode="json")
        return JSONResponse(body_out, status_code=202, headers={"Location": f"/v1/jobs/{feedback_id}"})

    return router


async def _mark_failed(jobs: JobStore, job_id: str, reason: str) -> None:
    """Best effort: a client polling the feedback job sees why it never ran."""
    try:
        with anyio.fail_after(2.0):
            await anyio.to_thread.run_sync(
                partial(jobs.fail, job_id, ErrorCode.UNAVAILABLE, reason), abandon_on_cancel=True
            )
    except Exception as exc:
        log.warning("could not mark job %s failed: %s", job_id, exc)


router = build_router()

__all__ = ["FeedbackRequest", "app_state_caller", "app_state_request_id", "build_router", "router"]
