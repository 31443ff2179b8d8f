"""`ragfleet wait-ready` (scripts/demo.sh waits on it): a pool is ready once one of its nodes has
warmed up, whatever the node's number (the Procfile's supervised retrieval nodes are
retrieval0@host, retrieval1@host)."""

from __future__ import annotations

import subprocess
import uuid

import pytest
import redis

from ragfleet.settings import Settings
from tests.conftest import PYTHON, REPO, settings_env

pytestmark = pytest.mark.redis


def _wait_ready(s: Settings, pools: str, timeout: float) -> subprocess.CompletedProcess[str]:
    cmd = [PYTHON, "-m", "ragfleet.cli", "wait-ready", "--pools", pools, "--timeout", str(timeout)]
    return subprocess.run(cmd, cwd=REPO, env=settings_env(s), capture_output=True, text=True, timeout=60)


def test_wait_ready_counts_numbered_nodes_as_their_pool(
    base_settings: Settings, redis_client: redis.Redis
) -> None:
    prefix = f"{base_settings.key_prefix}-wr{uuid.uuid4().hex[:6]}"
    s = base_settings.model_copy(update={"key_prefix": prefix})
    try:
        redis_client.set(s.key("warm", "retrieval1@host"), "1", ex=60)
        redis_client.set(s.key("warm", "generation@host"), "1", ex=60)
        ok = _wait_ready(s, "retrieval,generation", timeout=10)
        assert ok.returncode == 0, ok.stderr
        assert "pools ready: generation, retrieval" in ok.stderr
        # it looks every 0.5 s: 0.6 s is two looks before it gives up
        missing = _wait_ready(s, "retrieval,generation,indexing", timeout=0.6)
        assert missing.returncode == 6 and "indexing" in missing.stderr, missing.stderr
    finally:
        for key in redis_client.scan_iter(f"{prefix}:*"):
            redis_client.delete(key)
