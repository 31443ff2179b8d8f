"""`POST /v1/documents/files`: upload document files (multipart) to be parsed and indexed on the fleet.

The API only stores bytes: each file goes to the blob store (`ragfleet.blobs`, a directory every API
and indexing host shares) and the job's message carries blob ids (`FileIn`), never the bytes. Parsing
happens on the indexing pool, in a bounded child process per file (docs/parsing.md); nothing here
opens a document.

What must stay true:
- Nothing is stored unless the whole request is acceptable (file count, sizes, fields): a 413 or 422
  leaves no blob behind.
- With API keys configured the tenant is the key's; a `tenant` form field naming another is refused.
- At most `RAGFLEET_FILES_PER_TASK` files per request, because one request is one indexing task, and
  each file may take `parse_timeout_s` of the task's hard limit.
"""

# No `from __future__ import annotations`: FastAPI must resolve the per-app dependency types at runtime.

import json
import uuid
from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from api_shim.auth import Caller
from api_shim.deps import ApiDeps, accepted
from api_shim.errors import validation_error
from api_shim.models import ID_PATTERN, Accepted, error_responses
from ragfleet.blobs import blob_store
from ragfleet.callback_spec import CallbackRequest
from ragfleet.names import Priority, TaskName
from ragfleet.schemas import FileIn

FILES_PATH = "/v1/documents/files"
FIELDS = ("id", "title", "metadata", "tenant")
_PLACEHOLDER_BLOB = "0" * 64  # validates a reference before any byte is stored


def _request_body_schema(cap: int) -> dict[str, Any]:
    """The multipart body. What JSON Schema cannot say, the handler checks (422): each per-file field
    is given once per file or not at all, and `metadata` is a JSON object."""
    per_file = "Optional; give it once per file, in the order of the files (an empty value for none)."
    per_file_array: dict[str, Any] = {"type": "array", "maxItems": cap}
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["files"],
                        "properties": {
                            "files": {
                                "type": "array",
                                "minItems": 1,
                                "maxItems": cap,
                                "items": {"type": "string", "format": "binary"},
                                "description": "One or more document files (PDF, PNG/JPEG/TIFF, DOCX, "
                                "PPTX, XLSX, CSV, HTML, Markdown, text; docs/parsing.md).",
                            },
                            "id": {
                                **per_file_array,
                                "items": {
                                    "type": "string",
                                    "maxLength": 512,
                                    "pattern": f"^$|{ID_PATTERN.pattern}",
                                },
                                "description": "Document id (default: the file name). " + per_file,
                            },
                            "title": {
                                **per_file_array,
                                "items": {"type": "string", "maxLength": 2_000},
                                "description": per_file,
                            },
                            "metadata": {
                                **per_file_array,
                                "items": {"type": "string"},
                                "description": "A JSON object (string, number and boolean values). "
                                + per_file,
                            },
                            "tenant": {
                                **per_file_array,
                                "items": {"type": "string", "maxLength": 128},
                                "description": "Without API keys only; with keys the tenant is the key's. "
                                + per_file,
                            },
                            "callback_url": {
                                "type": "string",
                                "maxLength": 2_048,
                                "description": "Once per request: POST the job's outcome here when it ends "
                                "(signed; docs/http.md#callbacks).",
                            },
                            "callback_task": {
                                "type": "string",
                                "description": 'Once per request: a JSON object {"name", "queue"}, sent '
                                "by name with the job's final record when it ends.",
                            },
                        },
                    }
                }
            },
        }
    }


def _unprocessable(message: str, *loc: str | int) -> HTTPException:
    return HTTPException(422, [{"loc": ["body", *loc], "msg": message, "type": "value_error"}])


def _callbacks(url: Any, task: Any) -> CallbackRequest:
    """The upload's callback fields (form fields, once per request): a 422 if one does not parse; the
    allow-lists and the tenant's secret are checked by `ApiDeps.callback_fields`, as for JSON bodies."""
    try:
        raw_task = json.loads(task) if isinstance(task, str) and task else None
        return CallbackRequest.model_validate(
            {"callback_url": url if isinstance(url, str) and url else None, "callback_task": raw_task}
        )
    except ValueError as exc:  # a JSON error or pydantic's ValidationError
        field = "callback_task" if task and not isinstance(exc, ValidationError) else "callback_url"
        if isinstance(exc, ValidationError):
            field = str(exc.errors()[0]["loc"][0]) if exc.errors() else field
        raise _unprocessable(f"{field}: {exc}", field) from exc


