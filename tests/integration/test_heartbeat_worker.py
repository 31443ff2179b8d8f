"""A real worker node with RAGFLEET_HEARTBEAT_FILE set keeps the file fresh once warm, and it goes
stale when the node is SIGKILLed: what the Kubernetes liveness probe (infra/k8s) relies on."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from ragfleet.settings import Settings
from tests.fleet import POOLS, Worker
from workers.hooks.heartbeat import INTERVAL_S

pytestmark = [pytest.mark.redis, pytest.mark.workers]


def test_a_warm_node_beats_and_a_killed_one_goes_stale(
    base_settings: Settings, redis_client: object, tmp_path: Path
) -> None:
    beat = tmp_path / "hb" / "heartbeat"
    settings = base_settings.model_copy(update={"heartbeat_file": beat})
    worker = Worker("generation-hb", *POOLS["generation"], settings, tmp_path)  # no model: quick
    try:
        worker.start().wait_ready()
        deadline = time.monotonic() + 10
        while not beat.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert beat.exists(), worker.output()[-2000:]
        first = beat.stat().st_mtime
        time.sleep(INTERVAL_S + 1)
        assert beat.stat().st_mtime > first  # touched again by the running node
        worker.kill()
        dead = beat.stat().st_mtime
        time.sleep(INTERVAL_S + 1)
        assert beat.stat().st_mtime == dead
    finally:
        worker.stop()
