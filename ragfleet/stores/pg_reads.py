"""Where a PostgreSQL search reads: a replica that has caught up with the index, else the primary.

Read-after-write (issue 18): an answer must never come from an older index than the version in its
cache key. The index pointer carries the primary's WAL position of the writes that made that version
(ragfleet/index_state.py); `read` is given it as `required` and reads a replica only once the
replica's `pg_last_wal_replay_lsn()` has reached it.

What must stay true:
- a replica behind `required` is never read; a cached replay position is a lower bound (replay only
  moves forward), so a replica seen caught up is read without asking again, and one seen behind is
  asked again only after `pg_pool.POSITION_TTL_S` (or when the primary is gone);
- a replica that refuses a connection, or drops one mid-query, is skipped for
  `pg_pool.REPLICA_RETRY_S` and the read moves on: a replica going away costs one slower query;
- a cancelled statement (the statement timeout) is the query's own fault and is raised, not retried
  elsewhere;
- with the primary unreachable and no replica caught up: `StoreUnavailableError`, never a stale read.
  Nothing is promoted here: that is the operator's or the platform's job (docs/scaling.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
from psycopg_pool import PoolTimeout

from ragfleet import metrics
from ragfleet.stores import pg_pool
from ragfleet.stores.base import StoreUnavailableError

T = TypeVar("T")


def read(
    fn: Callable[[psycopg.Connection[Any]], T],
    primary: str,
    replicas: list[str],
    pool_size: int,
    required: int,
) -> T:
    """`fn` on the first replica that answers and has replayed `required`, else on the primary;
    with the primary unreachable, on a replica re-checked now; else `StoreUnavailableError`."""
    behind: list[str] = []
    for url in replicas:
        if pg_pool.replica_down_until.get(url, 0.0) > time.monotonic():
            continue
        known = pg_pool.replica_positions.get(url)
        fresh = known is not None and time.monotonic() - known[0] < pg_pool.POSITION_TTL_S
        if known is not None and fresh and known[1] < required:
            behind.append(url)  # checked a moment ago and behind: no round trip to learn it again
            continue
        got = _on_replica(url, fn, pool_size, required, check=known is None or known[1] < required)
        if got:
            return got[0]
        if pg_pool.replica_down_until.get(url, 0.0) <= time.monotonic():
            behind.append(url)
    try:
        pool, conn = pg_pool.getconn(primary, pool_size, pg_pool.PRIMARY_READ_TIMEOUT_S)
    except (PoolTimeout, psycopg.OperationalError) as exc:
        primary_error: BaseException = exc
    else:
        try:
            return fn(conn)
        except psycopg.errors.QueryCanceled:
            raise
        except psycopg.OperationalError as exc:
            primary_error = exc
        finally:
            pool.putconn(conn)
    for url in behind:  # the primary is gone: a replica that caught up since may still answer
        got = _on_replica(url, fn, pool_size, required, check=True)
        if got:
            return got[0]
    names = ", ".join(pg_pool.server_label(u) for u in replicas) or "none configured"
    raise StoreUnavailableError(
        f"PostgreSQL primary {pg_pool.server_label(primary)} is unreachable "
        f"({type(primary_error).__name__}) and no read replica ({names}) has replayed the index's "
        f"WAL position {required}: the search would read an older index than the one it serves",
        retry_after=pg_pool.REPLICA_RETRY_S,
    ) from primary_error


def _on_replica(
    url: str, fn: Callable[[psycopg.Connection[Any]], T], pool_size: int, required: int, *, check: bool
) -> list[T]:
    """[fn's value] from replica `url`, or [] when it is down or behind `required`. `check`: read
    its replay position first (also done when the cached one is older than `POSITION_TTL_S`: that
    keeps the lag gauges current)."""
    try:
        pool, conn = pg_pool.getconn(url, pool_size, pg_pool.REPLICA_CONNECT_TIMEOUT_S)
    except (PoolTimeout, psycopg.OperationalError):
        pg_pool.replica_down_until[url] = time.monotonic() + pg_pool.REPLICA_RETRY_S
        return []
    try:
        known = pg_pool.replica_positions.get(url)
        stale = known is None or time.monotonic() - known[0] >= pg_pool.POSITION_TTL_S
        if (check or stale) and _replayed(url, conn, required) < required:
            return []
        return [fn(conn)]
    except psycopg.errors.QueryCanceled:
        raise
    except psycopg.OperationalError:
        pg_pool.replica_down_until[url] = time.monotonic() + pg_pool.REPLICA_RETRY_S
        return []
    finally:
        pool.putconn(conn)


def _replayed(url: str, conn: psycopg.Connection[Any], required: int) -> int:
    """The replica's replay position, cached for `POSITION_TTL_S`; sets its lag gauges: bytes behind
    what it has received or what the index needs (whichever is further), and seconds since it last
    replayed a transaction while it is behind."""
    row = conn.execute(pg_pool.REPLICA_POSITION).fetchone()
    assert row is not None
    replayed, received, since = int(row[0]), int(row[1]), float(row[2])
    pg_pool.replica_positions[url] = (time.monotonic(), replayed)
    lag = max(received, required) - replayed
    metrics.set_replica_lag(pg_pool.server_label(url), lag, since if lag > 0 else 0.0)
    return replayed
