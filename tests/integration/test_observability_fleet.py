"""Operations against real processes: a real Prometheus scrapes the API and the workers, one request id
runs through the API's and both pools' log lines, and /readyz follows the retrieval pool."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ragfleet.settings import Settings
from tests.conftest import REPO, free_port, need, settings_env
from tests.fleet import Fleet
from tests.helpers import index, wait_for
from tests.integration.test_fleet_e2e import DOCS

pytestmark = [pytest.mark.redis, pytest.mark.workers, pytest.mark.model, pytest.mark.slow]


class Ops:
    def __init__(self, settings: Settings, tmp: Path) -> None:
        self.settings = settings
        self.tmp = tmp
        self.api_port = free_port()
        self.ports = {"retrieval": free_port(), "generation": free_port()}
        self.fleet = Fleet(settings, tmp)
        self.api_log = tmp / "api.log"
        self.api: subprocess.Popen[bytes] | None = None
        self.prom: subprocess.Popen[bytes] | None = None
        self.prom_port = free_port()

    def start(self) -> Ops:
        """The API, the three pools and the documents every test asks about: each test can run alone."""
        for pool, port in self.ports.items():
            self.fleet.start(pool, extra_env={"RAGFLEET_METRICS_PORT": str(port)}, wait=False)
        self.fleet.start("indexing", wait=False)
        env = settings_env(self.settings)
        self.api = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "api_shim.serve",  # the Procfile's launcher: two workers, TCP_NODELAY kept
                "--host",
                "127.0.0.1",
                "--port",
                str(self.api_port),
                "--workers",
                "2",
            ],
            cwd=REPO,
            env=env,
            stdout=self.api_log.open("ab"),
            stderr=subprocess.STDOUT,
        )
        for w in self.fleet.workers.values():
            w.wait_ready()
        wait_for(self.healthy, timeout=30, interval=0.2, what="API /healthz")
        assert index(self.settings, DOCS)["status"] == "done"
        return self

    def healthy(self) -> bool:
        try:
            return httpx.get(f"{self.base}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def restart_retrieval(self) -> None:
        self.fleet.start("retrieval", extra_env={"RAGFLEET_METRICS_PORT": str(self.ports["retrieval"])})

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def start_prometheus(self) -> None:
        binary = shutil.which("prometheus")
        need(binary is not None, "prometheus not installed (apt-get install prometheus)")
        targets = [
            {"targets": [f"127.0.0.1:{self.api_port}"], "labels": {"pool": "api"}},
            *(
                {"targets": [f"127.0.0.1:{port}"], "labels": {"pool": pool}}
                for pool, port in self.ports.items()
            ),
        ]
        config = {
            "global": {"scrape_interval": "1s"},
            "scrape_configs": [{"job_name": "ragfleet", "static_configs": targets}],
        }
        cfg = self.tmp / "prometheus.yml"
        cfg.write_text(json.dumps(config))  # JSON is valid YAML
        self.prom = subprocess.Popen(
            [
                str(binary),
                f"--config.file={cfg}",
                f"--storage.tsdb.path={self.tmp / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.prom_port}",
            ],
            stdout=(self.tmp / "prometheus.log").open("ab"),
            stderr=subprocess.STDOUT,
        )

    def prom_query(self, q: str) -> list[dict[str, Any]]:
        r = httpx.get(f"http://127.0.0.1:{self.prom_port}/api/v1/query", params={"query": q}, timeout=5)
        r.raise_for_status()
        result: list[dict[str, Any]] = r.json()["data"]["result"]
        return result

    def stop(self) -> None:
        for proc in (self.prom, self.api):
            if proc and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
        self.fleet.stop()


@pytest.fixture(scope="module")
def ops(base_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ops]:
    tmp = tmp_path_factory.mktemp("ops")
    prefix = f"{base_settings.key_prefix}-ops"
    settings = base_settings.model_copy(
        update={
            "key_prefix": prefix,
            "broker_key_prefix": f"{prefix}:q:",
            "data_dir": tmp / "data",
            "metrics_dir": tmp / "prom",
            "rate_limit": "100000/minute",
            # what is observed here is both pools' part of a query: the hop to generation forced
            # (with no LLM the retrieval node would answer inline, ragfleet.answering.answers_inline)
            "inline_extractive": False,
        }
    )
    o = Ops(settings, tmp)
    try:
        yield o.start()
    finally:
        o.stop()


def _ask(ops: Ops, question: str, rid: str) -> dict[str, Any]:
    r = httpx.post(
        f"{ops.base}/v1/queries",
        json={"question": question, "use_cache": False},
        params={"wait": 20},
        headers={"X-Request-ID": rid},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def test_one_request_id_in_api_retrieval_and_generation_logs(ops: Ops) -> None:
    rid = f"req-{uuid.uuid4().hex}"
    rec = _ask(ops, "What is Redis used as?", rid)
    assert rec["status"] == "done"

    def lines_with(path: Path) -> list[dict[str, Any]]:
        out = []
        for line in path.read_text(errors="replace").splitlines():
            if rid in line and line.startswith("{"):
                out.append(json.loads(line))
        return out

    logs = [ops.api_log, ops.fleet.workers["retrieval"].log, ops.fleet.workers["generation"].log]
    with contextlib.suppress(AssertionError):  # the lines reach the files just after the answer; the
        # checks below say which is missing if they never do
        wait_for(lambda: all(lines_with(path) for path in logs), timeout=10, what="log lines")

    api_lines = lines_with(ops.api_log)
    retrieval_lines = lines_with(ops.fleet.workers["retrieval"].log)
    generation_lines = lines_with(ops.fleet.workers["generation"].log)
    # the id must be a structured field (bound by the logging context), not just text in a payload
    for name, lines in (("api", api_lines), ("retrieval", retrieval_lines), ("generation", generation_lines)):
        bound = [line for line in lines if line.get("request_id") == rid]
        assert bound, f"{name}: no log line carries request_id={rid}: {lines[:2]}"
    # one Celery line per task, at its end, in the interactive pools: no "Task ... received" line
    # (`log_interactive_task_received`); the indexing pool, whose tasks run for minutes, keeps it
    job = rec["job_id"]
    for pool in ("retrieval", "generation"):
        text = ops.fleet.workers[pool].log.read_text(errors="replace").splitlines()
        assert any(f"[{job}" in line and "succeeded" in line for line in text), pool
        assert not any(f"[{job}" in line and "] received" in line for line in text), pool
    indexing = ops.fleet.workers["indexing"].log.read_text(errors="replace")
    assert "ragfleet.index" in indexing and "] received" in indexing


def test_prometheus_scrapes_fleet_series_with_labels(ops: Ops) -> None:
    ops.start_prometheus()
    for i in range(5):
        _ask(ops, f"What does LanceDB store? {i}", f"prom-{i}")
    deadline = time.monotonic() + 60
    stage: list[dict[str, Any]] = []
    http_reqs: list[dict[str, Any]] = []
    depth: list[dict[str, Any]] = []
    gen: list[dict[str, Any]] = []
    # each pool is its own scrape target: wait until every one of them has been scraped since the queries
    while time.monotonic() < deadline:
        try:
            stage = ops.prom_query('ragfleet_stage_duration_seconds_count{stage="retrieval"}')
            http_reqs = ops.prom_query('ragfleet_http_requests_total{route="/v1/queries"}')
            depth = ops.prom_query("ragfleet_queue_depth")
            gen = ops.prom_query('ragfleet_stage_duration_seconds_count{stage="generation"}')
        except httpx.HTTPError:
            pass
        if stage and http_reqs and depth and gen:
            break
        time.sleep(1)
    print("\nprometheus series:", json.dumps({"stage": stage, "http": http_reqs, "depth": depth[:2]})[:2000])
    assert any(s["metric"]["pool"] == "retrieval" and float(s["value"][1]) >= 5 for s in stage), stage
    assert any(s["metric"].get("status") in ("200", "2xx") for s in http_reqs), http_reqs
    assert {s["metric"]["queue"] for s in depth} >= {"retrieval", "generation", "indexing"}
    assert any(s["metric"]["pool"] == "generation" for s in gen), gen


def test_task_events_of_both_pools_reach_an_event_receiver(ops: Ops) -> None:
    """What Flower sees: every task of a query sends task-received, -started and -succeeded (Celery's
    own flush, in each worker's event loop)."""
    import threading

    from workers.app import create_app

    app = create_app(ops.settings)
    seen: list[dict[str, Any]] = []
    subscribed = threading.Event()

    def on_event(event: dict[str, Any]) -> None:
        subscribed.set()  # worker heartbeats come every 2 s: the receiver is listening
        seen.append(event)

    with app.connection_for_read() as conn:
        receiver = app.events.Receiver(conn, handlers={"*": on_event})
        thread = threading.Thread(target=lambda: receiver.capture(limit=None, timeout=None, wakeup=False))
        thread.daemon = True
        thread.start()
        try:
            assert subscribed.wait(20), "no event at all (not even a worker heartbeat) in 20 s"
            rec = _ask(ops, f"What is Redis used as? events {uuid.uuid4().hex[:6]}", "events")
            assert rec["status"] == "done"
            wanted = {
                (uuid_, kind)
                for uuid_ in (rec["job_id"], f"{rec['job_id']}:gen")
                for kind in ("task-received", "task-started", "task-succeeded")
            }
            deadline = time.monotonic() + 15
            got: set[tuple[str, str]] = set()
            while time.monotonic() < deadline and not wanted <= got:
                got = {(e.get("uuid", ""), e["type"]) for e in list(seen)}
                time.sleep(0.2)
        finally:
            receiver.should_stop = True
            thread.join(10)
    assert wanted <= got, sorted(wanted - got)
    hosts = {e["hostname"] for e in seen if e.get("uuid") in (rec["job_id"], f"{rec['job_id']}:gen")}
    assert len(hosts) == 2, hosts  # one retrieval and one generation node


def test_readyz_turns_unready_when_the_retrieval_pool_stops(ops: Ops) -> None:
    def readyz(status: int) -> httpx.Response | None:
        r = httpx.get(f"{ops.base}/readyz", timeout=10)
        return r if r.status_code == status else None

    wait_for(lambda: readyz(200), timeout=20, interval=0.5, what="/readyz 200 with every pool up")
    ops.fleet.workers["retrieval"].stop()
    try:
        r = wait_for(lambda: readyz(503), timeout=30, interval=0.5, what="/readyz 503 without retrieval")
        assert "retrieval" in json.dumps(r.json())
    finally:
        ops.restart_retrieval()  # the module's other tests need it, whatever order they run in
