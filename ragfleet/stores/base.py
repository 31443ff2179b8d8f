"""The store Protocol every vector store implements, and the records that cross it.

Stores hold chunks, not documents: a document is the set of chunks sharing `(tenant, doc_id)`.
Contract (tests/contract/ checks every implementation against it):
- `replace_documents` is atomic per call and idempotent: the rows given for a document become
  exactly its chunks (old chunks of that document not in the call disappear).
- every read is scoped to one tenant; no call ever returns another tenant's rows.
- vectors are unit-normalised; `score` is higher-is-better in every search mode.
- a write made by one process is visible to reads in another after `refresh()`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from ragfleet.schemas import MetadataValue, SearchMode


@dataclass(slots=True)
class ChunkRecord:
    chunk_id: str
    doc_id: str
    tenant: str
    chunk_index: int
    text: str
    title: str | None
    start: int
    end: int
    content_hash: str
    embedding_model: str
    vector: list[float]
    metadata: dict[str, MetadataValue] = field(default_factory=dict)


@dataclass(slots=True)
class SearchHit:
    chunk_id: str
    doc_id: str
    chunk_index: int
    text: str
    title: str | None
    start: int
    end: int
    score: float
    metadata: dict[str, MetadataValue] = field(default_factory=dict)


def chunk_id_for(tenant: str, doc_id: str, index: int) -> str:
    return f"{tenant}/{doc_id}#{index}"


def tags_for(metadata: dict[str, MetadataValue]) -> list[str]:
    """Metadata flattened to `key=value` tags: every store can filter a string list by equality."""
    return sorted(f"{k}={_tag_value(v)}" for k, v in metadata.items())


def _tag_value(v: MetadataValue) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


@runtime_checkable
class VectorStore(Protocol):
    name: str

    def ensure(self) -> None:
        """Create the collection and its indexes if missing (idempotent)."""

    def replace_documents(self, tenant: str, docs: dict[str, list[ChunkRecord]]) -> int:
        """Make each document's chunks exactly `docs[doc_id]`; returns rows written."""

    def delete_document(self, tenant: str, doc_id: str) -> int:
        """Remove every chunk of the document; returns how many were removed (0 if none)."""

    def document_hashes(self, tenant: str, doc_ids: list[str]) -> dict[str, dict[int, str]]:
        """`{doc_id: {chunk_index: content_hash}}` for the documents that exist."""

    def vectors_by_hash(self, hashes: list[str], embedding_model: str) -> dict[str, list[float]]:
        """Stored vectors for content hashes (any tenant, same model): the embedding cache."""

    def search(
        self,
        tenant: str,
        *,
        vector: list[float] | None,
        text: str | None,
        mode: SearchMode,
        top_k: int,
        filters: dict[str, MetadataValue] | None = None,
        dense_weight: float = 0.5,
        candidates: int = 50,
    ) -> list[SearchHit]:
        """Best chunks first."""

    def count(self, tenant: str | None = None) -> int:
        """Chunk rows (for one tenant, or all)."""

    def iter_chunks(self, batch_size: int = 1_000) -> Iterator[list[ChunkRecord]]:
        """Every chunk with its vector, for reindexing into another collection."""

    def refresh(self) -> None:
        """See other processes' writes (no-op where reads are always fresh)."""

    def optimize(self) -> None:
        """Compact and update indexes after bulk writes (no-op where the server does it)."""

    def drop(self) -> None:
        """Delete the whole collection."""

    def close(self) -> None: ...


class StoreUnavailableError(Exception):
    """No server may answer this search (PostgreSQL: the primary is unreachable and no replica has
    replayed the index's WAL position). Not the query's fault: the retrieval task ends the job
    `unavailable` at once, with `retry_after` (seconds) saying when asking again is sensible."""

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@runtime_checkable
class WalPositioned(Protocol):
    """A store with a primary's write-ahead log and replicas that replay it (PostgreSQL): what
    read-after-write needs beyond `VectorStore`. LanceDB and Weaviate are not: for them the index
    pointer carries no position and nothing here is called."""

    def wal_position(self) -> int:
        """The primary's current WAL position (bytes): called after a write's commit, it covers it."""
        ...

    def read_after(self, position: int) -> None:
        """From now on, read only where WAL position `position` has been replayed (never lowered)."""
        ...


def wal_position_of(store: object) -> int | None:
    """The store's WAL position for the index pointer (`IndexState.bump`), None for stores without."""
    return store.wal_position() if isinstance(store, WalPositioned) else None
