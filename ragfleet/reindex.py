"""Zero-downtime reindex: build a new collection, verify it, switch atomically, keep one for rollback.

Queries keep reading the active collection during the build; the switch is one MULTI in Redis that
also bumps the index version, so no cached answer of the old version is served afterwards. Vectors
are copied by content hash when the embedding model is unchanged (nothing is re-embedded); with a
new model every chunk is embedded again, and the switch records it as the new collection's model
(ragfleet/index_model.py): questions are embedded by it from the switch on, on every node. Only one
reindex runs at a time: a Redis lock with a TTL, renewed while the build progresses, so a crashed
reindex frees the lock by itself.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from redis.lock import Lock

from ragfleet.chunkers import DOC_CHARS, FILE_LABELS, ChunkerSpec, configured_chunker
from ragfleet.indexing import copy_chunked_documents, index_documents
from ragfleet.resources import Resources
from ragfleet.stores import build_store
from ragfleet.stores.base import ChunkRecord, WalPositioned, wal_position_of

LOCK_TTL_S = 120


class ReindexBusyError(RuntimeError):
    """Another reindex holds the lock: the caller exits cleanly."""


@dataclass(slots=True)
class ReindexReport:
    status: str
    old_collection: str
    new_collection: str
    documents: int
    chunks_before: int
    chunks_after: int
    chunks_embedded: int
    chunks_copied: int
    version: int
    seconds: float
    dropped: list[str]
    chunker: str = ""  # the new collection's chunker (`ChunkerSpec.label`)
    previous_chunker: str = ""  # the old one's; "" when it had none recorded
    model: str = ""  # the new collection's embedding model (the configured one)
    previous_model: str = ""  # the old one's (ragfleet/index_model.py)

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}


def _documents_of(
    res: Resources, collection: str, files: dict[str, dict[str, list[ChunkRecord]]] | None = None
) -> dict[str, dict[str, dict[str, Any]]]:
    """Rebuild documents (per tenant) from their chunks: the store is the source of truth here.
    Parsed files' chunks (`chunker` in their metadata) go to `files` as they are: their structure
    cannot be rebuilt from text (`Chunker.restored` reshapes them)."""
    store = res.store(collection)
    store.refresh()
    docs: dict[str, dict[str, dict[str, Any]]] = {}
    parts: dict[tuple[str, str], list[Any]] = {}
    for batch in store.iter_chunks():
        for c in batch:
            parts.setdefault((c.tenant, c.doc_id), []).append(c)
    for (tenant, doc_id), chunks in parts.items():
        chunks.sort(key=lambda c: c.chunk_index)
        if files is not None and chunks[0].metadata.get("chunker") in FILE_LABELS:
            files.setdefault(tenant, {})[doc_id] = chunks
            continue
        text = _join(chunks)
        first = chunks[0]
        docs.setdefault(tenant, {})[doc_id] = {
            "id": doc_id,
            "text": text,
            "title": first.title,
            # the document's own metadata: what the old chunker recorded is not (the new one records its own)
            "metadata": {k: v for k, v in first.metadata.items() if k != DOC_CHARS},
        }
    return docs


def _join(chunks: list[Any]) -> str:
    """Undo overlapping windows using character offsets. A chunk's text is its title prefix (the
    title, or the part of it that fitted the token budget) and then the document's text[start:end]:
    the body is the last end - start characters."""
    out = ""
    covered = 0
    for c in chunks:
        body = c.text[len(c.text) - (c.end - c.start) :] if c.end > c.start else ""
        if c.end <= covered:
            continue
        skip = max(0, covered - c.start)
        gap = c.start - covered if c.start > covered else 0
        out += (" " * gap) + body[skip:]
        covered = c.end
    return out


def run_reindex(
    res: Resources,
    *,
    progress: Callable[[int, int], None] | None = None,
    verify_sample: int = 20,
) -> ReindexReport:
    s = res.settings
    lock = Lock(res.redis, s.key("lock", "reindex"), timeout=LOCK_TTL_S, blocking=False)
    if not lock.acquire(blocking=False):
        raise ReindexBusyError("a reindex is already running")
    t0 = time.perf_counter()
    try:
        pointer = res.index_state.read()
        old = pointer.active
        new = f"{s.collection}_v{int(time.time())}_{uuid.uuid4().hex[:4]}"
        chunker = configured_chunker(s)  # the rollout of a chunker change: built with, recorded at the switch
        previous_chunker = res.index_state.chunker_of(old)
        source = res.store(old)
        # the rollout of a model change, likewise: every chunk embedded again, recorded at the switch
        previous_model = res.model_of(pointer)
        chunks_before = source.count()
        files: dict[str, dict[str, list[ChunkRecord]]] = {}
        docs = _documents_of(res, old, files)
        lock.extend(LOCK_TTL_S, replace_ttl=True)
        target = res.store(new)
        total = sum(len(d) for d in docs.values()) + sum(len(d) for d in files.values())
        done = 0
        embedded = copied = 0
        for tenant, tdocs in docs.items():
            items = list(tdocs.values())
            for i in range(0, len(items), 256):
                part = items[i : i + 256]
                r = index_documents(
                    res,
                    part,
                    tenant=tenant,
                    store=target,
                    vector_source=source,
                    bump_version=False,
                    chunker=chunker,
                )
                if r.errors:
                    raise RuntimeError(f"reindex rejected documents: {r.errors[:3]}")
                embedded += r.chunks_embedded
                copied += r.chunks_skipped
                done += len(part)
                lock.extend(LOCK_TTL_S, replace_ttl=True)  # renew: we are alive and making progress
                if progress:
                    progress(done, total)
        for tenant, tfiles in files.items():
            r = copy_chunked_documents(
                res, tenant, tfiles, store=target, vector_source=source, chunker=chunker
            )
            embedded += r.chunks_embedded
            copied += r.chunks_skipped
            done += len(tfiles)
            lock.extend(LOCK_TTL_S, replace_ttl=True)
            if progress:
                progress(done, total)
        target.optimize()
        target.refresh()
        position = wal_position_of(target)  # PostgreSQL: the new table and all its rows
        if position is not None and isinstance(target, WalPositioned):
            target.read_after(position)  # the verify searches must not read a replica without them
        chunks_after = target.count()
        _verify(res, source, target, docs, verify_sample)
        ptr = res.index_state.switch(new, position, chunker=chunker.spec, model=s.embedding_model)
        dropped = _drop_older(res, keep={new, old})
        return ReindexReport(
            status="switched",
            old_collection=old,
            new_collection=new,
            documents=total,
            chunks_before=chunks_before,
            chunks_after=chunks_after,
            chunks_embedded=embedded,
            chunks_copied=copied,
            version=ptr.version,
            seconds=round(time.perf_counter() - t0, 3),
            dropped=dropped,
            chunker=chunker.spec.label,
            previous_chunker=_label(previous_chunker),
            model=s.embedding_model,
            previous_model=previous_model,
        )
    finally:
        try:
            lock.release()
        except Exception:  # noqa: S110 - lock expired: nothing to release
            pass


def _label(spec: ChunkerSpec | None) -> str:
    return spec.label if spec is not None else ""


def _verify(
    res: Resources, source: Any, target: Any, docs: dict[str, dict[str, dict[str, Any]]], n: int
) -> None:
    """The new collection must hold every document, and a document's own text must find it."""
    for tenant, tdocs in docs.items():
        if target.count(tenant) < len(tdocs):
            raise RuntimeError(f"verification failed: tenant {tenant} lost documents")
        for doc in list(tdocs.values())[:n]:
            probe = " ".join(doc["text"].split()[:30])
            hits = target.search(tenant, vector=None, text=probe, mode="fts", top_k=10)
            if hits and doc["id"] not in {h.doc_id for h in hits}:
                raise RuntimeError(f"verification failed: {doc['id']} not found by its own text")


def _drop_older(res: Resources, keep: set[str]) -> list[str]:
    """Keep the live collection and the previous one (rollback target); drop older generations.
    LanceDB: its tables in the data dir; PostgreSQL: the registered collections' tables (each
    index version is a table, ragfleet/stores/pg_schema.py), dropped through the store so that the
    registry row goes with the table. Weaviate keeps its classes (dropped by hand)."""
    s = res.settings
    if s.store == "postgres":
        names = _pg_collections(res)
    elif s.store == "lancedb":
        import lancedb

        names = list(lancedb.connect(str(s.data_dir / "lancedb")).table_names())
    else:
        return []
    dropped = []
    for name in names:
        if name.startswith(s.collection + "_v") and name not in keep:
            build_store(s, collection=name, dim=res.embedding_dim).drop()  # no ensure(): nothing created
            dropped.append(name)
    return dropped


def _pg_collections(res: Resources) -> list[str]:
    from ragfleet.stores.postgres_store import PostgresStore

    store = res.store(res.index_state.read().active)
    assert isinstance(store, PostgresStore)
    return store.collections()