def files_router(deps: ApiDeps) -> APIRouter:
    router = APIRouter()
    CallerDep = Annotated[Caller, Depends(deps.caller)]  # noqa: N806
    RequestId = Annotated[str, Depends(deps.request_id)]  # noqa: N806
    s = deps.settings
    cap = s.files_per_task
    max_file_bytes = s.upload_max_mb * 2**20
    blobs = blob_store(s)

    @router.post(
        FILES_PATH,
        status_code=202,
        response_model=Accepted,
        responses={
            **error_responses(*deps.error_codes),
            422: {"description": "No files, too many files, or an invalid field."},
        },
        summary="Upload document files to parse and index",
        description=(
            f"Multipart upload of 1-{cap} files (each at most {s.upload_max_mb} MiB). The files are "
            "stored in the fleet's blob store and parsed on the indexing pool; the job's result names "
            "each file that failed (`errors`, with a parse error code) and reports each parse "
            "(`parse_reports`)."
        ),
        tags=["documents"],
        openapi_extra=_request_body_schema(cap),
    )
    async def post_files(request: Request, who: CallerDep, rid: RequestId) -> JSONResponse:
        form = await request.form(max_files=max(100, 4 * cap), max_fields=1_000)
        uploads = [u for u in form.getlist("files") if isinstance(u, UploadFile)]
        if not uploads:
            raise _unprocessable("no files: send one or more parts named 'files'", "files")
        if len(uploads) > cap:
            raise _unprocessable(
                f"{len(uploads)} files, over the limit of {cap} per request: send them in several requests",
                "files",
            )
        fields: dict[str, list[str]] = {}
        for name in FIELDS:
            values = [v if isinstance(v, str) else "" for v in form.getlist(name)]
            if values and len(values) != len(uploads):
                raise _unprocessable(
                    f"{len(values)} '{name}' fields for {len(uploads)} files: give one per file, in order",
                    name,
                )
            fields[name] = values
        refs: list[dict[str, Any]] = []
        for i, upload in enumerate(uploads):
            if upload.size is not None and upload.size > max_file_bytes:
                raise HTTPException(
                    413, f"file {upload.filename!r} is over the {s.upload_max_mb} MiB upload limit"
                )
            ref: dict[str, Any] = {"name": upload.filename or f"upload-{i + 1}"}
            for name in ("id", "title"):
                if fields[name] and fields[name][i]:
                    ref[name] = fields[name][i]
            if fields["metadata"] and fields["metadata"][i]:
                try:
                    ref["metadata"] = json.loads(fields["metadata"][i])
                except ValueError as exc:
                    raise _unprocessable(f"metadata is not JSON: {exc}", "metadata", i) from exc
            if fields["tenant"] and fields["tenant"][i] and fields["tenant"][i] != who.tenant:
                if deps.keyring:
                    raise _unprocessable(
                        "the tenant comes from the API key; a tenant field naming another is refused",
                        "tenant",
                        i,
                    )
                ref["tenant"] = fields["tenant"][i]
            try:  # the worker's own schema, before a byte is stored
                FileIn.model_validate({**ref, "blob_id": _PLACEHOLDER_BLOB})
            except ValidationError as exc:
                raise validation_error(["body", "files", i], exc) from exc
            refs.append(ref)
        job_id = uuid.uuid4().hex
        extra = deps.callback_fields(
            job_id, who.tenant, _callbacks(form.get("callback_url"), form.get("callback_task"))
        )
        for ref, upload in zip(refs, uploads, strict=True):
            await upload.seek(0)
            ref["blob_id"] = await anyio.to_thread.run_sync(blobs.put, upload.file)
        payload = {"documents": [], "files": refs, "tenant": who.tenant, "request_id": rid}
        submitted = await deps.submit(
            TaskName.INDEX_DOCUMENTS, "index", payload, who, rid, Priority.DEFAULT, job_id=job_id, extra=extra
        )
        return accepted(submitted)

    return router
