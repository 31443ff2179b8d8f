"""`ragfleet index copy`: move an existing LanceDB index into PostgreSQL without re-embedding.

A team that outgrows one machine moves from the embedded default (`RAGFLEET_STORE=lancedb`) to the
shared store (`postgres`); re-embedding a large corpus costs hours of CPU, and the vectors it already
has are the same model's. So the rows are copied as they are (text, offsets, metadata, content hash,
embedding model and vector) into the collection of the same name, i.e. the same index version: the
Redis pointer's `active` does not change. Its version is bumped with the primary's WAL position after
the copy (`IndexState.bump`), so no cached answer of the LanceDB era is served from the new store and
no read replica is read before it has replayed the copied rows.

What must stay true:
- a document's chunks are written together, in one `replace_documents` call (the store replaces a
  document's chunks with exactly those given): the copy reads the source twice, first counting each
  document's chunks, then buffering a document's rows until all of them have been read, so memory
  holds only documents whose chunks the source returned apart, never the whole index;
- copying again is harmless: every write is a replacement, so a copy cut off midway is resumed by
  running it again;
- the source is read from one LanceDB directory and nothing is written to it. Stop the indexing pool
  during the copy (a document changed between the two passes is still written whole, with the rows
  the second pass read, and counted in `documents_changed_during_copy`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ragfleet.index_state import IndexState
from ragfleet.redis_conn import get_redis
from ragfleet.settings import Settings
from ragfleet.stores import build_store
from ragfleet.stores.base import ChunkRecord, wal_position_of

WRITE_BATCH_DOCS = 64  # documents a replace_documents call writes (one transaction)


@dataclass(slots=True)
class CopyReport:
    collection: str
    source: str
    documents: int
    chunks_read: int
    chunks_written: int
    chunks_in_target: int
    documents_changed_during_copy: int
    version: int
    wal_lsn: int
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _lancedb_dim(directory: Path, name: str) -> int:
    """The vector width of an existing LanceDB table (FileNotFoundError if there is none)."""
    import lancedb

    if not directory.is_dir() or name not in lancedb.connect(str(directory)).table_names():
        raise FileNotFoundError(f"no LanceDB collection {name!r} in {directory}")
    return int(lancedb.connect(str(directory)).open_table(name).schema.field("vector").type.list_size)


def copy_lancedb_to_postgres(
    settings: Settings,
    *,
    lancedb_dir: Path | None = None,
    collection: str | None = None,
    batch_size: int = 1_000,
    progress: Callable[[int, int], None] | None = None,
) -> CopyReport:
    """Copy collection `collection` (default: the pointer's active one) from the LanceDB store in
    `lancedb_dir` (default: `<data_dir>/lancedb`) into the PostgreSQL store `settings` names."""
    if settings.store != "postgres" or settings.pg_url is None:
        raise ValueError("the target is PostgreSQL: set RAGFLEET_STORE=postgres and RAGFLEET_PG_URL")
    from ragfleet.stores.lancedb_store import LanceDBStore

    t0 = time.perf_counter()
    state = IndexState(get_redis(settings), settings)
    name = collection or state.read().active
    directory = lancedb_dir or settings.data_dir / "lancedb"
    source = LanceDBStore(directory, name, dim=_lancedb_dim(directory, name))
    expected: dict[tuple[str, str], int] = {}
    for rows in source.iter_chunks(batch_size):
        for r in rows:
            expected[(r.tenant, r.doc_id)] = expected.get((r.tenant, r.doc_id), 0) + 1
    total = sum(expected.values())

    target: Any = None
    buffered: dict[tuple[str, str], list[ChunkRecord]] = {}
    ready: dict[str, dict[str, list[ChunkRecord]]] = {}
    read = written = changed = 0

    def flush(final: bool = False) -> None:
        nonlocal written
        for tenant in list(ready):
            docs = ready[tenant]
            if len(docs) >= WRITE_BATCH_DOCS or final:
                written += target.replace_documents(tenant, docs)
                del ready[tenant]

    for rows in source.iter_chunks(batch_size):
        if target is None:
            target = build_store(settings, collection=name, dim=len(rows[0].vector))
            target.ensure()
        for r in rows:
            key = (r.tenant, r.doc_id)
            buffered.setdefault(key, []).append(r)
            if len(buffered[key]) == expected.get(key, -1):
                ready.setdefault(r.tenant, {})[r.doc_id] = buffered.pop(key)
        read += len(rows)
        flush()
        if progress:
            progress(read, total)
    for (tenant, doc_id), chunks in buffered.items():  # documents changed between the two passes
        ready.setdefault(tenant, {})[doc_id] = chunks
        changed += 1
    if target is not None:
        flush(final=True)
        target.optimize()  # VACUUM ANALYZE: the planner needs statistics of the new rows
    position = wal_position_of(target) if target is not None else None
    version = state.bump(position)
    return CopyReport(
        collection=name,
        source=str(directory),
        documents=len(expected),
        chunks_read=read,
        chunks_written=written,
        chunks_in_target=target.count() if target is not None else 0,
        documents_changed_during_copy=changed,
        version=version,
        wal_lsn=int(position or 0),
        seconds=round(time.perf_counter() - t0, 3),
    )
