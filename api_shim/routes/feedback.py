"""`POST /v1/feedback`: rate an answered query (1-5); the feedback pool records it.

The rated job must exist for the caller's tenant: that is checked here against its job record
(another tenant's job answers 404 exactly like a missing one), so a client learns at once that it
rated the wrong id. Whether it is an answered query is decided by the worker
(`ragfleet.feedback.record`), which fails the feedback job with `invalid_payload` otherwise.
The feedback job starts like every other job of the API (`ApiDeps.submit`): its record and its
message in one MULTI, and an outage is the app's 503.
"""

# No `from __future__ import annotations`: FastAPI resolves the dependency types declared in
# `feedback_router`'s scope, which string annotations cannot reach.

from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import JSONResponse
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from api_shim.auth import Caller
from api_shim.deps import ApiDeps, accepted
from api_shim.models import JOB_ID_MAX, Accepted, error_responses
from ragfleet.names import Priority, TaskName
from ragfleet.schemas import FeedbackPayload


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


def feedback_router(deps: ApiDeps) -> APIRouter:
    router = APIRouter()
    caller_dep = Annotated[Caller, Depends(deps.caller)]
    request_id_dep = Annotated[str, Depends(deps.request_id)]
    jobs = deps.jobs

    @router.post(
        "/v1/feedback",
        status_code=202,
        response_model=Accepted,
        responses=error_responses(404, *sorted(set(deps.error_codes) - {404})),
        summary="Rate an answered query (1-5)",
        description=(
            "Queues a feedback job (poll `GET /v1/jobs/{job_id}` with the returned id). The rated "
            "job must be a query of the caller's tenant; the feedback job fails with "
            "`invalid_payload` if it has no answer yet."
        ),
        tags=["feedback"],
    )
    async def post_feedback(body: FeedbackRequest, who: caller_dep, rid: request_id_dep) -> JSONResponse:
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
        feedback_id = await deps.submit(
            TaskName.FEEDBACK_RECORD, "feedback", payload, who, rid, Priority.DEFAULT
        )
        return accepted(feedback_id)

    return router


__all__ = ["FeedbackRequest", "feedback_router"]
