"""Indexing service: validate, chunk, embed what is new, replace atomically per document.

Idempotent by construction, which is what makes late-ack redelivery after a crash safe: chunk ids
are `(tenant, doc_id, chunk_index)`, rows are replaced with one merge per batch, and a chunk whose
content hash is already stored (in any document, any collection handed in as `vector_source`) is
not embedded again. One bad document becomes an entry in `IndexResult.errors`; the others are
indexed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from pydantic import ValidationError

from ragfleet.blobs import blob_store
from ragfleet.chunkers import Chunker, configured_chunker, live_chunker
from ragfleet.indexing_files import (
    file_records,
    pending_record,
    validate_files,
    validation_reason,
)
from ragfleet.resources import Resources
from ragfleet.schemas import (
    DocumentError,
    DocumentIn,
    ErrorCode,
    FileIn,
    IndexResult,
)
from ragfleet.stores.base import ChunkRecord, VectorStore, wal_position_of

ProgressFn = Callable[[int, int], None]  # (documents done, documents total)
WRITE_BATCH_DOCS = 256


def validate_documents(
    raw_docs: Iterable[Any], default_tenant: str, result: IndexResult
) -> dict[str, dict[str, DocumentIn]]:
    """Group valid documents by tenant (last one wins for a repeated id); record the bad ones."""
    by_tenant: dict[str, dict[str, DocumentIn]] = {}
    for i, raw in enumerate(raw_docs):
        doc_id = raw.get("id") if isinstance(raw, dict) else None
        try:
            doc = DocumentIn.model_validate(raw)
        except ValidationError as exc:
            result.errors.append(
                DocumentError(
                    index=i,
                    doc_id=str(doc_id) if doc_id is not None else None,
                    message=validation_reason(exc),
                )
            )
            continue
        by_tenant.setdefault(doc.tenant or default_tenant, {})[doc.id] = doc
    return by_tenant


def index_documents(
    res: Resources,
    raw_docs: list[Any],
    *,
    tenant: str,
    files: list[Any] | None = None,
    store: VectorStore | None = None,
    vector_source: VectorStore | None = None,
    progress: ProgressFn | None = None,
    bump_version: bool = True,
    chunker: Chunker | None = None,
    model: str | None = None,
) -> IndexResult:
    """Index text documents (chunked in windows) and document files (parsed, one bounded child process
    each, and chunked along their structure). An uploaded blob is deleted once its document is stored
    (or found unchanged), and kept `blob_failed_ttl_s` when it failed. Into the live index, documents
    are chunked with the live index's recorded chunker (ragfleet/chunkers.py: a chunker change is
    rolled out by a reindex); into another `store`, with `chunker` or the configured one. The same
    for the embedding `model` (ragfleet/index_model.py)."""
    s = res.settings
    if store is None:
        target, pointer = res.live_store()
        chunker = chunker or live_chunker(res, pointer.active, target)
        model = model or res.model_of(pointer)
    else:
        target, chunker = store, chunker or configured_chunker(s)
        model = model or s.embedding_model
    files = files or []
    result = IndexResult(documents_received=len(raw_docs) + len(files))
    by_tenant: dict[str, dict[str, DocumentIn | FileIn]] = dict(
        validate_documents(raw_docs, tenant, result)  # type: ignore[arg-type]
    )
    blobs = blob_store(s)
    positions = validate_files(files, tenant, result, by_tenant) if files else {}
    done_blobs: list[str] = []
    total = sum(len(d) for d in by_tenant.values())
    done = 0
    wrote = False
    for ten, docs in by_tenant.items():
        ids = list(docs)
        for start in range(0, len(ids), WRITE_BATCH_DOCS):
            part = ids[start : start + WRITE_BATCH_DOCS]
            existing = target.document_hashes(ten, part)
            pending: dict[str, list[ChunkRecord]] = {}
            pending_blobs: list[str] = []
            for doc_id in part:
                doc = docs[doc_id]
                if isinstance(doc, FileIn):
                    records = file_records(
                        res, blobs, chunker, ten, positions[(ten, doc_id)], doc, result, model
                    )
                    if records is None:
                        if doc.blob_id is not None and blobs.exists(doc.blob_id):
                            blobs.mark_failed(doc.blob_id)
                        continue
                    if doc.blob_id is not None:
                        pending_blobs.append(doc.blob_id)
                    if existing.get(doc_id) == {r.chunk_index: r.content_hash for r in records}:
                        result.documents_unchanged += 1
                        result.chunks_skipped += len(records)
                        continue
                    pending[doc_id] = records
                    continue
                try:
                    chunks = chunker.text(doc.text, doc.title)
                except ValueError as exc:
                    result.errors.append(
                        DocumentError(
                            index=-1, doc_id=doc_id, code=ErrorCode.INVALID_DOCUMENT, message=str(exc)
                        )
                    )
                    continue
                # the text's extent as its chunks cover it (trailing space is in no chunk, and a
                # reindex rebuilds the text from them): an unchanged reindex keeps every row
                metadata = {**doc.metadata, **chunker.document_metadata(len(doc.text.rstrip()))}
                records = [
                    pending_record(
                        tenant=ten,
                        doc_id=doc_id,
                        index=c.index,
                        text=c.text,
                        title=doc.title,
                        start=c.start,
                        end=c.end,
                        metadata=metadata,
                        model=model,
                    )
                    for c in chunks
                ]
                if existing.get(doc_id) == {r.chunk_index: r.content_hash for r in records}:
                    result.documents_unchanged += 1
                    result.chunks_skipped += len(records)
                    continue
                pending[doc_id] = records
            if pending:
                _fill_vectors(res, pending, target, vector_source, result, model)
                result.chunks_written += target.replace_documents(ten, pending)
                result.documents_indexed += len(pending)
                wrote = True
            done_blobs += pending_blobs  # stored (or unchanged): only now may their blobs go
            done += len(part)
            if progress:
                progress(done, total)
    if wrote and bump_version:
        result.index_version = res.index_state.bump(wal_position_of(target))
    else:
        result.index_version = res.index_state.version()
    for blob_id in done_blobs:
        blobs.mark_indexed(blob_id)  # not deleted yet: another queued job may hold the same bytes
    if files:
        blobs.sweep_indexed(s.blob_indexed_ttl_s)
        blobs.sweep_failed(s.blob_failed_ttl_s)
    return result


def _fill_vectors(
    res: Resources,
    pending: dict[str, list[ChunkRecord]],
    target: VectorStore,
    vector_source: VectorStore | None,
    result: IndexResult,
    model: str,
) -> None:
    records = [r for rows in pending.values() for r in rows]
    hashes = [r.content_hash for r in records]
    known = target.vectors_by_hash(hashes, model)
    if vector_source is not None:
        missing = [h for h in hashes if h not in known]
        if missing:
            known.update(vector_source.vectors_by_hash(missing, model))
    to_embed: dict[str, str] = {}
    for r in records:
        if r.content_hash in known:
            r.vector = known[r.content_hash]
            result.chunks_skipped += 1
        else:
            to_embed.setdefault(r.content_hash, r.text)
    if to_embed:
        keys = list(to_embed)
        vecs = res.embedder_for(model).encode([to_embed[k] for k in keys])
        fresh = {k: v.tolist() for k, v in zip(keys, vecs, strict=True)}
        result.chunks_embedded += len(fresh)
        for r in records:
            if not r.vector:
                r.vector = fresh[r.content_hash]


def copy_chunked_documents(
    res: Resources,
    tenant: str,
    docs: dict[str, list[ChunkRecord]],
    *,
    store: VectorStore,
    vector_source: VectorStore | None = None,
    chunker: Chunker | None = None,
) -> IndexResult:
    """Write documents whose chunks cannot be rebuilt from text (parsed files: their blobs are gone,
    their pages and sections live only in the chunks) into `store`, reshaped for `chunker` (the
    configured one; `Chunker.restored`), vectors copied by content hash (embedded only for a new
    model or a chunk the new chunker split). What a reindex does with them."""
    result = IndexResult(documents_received=len(docs))
    model = res.settings.embedding_model
    chunker = chunker or configured_chunker(res.settings)
    pending = {
        doc_id: [
            pending_record(
                tenant=tenant,
                doc_id=doc_id,
                index=i,
                text=text,
                title=chunks[0].title,
                start=start,
                end=end,
                metadata=metadata,
                model=model,
            )
            for i, (text, start, end, metadata) in enumerate(chunker.restored(chunks))
        ]
        for doc_id, chunks in docs.items()
    }
    if pending:
        _fill_vectors(res, pending, store, vector_source, result, model)
        result.chunks_written = store.replace_documents(tenant, pending)
        result.documents_indexed = len(pending)
    return result


def delete_document(res: Resources, *, tenant: str, doc_id: str) -> IndexResult:
    store, _ = res.live_store()
    removed = store.delete_document(tenant, doc_id)
    result = IndexResult(documents_received=1, documents_deleted=1 if removed else 0)
    state = res.index_state
    result.index_version = state.bump(wal_position_of(store)) if removed else state.version()
    if not removed:
        result.errors.append(
            DocumentError(index=0, doc_id=doc_id, code=ErrorCode.NOT_FOUND, message="document not found")
        )
    return result


def maybe_optimize(res: Resources, *, every: int = 10, force: bool = False) -> bool:
    """Fold appended fragments into the indexes once enough writes piled up.

    Each write is a new LanceDB version and fragment; FTS searches unindexed rows by brute force. Left
    alone after a bulk ingest, a query's search went from ~25 ms to ~500 ms. Readers reopen their
    table handle when the store generation moves, so it is bumped after optimizing; the index
    version (the content, in every answer-cache key) is not: a compaction keeps the cache.
    """
    state = res.index_state
    key = res.settings.key("index", "optimized_version")
    current = state.version()
    done = int(res.redis.get(key) or 0)
    if current <= done or (not force and current - done < every):
        return False
    lock = res.redis.lock(res.settings.key("lock", "optimize"), timeout=300, blocking=False)
    if not lock.acquire(blocking=False):
        return False
    try:
        store, _ = res.live_store()
        store.optimize()
        state.bump_generation()
        res.redis.set(key, current)
        return True
    finally:
        try:
            lock.release()
        except Exception:  # noqa: S110 - expired: another optimize may run, which is harmless
            pass
