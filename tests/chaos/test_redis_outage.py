"""Redis outage under load: the API sheds with a fast 503, the fleet rides it out, nothing accepted is lost.

The API (uvicorn subprocess) and the workers run against a private Redis with an append-only file
fsynced on every write (`--appendonly yes --appendfsync always`): a job answered 202 is on disk
before the reply, so it survives the crash. Without AOF, messages accepted before the crash are lost
with Redis itself (our private servers keep nothing on disk by default): production must run
Redis with AOF (or a replica with failover) for the 202 to mean "will be done".
"""

from __future__ import annotations

import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from ragfleet.schemas import TERMINAL, JobStatus
from ragfleet.settings import Settings
from tests.chaos.conftest import (
    ChaosFleet,
    DurableRedisServer,
    isolated_settings,
    jobs_for,
    live_store,
    wait_until,
)
from tests.conftest import PYTHON, REPO, free_port, settings_env

pytestmark = [pytest.mark.chaos, pytest.mark.redis, pytest.mark.workers, pytest.mark.model]

OUTAGE_S = 6.0
MAX_REQUEST_S = 3.0


@dataclass(slots=True)
class Sample:
    kind: str
    started: float  # monotonic
    seconds: float
    status: int  # -1: the client gave up (timeout or connection error)
    retry_after: str | None = None
    job_id: str | None = None
    doc_id: str | None = None
    error: str | None = None


