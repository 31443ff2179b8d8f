"""Batch query jobs over HTTP: submit thousands of questions, follow progress, read results in order.

`POST /v1/batches` takes a JSON body `{"questions": [...]}`, a JSONL body
(`Content-Type: application/x-ndjson`) or a multipart upload with a JSONL `file`. The questions are
validated whole (a batch is accepted or rejected with every reason), stored in Redis, and answered
by the fleet with bounded fan-out at batch priority (`ragfleet.batch`), so interactive queries keep
their latency while a batch runs.
"""

# No `from __future__ import annotations`: FastAPI resolves the dependency annotations built in
# `batches_router`'s scope at runtime.

import json
import uuid
from collections.abc import AsyncIterator
from functools import partial
from itertools import islice
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from api_shim.auth import Caller
from api_shim.deps import ApiDeps
from api_shim.models import JOB_ID_MAX, NOT_BLANK, callback_fields_model, callback_properties, error_responses
from ragfleet.batch import BatchError, Batches, normalize_questions, parse_jsonl
from ragfleet.schemas import MetadataValue, SearchMode
from ragfleet.settings import Settings

NDJSON_TYPES = ("application/x-ndjson", "application/jsonl", "application/json-lines")


class BatchProgress(BaseModel):
    total: int
    done: int
    failed: int
    dispatched: int = Field(description="Questions handed to the fleet so far (at most a window ahead).")


class BatchBody(BaseModel):
    batch_id: str
    status: str = Field(description="running, done (every question answered or failed), cancelled, failed")
    progress: BatchProgress
    created_at: float
    updated_at: float


class BatchAccepted(BaseModel):
    batch_id: str
    job_id: str
    status: str = "running"
    total: int


