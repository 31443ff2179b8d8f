"""Real `celery worker` subprocesses for integration and chaos tests.

Each pool is its own process consuming only its own queue(s), started as the Procfile does, with
the test session's isolated Settings passed through the environment. The Procfile's retrieval pool
is supervisord running solo nodes (infra/supervisor/retrieval.conf): most tests run one plain solo
node (the same worker, without the supervisor), `SupervisedRetrieval` runs the real thing, and
`retrieval-prefork` is the prefork pool the Procfile ran before 2026-12-03 (still supported).
"""

from __future__ import annotations

import contextlib
import os
import platform
import signal
import subprocess
import time
import uuid
from pathlib import Path

import redis

from ragfleet.settings import Settings
from tests.conftest import PYTHON, REPO, settings_env

# the test-only fault plugin (tests/faults/sitecustomize.py): first on every worker's PYTHONPATH
FAULTS_DIR = REPO / "tests" / "faults"


def with_fault_plugin(env: dict[str, str]) -> dict[str, str]:
    return {**env, "PYTHONPATH": os.pathsep.join([str(FAULTS_DIR), env.get("PYTHONPATH", str(REPO))])}


POOLS = {
    "retrieval": ("retrieval", "solo", 1),
    "retrieval-prefork": ("retrieval", "prefork", 1),
    "generation": ("generation", "threads", 4),
    "indexing": ("indexing", "prefork", 1),
    "feedback": ("feedback", "threads", 2),
    "maintenance": ("maintenance", "solo", 1),
    "callbacks": ("callbacks", "threads", 4),
}


def ensure_encoder(settings: Settings) -> None:
    """Export the ONNX encoder here, once per checkout, rather than in a worker's warm-up: a first
    export takes ~25 s (more on a busy machine), which a worker's ready timeout need not absorb."""
    if settings.embedding_runtime == "onnx":
        from ragfleet.embedding import onnx_variant
        from ragfleet.onnx_encoder import ensure_exported
        from ragfleet.tokens import model_dir

        model = settings.embedding_model
        ensure_exported(settings.onnx_root, model_dir(model), onnx_variant(model))


class Worker:
    def __init__(
        self,
        name: str,
        queues: str,
        pool: str,
        concurrency: int,
        settings: Settings,
        log_dir: Path,
        extra_env: dict[str, str] | None = None,
        node: str | None = None,
    ) -> None:
        self.name = name
        # a replacement given its predecessor's node name is that node restarted (workers/inflight.py)
        self.node = node or f"{name}-{uuid.uuid4().hex[:6]}@testhost"
        self.queues = queues
        self.pool = pool
        self.concurrency = concurrency
        self.settings = settings
        self.redis = redis.Redis.from_url(settings.redis_url, decode_responses=True)
        self.env = with_fault_plugin({**settings_env(settings), **(extra_env or {})})
        self.log = log_dir / f"{self.node.split('@')[0]}-{uuid.uuid4().hex[:4]}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Worker:
        ensure_encoder(self.settings)
        cmd = [
            PYTHON,
            "-m",
            "celery",
            "-A",
            "workers.app",
            "worker",
            "-Q",
            self.queues,
            "-n",
            self.node,
            "--pool",
            self.pool,
            "-c",
            str(self.concurrency),
            "-l",
            "INFO",
            "--without-mingle",
            "--without-gossip",
        ]
        self.fh = self.log.open("ab")
        self.proc = subprocess.Popen(
            cmd, cwd=REPO, env=self.env, stdout=self.fh, stderr=subprocess.STDOUT, start_new_session=True
        )
        return self

    def wait_ready(self, timeout: float = 90.0) -> Worker:
        """Ready = every pool process warmed up (the marker key set by workers/hooks/warmup.py)."""
        deadline = time.monotonic() + timeout
        key = self.settings.key("warm", self.node)
        while time.monotonic() < deadline:
            if self.redis.get(key):
                return self
            if self.proc and self.proc.poll() is not None:
                raise RuntimeError(f"worker {self.node} exited:\n{self.output()[-3000:]}")
            time.sleep(0.1)
        raise TimeoutError(f"worker {self.node} not ready:\n{self.log.read_text(errors='replace')[-3000:]}")

    def children(self) -> list[int]:
        if not self.proc:
            return []
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True)
        return [int(x) for x in out.stdout.split()]

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Kill the whole worker (main process and pool children): what an OOM kill or a crash does."""
        if self.proc and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            self.proc.wait(15)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()
        self.kill()

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class Fleet:
    def __init__(self, settings: Settings, log_dir: Path) -> None:
        self.settings = settings
        self.log_dir = log_dir
        self.workers: dict[str, Worker] = {}

    def start(self, *pools: str, extra_env: dict[str, str] | None = None, wait: bool = True) -> Fleet:
        started = []
        for pool in pools:
            queues, kind, conc = POOLS[pool]
            w = Worker(pool, queues, kind, conc, self.settings, self.log_dir, extra_env).start()
            self.workers[pool] = w
            started.append(w)
        if wait:
            for w in started:
                w.wait_ready()
        return self

    def stop(self) -> None:
        for w in self.workers.values():
            w.stop()


class SupervisedRetrieval:
    """The Procfile's `retrieval` line: supervisord with infra/supervisor/retrieval.conf, running
    `nodes` solo nodes named retrieval<n>@<host> and restarting any that exits."""

    def __init__(
        self, settings: Settings, log_dir: Path, nodes: int = 1, extra_env: dict[str, str] | None = None
    ) -> None:
        self.settings = settings
        self.nodes = [f"retrieval{i}@{platform.node()}" for i in range(nodes)]
        self.redis = redis.Redis.from_url(settings.redis_url, decode_responses=True)
        self.log = log_dir / f"supervised-retrieval-{uuid.uuid4().hex[:4]}.log"
        self.env = with_fault_plugin(
            {
                **settings_env(settings),
                **(extra_env or {}),
                "RAGFLEET_RETRIEVAL_NODES": str(nodes),
                "RAGFLEET_SUPERVISOR_PIDFILE": str(log_dir / "retrieval-supervisord.pid"),
                "PATH": os.pathsep.join([str(Path(PYTHON).parent), os.environ.get("PATH", "")]),
            }
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> SupervisedRetrieval:
        conf = REPO / "infra" / "supervisor" / "retrieval.conf"
        ensure_encoder(self.settings)
        self.fh = self.log.open("ab")
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "supervisor.supervisord", "-c", str(conf)],
            cwd=REPO, env=self.env, stdout=self.fh, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        return self

    def starts(self, node: str) -> int:
        """How many times `node` has come up (Celery's "<node> ready." line): 2 after one restart."""
        return self.output().count(f"{node} ready.")

    def wait_started(self, node: str, times: int = 1, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while self.starts(node) < times:
            if self.proc and self.proc.poll() is not None:
                raise RuntimeError(f"supervisord exited:\n{self.output()[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{node} not up {times} times:\n{self.output()[-3000:]}")
            time.sleep(0.1)
        while not self.redis.get(self.settings.key("warm", node)):
            time.sleep(0.1)

    def stop(self) -> None:
        """SIGTERM: supervisord stops its nodes (Celery's warm shutdown), then exits."""
        nodes: list[int] = []
        if self.proc and self.proc.poll() is None:
            out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True)
            nodes = [int(x) for x in out.stdout.split()]  # each in a process group of its own
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(15)
        for pid in nodes:  # a node a killed supervisord left behind
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if getattr(self, "fh", None) is not None:
            self.fh.close()
        self.redis.close()

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""
