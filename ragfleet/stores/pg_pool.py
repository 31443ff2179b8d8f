"""PostgreSQL store plumbing: one connection pool per process and URL, and the row mapping.

Apart from postgres_store.py so that the store module holds what it does (writes, searches, upkeep)
and this one what must stay true of its connections: a pool is built lazily in the process that uses
it, never inherited across a fork (`pool_for`), and a replica that did not answer is skipped for a while
(`replica_down_until`) instead of costing every search a connect wait.
"""

from __future__ import annotations

import functools
import os
import threading
from typing import Any

import psycopg
from psycopg import Connection, sql
from psycopg_pool import ConnectionPool, PoolTimeout

from ragfleet.stores.base import ChunkRecord, SearchHit, StoreUnavailableError

HIT_COLUMNS = sql.SQL("chunk_id, doc_id, chunk_index, text, title, start_char, end_char, metadata")
RECORD_COLUMNS = sql.SQL(
    "chunk_id, doc_id, tenant, chunk_index, text, title, start_char, end_char, content_hash, "
    "embedding_model, metadata, vector::real[]"
)
# the query's terms ORed (plainto_tsquery ANDs them): like BM25, a chunk with some of the words is a
# candidate, and ts_rank (length-normalised) puts those with more of them first
OR_QUERY = sql.SQL("replace(plainto_tsquery(%s::regconfig, %s)::text, ' & ', ' | ')::tsquery")
REPLICA_RETRY_S = 5.0  # a replica that did not answer is skipped this long (no per-query connect wait)
REPLICA_CONNECT_TIMEOUT_S = 1.0
PROBE_TIMEOUT_S = 1  # connect_timeout of the direct check that tells a dead server from a stuck pool
# a replica's replay position is re-read at most this often per process and replica; a cached position
# is a lower bound (replay only moves forward), so a replica seen caught up is read without a check
POSITION_TTL_S = 0.05
PRIMARY_READ_TIMEOUT_S = 2.0  # a search waits this long for the primary before it is `unavailable`
# a write waits this long for a connection to the primary before its task backs off and retries: an
# indexing process uses one connection at a time, so a longer wait only holds the process while the
# primary is down (the backoff, not this, paces the retries)
PRIMARY_WRITE_TIMEOUT_S = 2.0
# replay position (bytes), lag behind max(received WAL, the index's position) in bytes and in seconds
REPLICA_POSITION = sql.SQL(
    "SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END "
    "- '0/0'::pg_lsn, "
    "CASE WHEN pg_is_in_recovery() THEN COALESCE(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()) "
    "ELSE pg_current_wal_lsn() END - '0/0'::pg_lsn, "
    "COALESCE(extract(epoch FROM now() - pg_last_xact_replay_timestamp()), 0)::float8"
)
# --- one pool per process and URL ----------------------------------------------------------------
pools: dict[tuple[int, str], ConnectionPool] = {}
pools_lock = threading.Lock()
replica_down_until: dict[str, float] = {}
replica_positions: dict[str, tuple[float, int]] = {}  # url -> (monotonic time checked, replayed position)


@functools.lru_cache(maxsize=64)
def server_label(url: str) -> str:
    """host:port of a URL, for metrics and messages: never the URL, which may carry a password.
    Cached: it is called on every replica check, and parsing a conninfo costs ~20 us."""
    from psycopg.conninfo import conninfo_to_dict

    info = conninfo_to_dict(url)
    return f"{info.get('host', 'localhost')}:{info.get('port', 5432)}"


def pool_for(url: str, size: int) -> ConnectionPool:
    """This process's pool for `url`. Keyed by pid: after a fork the child builds its own. The
    parent's pools stay referenced in the child's dict, never closed there, because closing
    them would end the parent's server sessions over the inherited sockets."""
    key = (os.getpid(), url)
    pool = pools.get(key)
    if pool is None:
        with pools_lock:
            pool = pools.get(key)
            if pool is None:
                pool = ConnectionPool(
                    url,
                    min_size=1,
                    max_size=max(1, size),
                    kwargs={"autocommit": True},
                    check=ConnectionPool.check_connection,  # a server restart costs one retry, not an error
                    timeout=10.0,
                    name=f"ragfleet-pg-{os.getpid()}",
                    open=False,
                )
                pool.open(wait=False)
                pools[key] = pool
    return pool


def getconn(url: str, size: int, timeout: float) -> tuple[ConnectionPool, Connection[Any]]:
    """A connection from this process's pool for `url`, and the pool to put it back into.

    psycopg_pool retries a lost server in the background with a doubling delay and no cap: after a
    60 s outage its next attempt may come a minute after the server is back, and every getconn
    until then times out. So on a timeout, when the server does accept a connection of our own
    (`PROBE_TIMEOUT_S`), the pool is replaced by a fresh one (public API only) and asked once more.
    A server that is really down costs that one refused connection, nothing else."""
    pool = pool_for(url, size)
    try:
        return pool, pool.getconn(timeout=timeout)
    except PoolTimeout:
        if not _accepts(url):
            raise
    pool = _replace(url, size, pool)
    return pool, pool.getconn(timeout=timeout)


def _accepts(url: str) -> bool:
    try:
        psycopg.connect(url, connect_timeout=PROBE_TIMEOUT_S).close()
    except psycopg.Error:
        return False
    return True


def _replace(url: str, size: int, stale: ConnectionPool) -> ConnectionPool:
    """A fresh pool for `url` in place of `stale` (unless another thread replaced it already). The
    stale one is closed without waiting: connections lent from it close when they come back."""
    key = (os.getpid(), url)
    with pools_lock:
        if pools.get(key) is stale:
            del pools[key]
    pool = pool_for(url, size)
    if pool is not stale:
        stale.close(timeout=0)
    return pool


def close_pools() -> None:
    """Close this process's pools (tests; a process about to exit)."""
    with pools_lock:
        for (pid, url), pool in list(pools.items()):
            if pid == os.getpid():
                pool.close()
                del pools[(pid, url)]


def primary_unreachable(url: str, exc: BaseException) -> StoreUnavailableError:
    """The error for a primary that refused or dropped a connection: says which server and why,
    never the URL (it may carry a password)."""
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return StoreUnavailableError(
        f"PostgreSQL primary {server_label(url)} is unreachable: {type(exc).__name__}: {reason}"[:500],
        retry_after=REPLICA_RETRY_S,
    )


def vector_literal(vector: list[float]) -> str:
    return "[" + ",".join(repr(float(x)) for x in vector) + "]"


def hit(row: tuple[Any, ...], score: float) -> SearchHit:
    return SearchHit(
        chunk_id=row[0],
        doc_id=row[1],
        chunk_index=int(row[2]),
        text=row[3],
        title=row[4],
        start=int(row[5]),
        end=int(row[6]),
        score=float(score),
        metadata=dict(row[7] or {}),
    )


def record(row: tuple[Any, ...]) -> ChunkRecord:
    return ChunkRecord(
        chunk_id=row[0],
        doc_id=row[1],
        tenant=row[2],
        chunk_index=int(row[3]),
        text=row[4],
        title=row[5],
        start=int(row[6]),
        end=int(row[7]),
        content_hash=row[8],
        embedding_model=row[9],
        metadata=dict(row[10] or {}),
        vector=[float(x) for x in row[11]],
    )
