"""The embedded default store: LanceDB on local disk, no server.

Several worker processes open the same directory. LanceDB keeps a table handle on its snapshot, so
readers call `refresh()` (checkout_latest) when the fleet's index version moves; writers use
`merge_insert` so a document's replacement is one atomic commit, and retry on commit conflicts
between concurrent writer processes.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pyarrow as pa

from ragfleet.schemas import MetadataValue, SearchMode
from ragfleet.stores.base import ChunkRecord, SearchHit, tags_for
from ragfleet.stores.fusion import fuse_minmax
from ragfleet.stores.lancedb_rows import (
    HIT_COLUMNS,
    sql_in_list,
    sql_literal,
    table_schema,
    tenant_where,
    to_hit,
    to_record,
    to_table,
)

ANN_MIN_ROWS = 100_000  # below this, exact search is fast enough (~16 ms at 20k) and exact


class LanceDBStore:
    stems = True  # native FTS with an English stemmer

    def __init__(
        self,
        root: Path,
        name: str,
        *,
        dim: int,
        nprobes: int = 20,
        refine_factor: int = 10,
        storage_version: str = "2.1",
    ) -> None:
        self.root = Path(root)
        self.storage_version = storage_version  # for tables this store creates (see Settings)
        self.name = name
        self.dim = dim
        self.nprobes = nprobes  # both only matter once an IVF index exists (past ANN_MIN_ROWS)
        self.refine_factor = refine_factor
        self._db: Any = None
        self._table: Any = None
        self._lock = threading.RLock()
        self._fts_ready = False
        # (version, tenant) -> "that snapshot holds no other tenant's rows"
        self._sole_tenant: dict[str, bool] = {}

    # -- connection ------------------------------------------------------------------------------
    def _connect(self) -> Any:
        if self._db is None:
            import lancedb

            self.root.mkdir(parents=True, exist_ok=True)
            self._db = lancedb.connect(str(self.root))
        return self._db

    def _tbl(self) -> Any:
        if self._table is None:
            with self._lock:
                if self._table is None:
                    self.ensure()
        return self._table

    def ensure(self) -> None:
        with self._lock:
            db = self._connect()
            self._table = db.create_table(
                self.name,
                schema=table_schema(self.dim),
                exist_ok=True,
                data_storage_version=self.storage_version,
            )

    def exists(self) -> bool:
        return self.name in self._connect().table_names()

    def refresh(self) -> None:
        if self._table is not None:
            self._table.checkout_latest()
        self._sole_tenant.clear()

    def close(self) -> None:
        self._table = None
        self._db = None
        self._sole_tenant.clear()

    # -- writes ----------------------------------------------------------------------------------
    def _retry(self, fn: Any) -> Any:
        """Concurrent writer processes can lose a commit race; the write is idempotent, so redo it."""
        delay = 0.05
        for attempt in range(8):
            try:
                return fn()
            except Exception as exc:  # lance raises plain RuntimeError/OSError on conflicts
                msg = str(exc).lower()
                if attempt == 7 or not any(w in msg for w in ("conflict", "retry", "concurrent")):
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
                self.refresh()
        raise AssertionError("unreachable")

    def replace_documents(self, tenant: str, docs: dict[str, list[ChunkRecord]]) -> int:
        if not docs:
            return 0
        tbl = self._tbl()
        records = [r for rows in docs.values() for r in rows]
        scope = f"tenant = {sql_literal(tenant)} AND doc_id IN {sql_in_list(list(docs))}"
        if not records:
            self._retry(lambda: tbl.delete(scope))
            return 0

        def write() -> None:
            (
                tbl.merge_insert("chunk_id")
                .when_matched_update_all()
                .when_not_matched_insert_all()
                .when_not_matched_by_source_delete(scope)
                .execute(to_table(records, self.dim))
            )

        self._retry(write)
        self._sole_tenant.clear()
        self._ensure_fts()
        return len(records)

    def _ensure_fts(self) -> None:
        """FTS needs an index to exist at all; rows added later are searched flat until optimize().

        Every search prefilters on `tenant`, and re-ingest and delete look rows up by `doc_id`:
        without scalar indexes those filters scan the whole table (a hybrid query over SciFact took
        31 ms with a scan of `tenant`, 19 ms with a bitmap index on it)."""
        if self._fts_ready:
            return
        from lancedb.index import FTS, Bitmap, BTree

        tbl = self._tbl()
        have = {tuple(ix.columns) for ix in tbl.list_indices()}
        wanted = (
            ("text", FTS(stem=True, language="English", remove_stop_words=True)),
            ("tenant", Bitmap()),  # few distinct values
            ("doc_id", BTree()),
        )
        for column, config in wanted:
            if (column,) in have:
                continue
            try:
                tbl.create_index(column, config=config, replace=False)
            except Exception as exc:  # another process created it first
                if "exist" not in str(exc).lower():
                    raise
        self._fts_ready = True

    def delete_document(self, tenant: str, doc_id: str) -> int:
        tbl = self._tbl()
        self.refresh()
        where = f"tenant = {sql_literal(tenant)} AND doc_id = {sql_literal(doc_id)}"
        n = int(tbl.count_rows(where))
        if n:
            self._retry(lambda: tbl.delete(where))
            self._sole_tenant.clear()
        return n

    def drop(self) -> None:
        with self._lock:
            db = self._connect()
            if self.name in db.table_names():
                db.drop_table(self.name)
            self._table = None
            self._fts_ready = False

    # -- reads -----------------------------------------------------------------------------------
    def _scan(self, where: str, columns: list[str]) -> pa.Table:
        return self._tbl().search().where(where).select(columns).limit(None).to_arrow()

    def document_hashes(self, tenant: str, doc_ids: list[str]) -> dict[str, dict[int, str]]:
        out: dict[str, dict[int, str]] = {}
        if not doc_ids:
            return out
        for i in range(0, len(doc_ids), 500):
            part = doc_ids[i : i + 500]
            tbl = self._scan(
                f"tenant = {sql_literal(tenant)} AND doc_id IN {sql_in_list(part)}",
                ["doc_id", "chunk_index", "content_hash"],
            )
            for d, idx, h in zip(
                tbl["doc_id"].to_pylist(),
                tbl["chunk_index"].to_pylist(),
                tbl["content_hash"].to_pylist(),
                strict=True,
            ):
                out.setdefault(d, {})[int(idx)] = h
        return out

    def vectors_by_hash(self, hashes: list[str], embedding_model: str) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {}
        uniq = sorted(set(hashes))
        for i in range(0, len(uniq), 500):
            part = uniq[i : i + 500]
            tbl = self._scan(
                f"embedding_model = {sql_literal(embedding_model)} AND content_hash IN {sql_in_list(part)}",
                ["content_hash", "vector"],
            )
            for h, v in zip(tbl["content_hash"].to_pylist(), tbl["vector"].to_pylist(), strict=True):
                out.setdefault(h, v)
        return out

    def count(self, tenant: str | None = None) -> int:
        tbl = self._tbl()
        return int(tbl.count_rows(f"tenant = {sql_literal(tenant)}") if tenant else tbl.count_rows())

    def iter_chunks(self, batch_size: int = 1_000) -> Iterator[list[ChunkRecord]]:
        reader = self._tbl().search().limit(None).to_batches(batch_size)
        for batch in reader:
            rows = batch.to_pylist()
            if rows:
                yield [to_record(r) for r in rows]

    def _search_filter(self, tenant: str, filters: dict[str, MetadataValue] | None) -> str | None:
        """The prefilter for a search, or None when it would select every row.

        LanceDB evaluates a prefilter over the whole table before the ANN search even when every
        row matches: at 1M chunks `tenant = 'default'` took a vector query from 27 ms to 96 ms. So
        the tenant condition is left out when this snapshot holds no other tenant (one count on
        the bitmap index, ~1 ms, cached until the handle moves). Multi-tenant tables keep it.
        """
        if tags_for(filters or {}):
            return tenant_where(tenant, filters)
        tbl = self._tbl()
        # keyed by the snapshot's version too: tenant isolation must not rest on cache hygiene alone
        key = f"{tbl.version}\0{tenant}"
        sole = self._sole_tenant.get(key)
        if sole is None:
            sole = int(tbl.count_rows(f"tenant != {sql_literal(tenant)}")) == 0
            self._sole_tenant[key] = sole
        return None if sole else tenant_where(tenant, None)

    def _hits(
        self, rows: list[dict[str, Any]], key: str, *, distance: bool
    ) -> dict[str, tuple[float, dict[str, Any]]]:
        out: dict[str, tuple[float, dict[str, Any]]] = {}
        for r in rows:
            score = 1.0 - float(r["_distance"]) if distance else float(r[key])
            out[r["chunk_id"]] = (score, r)
        return out

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
        tbl = self._tbl()
        where = self._search_filter(tenant, filters)
        n = max(top_k, candidates) if mode == "hybrid" else top_k
        dense: dict[str, tuple[float, dict[str, Any]]] = {}
        sparse: dict[str, tuple[float, dict[str, Any]]] = {}
        if mode in ("vector", "hybrid") and vector is None:
            raise ValueError(f"{mode} search needs a query vector")

        def fts_rows() -> list[dict[str, Any]]:
            try:
                return list(
                    tbl.search(text, query_type="fts", fts_columns="text")
                    .where(where, prefilter=True)
                    .select([*HIT_COLUMNS, "_score"])
                    .limit(n)
                    .to_list()
                )
            except ValueError:
                return []  # no FTS index yet (empty table)

        want_fts = mode in ("fts", "hybrid") and bool(text and text.strip())
        # Hybrid: the full-text leg runs beside the vector leg (LanceDB releases the GIL), so a
        # query waits for the slower leg instead of both.
        pending = _legs().submit(fts_rows) if want_fts and mode == "hybrid" else None
        if mode in ("vector", "hybrid"):
            query = (
                tbl.search(vector, vector_column_name="vector")
                .distance_type("cosine")
                .where(where, prefilter=True)
                .select([*HIT_COLUMNS, "_distance"])
                .limit(n)
                .nprobes(self.nprobes)
            )
            if self.refine_factor > 0:
                query = query.refine_factor(self.refine_factor)
            rows = query.to_list()
            dense = self._hits(rows, "_distance", distance=True)
        if want_fts:
            sparse = self._hits(pending.result() if pending else fts_rows(), "_score", distance=False)
        if mode == "hybrid":
            best = fuse_minmax(
                {k: v[0] for k, v in dense.items()},
                {k: v[0] for k, v in sparse.items()},
                dense_weight=dense_weight,
            )[:top_k]
        else:
            ranked = {k: v[0] for k, v in (dense if mode == "vector" else sparse).items()}
            best = sorted(ranked.items(), key=lambda kv: kv[1], reverse=True)[:top_k]
        rows_by_id = {k: v[1] for k, v in {**sparse, **dense}.items()}
        return [to_hit(rows_by_id[cid], score) for cid, score in best]

    # -- maintenance -----------------------------------------------------------------------------
    def optimize(self) -> None:
        """Fold appends into the indexes (FTS, and IVF-PQ past ANN_MIN_ROWS) and compact versions."""
        tbl = self._tbl()
        rows = int(tbl.count_rows())
        if rows == 0:
            return
        self._ensure_fts()
        names = {ix.index_type: ix for ix in tbl.list_indices()}
        if rows >= ANN_MIN_ROWS and not any(t.startswith("IVF") for t in names):
            self.build_vector_index()
        tbl.optimize()

    def build_vector_index(self) -> None:
        from lancedb.index import IvfPq

        tbl = self._tbl()
        rows = int(tbl.count_rows())
        partitions = max(16, min(4096, int(rows**0.5)))
        tbl.create_index(
            "vector",
            config=IvfPq(distance_type="cosine", num_partitions=partitions, num_sub_vectors=self.dim // 8),
            replace=True,
        )


def _legs() -> ThreadPoolExecutor:
    """Threads for the full-text leg of hybrid searches: one pool per process, made in that
    process (threads do not survive a fork, so a pool inherited from a prefork parent is useless)."""
    return _pool_for(os.getpid())


@functools.cache
def _pool_for(pid: int) -> ThreadPoolExecutor:
    del pid  # the cache key
    return ThreadPoolExecutor(max_workers=4, thread_name_prefix="lancedb-fts")
