"""Payloads and results shared by producers and workers.

These pydantic models are the producer contract: `docs/tasks.md` is generated from them
(`python -m ragfleet.docs_gen`), so a field added here is documented there, and a breaking change
shows up in review as a diff of that file.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ragfleet.callback_spec import CallbackRequest

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_ID = re.compile(r"^[^\x00-\x1f\x7f]{1,512}$")

MetadataValue = str | int | float | bool


class ErrorCode(StrEnum):
    INVALID_PAYLOAD = "invalid_payload"
    INVALID_DOCUMENT = "invalid_document"
    RETRIEVAL_FAILED = "retrieval_failed"
    GENERATION_FAILED = "generation_failed"
    TIMEOUT = "timeout"
    NOT_FOUND = "not_found"
    UNAVAILABLE = "unavailable"
    CANCELLED = "cancelled"
    WORKER_LOST = "worker_lost"
    # a query past its deadline that no worker finished: its message was lost (ragfleet.deadlines)
    LOST = "lost"
    INTERNAL = "internal"
    # a document file that could not be parsed (ragfleet.parsing, docs/parsing.md)
    EMPTY_DOCUMENT = "empty_document"
    UNREADABLE_DOCUMENT = "unreadable_document"
    ENCRYPTED_DOCUMENT = "encrypted_document"
    UNSUPPORTED_FORMAT = "unsupported_format"
    TOO_LARGE = "too_large"
    PARSE_TIMEOUT = "parse_timeout"


class JobStatus(StrEnum):
    QUEUED = "queued"
    RETRIEVING = "retrieving"
    GENERATING = "generating"
    INDEXING = "indexing"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL = frozenset({JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED})


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


def clean_text(value: str) -> str:
    """Control characters break tokenizers and JSON logs; tabs and newlines are kept."""
    return _CONTROL.sub(" ", value)


class DocumentIn(_Strict):
    """One document to index. `(tenant, id)` identifies it: re-sending the same id replaces it."""

    id: Annotated[str, Field(min_length=1, max_length=512, description="Stable document id.")]
    text: Annotated[str, Field(min_length=1, description="Plain text (markdown allowed).")]
    title: Annotated[str | None, Field(default=None, max_length=2_000)] = None
    metadata: dict[str, MetadataValue] = Field(default_factory=dict)
    tenant: Annotated[str | None, Field(default=None, max_length=128)] = None

    @field_validator("id")
    @classmethod
    def _id_printable(cls, v: str) -> str:
        return _check_id(v)

    @field_validator("text")
    @classmethod
    def _text_not_blank(cls, v: str) -> str:
        v = clean_text(v)
        if not v.strip():
            raise ValueError("text is empty or whitespace only")
        return v

    @field_validator("metadata")
    @classmethod
    def _metadata_keys(cls, v: dict[str, MetadataValue]) -> dict[str, MetadataValue]:
        return _check_metadata(v)


def _check_id(v: str) -> str:
    if not _ID.fullmatch(v) or not v.strip():
        raise ValueError("id must be 1-512 printable characters")
    return v


def _check_metadata(v: dict[str, MetadataValue]) -> dict[str, MetadataValue]:
    for key in v:
        if not key or "=" in key or _CONTROL.search(key) or len(key) > 128:
            raise ValueError(f"metadata key {key!r} is invalid (1-128 chars, no '=')")
    return v


BLOB_ID_PATTERN = r"^[0-9a-f]{64}$"


class FileIn(_Strict):
    """One document file to parse and index (docs/parsing.md): an uploaded blob (`blob_id`, the SHA-256
    of its bytes in the fleet's blob store) or a `path` under the workers' `RAGFLEET_BLOB_AREA`. File
    bytes never ride in the message. `(tenant, id)` identifies the document, as for `DocumentIn`."""

    blob_id: Annotated[str | None, Field(default=None, pattern=BLOB_ID_PATTERN)] = None
    path: Annotated[str | None, Field(default=None, min_length=1, max_length=4_096)] = None
    name: Annotated[
        str | None,
        Field(
            default=None,
            max_length=512,
            description="File name that citations show and whose extension breaks ties between text "
            "formats (default: the path's file name; required with blob_id).",
        ),
    ] = None
    id: Annotated[
        str | None,
        Field(default=None, max_length=512, description="Stable document id (default: the file name)."),
    ] = None
    title: Annotated[str | None, Field(default=None, max_length=2_000)] = None
    metadata: dict[str, MetadataValue] = Field(default_factory=dict)
    tenant: Annotated[str | None, Field(default=None, max_length=128)] = None

    @model_validator(mode="after")
    def _one_reference(self) -> FileIn:
        if (self.blob_id is None) == (self.path is None):
            raise ValueError("give exactly one of blob_id and path")
        if self.blob_id is not None and not self.name:
            raise ValueError("name (the file name) is required with blob_id")
        _check_id(self.doc_id)  # the same id and metadata rules as DocumentIn
        _check_metadata(self.metadata)
        return self

    @property
    def file_name(self) -> str:
        if self.name:
            return self.name.replace("\\", "/").rsplit("/", 1)[-1] or self.name
        return (self.path or "").rstrip("/").rsplit("/", 1)[-1]

    @property
    def doc_id(self) -> str:
        return self.id or self.file_name


class IndexDocumentsPayload(_Strict, CallbackRequest):
    """Payload of `ragfleet.index_documents`. Documents are validated one by one in the task, so one
    bad document is reported in the result while the rest of the batch is indexed."""

    documents: list[dict[str, Any]] = Field(default_factory=list)
    files: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Document files to parse and index (`FileIn`: `{blob_id | path, name?, id?, title?, "
        "metadata?, tenant?}`), each parsed in a bounded child process; one that fails is an entry in "
        "`errors` with its code. At most `RAGFLEET_FILES_PER_TASK` (12) per task. At least one of "
        "`documents` and `files` must be non-empty.",
    )
    tenant: str = Field(default="default", min_length=1, max_length=128)
    job_id: str | None = None
    request_id: str | None = None

    @model_validator(mode="after")
    def _something_to_index(self) -> IndexDocumentsPayload:
        if not self.documents and not self.files:
            raise ValueError("documents and files are both empty: nothing to index")
        return self


class IndexDocumentPayload(_Strict):
    """Payload of `ragfleet.index_document`: one document, gathered with others into a batch."""

    document: dict[str, Any]
    tenant: str = Field(default="default", min_length=1, max_length=128)
    job_id: str | None = None
    request_id: str | None = None


class DeleteDocumentPayload(_Strict):
    doc_id: str = Field(min_length=1, max_length=512)
    tenant: str = Field(default="default", min_length=1, max_length=128)
    job_id: str | None = None
    request_id: str | None = None


SearchMode = Literal["vector", "fts", "hybrid"]


class QueryPayload(_Strict, CallbackRequest):
    """Payload of `ragfleet.query` (retrieval pool), which hands off to `ragfleet.generate`."""

    question: str = Field(min_length=1, max_length=20_000)
    top_k: int = Field(default=5, ge=1, le=100)
    mode: SearchMode | None = None
    filters: dict[str, MetadataValue] = Field(default_factory=dict)
    tenant: str = Field(default="default", min_length=1, max_length=128)
    use_cache: bool = True
    stream: bool = False
    job_id: str | None = None
    request_id: str | None = None
    batch_id: str | None = None

    @field_validator("question")
    @classmethod
    def _question_not_blank(cls, v: str) -> str:
        v = clean_text(v)
        if not v.strip():
            raise ValueError("question is empty or whitespace only")
        return v


class Source(BaseModel):
    n: int = Field(description="Citation number used as [n] in the answer.")
    doc_id: str
    chunk_id: str
    title: str | None = None
    text: str
    score: float
    start: int = Field(description="Character offset of the chunk in its document.")
    end: int
    metadata: dict[str, MetadataValue] = Field(default_factory=dict)


class Quote(BaseModel):
    text: str
    source: int = Field(description="The `n` of the cited source.")


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    provider: str = "extractive"
    model: str | None = None


class Answer(BaseModel):
    """Result of a query job: `answer` cites `sources` as [n]."""

    question: str
    answer: str
    quotes: list[Quote] = Field(default_factory=list)
    sources: list[Source] = Field(default_factory=list)
    degraded: bool = False
    cached: Literal["l1", "l2"] | None = None
    coalesced_with: str | None = Field(
        default=None, description="Job id whose pipeline run produced this answer (request coalescing)."
    )
    index_version: int = 0
    usage: Usage = Field(default_factory=Usage)


class DocumentError(BaseModel):
    index: int
    doc_id: str | None = None
    code: ErrorCode = ErrorCode.INVALID_DOCUMENT
    message: str
    source: str | None = Field(default=None, description="File name, for an entry of `files`.")


class ParseReportOut(BaseModel):
    """How one file of `files` was parsed (ragfleet.parsing's report, plus the chunks it became)."""

    doc_id: str
    source: str
    format: str
    pages: int
    pages_ocred: int
    characters: int
    chunks: int
    warnings: list[str] = Field(default_factory=list)
    parser: str


class IndexResult(BaseModel):
    documents_received: int = 0
    documents_indexed: int = 0
    documents_unchanged: int = 0
    documents_deleted: int = 0
    chunks_written: int = 0
    chunks_embedded: int = 0
    chunks_skipped: int = 0
    errors: list[DocumentError] = Field(default_factory=list)
    index_version: int = 0
    parse_reports: list[ParseReportOut] = Field(default_factory=list)


class JobError(BaseModel):
    code: ErrorCode
    message: str
    retry_after: float | None = None


class StageTiming(BaseModel):
    worker: str
    queue: str
    pid: int
    started_at: float
    ms: float | None = None


class JobRecord(BaseModel):
    """What `GET /v1/jobs/{id}` returns and what the Redis hash `<prefix>:job:<id>` holds."""

    job_id: str
    kind: Literal["query", "index", "delete", "feedback", "reindex", "batch"]
    status: JobStatus
    tenant: str = "default"
    request_id: str | None = None
    created_at: float
    updated_at: float
    stages: dict[str, StageTiming] = Field(default_factory=dict)
    progress: dict[str, int] = Field(default_factory=dict)
    result: dict[str, Any] | None = None
    error: JobError | None = None
    attempts: int = 0
    attempt: int = Field(
        default=1,
        description="Which run of the job this is: 1, then + 1 for each replay of it as a dead letter "
        "(`attempts` counts stage deliveries within runs).",
    )


class FeedbackPayload(_Strict):
    job_id: str = Field(min_length=1, max_length=128)
    rating: int = Field(ge=1, le=5)
    comment: str | None = Field(default=None, max_length=5_000)
    tenant: str = Field(default="default", min_length=1, max_length=128)
    request_id: str | None = None


class ReindexPayload(_Strict):
    reason: str = "scheduled"
    job_id: str | None = None
    request_id: str | None = None


class GeneratePayload(_Strict):
    """Internal hand-off from the retrieval pool to the generation pool (`ragfleet.generate`)."""

    job_id: str
    question: str
    sources: list[Source]
    index_version: int
    cache_key: str | None = None
    tenant: str = "default"
    request_id: str | None = None
    stream: bool = False


class BatchDispatchPayload(CallbackRequest):
    """Payload of `ragfleet.batch.dispatch`: a whole batch submitted by task name.

    `questions` items are strings or objects `{question, top_k?, filters?, mode?, use_cache?, id?}`;
    `top_k`, `mode` and `use_cache` here are defaults for items that do not set them. The task id is
    the batch id (`job_id`), so the producer polls `<prefix>:job:<task id>` for progress.
    """

    model_config = ConfigDict(extra="forbid")

    questions: list[Any] = Field(min_length=1)
    top_k: int | None = None
    mode: str | None = None
    use_cache: bool | None = None
    tenant: str = Field(default="default", min_length=1, max_length=128)
    job_id: str | None = None
    request_id: str | None = None


class AggregatePayload(BaseModel):
    """Payload of `ragfleet.feedback.aggregate`; beat sends `{}` and gets these defaults, which match
    the `RagfleetFeedbackRatingLow` alert rule (more than 10 ratings averaging below 3.5 in an hour)."""

    model_config = ConfigDict(extra="forbid")

    window_s: float = Field(default=3_600, gt=0, le=30 * 86_400)
    min_count: int = Field(default=10, ge=0)
    threshold: float = Field(default=3.5, ge=1, le=5)
    job_id: str | None = None
    request_id: str | None = None
