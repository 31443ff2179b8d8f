"""`/v1/admin/dead-letters...`: list, inspect, replay and purge dead letters (`ragfleet.dead_letters`).

Who sees what: an admin key (`Settings.admin_keys`; every caller of an open API) sees and works
every tenant's entries and may purge; any other key sees and replays only its own tenant's, and
gets 403 on another tenant's entry and on a purge. Reads spend the caller's read budget, a replay
or a purge its submission budget (`api_shim.ratelimit`).
"""

# No `from __future__ import annotations`: FastAPI resolves the dependency types at runtime.

from typing import Annotated

import anyio
from fastapi import APIRouter, Depends, HTTPException, Path, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from api_shim.auth import Caller
from api_shim.deps import ApiDeps
from api_shim.models import error_responses
from ragfleet.dead_letters import DeadLetter, DeadLetters, ReplayOutcome


class DeadLetterList(BaseModel):
    items: list[DeadLetter] = Field(description="Newest first, without payloads (see the entry itself).")


class ReplayBody(BaseModel):
    dead_letter: str
    job_id: str
    outcome: ReplayOutcome
    attempt: int | None = Field(description="The job's new `attempt`; null if its record had expired.")


class PurgeBody(BaseModel):
    purged: int


def admin_router(deps: ApiDeps) -> APIRouter:
    router = APIRouter(tags=["admin"])
    letters = DeadLetters(deps.rds, deps.settings)
    ReaderDep = Annotated[Caller, Depends(deps.reader)]  # noqa: N806
    WriterDep = Annotated[Caller, Depends(deps.caller)]  # noqa: N806
    EntryId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[0-9a-f]+$")]  # noqa: N806
    codes = (403, *deps.error_codes)

    async def owned(entry_id: str, who: Caller) -> DeadLetter:
        entry = await anyio.to_thread.run_sync(letters.get, entry_id)
        if entry is None:
            raise HTTPException(404, "dead letter not found")
        if not who.admin and entry.tenant != who.tenant:
            raise HTTPException(403, "this dead letter belongs to another tenant")
        return entry

    @router.get(
        "/v1/admin/dead-letters",
        response_model=DeadLetterList,
        responses=error_responses(*codes),
        summary="List dead letters (an admin key: every tenant's; any other key: its tenant's)",
    )
    async def list_dead_letters(
        who: ReaderDep,
        tenant: Annotated[str | None, Query(max_length=128, description="Admin only: one tenant's.")] = None,
        limit: Annotated[int, Query(ge=1, le=1_000)] = 100,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> DeadLetterList:
        if not who.admin:
            if tenant is not None and tenant != who.tenant:
                raise HTTPException(403, "a tenant key lists only its own tenant's dead letters")
            tenant = who.tenant
        items = await anyio.to_thread.run_sync(
            lambda: letters.list(tenant=tenant, limit=limit, offset=offset)
        )
        return DeadLetterList(items=items)

    @router.get(
        "/v1/admin/dead-letters/{entry_id}",
        response_model=DeadLetter,
        responses=error_responses(404, *codes),
        summary="One dead letter, with its payload",
    )
    async def get_dead_letter(entry_id: EntryId, who: ReaderDep) -> DeadLetter:
        return await owned(entry_id, who)

    @router.post(
        "/v1/admin/dead-letters/{entry_id}/replay",
        status_code=202,
        response_model=ReplayBody,
        responses={
            409: {"description": "Replayed already (by this or a concurrent call), or the job runs again."},
            422: {"description": "The entry has no payload or names an unknown task: nothing to send."},
            **error_responses(404, *codes),
        },
        summary="Send a dead letter's message again, under its job id (poll the job as before)",
    )
    async def replay_dead_letter(entry_id: EntryId, who: WriterDep) -> JSONResponse:
        entry = await owned(entry_id, who)
        try:
            outcome, attempt = await anyio.to_thread.run_sync(letters.replay, entry_id)
        except KeyError:
            raise HTTPException(404, "dead letter not found") from None
        body = ReplayBody(dead_letter=entry_id, job_id=entry.job_id, outcome=outcome, attempt=attempt)
        if outcome == ReplayOutcome.REPLAYED:
            headers = {"Location": f"/v1/jobs/{entry.job_id}"}
            return JSONResponse(body.model_dump(mode="json"), status_code=202, headers=headers)
        status = 422 if outcome == ReplayOutcome.NOT_REPLAYABLE else 409
        return JSONResponse(
            {"detail": f"not replayed: {outcome.value}", **body.model_dump(mode="json")}, status
        )

    @router.delete(
        "/v1/admin/dead-letters",
        response_model=PurgeBody,
        responses=error_responses(*codes),
        summary="Purge dead letters (admin only; `tenant` limits it to one tenant's)",
    )
    async def purge_dead_letters(
        who: WriterDep, tenant: Annotated[str | None, Query(max_length=128)] = None
    ) -> PurgeBody:
        if not who.admin:
            raise HTTPException(403, "purging dead letters needs an admin key")
        return PurgeBody(purged=await anyio.to_thread.run_sync(lambda: letters.purge(tenant=tenant)))

    @router.api_route(
        "/v1/admin/dead-letters", methods=["PUT", "PATCH", "POST", "OPTIONS"], include_in_schema=False
    )
    async def dead_letters_other_methods() -> JSONResponse:
        """GET and DELETE are two Starlette routes, and a 405 would list only the first one's method."""
        return JSONResponse(
            {"detail": "Method Not Allowed"}, status_code=405, headers={"Allow": "GET, DELETE"}
        )

    return router
