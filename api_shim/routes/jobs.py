"""`GET /v1/jobs/{job_id}` (a job record) and `GET /v1/jobs/{job_id}/deliveries` (its callbacks'
delivery log, `ragfleet.callbacks`), for its own tenant only. A poll spends the caller's read
budget (`Settings.read_rate_limit`), never its submission budget."""

# No `from __future__ import annotations`: FastAPI resolves `jobs_router`'s dependency types at runtime.

from typing import Annotated

import anyio
from fastapi import APIRouter, Depends, HTTPException, Path

from api_shim.auth import Caller
from api_shim.deps import ApiDeps
from api_shim.models import JOB_ID_MAX, error_responses
from ragfleet.callbacks import Delivery, DeliveryLog
from ragfleet.schemas import JobRecord


def jobs_router(deps: ApiDeps) -> APIRouter:
    router = APIRouter()
    CallerDep = Annotated[Caller, Depends(deps.reader)]  # noqa: N806 - the read budget
    jobs = deps.jobs
    book = DeliveryLog(deps.rds, deps.settings)

    @router.get(
        "/v1/jobs/{job_id}",
        response_model=JobRecord,
        responses=error_responses(404, *deps.error_codes),
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

    @router.get(
        "/v1/jobs/{job_id}/deliveries",
        response_model=list[Delivery],
        responses=error_responses(404, *deps.error_codes),
        summary="A job's callback deliveries: every attempt, oldest first",
        tags=["jobs"],
    )
    async def get_deliveries(
        job_id: Annotated[str, Path(min_length=1, max_length=JOB_ID_MAX)], who: CallerDep
    ) -> list[Delivery]:
        tenant = await deps.events_reader.client().hget(jobs.key(job_id), "tenant")
        if tenant is None or str(tenant) != who.tenant:
            raise HTTPException(404, "job not found")
        return await anyio.to_thread.run_sync(book.list, job_id)

    return router
