"""ragfleet/store_health.py: what a worker reports about its store, probed for real (a port where
nothing listens refuses the connection, as a PostgreSQL that is down does)."""

from __future__ import annotations

from pathlib import Path

from pydantic import SecretStr

from ragfleet.settings import Settings
from ragfleet.store_health import probe
from tasks._common import store_retry_delay
from tests.conftest import free_port


def test_a_refusing_postgres_is_down_with_the_reason_and_never_the_url() -> None:
    primary, replica = free_port(), free_port()
    settings = Settings(
        store="postgres",
        pg_url=SecretStr(f"postgresql://ragfleet:s3cret@127.0.0.1:{primary}/ragfleet"),
        pg_read_urls=SecretStr(f"postgresql://ragfleet:s3cret@127.0.0.1:{replica}/ragfleet"),
    )
    states = probe(settings)
    assert [(s.role, s.server, s.up) for s in states] == [
        ("primary", f"127.0.0.1:{primary}", False),
        ("replica", f"127.0.0.1:{replica}", False),
    ]
    for s in states:
        assert s.error is not None and "Connection refused" in s.error
        assert "s3cret" not in s.error


def test_the_embedded_store_reports_its_directory(tmp_path: Path) -> None:
    [state] = probe(Settings(store="lancedb", data_dir=tmp_path))
    assert (state.role, state.server, state.up) == ("embedded", str(tmp_path / "lancedb"), True)


def test_writes_back_off_doubling_to_the_cap() -> None:
    """The cap bounds how long after the primary's return an update waits for its next attempt."""
    assert [store_retry_delay(n, 5.0) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
