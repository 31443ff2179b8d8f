"""The shared scale-out store: PostgreSQL with pgvector (`RAGFLEET_STORE=postgres`).

One chunks table per collection (index version); pg_schema.py says why and who owns the DDL.
Writes go to the primary (`pg_url`), each `replace_documents` call in one transaction; searches
go to the first read replica (`pg_read_urls`) that answers and has caught up, else the primary
(pg_reads.py). Everything else (document hashes, the embedding cache, counts, iteration for a
reindex) reads the primary: an indexing worker must see its own writes.

What must stay true:
- one psycopg_pool `ConnectionPool` per process and URL, built lazily in the process that uses
  it (`_pool`): a prefork child must never use a pool, or a socket, inherited from its parent;
- read-after-write: a search never reads a replica that has not replayed the WAL position of the
  index version it serves. The writer records the primary's position after its commit in the index
  pointer (`wal_position`, ragfleet/index_state.py); `Resources.live_store` hands the pointer's
  position to the store (`read_after`, only ever raised); `_read` reads a replica only once its
  `pg_last_wal_replay_lsn()` has reached it, else the primary, and with the primary unreachable too
  raises `StoreUnavailableError` (the job ends `unavailable` with `retry_after`). A replica's position
  is re-read at most every `pg_pool.POSITION_TTL_S` per process (one round trip per replica per
  50 ms, not per search); each check sets the replica-lag gauges. Nothing is ever promoted here:
  promotion is the operator's or the platform's job (docs/scaling.md);
- searches run with `statement_timeout` (`SearchTimeoutError` when it fires) and with
  `hnsw.iterative_scan = relaxed_order` (every search is filtered, by tenant at least): the HNSW
  scan keeps going until k rows pass the filter, so a tenant with 1 % of the rows still gets k
  results (up to `hnsw.max_scan_tuples` visited, 20,000 by default; the order is relaxed, so the
  legs' rows are sorted here by score).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import psycopg
from psycopg import sql

from ragfleet.schemas import MetadataValue, SearchMode
from ragfleet.stores import pg_pool, pg_reads, pg_schema
from ragfleet.stores.base import ChunkRecord, SearchHit, tags_for
from ragfleet.stores.fusion import fuse_minmax

T = TypeVar("T")


class SearchTimeoutError(TimeoutError):
    """A search ran past `pg_statement_timeout_ms` and PostgreSQL cancelled it."""


class PostgresStore:
    stems = True  # the tsvector column uses the English stemming configuration

    def __init__(
        self,
        url: str,
        name: str,
        *,
        dim: int,
        read_urls: list[str] | None = None,
        statement_timeout_ms: int = 2_000,
        pool_size: int = 4,
    ) -> None:
        self.url = url
        self.read_urls = [u for u in (read_urls or []) if u]
        self.name = name
        self.dim = dim
        self.statement_timeout_ms = statement_timeout_ms
        self.pool_size = pool_size
        self.table = pg_schema.table_name_for(name)
        self._t = sql.Identifier(self.table)
        self._ready: tuple[int, bool] | None = None  # (pid, ensured)
        self._lock = threading.Lock()
        self._min_lsn = 0  # the WAL position a server must have replayed to be read (`read_after`)
        self.last_read_port: int | None = None  # inet_server_port() of the last search (tests, debugging)

    # -- connections -----------------------------------------------------------------------------
    @contextmanager
    def _primary(self) -> Iterator[psycopg.Connection[Any]]:
        """A connection to the primary. A primary that refuses connections, or drops one, is
        `StoreUnavailableError`: writes wait and retry on it (tasks/_common.py), a search's job ends
        `unavailable`; a cancelled statement (`QueryCanceled`) is the statement's own fault."""
        try:
            pool, conn = pg_pool.getconn(self.url, self.pool_size, pg_pool.PRIMARY_WRITE_TIMEOUT_S)
            try:
                with conn:  # as ConnectionPool.connection(): end any transaction, keep it open
                    yield conn
            finally:
                pool.putconn(conn)
        except psycopg.errors.QueryCanceled:
            raise
        except psycopg.OperationalError as exc:  # PoolTimeout is one too
            raise pg_pool.primary_unreachable(self.url, exc) from exc

    def _read(self, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        """`fn` where a search may read: a caught-up replica, else the primary (pg_reads.py)."""
        return pg_reads.read(fn, self.url, self.read_urls, self.pool_size, self._min_lsn)

    # -- read-after-write --------------------------------------------------------------------------
    def wal_position(self) -> int:
        """The primary's current WAL position, in bytes: after a write's commit it covers that write
        (a later position only makes readers stricter)."""
        with self._primary() as conn:
            row = conn.execute("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint").fetchone()
        return int(row[0]) if row else 0

    def read_after(self, position: int) -> None:
        """Searches from now on read only a server that has replayed `position`. Only ever raised:
        threads sharing this store may hand in the positions of different versions in any order,
        and a lower one must not let a reader of a newer version onto a replica behind it."""
        with self._lock:
            if position > self._min_lsn:
                self._min_lsn = position

    def _ensured(self) -> None:
        """Migrate and create this collection's table once per process (LanceDB's `_tbl()` does the
        same: a fresh handle on a missing collection reads as empty, not as an error)."""
        pid = os.getpid()
        if self._ready == (pid, True):
            return
        with self._lock:
            if self._ready != (pid, True):
                self.ensure()

    # -- lifecycle -------------------------------------------------------------------------------
    def ensure(self) -> None:
        try:
            pg_schema.ensure_migrated(self.url, os.getpid())
        except Exception as exc:  # SQLAlchemy's OperationalError wrapping psycopg's
            if isinstance(getattr(exc, "orig", exc), psycopg.OperationalError):
                raise pg_pool.primary_unreachable(self.url, exc) from exc
            raise
        with self._primary() as conn, conn.transaction():
            pg_schema.create_collection_table(conn, self.name, self.dim)
        self._ready = (os.getpid(), True)

    def exists(self) -> bool:
        with self._primary() as conn:
            row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (self.table,)).fetchone()
        return bool(row and row[0])

    def collections(self) -> list[str]:
        """Every collection (index version) registered in this database, for the reindex's cleanup."""
        self.ensure()
        with self._primary() as conn:
            return pg_schema.collections(conn)

    def refresh(self) -> None:
        """Reads are always fresh on the primary; a replica's lag is handled by the caller (see
        the module docstring)."""

    def close(self) -> None:
        """The pools are the process's, shared by every collection's store: they stay open."""

    def drop(self) -> None:
        pg_schema.ensure_migrated(self.url, os.getpid())
        with self._primary() as conn, conn.transaction():
            pg_schema.drop_collection_table(conn, self.name)
        self._ready = None

    # -- writes ----------------------------------------------------------------------------------
    def replace_documents(self, tenant: str, docs: dict[str, list[ChunkRecord]]) -> int:
        """One transaction: the documents' other chunks go, the given ones are upserted; on any
        error the transaction rolls back and the old chunks stay. A transaction advisory lock per
        document (taken in doc-id order, so two writers cannot deadlock) makes concurrent
        replacements of one document apply one after the other instead of interleaving."""
        if not docs:
            return 0
        self._ensured()
        records = [r for rows in docs.values() for r in rows]
        doc_ids = sorted(docs)
        keep = [r.chunk_id for r in records]
        upsert = sql.SQL(
            "INSERT INTO {t} (chunk_id, tenant, doc_id, chunk_index, text, title, start_char, end_char, "
            "content_hash, embedding_model, metadata, tags, vector) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb, %s, %s::vector) "
            "ON CONFLICT (chunk_id) DO UPDATE SET tenant = EXCLUDED.tenant, doc_id = EXCLUDED.doc_id, "
            "chunk_index = EXCLUDED.chunk_index, text = EXCLUDED.text, title = EXCLUDED.title, "
            "start_char = EXCLUDED.start_char, end_char = EXCLUDED.end_char, "
            "content_hash = EXCLUDED.content_hash, embedding_model = EXCLUDED.embedding_model, "
            "metadata = EXCLUDED.metadata, tags = EXCLUDED.tags, vector = EXCLUDED.vector"
        ).format(t=self._t)
        with self._primary() as conn, conn.transaction():
            conn.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended(%s || chr(31) || %s || chr(31) || d, 0)) "
                "FROM unnest(%s::text[]) AS d ORDER BY d",
                (self.table, tenant, doc_ids),
            )
            conn.execute(
                sql.SQL(
                    "DELETE FROM {t} WHERE tenant = %s AND doc_id = ANY(%s) AND NOT (chunk_id = ANY(%s))"
                ).format(t=self._t),
                (tenant, doc_ids, keep),
            )
            if records:
                with conn.cursor() as cur:
                    cur.executemany(
                        upsert,
                        [
                            (
                                r.chunk_id,
                                tenant,
                                r.doc_id,
                                r.chunk_index,
                                r.text,
                                r.title,
                                r.start,
                                r.end,
                                r.content_hash,
                                r.embedding_model,
                                json.dumps(r.metadata, sort_keys=True),
                                tags_for(r.metadata),
                                pg_pool.vector_literal(r.vector),
                            )
                            for r in records
                        ],
                    )
        return len(records)

    def delete_document(self, tenant: str, doc_id: str) -> int:
        self._ensured()
        with self._primary() as conn:
            cur = conn.execute(
                sql.SQL("DELETE FROM {t} WHERE tenant = %s AND doc_id = %s").format(t=self._t),
                (tenant, doc_id),
            )
            return int(cur.rowcount)

    # -- reads on the primary ----------------------------------------------------------------------
    def document_hashes(self, tenant: str, doc_ids: list[str]) -> dict[str, dict[int, str]]:
        out: dict[str, dict[int, str]] = {}
        if not doc_ids:
            return out
        self._ensured()
        with self._primary() as conn:
            rows = conn.execute(
                sql.SQL(
                    "SELECT doc_id, chunk_index, content_hash FROM {t} WHERE tenant = %s AND doc_id = ANY(%s)"
                ).format(t=self._t),
                (tenant, list(doc_ids)),
            ).fetchall()
        for d, idx, h in rows:
            out.setdefault(d, {})[int(idx)] = h
        return out

    def vectors_by_hash(self, hashes: list[str], embedding_model: str) -> dict[str, list[float]]:
        if not hashes:
            return {}
        self._ensured()
        with self._primary() as conn:
            rows = conn.execute(
                sql.SQL(
                    "SELECT DISTINCT ON (content_hash) content_hash, vector::real[] FROM {t} "
                    "WHERE embedding_model = %s AND content_hash = ANY(%s)"
                ).format(t=self._t),
                (embedding_model, sorted(set(hashes))),
            ).fetchall()
        return {h: [float(x) for x in v] for h, v in rows}

    def count(self, tenant: str | None = None) -> int:
        self._ensured()
        with self._primary() as conn:
            if tenant is None:
                row = conn.execute(sql.SQL("SELECT count(*) FROM {t}").format(t=self._t)).fetchone()
            else:
                row = conn.execute(
                    sql.SQL("SELECT count(*) FROM {t} WHERE tenant = %s").format(t=self._t), (tenant,)
                ).fetchone()
        return int(row[0]) if row else 0

    def iter_chunks(self, batch_size: int = 1_000) -> Iterator[list[ChunkRecord]]:
        """Keyset pages by chunk_id: no transaction or connection is held between batches."""
        self._ensured()
        query = sql.SQL("SELECT {cols} FROM {t} WHERE chunk_id > %s ORDER BY chunk_id LIMIT %s").format(
            cols=pg_pool.RECORD_COLUMNS, t=self._t
        )
        last = ""
        while True:
            with self._primary() as conn:
                rows = conn.execute(query, (last, batch_size)).fetchall()
            if not rows:
                return
            yield [pg_pool.record(r) for r in rows]
            last = rows[-1][0]

    # -- search ----------------------------------------------------------------------------------
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
        if mode in ("vector", "hybrid") and vector is None:
            raise ValueError(f"{mode} search needs a query vector")
        self._ensured()
        n = max(top_k, candidates) if mode == "hybrid" else top_k
        tags = tags_for(filters or {})
        where = sql.SQL("tenant = %s") + (sql.SQL(" AND tags @> %s::text[]") if tags else sql.SQL(""))
        where_params: list[Any] = [tenant, *([tags] if tags else [])]
        want_fts = mode in ("fts", "hybrid") and bool(text and text.strip())

        def run(conn: psycopg.Connection[Any]) -> tuple[list[Any], list[Any]]:
            dense_rows: list[Any] = []
            sparse_rows: list[Any] = []
            with conn.transaction():
                row = conn.execute(
                    "SELECT set_config('statement_timeout', %s, true), "
                    "set_config('hnsw.iterative_scan', 'relaxed_order', true), "
                    "set_config('hnsw.ef_search', %s, true), inet_server_port()",
                    (str(self.statement_timeout_ms), str(min(1_000, max(40, n)))),
                ).fetchone()
                self.last_read_port = int(row[3]) if row and row[3] is not None else None
                if vector is not None and mode in ("vector", "hybrid"):
                    dense_rows = conn.execute(
                        sql.SQL(
                            "SELECT {cols}, vector <=> %s::vector AS distance FROM {t} "
                            "WHERE {where} ORDER BY distance LIMIT %s"
                        ).format(cols=pg_pool.HIT_COLUMNS, t=self._t, where=where),
                        [pg_pool.vector_literal(vector), *where_params, n],
                    ).fetchall()
                if want_fts:
                    sparse_rows = conn.execute(
                        sql.SQL(
                            "SELECT {cols}, ts_rank(tsv, q, 1) AS rank "
                            "FROM {t}, (SELECT {query} AS q) AS query "
                            "WHERE tsv @@ q AND {where} ORDER BY rank DESC, chunk_id LIMIT %s"
                        ).format(cols=pg_pool.HIT_COLUMNS, t=self._t, query=pg_pool.OR_QUERY, where=where),
                        [pg_schema.FTS_CONFIG, text, *where_params, n],
                    ).fetchall()
            return dense_rows, sparse_rows

        try:
            dense_rows, sparse_rows = self._read(run)
        except psycopg.errors.QueryCanceled as exc:
            raise SearchTimeoutError(
                f"search in collection {self.name!r} ran past the statement timeout "
                f"({self.statement_timeout_ms} ms, RAGFLEET_PG_STATEMENT_TIMEOUT_MS) and was cancelled"
            ) from exc
        dense = {r[0]: (1.0 - float(r[8]), r) for r in dense_rows}
        sparse = {r[0]: (float(r[8]), r) for r in sparse_rows}
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
        return [pg_pool.hit(rows_by_id[cid], score) for cid, score in best]

    # -- upkeep ----------------------------------------------------------------------------------
    def optimize(self) -> None:
        """VACUUM ANALYZE after bulk writes: replacements leave dead tuples behind, and the planner
        needs fresh statistics to choose between the HNSW index and a tenant's btree. HNSW and
        GIN are maintained on every insert, so nothing else needs building."""
        self._ensured()
        with self._primary() as conn:
            conn.execute(sql.SQL("VACUUM (ANALYZE) {t}").format(t=self._t))

    def reindex(self) -> None:
        """Rebuild the collection's indexes without blocking reads or writes (store upkeep)."""
        self._ensured()
        with self._primary() as conn:
            conn.execute(sql.SQL("REINDEX TABLE CONCURRENTLY {t}").format(t=self._t))
