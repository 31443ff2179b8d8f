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

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, WithJsonSchema

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


class CallbackTaskBody(_Body):
    """A Celery task sent by name with the job's final record when the job ends (docs/http.md#callbacks)."""

    name: str = Field(min_length=1, max_length=200)
    queue: str = Field(min_length=1, max_length=200)


class CallbackFields(_Body):
    """Optional callbacks of a submission; each is checked against the deployment's allow-lists (422)."""

    callback_url: str | None = Field(
        default=None, max_length=2_048, description="POST the signed outcome here when the job ends."
    )
    callback_task: CallbackTaskBody | None = None


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


def build_request_models(s: Settings) -> RequestModels:
    class Document(_Body):
        """One document to index; `(tenant, id)` identifies it, so re-sending an id replaces it."""

        id: DocId
        text: str = Field(min_length=1, max_length=s.max_document_chars, pattern=NOT_BLANK)
        title: str | None = Field(default=None, max_length=2_000)
        metadata: Metadata = Field(default_factory=dict)

    class IndexRequest(CallbackFields):
        documents: list[Document] = Field(min_length=1, max_length=s.max_documents_per_request)

    class QueryRequest(CallbackFields):
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
