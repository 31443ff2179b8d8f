"""Request and response bodies of the HTTP API.

Request models are built per app from `Settings`, so the limits the API enforces (document count
and size, question length, top_k) are the limits its OpenAPI schema states: a client, or a fuzzer,
that follows the schema is never surprised. Patterns use Python `re` semantics
(`regex_engine="python-re"`, compiled patterns) to agree exactly with the worker-side validators in
`ragfleet.schemas` (`DocumentIn`, `QueryPayload`), which the handlers still run as a second gate.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
    create_model,
)

from ragfleet.schemas import JobStatus, MetadataValue, SearchMode
from ragfleet.settings import Settings

# `DocumentIn.id`: printable, not blank. `DocumentIn.text` / `QueryPayload.question`: after control
# characters become spaces, something other than whitespace must remain.
# `\s` is spelled out: Python's (what `str.strip` removes) and ECMA's (what a JSON Schema tool uses)
# differ, e.g. on U+0085 and U+FEFF, and the schema must mean exactly what the validators do.
_BLANK = r"\x00-\x20\x7f\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
ID_PATTERN = re.compile(rf"^[^\x00-\x1f\x7f]*[^{_BLANK}][^\x00-\x1f\x7f]*$")
NOT_BLANK = rf"[^{_BLANK}]"
JOB_ID_MAX = 128

DocId = Annotated[str, Field(min_length=1, max_length=512), StringConstraints(pattern=ID_PATTERN)]

# `DocumentIn.metadata` keys: 1-128 characters, no '=', no control character but tab/newline/CR.
METADATA_KEY = re.compile(r"^[^=\x00-\x08\x0b\x0c\x0e-\x1f\x7f]+$")
_METADATA_VALUE_SCHEMA = {"anyOf": [{"type": t} for t in ("string", "integer", "number", "boolean")]}
# Pydantic would describe key constraints as `patternProperties` (which still admits other keys);
# `propertyNames` says what the validator enforces.
Metadata = Annotated[
    dict[
        Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=METADATA_KEY)], MetadataValue
    ],
    WithJsonSchema(
        {
            "type": "object",
            "propertyNames": {"minLength": 1, "maxLength": 128, "pattern": METADATA_KEY.pattern},
            "additionalProperties": _METADATA_VALUE_SCHEMA,
        }
    ),
]


def _integral(value: Any) -> Any:
    """JSON Schema counts 20.0 as an integer; strict mode would not. Strings and bools stay rejected."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


class _Body(BaseModel):
    # strict: the schema says integer, so "5" is rejected instead of silently coerced
    model_config = ConfigDict(extra="forbid", strict=True, regex_engine="python-re")


_PORT = r"(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4})"


def _glob_pattern(globs: list[str]) -> str:
    """`*` globs as one anchored regex that Python and JSON Schema tools read alike."""
    return "^(" + "|".join(re.escape(g).replace(r"\*", r"[\w.:-]*") for g in globs) + ")$"


def callback_fields_model(s: Settings) -> type[_Body]:
    """The callback fields a submission body may carry, as this deployment allows them: only those
    it enables at all, and shaped by its allow-lists (a host the URL must name, the task names and
    queues), so the schema says what the API accepts. What no schema can say (a tenant without a
    secret, a port out of range, a name paired with another name's queue) is a 422 with the reason."""
    hosts = [h.strip().lower() for h in s.callback_allowed_hosts.split(",") if h.strip()]
    pairs = [p.strip().rpartition("@") for p in s.callback_allowed_tasks.split(",") if "@" in p]
    fields: dict[str, Any] = {}
    if hosts:
        alts = "|".join(
            rf"[^/:@?#]+\.{re.escape(h[2:])}" if h.startswith("*.") else re.escape(h) for h in hosts
        )
        url = Annotated[str, Field(max_length=2_048, pattern=rf"^https?://({alts})(:{_PORT})?([/?#].*)?$")]
        fields["callback_url"] = (
            url | None,
            Field(default=None, description="POST the signed outcome here when the job ends (docs/http.md)."),
        )
    if pairs:
        task = create_model(
            "CallbackTaskBody",
            __base__=_Body,
            __doc__="A Celery task sent by name with the job's final record when the job ends.",
            name=(str, Field(max_length=200, pattern=_glob_pattern([n for n, _, _ in pairs]))),
            queue=(Literal[tuple(sorted({q for _, _, q in pairs}))], ...),  # type: ignore[arg-type]
        )
        fields["callback_task"] = (task | None, None)
    model: type[_Body] = create_model("CallbackFields", __base__=_Body, **fields)
    return model


