"""Fixtures local to the chaos suite: an isolated fleet per test, a durable private Redis, probes.

Every chaos test gets its OWN Settings (fresh key prefix, broker prefix and data dir) and its own
worker processes, so killing them never disturbs the session fleet or another test. The visibility
timeout is lowered to `VISIBILITY_TIMEOUT_S` so that a message whose whole worker was SIGKILLed is
redelivered within the test.

Why replacement workers start only after the visibility timeout: kombu's Redis transport moves an
unacked message back to its queue only in `restore_visible`, which a consumer runs once when it
starts polling and then every `unacked_restore_interval * unacked_restore_throttle` seconds (10 x 10
= 100 s by default). A replacement started after the timeout restores the message at once.
"""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from ragfleet.index_state import IndexState
from ragfleet.jobs import JobStore
from ragfleet.redis_conn import get_redis
from ragfleet.schemas import TERMINAL, JobRecord
from ragfleet.settings import Settings
from ragfleet.stores import build_store
from ragfleet.stores.base import VectorStore
from tests.conftest import RedisServer
from tests.fleet import POOLS, Worker

VISIBILITY_TIMEOUT_S = 12


class FaultSettings(Settings):
    """Settings plus the faults tests/faults/ragfleet_faults.py injects into the workers' query path
    (see there): `settings_env` hands them to the workers as `RAGFLEET_CHAOS_*`. Production Settings
    know nothing of them."""

    chaos_delay_s: float = 0.0
    chaos_kill_marker: str = ""
    chaos_error_marker: str = ""
    chaos_hang_marker: str = ""


def isolated_settings(base: Settings, tmp_path: Path, **update: Any) -> Settings:
    """A copy of the session settings with its own prefixes and data dir (cleanup deletes by prefix),
    and the faults (`chaos_*`) it is given.

    The prefix starts with the session prefix, so the session's final cleanup sweeps it too.
    """
    prefix = f"{base.key_prefix}-chaos-{uuid.uuid4().hex[:6]}"
    data = tmp_path / "data"
    data.mkdir(parents=True, exist_ok=True)
    fields: dict[str, Any] = {
        "key_prefix": prefix,
        "broker_key_prefix": f"{prefix}:q:",
        "data_dir": data,
        "feedback_db_url": f"sqlite:///{data / 'feedback.db'}",
        "visibility_timeout_s": VISIBILITY_TIMEOUT_S,
        "interactive_visibility_timeout_s": VISIBILITY_TIMEOUT_S,
        "log_level": "INFO",
    }
    fields.update(update)
    if any(name.startswith("chaos_") for name in fields):
        return FaultSettings.model_validate({**dict(base), **fields})
    return base.model_copy(update=fields)


def delete_prefix(url: str, prefix: str) -> None:
    client = redis.Redis.from_url(url, decode_responses=True, socket_timeout=2, socket_connect_timeout=2)
    try:
        for key in client.scan_iter(f"{prefix}*", count=1000):
            client.delete(key)
    except redis.RedisError:
        pass  # a private Redis may be dead already: nothing to clean
    finally:
        client.close()


class ChaosFleet:
    """Starts single workers (and replacements) for one Settings; stops every one at teardown."""

    def __init__(self, settings: Settings, log_dir: Path) -> None:
        self.settings = settings
        self.log_dir = log_dir
        self.started: list[Worker] = []

    def spawn(self, pool: str, extra_env: dict[str, str] | None = None, node: str | None = None) -> Worker:
        queues, kind, conc = POOLS[pool]
        w = Worker(pool, queues, kind, conc, self.settings, self.log_dir, extra_env, node).start()
        self.started.append(w)
        return w

    def start(self, *pools: str, extra_env: dict[str, str] | None = None) -> list[Worker]:
        """Start the pools in parallel (the model load is what takes time), then wait for all."""
        workers = [self.spawn(pool, extra_env) for pool in pools]
        for w in workers:
            w.wait_ready()
        return workers

    def logs(self) -> str:
        return "\n".join(f"--- {w.node}\n{w.output()[-2500:]}" for w in self.started)

    def stop(self) -> None:
        """SIGTERM every worker first, then wait for each: their warm shutdowns (5-15 s each on two
        busy cores) overlap instead of adding up."""
        for w in self.started:
            if w.proc is not None and w.proc.poll() is None:
                w.proc.send_signal(signal.SIGTERM)
        for w in self.started:
            w.stop()
            if getattr(w, "fh", None) is not None:
                w.fh.close()
            w.redis.close()


@pytest.fixture
def chaos_fleet_factory(tmp_path: Path) -> Iterator[Callable[[Settings], ChaosFleet]]:
    fleets: list[ChaosFleet] = []

    def make(settings: Settings) -> ChaosFleet:
        log_dir = tmp_path / f"logs-{len(fleets)}"
        log_dir.mkdir()
        f = ChaosFleet(settings, log_dir)
        fleets.append(f)
        return f

    yield make
    for f in fleets:
        f.stop()
        delete_prefix(f.settings.redis_url, f.settings.key_prefix)


def jobs_for(settings: Settings) -> JobStore:
    return JobStore(get_redis(settings), settings)


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def wait_terminal(
    settings: Settings, job_id: str, timeout: float, fleet: ChaosFleet | None = None
) -> JobRecord:
    jobs = jobs_for(settings)
    rec: JobRecord | None = None

    def done() -> bool:
        nonlocal rec
        rec = jobs.get(job_id)
        return rec is not None and rec.status in TERMINAL

    if not wait_until(done, timeout, 0.05):
        logs = fleet.logs() if fleet else ""
        raise AssertionError(f"job {job_id} not terminal after {timeout} s: {rec}\n{logs}")
    assert rec is not None
    return rec


def sleep_until(deadline_monotonic: float) -> None:
    time.sleep(max(0.0, deadline_monotonic - time.monotonic()))


def live_store(settings: Settings) -> VectorStore:
    """The fleet's active collection, opened read-only from the test process (fresh snapshot)."""
    pointer = IndexState(get_redis(settings), settings).read()
    store = build_store(settings, collection=pointer.active)
    store.refresh()
    return store


def seed_documents(settings: Settings, docs: list[dict[str, Any]]) -> None:
    """Index in this process (no indexing worker to start): the query tests only need a corpus."""
    from ragfleet import indexing
    from ragfleet.resources import Resources

    res = Resources(settings)
    result = indexing.index_documents(res, docs, tenant="default")
    assert result.documents_indexed == len(docs), result
    for st in res._stores.values():
        st.close()


class DurableRedisServer(RedisServer):
    """A private redis-server whose append-only file is fsynced on every write (see RedisServer)."""

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        super().__init__(port, data_dir=data_dir)
