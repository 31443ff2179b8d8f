"""`POST /v1/documents` (index or replace) and `DELETE /v1/documents/{doc_id}`.

Both validate twice: against the app's request models (whose limits its OpenAPI schema states) and
against the worker's own schema (`DocumentIn`, `DeleteDocumentPayload`), so that any drift between
the two surfaces here as a 422 instead of a job that fails in the pool.
"""

# No `from __future__ import annotations`: FastAPI must resolve the per-app types (request models,
# dependencies) that live in `documents_router`'s scope, which string annotations cannot reach.

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.convertors import Convertor, register_url_convertor

from api_shim.auth import Caller
from api_shim.deps import ApiDeps, accepted
from api_shim.errors import validation_error
from api_shim.models import Accepted, DocId, error_responses
from ragfleet.names import Priority, TaskName
from ragfleet.schemas import DeleteDocumentPayload, DocumentIn


class _AnyPath(Convertor[str]):
    """Like Starlette's `path` but also across newlines, so a bad doc id gets a 422, not a routing 404."""

    regex = r"[\s\S]*"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("anypath", _AnyPath())


def documents_router(deps: ApiDeps) -> APIRouter:
    router = APIRouter()
    IndexRequest = deps.models.index_request  # noqa: N806 - a class, named like one
    CallerDep = Annotated[Caller, Depends(deps.caller)]  # noqa: N806
    RequestId = Annotated[str, Depends(deps.request_id)]  # noqa: N806
    errors = deps.error_codes

    @router.post(
        "/v1/documents",
        status_code=202,
        response_model=Accepted,
        responses=error_responses(*errors),
        summary="Index (add or replace) documents",
        tags=["documents"],
    )
    async def post_documents(body: IndexRequest, who: CallerDep, rid: RequestId) -> JSONResponse:  # type: ignore[valid-type]
        documents: list[dict[str, Any]] = []
        for i, doc in enumerate(body.documents):  # type: ignore[attr-defined]
            try:  # second gate: the worker's own schema, so any drift surfaces here as a 422
                checked = DocumentIn.model_validate(doc.model_dump())
            except ValidationError as exc:
                raise validation_error(["body", "documents", i], exc) from exc
            documents.append(checked.model_dump(exclude_none=True, exclude={"tenant"}))
        payload = {"documents": documents, "tenant": who.tenant, "request_id": rid}
        job_id = uuid.uuid4().hex
        extra = deps.callback_fields(job_id, who.tenant, body)
        return accepted(
            await deps.submit(
                TaskName.INDEX_DOCUMENTS,
                "index",
                payload,
                who,
                rid,
                Priority.DEFAULT,
                job_id=job_id,
                extra=extra,
            )
        )

    @router.delete(
        "/v1/documents/{doc_id:anypath}",
        status_code=202,
        response_model=Accepted,
        responses=error_responses(*errors),
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
            raise validation_error(["path"], exc) from exc
        return accepted(
            await deps.submit(TaskName.DELETE_DOCUMENT, "delete", payload, who, rid, Priority.DEFAULT)
        )

    return router