class Accepted(BaseModel):
    job_id: str
    status: JobStatus = JobStatus.QUEUED


class ErrorBody(BaseModel):
    detail: str


class RateLimitedBody(BaseModel):
    detail: str
    limit: Literal["submit", "read"] = Field(
        description="The budget that was exhausted: `submit` (RAGFLEET_RATE_LIMIT) or `read` "
        "(RAGFLEET_READ_RATE_LIMIT: reads of one's own jobs, streams and batches)."
    )
    scope: Literal["key", "tenant", "ip"] = Field(
        description="Whose budget: the API key's, the tenant's (where several keys map to one tenant, they "
        "share its budgets), or the client address's on an API without keys."
    )


class NotReadyBody(BaseModel):
    detail: str
    failing: dict[str, str] = Field(description="Failing check name -> reason.")


class ReadyBody(BaseModel):
    status: str = "ready"
    checks: list[str]


class HealthBody(BaseModel):
    status: str = "ok"


@dataclass(frozen=True)
class RequestModels:
    document: type[BaseModel]
    index_request: type[BaseModel]
    query_request: type[BaseModel]


def callback_properties(s: Settings) -> dict[str, Any]:
    """`callback_fields_model(s)`'s properties as plain JSON Schema (nested models inlined), for a
    hand-written request schema (POST /v1/batches)."""
    schema = callback_fields_model(s).model_json_schema()
    defs = schema.get("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return inline(defs[node["$ref"].rsplit("/", 1)[-1]])
            return {k: inline(v) for k, v in node.items()}
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node

    props: dict[str, Any] = inline(schema.get("properties", {}))
    return props


def build_request_models(s: Settings) -> RequestModels:
    class Document(_Body):
        """One document to index; `(tenant, id)` identifies it, so re-sending an id replaces it."""

        id: DocId
        text: str = Field(min_length=1, max_length=s.max_document_chars, pattern=NOT_BLANK)
        title: str | None = Field(default=None, max_length=2_000)
        metadata: Metadata = Field(default_factory=dict)

    CallbackFields = callback_fields_model(s)  # noqa: N806 - a class, named like one

    class IndexRequest(CallbackFields):  # type: ignore[valid-type,misc]
        documents: list[Document] = Field(min_length=1, max_length=s.max_documents_per_request)

    class QueryRequest(CallbackFields):  # type: ignore[valid-type,misc]
        question: str = Field(min_length=1, max_length=s.max_question_chars, pattern=NOT_BLANK)
        top_k: Annotated[int, BeforeValidator(_integral)] = Field(
            default=s.default_top_k, ge=1, le=s.max_top_k
        )
        mode: SearchMode | None = None
        filters: dict[str, MetadataValue] = Field(default_factory=dict)
        use_cache: bool = True
        stream: bool = Field(
            default=False, description="Hint that the client will read GET /v1/queries/{id}/stream."
        )

    return RequestModels(Document, IndexRequest, QueryRequest)


def _error(description: str, *, retry_after: bool = False, model: Any = ErrorBody) -> dict[str, Any]:
    out: dict[str, Any] = {"model": model, "description": description}
    if retry_after:
        out["headers"] = {
            "Retry-After": {
                "description": "Seconds to wait before retrying.",
                "schema": {"type": "integer", "minimum": 1},
                "required": True,
            }
        }
    return out


ERRORS: dict[int, dict[str, Any]] = {
    400: _error("The body could not be parsed."),
    401: _error("Missing or invalid API key."),
    403: _error("The route needs an admin key, or the entry belongs to another tenant."),
    404: _error("No such job for this tenant."),
    413: _error("The request body is larger than the configured limit."),
    429: _error("Rate limit exceeded; `limit` names the budget.", retry_after=True, model=RateLimitedBody),
    503: _error("Redis or the broker is unavailable.", retry_after=True),
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: ERRORS[code] for code in codes}