class Load:
    """Two client threads: single-document POSTs and question POSTs, as fast as the API answers."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, args=("doc", 0.05), daemon=True),
            threading.Thread(target=self._run, args=("query", 0.1), daemon=True),
        ]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(15)

    def _request(self, client: httpx.Client, kind: str, i: int) -> Sample:
        doc_id = None
        body: dict[str, Any]
        if kind == "doc":
            doc_id = f"outage-{i:05d}"
            text = f"Outage document {i} says that Redis persistence with AOF keeps accepted messages."
            url, body = "/v1/documents", {"documents": [{"id": doc_id, "text": text}]}
        else:
            url, body = "/v1/queries", {"question": f"What keeps accepted messages safe? ({i % 3})"}
        t0 = time.monotonic()
        try:
            r = client.post(url, json=body)
        except httpx.HTTPError as exc:
            return Sample(kind, t0, time.monotonic() - t0, -1, doc_id=doc_id, error=repr(exc))
        job_id = r.json().get("job_id") if r.status_code == 202 else None
        return Sample(
            kind, t0, time.monotonic() - t0, r.status_code, r.headers.get("retry-after"), job_id, doc_id
        )

    def _run(self, kind: str, pause: float) -> None:
        with httpx.Client(base_url=self.base_url, timeout=10.0) as client:
            i = 0
            while not self._stop.is_set():
                sample = self._request(client, kind, i)
                with self._lock:
                    self.samples.append(sample)
                i += 1
                self._stop.wait(pause)

    def accepted(self) -> int:
        return sum(x.status == 202 for x in self.snapshot())

    def snapshot(self) -> list[Sample]:
        with self._lock:
            return list(self.samples)


def start_api(settings: Settings, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    fh = log.open("ab")
    proc = subprocess.Popen(
        [PYTHON, "-m", "uvicorn", "api_shim.app:app", "--host", "127.0.0.1", "--port", str(port)],
        cwd=REPO,
        env=settings_env(settings),
        stdout=fh,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    fh.close()
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return proc.poll() is not None

    assert wait_until(up, 30, 0.1) and proc.poll() is None, log.read_text(errors="replace")[-3000:]
    return proc, url


def test_redis_outage_api_sheds_fast_and_fleet_resumes_without_restart(
    base_settings: Settings, tmp_path: Path, chaos_fleet_factory: Any
) -> None:
    server = DurableRedisServer(tmp_path / "redis").start()
    api: subprocess.Popen[bytes] | None = None
    s = isolated_settings(base_settings, tmp_path, redis_url=server.url, rate_limit="100000/minute")
    fleet: ChaosFleet = chaos_fleet_factory(s)
    try:
        workers = fleet.start("indexing", "retrieval", "generation")
        api_log = tmp_path / "api.log"
        api, url = start_api(s, api_log)

        with Load(url) as load:
            assert wait_until(lambda: load.accepted() >= 10, 30), load.snapshot()[-5:]
            time.sleep(1.0)
            server.kill()
            down_at = time.monotonic()
            time.sleep(OUTAGE_S)
            server = DurableRedisServer(server.data_dir, port=server.port).start()
            up_at, up_wall = time.monotonic(), time.time()

            def resumed_for(seconds: float) -> bool:
                ok = [x for x in load.snapshot() if x.kind == "doc" and x.status == 202 and x.started > up_at]
                return bool(ok) and time.monotonic() - ok[0].started >= seconds

            assert wait_until(lambda: resumed_for(3.0), 30), load.snapshot()[-5:]

        samples = load.snapshot()
        during = [x for x in samples if down_at + 0.2 < x.started < up_at - 0.2]
        after = [x for x in samples if x.started > up_at and x.status == 202]
        statuses = {x.status for x in samples}
        slowest = max(samples, key=lambda x: x.seconds)
        shed = [x for x in during if x.status == 503]
        print(
            f"\n[chaos] redis outage: {len(samples)} requests, statuses {sorted(statuses)}; "
            f"during the {OUTAGE_S:.0f} s outage {len(shed)}/{len(during)} answered 503, "
            f"503 latency max {max((x.seconds for x in shed), default=0) * 1000:.0f} ms "
            f"p50 {sorted(x.seconds for x in shed)[len(shed) // 2] * 1000 if shed else 0:.0f} ms; "
            f"slowest request {slowest.seconds * 1000:.0f} ms ({slowest.kind} {slowest.status}); "
            f"first 202 {min(x.started for x in after) - up_at:.2f} s after Redis returned"
        )
        assert api.poll() is None, "the API process died"
        assert statuses <= {202, 503}, [x for x in samples if x.status not in (202, 503)][:5]
        assert slowest.seconds < MAX_REQUEST_S, slowest
        assert len(shed) >= 10 and all(x.status == 503 for x in during), during
        assert all(x.retry_after and int(x.retry_after) >= 1 for x in shed)

        # Every job the API accepted ends, run by the same workers, which never restarted: except the
        # (at most one per pool) task RUNNING or being fetched when Redis died. Its `self.retry()` cannot
        # publish, so Celery raises Reject(requeue=False); its message stays unacked until a restore
        # sweep (every ~100 s by default) and its job record stays open meanwhile: a known gap,
        # reported to the lead (see the chaos report); this test fails if anything else is lost.
        jobs = jobs_for(s)
        accepted = {x.job_id: x for x in samples if x.status == 202 and x.job_id}
        docs = {j: x.doc_id for j, x in accepted.items() if x.kind == "doc" and x.doc_id}

        def at_crash(j: str) -> bool:
            """Accepted before the crash: its message may have been running or just fetched by a worker."""
            return accepted[j].started < down_at

        def settled() -> bool:
            return all(jobs.is_terminal(j) or at_crash(j) for j in accepted)

        if not wait_until(settled, 60, 0.25):
            stuck = [(jobs.get(j), accepted[j].started - up_at) for j in accepted if not jobs.is_terminal(j)]
            raise AssertionError(f"open jobs (record, accepted s after Redis returned): {stuck}")
        records = {j: jobs.get(j) for j in accepted}
        in_flight = sorted(j for j, r in records.items() if r is not None and r.status not in TERMINAL)
        print(f"[chaos] jobs left open by the crash (in flight when Redis died): {len(in_flight)}")
        assert len(in_flight) <= 3, [records[j] for j in in_flight]
        for j in docs:
            rec = records[j]
            assert rec is not None and (rec.status == JobStatus.DONE or j in in_flight), rec
        bad_queries = [
            r
            for j, r in records.items()
            if j not in docs and j not in in_flight and (r is None or r.status != "done")
        ]
        assert not bad_queries, bad_queries[:3]
        resumed = [r.updated_at - up_wall for r in records.values() if r and r.created_at > up_wall]
        print(f"[chaos] first job accepted after the restart done {min(resumed):.2f} s after Redis returned")
        assert all(w.proc is not None and w.proc.poll() is None for w in workers)

        store = live_store(s)
        try:
            stored = store.document_hashes("default", sorted(d for d in docs.values() if d))
        finally:
            store.close()
        missing = sorted(d for j, d in docs.items() if d not in stored and j not in in_flight)
        assert not missing, missing
        print(f"[chaos] {len(docs)} accepted documents, indexed but the in-flight ones; {len(accepted)} jobs")
    finally:
        if api is not None and api.poll() is None:
            api.terminate()
            api.wait(10)
        fleet.stop()
        server.kill()
