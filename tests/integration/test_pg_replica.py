"""Read-after-write on a real streaming replica (issue 18): the session's PostgreSQL 18 + pgvector
(`pg_server`) and a replica made from it with `pg_basebackup -R` (`pg_replica`, tests/pg.py).

The rule under test (ragfleet/stores/postgres_store.py): the index pointer records the primary's WAL
position of the write that moved it; a search reads a replica only once that replica has replayed
up to the position, else the primary; with the primary down and no replica caught up it raises
`StoreUnavailableError`. Replay is paused on the replica (`pg_wal_replay_pause()`) so that the replica
really is behind when it must be, and every test resumes it before it ends.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import psycopg
import pytest

pytestmark = pytest.mark.postgres


def _wait_replayed(replica_url: str, primary_url: str, timeout: float = 15) -> None:
    """Until the replica has replayed everything the primary has written so far."""
    with psycopg.connect(primary_url, autocommit=True) as p:
        row = p.execute("SELECT pg_current_wal_lsn()").fetchone()
        assert row is not None
        target = row[0]
    deadline = time.monotonic() + timeout
    with psycopg.connect(replica_url, autocommit=True) as r:
        while True:
            row = r.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (target,)).fetchone()
            if row and row[0]:
                return
            assert time.monotonic() < deadline, "the replica did not catch up"
            time.sleep(0.02)


def test_the_replica_streams_the_primarys_writes_and_is_in_recovery(pg_server: Any, pg_replica: Any) -> None:
    table = f"rep_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_server.url, autocommit=True) as p:
        p.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, note text)")
        p.execute(f"INSERT INTO {table} VALUES (1, 'written on the primary')")
    try:
        _wait_replayed(pg_replica.url, pg_server.url)
        with psycopg.connect(pg_replica.url) as r:
            assert r.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
            assert r.execute(f"SELECT note FROM {table}").fetchall() == [("written on the primary",)]
            with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
                r.execute(f"INSERT INTO {table} VALUES (2, 'a replica takes no writes')")
        with psycopg.connect(pg_server.url) as p:
            assert p.execute("SELECT pg_is_in_recovery()").fetchone() == (False,)
    finally:
        with psycopg.connect(pg_server.url, autocommit=True) as p:
            p.execute(f"DROP TABLE {table}")
