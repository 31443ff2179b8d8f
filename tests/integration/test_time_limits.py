"""Time limits in the pools Celery enforces none in (workers/time_limits.py), with real `celery
worker` processes of the project's app: a threads pool whose task sleeps past its hard limit has its
job failed with `timeout` while the call goes on, and keeps serving; a solo pool's task stuck in a
Python loop gets `SoftTimeLimitExceeded` at its soft limit."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from ragfleet.jobs import JobStore
from ragfleet.producer import client_app
from ragfleet.settings import Settings
from tests.conftest import REPO, settings_env

pytestmark = [pytest.mark.redis, pytest.mark.workers]

TASKS = textwrap.dedent(
    """
    import time

    from ragfleet.resources import get_resources
    from workers.app import app
    from workers.base import RagfleetTask


    @app.task(name="test.tl.sleepy", bind=True, base=RagfleetTask, time_limit=2, soft_time_limit=1)
    def sleepy(self, *, payload):
        time.sleep(float(payload["sleep"]))  # a call blocked in C: nothing can interrupt it
        res = get_resources()
        res.jobs.finish(payload["job_id"], {"answer": "late"})  # atomic: a no-op on a terminal job
        res.redis.set(res.settings.key("tl-done", payload["job_id"]), "1", ex=600)


    @app.task(name="test.tl.hang", bind=True, base=RagfleetTask, time_limit=2, soft_time_limit=1)
    def hang(self, *, payload):
        import signal

        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})  # where the soft limit cannot reach
        time.sleep(float(payload["sleep"]))


    @app.task(name="test.tl.spin", bind=True, base=RagfleetTask, time_limit=20, soft_time_limit=1)
    def spin(self, *, payload):
        t0 = time.monotonic()
        while time.monotonic() - t0 < 30:  # stuck in Python
            pass
    """
)


def _worker(
    settings: Settings, tmp: Path, pool: str, queue: str, *, node: str = "", **env_extra: str
) -> subprocess.Popen[bytes]:
    (tmp / "tl_tasks.py").write_text(TASKS)
    env = {**settings_env(settings), **env_extra}
    env["PYTHONPATH"] = f"{tmp}:{REPO}"
    log = (tmp / f"{pool}.log").open("ab")
    return subprocess.Popen(
        [
            sys.executable, "-m", "celery", "-A", "tl_tasks", "worker", "-Q", queue, "--pool", pool,
            "-c", "2", "-n", node or f"tl-{pool}-{uuid.uuid4().hex[:6]}@test", "-l", "INFO",
            "--without-mingle", "--without-gossip",
        ],
        cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip


@pytest.fixture
def tl(base_settings: Settings, tmp_path: Path) -> Iterator[tuple[Settings, Path]]:
    prefix = f"{base_settings.key_prefix}-tl{uuid.uuid4().hex[:8]}"
    s = base_settings.model_copy(update={"key_prefix": prefix, "broker_key_prefix": f"{prefix}:q:"})
    yield s, tmp_path
    r = redis.Redis.from_url(s.redis_url)
    for k in r.scan_iter(f"{prefix}*"):
        r.delete(k)


def _send(s: Settings, task: str, queue: str, **payload: object) -> str:
    jobs = JobStore(redis.Redis.from_url(s.redis_url, decode_responses=True), s)
    job_id = uuid.uuid4().hex
    jobs.create(job_id, "query")
    client_app(s).send_task(task, kwargs={"payload": {"job_id": job_id, **payload}}, queue=queue, expires=60)
    return job_id


def _wait_terminal(s: Settings, job_id: str, timeout: float) -> tuple[dict[str, str], float]:
    r = redis.Redis.from_url(s.redis_url, decode_responses=True)
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        rec: dict[str, str] = r.hgetall(f"{s.key_prefix}:job:{job_id}")  # type: ignore[assignment]
        if rec.get("status") in ("failed", "done", "cancelled"):
            return rec, time.monotonic() - t0
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} not terminal after {timeout} s: {rec}")


def test_threads_pool_hard_limit_fails_the_job_and_the_pool_keeps_serving(tl: tuple[Settings, Path]) -> None:
    s, tmp = tl
    r = redis.Redis.from_url(s.redis_url, decode_responses=True)
    jobs = JobStore(r, s)
    worker = _worker(s, tmp, "threads", "tl-threads")
    try:
        stuck = _send(s, "test.tl.sleepy", "tl-threads", sleep=8)
        rec, _ = _wait_terminal(s, stuck, timeout=60)  # includes the worker's start
        assert rec["status"] == "failed", rec
        assert '"timeout"' in rec["error"] and "hard time limit (2 s)" in rec["error"], rec
        assert not r.exists(s.key("tl-done", stuck))  # ended by the watchdog while the call sleeps on
        quick = _send(s, "test.tl.sleepy", "tl-threads", sleep=0)
        rec, _ = _wait_terminal(s, quick, timeout=20)  # the pool's other thread serves meanwhile
        assert rec["status"] == "done", rec
        t0 = time.monotonic()
        while not r.exists(s.key("tl-done", stuck)):  # the stuck call returns at last...
            assert time.monotonic() - t0 < 20, (tmp / "threads.log").read_text()[-3000:]
            time.sleep(0.1)
        late = jobs.get(stuck)
        assert late is not None and late.status.value == "failed" and late.result is None  # ...to no effect
    finally:
        worker.terminate()
        worker.wait(30)


def test_solo_pool_soft_limit_interrupts_a_stuck_python_loop(tl: tuple[Settings, Path]) -> None:
    s, tmp = tl
    worker = _worker(s, tmp, "solo", "tl-solo")
    try:
        first = _send(s, "test.tl.spin", "tl-solo")
        rec, _ = _wait_terminal(s, first, timeout=60)
        assert rec["status"] == "failed" and '"timeout"' in rec["error"], rec
        assert "soft time limit" in rec["error"], rec
        # the worker goes on: the next stuck task is stopped at its soft limit too, ~1 s after it starts
        second = _send(s, "test.tl.spin", "tl-solo")
        rec, waited = _wait_terminal(s, second, timeout=15)
        assert rec["status"] == "failed" and "soft time limit" in rec["error"], rec
        assert waited < 10, waited  # far below the 20 s hard limit and the 30 s loop
    finally:
        worker.terminate()
        worker.wait(30)


def test_supervised_solo_node_exits_past_the_hard_limit_leaving_its_message_to_its_restart(
    tl: tuple[Settings, Path],
) -> None:
    """With `exit_on_hard_time_limit` (what infra/supervisor/retrieval.conf sets), a solo node whose
    only thread is stuck past the hard limit fails the job, then exits, as a prefork child is killed:
    its supervisor starts a fresh node. The stuck message is still unacknowledged and recorded under
    the node's name, where the restarted node finds it (workers/inflight.py)."""
    s, tmp = tl
    r = redis.Redis.from_url(s.redis_url, decode_responses=True)
    node = f"tl-solo-exit-{uuid.uuid4().hex[:6]}@test"
    worker = _worker(s, tmp, "solo", "tl-solo-exit", node=node, RAGFLEET_EXIT_ON_HARD_TIME_LIMIT="true")
    try:
        stuck = _send(s, "test.tl.hang", "tl-solo-exit", sleep=30)
        rec, _ = _wait_terminal(s, stuck, timeout=60)
        assert rec["status"] == "failed" and "test.tl.hang exceeded its hard time limit (2 s)" in rec["error"]
        code = worker.wait(10)  # far before the 30 s call could return
        assert code == 70, code
        assert "exiting: this solo node's only thread is stuck" in (tmp / "solo.log").read_text()
        (tag,) = r.smembers(f"{s.broker_key_prefix}ragfleet.inflight.{node}")
        assert r.hexists(f"{s.broker_key_prefix}unacked", tag)  # not lost: the restart requeues it
    finally:
        if worker.poll() is None:
            worker.terminate()
            worker.wait(30)