def _integral(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _not_null(value: Any) -> Any:
    if value is None:
        raise ValueError("may be left out, but not null")
    return value


NotNull = BeforeValidator(_not_null)


def _request_schema(s: Settings) -> dict[str, Any]:
    """Hand-written (one body, three content types); `_models` enforce exactly this."""
    question = {"type": "string", "minLength": 1, "maxLength": s.max_question_chars, "pattern": NOT_BLANK}
    top_k = {"type": "integer", "minimum": 1, "maximum": s.max_top_k}
    mode = {"type": "string", "enum": ["vector", "fts", "hybrid"]}
    scalar = {"anyOf": [{"type": t} for t in ("string", "integer", "number", "boolean")]}
    item_obj = {
        "type": "object",
        "required": ["question"],
        "additionalProperties": False,
        "properties": {
            "question": question,
            "top_k": top_k,
            "mode": mode,
            "filters": {"type": "object", "additionalProperties": scalar},
            "use_cache": {"type": "boolean"},
            "id": {"anyOf": [{"type": "string", "maxLength": 512}, {"type": "integer"}]},
        },
    }
    item = {"anyOf": [question, item_obj]}
    body = {
        "type": "object",
        "required": ["questions"],
        "additionalProperties": False,
        "properties": {
            "questions": {"type": "array", "minItems": 1, "maxItems": s.max_batch_questions, "items": item},
            "top_k": top_k,
            "mode": mode,
            "use_cache": {"type": "boolean"},
            **callback_properties(s),  # only those this deployment enables
        },
    }
    # JSONL bodies and multipart uploads are accepted too, but JSON Schema cannot describe "one JSON
    # value a line"; documenting them as free strings would tell fuzzers and code generators that any
    # text is valid. They are described in prose instead.
    return {
        "required": True,
        "description": "JSON as below; or a JSONL body (`Content-Type: application/x-ndjson`, one "
        "question a line: a JSON string or object), or a multipart upload with a JSONL `file` part.",
        "content": {"application/json": {"schema": body}},
    }


def _models(s: Settings) -> type[BaseModel]:
    class _Strict(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True, regex_engine="python-re")

    Question = Annotated[str, Field(min_length=1, max_length=s.max_question_chars, pattern=NOT_BLANK)]  # noqa: N806
    TopK = Annotated[int, BeforeValidator(_integral), Field(ge=1, le=s.max_top_k)]  # noqa: N806

    # Optional fields may be left out but not sent as null: the documented schema (above) has no
    # null. A default is not validated, so the check only meets a null the client actually sent.
    class BatchItem(_Strict):
        question: Question
        top_k: Annotated[TopK | None, NotNull] = None
        mode: Annotated[SearchMode | None, NotNull] = None
        filters: dict[str, MetadataValue] = Field(default_factory=dict)
        use_cache: Annotated[bool | None, NotNull] = None
        id: Annotated[Annotated[str, Field(max_length=512)] | int | None, NotNull] = None

    class BatchRequest(callback_fields_model(s)):  # type: ignore[misc]
        model_config = ConfigDict(extra="forbid", strict=True, regex_engine="python-re")

        questions: list[Question | BatchItem] = Field(min_length=1, max_length=s.max_batch_questions)
        top_k: Annotated[TopK | None, NotNull] = None
        mode: Annotated[SearchMode | None, NotNull] = None
        use_cache: Annotated[bool | None, NotNull] = None

    return BatchRequest


def batches_router(deps: ApiDeps) -> APIRouter:
    """Built per app, with the app's own caller (auth, tenant, rate limit) and request-id dependencies."""
    router = APIRouter(tags=["batches"])
    s, error_codes = deps.settings, deps.error_codes
    batches = Batches(deps.rds, s)
    request_model = _models(s)
    CallerDep = Annotated[Caller, Depends(deps.caller)]  # noqa: N806
    ReaderDep = Annotated[Caller, Depends(deps.reader)]  # noqa: N806 - reads spend the read budget
    RequestId = Annotated[str, Depends(deps.request_id)]  # noqa: N806
    BatchId = Annotated[str, Path(min_length=1, max_length=JOB_ID_MAX)]  # noqa: N806
    publish_timeout_s = max(5.0, 4 * s.redis_socket_timeout_s)

    async def read_items(request: Request) -> tuple[list[Any], dict[str, Any], Any]:
        """(questions, defaults, the JSON body's model: its callbacks; None for JSONL)."""
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype == "multipart/form-data":
            form = await request.form()
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                raise HTTPException(400, "multipart body needs a JSONL `file` part")
            return parse_jsonl((await upload.read()).splitlines()), {}, None
        raw = await request.body()
        if ctype in NDJSON_TYPES:
            return parse_jsonl(raw.splitlines()), {}, None
        if ctype not in ("application/json", ""):
            raise HTTPException(415, f"unsupported content type {ctype!r}")
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise HTTPException(400, f"body is not valid JSON: {exc}") from exc
        try:
            body = request_model.model_validate(data)
        except ValidationError as exc:
            errors = [
                {"type": e["type"], "loc": ["body", *e["loc"]], "msg": e["msg"]}
                for e in exc.errors(include_url=False, include_input=False)
            ]
            raise HTTPException(422, errors) from exc
        dumped = body.model_dump(exclude_none=True)
        defaults = {k: dumped.get(k) for k in ("top_k", "mode", "use_cache")}
        return list(dumped["questions"]), defaults, body

    async def owned(batch_id: str, who: Caller) -> None:
        st = await anyio.to_thread.run_sync(partial(batches.status, batch_id, reconcile=False))
        if st is None or st.tenant != who.tenant:  # another tenant's batch looks missing
            raise HTTPException(404, "batch not found")

    async def body_of(batch_id: str) -> BatchBody:
        st = await anyio.to_thread.run_sync(batches.status, batch_id)
        if st is None:
            raise HTTPException(404, "batch not found")
        return BatchBody.model_validate(st.as_dict())

    @router.post(
        "/v1/batches",
        status_code=202,
        response_model=BatchAccepted,
        responses={
            415: {"description": "Not JSON, JSONL or multipart."},
            **error_responses(*error_codes),
        },
        openapi_extra={"requestBody": _request_schema(s)},
        summary="Submit a batch of questions (JSON, JSONL or a multipart JSONL upload)",
    )
    async def post_batch(
        request: Request,
        who: CallerDep,
        rid: RequestId,
        top_k: Annotated[
            int | None, Query(ge=1, le=s.max_top_k, description="Default for JSONL items.")
        ] = None,
        use_cache: Annotated[bool | None, Query(description="Default for JSONL items.")] = None,
    ) -> JSONResponse:
        try:
            items, defaults, body = await read_items(request)
            defaults = {
                "top_k": top_k,
                "use_cache": use_cache,
                **{k: v for k, v in defaults.items() if v is not None},
            }
            questions = normalize_questions(items, settings=s, tenant=who.tenant, defaults=defaults)
        except BatchError as exc:
            detail: Any = [{**e, "loc": ["body", "questions", *e["loc"]]} for e in exc.errors] or str(exc)
            raise HTTPException(422, detail) from exc
        batch_id = f"b{uuid.uuid4().hex}"
        extra = deps.callback_fields(batch_id, who.tenant, body)
        submit = partial(
            batches.submit, questions, tenant=who.tenant, request_id=rid, batch_id=batch_id, extra=extra
        )
        with anyio.fail_after(publish_timeout_s):
            batch_id = await anyio.to_thread.run_sync(submit, abandon_on_cancel=True)
        body = BatchAccepted(batch_id=batch_id, job_id=batch_id, total=len(questions))
        return JSONResponse(
            body.model_dump(mode="json"), status_code=202, headers={"Location": f"/v1/batches/{batch_id}"}
        )

    @router.get(
        "/v1/batches/{batch_id}",
        response_model=BatchBody,
        responses=error_responses(404, *error_codes),
        summary="A batch's status and progress",
    )
    async def get_batch(batch_id: BatchId, who: ReaderDep) -> BatchBody:
        await owned(batch_id, who)
        return await body_of(batch_id)

    @router.delete(
        "/v1/batches/{batch_id}",
        response_model=BatchBody,
        responses=error_responses(404, *error_codes),
        summary="Cancel a batch: pending questions are not dispatched; in-flight ones may finish",
    )
    async def cancel_batch(batch_id: BatchId, who: CallerDep) -> BatchBody:
        await owned(batch_id, who)
        await anyio.to_thread.run_sync(batches.cancel, batch_id)
        return await body_of(batch_id)

    @router.get(
        "/v1/batches/{batch_id}/results",
        response_class=StreamingResponse,
        responses={
            200: {
                "description": "JSONL, one line per question in input order: "
                "`{index, job_id, question, status, result, error}` (`status` pending while unfinished).",
                "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
            },
            **error_responses(404, *error_codes),
        },
        summary="A batch's results in input order",
    )
    async def batch_results(batch_id: BatchId, who: ReaderDep) -> StreamingResponse:
        await owned(batch_id, who)
        rows = batches.results(batch_id)

        async def body() -> AsyncIterator[bytes]:
            while True:
                chunk = await anyio.to_thread.run_sync(lambda: list(islice(rows, 200)))
                if not chunk:
                    return
                yield "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in chunk).encode()

        return StreamingResponse(body(), media_type="application/x-ndjson")

    @router.api_route(
        "/v1/batches/{batch_id}",
        methods=["PUT", "PATCH", "POST", "OPTIONS"],
        include_in_schema=False,
    )
    async def batch_other_methods() -> JSONResponse:
        """GET and DELETE are two Starlette routes, and a 405 would list only the first one's method."""
        return JSONResponse(
            {"detail": "Method Not Allowed"}, status_code=405, headers={"Allow": "GET, DELETE"}
        )

    return router
