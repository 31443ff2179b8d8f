"""ragfleet.metrics against real processes, a real Redis broker and a real Celery worker.

- multiprocess: separate Python processes write into one directory; a third serves it over HTTP the way
  a Celery main process does, and the scrape shows every writer's contribution.
- queue depth: messages published by kombu itself (all priorities) are counted with LLEN on the
  right keys, under an isolated `global_keyprefix`.
- Celery signals: an in-process worker runs a two-stage job; task metrics are recorded and the request
  id bound at the "API" (this test) reaches both stages' log lines.
"""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from celery import Celery
from celery.contrib.testing.worker import start_worker
from prometheus_client.parser import text_string_to_metric_families

from ragfleet import logs, metrics
from ragfleet.names import Priority, Queue, TaskName
from ragfleet.producer import enqueue
from ragfleet.settings import Settings
from tests.conftest import REPO, free_port
from workers.hooks import metrics as metrics_hook
from workers.hooks import request_id as request_id_hook

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != metrics.MULTIPROC_ENV}
    env["PYTHONPATH"] = str(REPO)
    return env


def run_py(code: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(),
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


WRITER = """
import os, sys
from ragfleet import metrics
metrics.configure_multiproc(sys.argv[1])
n = int(sys.argv[2])
for _ in range(n):
    metrics.observe_request("/v1/query", 202, 0.004)
    metrics.observe_stage("total", 0.3)
    metrics.cache_event("l1", hit=True)
metrics.record_usage("openai", prompt_tokens=100 * n, completion_tokens=10 * n, cost_usd=0.5 * n)
metrics.set_breaker_state("openai", sys.argv[3])
metrics.beat_heartbeat("heartbeat", interval_s=300)
metrics._gauge("ragfleet_tasks_in_progress").labels(task="ragfleet.query").inc()
print(os.getpid())
"""

SERVER = """
import sys, time
from ragfleet import metrics
metrics.configure_multiproc(sys.argv[1])
server = metrics.start_worker_metrics_server(0)
print(server.port, flush=True)
time.sleep(60)
"""

RENDER = """
import sys
from ragfleet import metrics
metrics.configure_multiproc(sys.argv[1])
for pid in sys.argv[2:]:
    metrics.mark_dead(int(pid))
sys.stdout.write(metrics.render_latest()[0].decode())
"""


@pytest.fixture
def scrape_server(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(SERVER), str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        env=_env(),
        cwd=REPO,
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        yield tmp_path, f"http://127.0.0.1:{port}/metrics"
    finally:
        proc.kill()
        proc.wait(10)


def test_a_worker_metrics_server_exposes_what_every_child_process_wrote(
    scrape_server: tuple[Path, str],
) -> None:
    directory, url = scrape_server
    run_py(WRITER, str(directory), "3", "half-open")
    time.sleep(0.01)  # breaker gauge is "mostrecent": the second writer must be later
    run_py(WRITER, str(directory), "4", "open")

    response = httpx.get(url, timeout=5)
    assert response.status_code == 200
    got = parse(response.text)

    assert sample(got, "ragfleet_http_requests_total", route="/v1/query", status="202") == 7
    assert sample(got, "ragfleet_stage_duration_seconds_count", stage="total") == 7
    assert sample(got, "ragfleet_stage_duration_seconds_bucket", stage="total", le="0.25") == 0
    assert sample(got, "ragfleet_stage_duration_seconds_bucket", stage="total", le="0.35") == 7
    assert sample(got, "ragfleet_cache_requests_total", layer="l1", result="hit") == 7
    assert sample(got, "ragfleet_llm_tokens_total", provider="openai", kind="prompt") == 700
    assert sample(got, "ragfleet_llm_cost_usd_total", provider="openai") == pytest.approx(3.5)
    assert sample(got, "ragfleet_breaker_state", provider="openai") == 2  # the later writer wins
    assert sample(got, "ragfleet_beat_last_run_timestamp_seconds", schedule="heartbeat") == pytest.approx(
        time.time(), abs=60
    )


def test_live_gauges_of_a_dead_process_disappear_after_mark_dead(tmp_path: Path) -> None:
    first = run_py(WRITER, str(tmp_path), "1", "closed").strip()
    second = run_py(WRITER, str(tmp_path), "1", "closed").strip()

    both = parse(run_py(RENDER, str(tmp_path)))
    assert sample(both, "ragfleet_tasks_in_progress", task="ragfleet.query") == 2

    one = parse(run_py(RENDER, str(tmp_path), first))
    assert sample(one, "ragfleet_tasks_in_progress", task="ragfleet.query") == 1
    # counters of the dead process stay: they are history, not state
    assert sample(one, "ragfleet_http_requests_total", route="/v1/query", status="202") == 2
    assert second != first


def test_configure_multiproc_wipe_starts_from_zero(tmp_path: Path) -> None:
    run_py(WRITER, str(tmp_path), "2", "closed")
    assert list(tmp_path.glob("*.db"))
    run_py("import sys\nfrom ragfleet import metrics\nmetrics.configure_multiproc(sys.argv[1], wipe=True)\n",
           str(tmp_path))  # fmt: skip
    assert not list(tmp_path.glob("*.db"))


# --- queue depth ------------------------------------------------------------------------------------


@pytest.fixture
def broker_settings(base_settings: Settings) -> Settings:
    """A broker key prefix of our own (under the session prefix, so the session cleanup removes it)."""
    tag = uuid.uuid4().hex[:6]
    return base_settings.model_copy(update={"broker_key_prefix": f"{base_settings.key_prefix}:qd{tag}:"})


@pytest.mark.redis
def test_queue_depth_counts_messages_kombu_published_at_every_priority(
    broker_settings: Settings, redis_client: redis.Redis
) -> None:
    for priority in (Priority.INTERACTIVE, Priority.DEFAULT, Priority.BACKGROUND):
        enqueue(TaskName.QUERY, {"question": "q"}, settings=broker_settings, priority=priority)
    enqueue(TaskName.INDEX_DOCUMENTS, {"documents": [{"id": "a", "text": "t"}]}, settings=broker_settings,
            priority=Priority.BATCH)  # fmt: skip

    prefix = broker_settings.broker_key_prefix
    keys = set(redis_client.scan_iter(f"{prefix}*"))
    retrieval_lists = {k for k in keys if k.startswith(f"{prefix}retrieval")}
    assert len(retrieval_lists) == 3  # one list per priority used
    assert retrieval_lists <= set(metrics.queue_keys("retrieval", global_keyprefix=prefix))

    # a message pushed by hand onto another priority list of another queue
    redis_client.lpush(metrics.queue_keys("feedback", global_keyprefix=prefix)[5], "{}")

    collector = metrics.queue_depth_collector(broker_settings)
    assert collector.depths() == {
        Queue.RETRIEVAL.value: 3,
        Queue.GENERATION.value: 0,
        Queue.INDEXING.value: 1,
        Queue.FEEDBACK.value: 1,
        Queue.MAINTENANCE.value: 0,
        Queue.CALLBACKS.value: 0,
    }
    families = {f.name: f for f in collector.collect()}
    depth = {s.labels["queue"]: s.value for s in families[metrics.QUEUE_DEPTH].samples}
    assert depth["retrieval"] == 3
    assert families[metrics.QUEUE_DEPTH_UP].samples[0].value == 1


@pytest.mark.redis
def test_queue_depth_appears_in_render_latest_once_enabled(broker_settings: Settings) -> None:
    enqueue(TaskName.GENERATE, {"question": "q"}, settings=broker_settings)
    collector = metrics.enable_queue_depth(broker_settings)
    try:
        body, content_type = metrics.render_latest()
        assert content_type.startswith("text/plain")
        got = parse(body.decode())
        assert sample(got, metrics.QUEUE_DEPTH, queue="generation") == 1
    finally:
        metrics._extra_collectors.remove(collector)


def test_queue_depth_reports_down_instead_of_failing_the_scrape() -> None:
    """The collector the API registers, against a Redis that is not there: one attempt, no retries."""
    dead = Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0", redis_socket_timeout_s=0.5)
    collector = metrics.queue_depth_collector(dead, ["retrieval"])
    started = time.monotonic()
    families = {f.name: f for f in collector.collect()}
    assert time.monotonic() - started < 2.0  # redis-py's default retries took ~4 s here
    assert metrics.QUEUE_DEPTH not in families
    assert families[metrics.QUEUE_DEPTH_UP].samples[0].value == 0


# --- Celery signals ---------------------------------------------------------------------------------


@pytest.fixture
def celery_app(broker_settings: Settings) -> Celery:
    app = Celery("rftest-metrics", broker=broker_settings.broker, backend=broker_settings.backend,
                 set_as_current=False)  # fmt: skip
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        broker_transport_options={
            "global_keyprefix": broker_settings.broker_key_prefix,
            "queue_order_strategy": "priority",
            "priority_steps": list(range(10)),
        },
        result_expires=600,
        worker_hijack_root_logger=False,
        task_default_queue=Queue.RETRIEVAL.value,
    )
    return app


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    buf = io.StringIO()
    yield buf
    root.handlers, _ = saved
    root.setLevel(saved[1])


@pytest.mark.redis
@pytest.mark.workers
def test_task_metrics_and_request_id_follow_a_two_stage_job_through_a_real_worker(
    celery_app: Celery, session_prefix: str, json_log: io.StringIO
) -> None:
    metrics_hook.install_task_signals()  # what workers.app installs (workers/hooks/)
    request_id_hook.install()
    log = logs.get_logger("rftest.stage")
    ids = {name: f"{session_prefix}-{name}-{uuid.uuid4().hex[:8]}" for name in ("one", "two", "bad", "flaky")}
    attempts: list[int] = []

    @celery_app.task(name="rftest.stage_two")  # type: ignore[untyped-decorator]
    def stage_two() -> str | None:
        log.info("stage two ran")
        return logs.get_request_id()

    @celery_app.task(name="rftest.stage_one")  # type: ignore[untyped-decorator]
    def stage_one() -> str:
        log.info("stage one ran")
        stage_two.apply_async(task_id=ids["two"], queue=Queue.GENERATION.value)
        return ids["two"]

    @celery_app.task(name="rftest.bad")  # type: ignore[untyped-decorator]
    def bad() -> None:
        raise ValueError("broken payload")

    @celery_app.task(name="rftest.flaky", bind=True, max_retries=2)  # type: ignore[untyped-decorator]
    def flaky(self: Any) -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise self.retry(countdown=0)
        return "ok"

    before = parse(metrics.render_latest()[0].decode())
    with start_worker(
        celery_app,
        pool="solo",
        loglevel="INFO",
        perform_ping_check=False,
        queues=[Queue.RETRIEVAL.value, Queue.GENERATION.value],
    ):
        logs.configure_logging("INFO", process="rftest", stream=json_log, force=True)
        with logs.request_context("rid-from-the-api"):
            stage_one.apply_async(task_id=ids["one"], queue=Queue.RETRIEVAL.value)
        bad.apply_async(task_id=ids["bad"])
        flaky.apply_async(task_id=ids["flaky"])

        assert celery_app.AsyncResult(ids["one"]).get(timeout=20) == ids["two"]
        assert celery_app.AsyncResult(ids["two"]).get(timeout=20) == "rid-from-the-api"
        with pytest.raises(ValueError, match="broken payload"):
            celery_app.AsyncResult(ids["bad"]).get(timeout=20)
        assert celery_app.AsyncResult(ids["flaky"]).get(timeout=20) == "ok"
    for task_id in ids.values():
        celery_app.AsyncResult(task_id).forget()

    lines = [json.loads(line) for line in json_log.getvalue().splitlines() if line.strip()]
    by_event = {line["event"]: line for line in lines}
    for event, job, queue in (
        ("stage one ran", ids["one"], "retrieval"),
        ("stage two ran", ids["two"], "generation"),
    ):
        assert by_event[event]["request_id"] == "rid-from-the-api"
        assert by_event[event]["job_id"] == job
        assert by_event[event]["queue"] == queue
    # Celery's own (stdlib) lines are JSON and carry the id too
    succeeded = [
        line for line in lines
        if line.get("logger", "").startswith("celery") and "succeeded" in line["event"]
        and line.get("job_id") in (ids["one"], ids["two"])
    ]  # fmt: skip
    assert len(succeeded) == 2, lines
    assert {line.get("request_id") for line in succeeded} == {"rid-from-the-api"}
    # published outside the request: no id, and none leaked from the previous task in the same thread
    assert all("request_id" not in line for line in lines if line.get("job_id") == ids["bad"])

    after = parse(metrics.render_latest()[0].decode())

    def delta(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert delta("ragfleet_task_runtime_seconds_count", task="rftest.stage_one", state="SUCCESS") == 1
    assert delta("ragfleet_task_runtime_seconds_count", task="rftest.stage_two", state="SUCCESS") == 1
    assert delta("ragfleet_task_runtime_seconds_count", task="rftest.bad", state="FAILURE") == 1
    assert delta("ragfleet_task_failures_total", task="rftest.bad", exception="ValueError") == 1
    assert delta("ragfleet_task_retries_total", task="rftest.flaky") == 1
    assert delta("ragfleet_task_wait_seconds_count", task="rftest.stage_two", queue="generation") == 1
    assert delta("ragfleet_task_wait_seconds_count", task="rftest.stage_one", queue="retrieval") == 1
    wait_sum = delta("ragfleet_task_wait_seconds_sum", task="rftest.stage_one", queue="retrieval")
    assert 0 <= wait_sum < 10
    assert sample(after, "ragfleet_tasks_in_progress", task="rftest.stage_one") == 0


def test_metrics_app_serves_the_exposition_when_mounted_in_fastapi() -> None:
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    app = FastAPI()
    app.mount("/metrics", metrics.metrics_app())
    metrics.observe_request("/v1/query", 202, 0.01)
    response = TestClient(app).get("/metrics/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert sample(parse(response.text), "ragfleet_http_requests_total", route="/v1/query", status="202") >= 1
