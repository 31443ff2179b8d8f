"""Fleet-level resilience: single flight across the fleet, and a breaker shared by generation workers."""

from __future__ import annotations

import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from ragfleet.coalesce import Coalescer
from ragfleet.names import TaskName
from ragfleet.producer import enqueue
from ragfleet.redis_conn import get_redis
from ragfleet.settings import Settings
from tests.fleet import POOLS, Fleet, Worker
from tests.helpers import api_client, index, wait_job
from tests.integration.fake_llm_server import FakeLLM
from tests.integration.test_fleet_e2e import DOCS

pytestmark = [pytest.mark.redis, pytest.mark.workers, pytest.mark.model]


def test_100_identical_concurrent_queries_run_the_pipeline_once(fleet: Any, base_settings: Settings) -> None:
    index(base_settings, DOCS)
    settings = base_settings.model_copy(update={"rate_limit": "100000/minute"})
    r = get_redis(settings)
    runs = Coalescer(r, settings).runs_key()
    before = int(r.get(runs) or 0)
    question = f"Which store keeps vectors on local disk? ({uuid.uuid4().hex[:6]})"
    with api_client(settings, timeout=60) as http:

        def one(_: int) -> dict[str, Any]:
            resp = http.post("/v1/queries", json={"question": question}, params={"wait": 30})
            assert resp.status_code in (200, 202), resp.text
            job_id = resp.json()["job_id"]
            return wait_job(settings, job_id)

        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=100) as pool:
            records = list(pool.map(one, range(100)))
        elapsed = time.perf_counter() - t0

    assert all(rec["status"] == "done" for rec in records)
    answers = {rec["result"]["answer"] for rec in records}
    assert len(answers) == 1
    runs_delta = int(r.get(runs) or 0) - before
    followers = sum(1 for rec in records if rec["result"].get("coalesced_with"))
    cached = sum(1 for rec in records if rec["result"].get("cached"))
    print(
        f"\n100 identical queries: pipeline runs={runs_delta} coalesced={followers} cached={cached} "
        f"leader=1 wall={elapsed:.2f}s"
    )
    assert runs_delta == 1
    assert followers + cached == 99


def test_a_follower_takes_over_when_the_leader_dies(base_settings: Settings) -> None:
    settings = base_settings.model_copy(update={"key_prefix": base_settings.key_prefix + "-co"})
    co = Coalescer(get_redis(settings), settings, lock_ttl_s=0.3)
    key = uuid.uuid4().hex
    assert co.join(key, "leader").role == "leader"
    assert co.join(key, "f1") == co.join(key, "f1")  # idempotent while the leader lives
    assert co.join(key, "f1").role == "follower"
    time.sleep(0.5)  # the leader died: its lock lapses without renewal
    assert co.join(key, "f1").role == "leader"
    assert co.complete(key, "f1") == []  # the new leader is not its own follower


def test_breaker_opened_by_one_generation_worker_is_seen_by_another(
    base_settings: Settings, tmp_path: Path
) -> None:
    llm = FakeLLM().start()
    llm.mode = "500"
    settings = base_settings.model_copy(
        update={
            "key_prefix": f"{base_settings.key_prefix}-br",
            "broker_key_prefix": f"{base_settings.key_prefix}-br:q:",
            "data_dir": tmp_path / "data",
            "generator": "openai",
            "llm_base_url": llm.url,
            "llm_max_retries": 0,
            "llm_breaker_fail_max": 2,
            "llm_breaker_reset_s": 600,
            "llm_timeout_s": 2.0,
        }
    )
    fleet = Fleet(settings, tmp_path)
    try:
        fleet.start("retrieval", "indexing")
        first = Worker("generation-a", *POOLS["generation"], settings, tmp_path).start().wait_ready()
        index(settings, DOCS)

        def ask() -> dict[str, Any]:
            return wait_job(
                settings,
                enqueue(
                    TaskName.QUERY,
                    {"question": "What is Redis used as?", "use_cache": False},
                    settings=settings,
                ),
            )

        for _ in range(3):
            rec = ask()
            assert rec["status"] == "done" and rec["result"]["degraded"] is True
        calls_when_open = llm.calls
        assert calls_when_open == 2, "fail_max=2: the third request must not reach the provider"
        first.stop()

        second = Worker("generation-b", *POOLS["generation"], settings, tmp_path).start().wait_ready()
        try:
            rec = ask()
            assert rec["stages"]["generation"]["worker"] == second.node
            assert rec["result"]["degraded"] is True
            assert llm.calls == calls_when_open, "worker B called a provider whose breaker A opened"
        finally:
            second.stop()
    finally:
        fleet.stop()
        llm.stop()


def test_api_answers_a_repeated_question_from_cache_until_the_index_changes(
    fleet: Any, base_settings: Settings
) -> None:
    index(base_settings, DOCS)
    settings = base_settings.model_copy(update={"rate_limit": "100000/minute"})
    question = f"What is Redis used as? ({uuid.uuid4().hex[:6]})"
    with api_client(settings, timeout=30) as http:
        first = http.post("/v1/queries", json={"question": question}, params={"wait": 20}).json()
        assert first["status"] == "done" and first["result"]["cached"] is None
        t0 = time.perf_counter()
        again = http.post("/v1/queries", json={"question": question}, params={"wait": 20})
        ms = (time.perf_counter() - t0) * 1000
        rec = again.json()
        assert again.status_code == 200 and rec["result"]["cached"] in ("l1", "l2")
        assert rec["stages"] == {}, "served by the API itself, no pool touched it"
        assert rec["result"]["answer"] == first["result"]["answer"]
        polled = http.get(f"/v1/jobs/{rec['job_id']}")  # a job answered at birth is a job like any other
        assert polled.status_code == 200 and polled.json() == rec
        streamed = http.get(f"/v1/queries/{rec['job_id']}/stream").text.splitlines()
        assert [json.loads(line)["type"] for line in streamed] == ["sources", "answer_chunk", "done"]
        samples = []
        for _ in range(50):
            t1 = time.perf_counter()
            hit = http.post("/v1/queries", json={"question": question}, params={"wait": 20})
            samples.append((time.perf_counter() - t1) * 1000)
            assert hit.json()["result"]["cached"] in ("l1", "l2")
        samples.sort()
        print(
            f"\ncache hit through HTTP: first {ms:.1f} ms, P50 {samples[25]:.1f} ms, P99 {samples[-1]:.1f} ms"
        )
        # any write moves the index version; a document of its own, so the session's shared
        # DOCS (which later tests rank against) stay as they are
        index(
            base_settings, [{"id": "version-bump", "title": "Bump", "text": "Every write bumps the version."}]
        )
        fresh = http.post("/v1/queries", json={"question": question}, params={"wait": 20}).json()
        assert fresh["result"]["cached"] is None
        assert fresh["result"]["index_version"] > first["result"]["index_version"]
        # the API's own guess of the version moved with it: cached again, under the new version
        cached_again = http.post("/v1/queries", json={"question": question}, params={"wait": 20}).json()
        assert cached_again["result"]["cached"] in ("l1", "l2") and cached_again["stages"] == {}
        assert cached_again["result"]["index_version"] == fresh["result"]["index_version"]


def test_identical_questions_in_flight_coalesce_onto_one_slow_llm_call(
    base_settings: Settings, tmp_path: Path
) -> None:
    """While the leader waits on a slow provider, identical questions join its flight and get its answer."""
    llm = FakeLLM(answer="Redis is used as a broker and a cache [1].").start()
    llm.mode, llm.hang_s = "hang", 2.0  # answers after 2 s
    settings = base_settings.model_copy(
        update={
            "key_prefix": f"{base_settings.key_prefix}-co2",
            "broker_key_prefix": f"{base_settings.key_prefix}-co2:q:",
            "data_dir": tmp_path / "data",
            "generator": "openai",
            "llm_base_url": llm.url,
            "llm_max_retries": 0,
            "llm_timeout_s": 10.0,
        }
    )
    fleet = Fleet(settings, tmp_path)
    try:
        fleet.start("retrieval", "indexing", "generation")
        index(settings, DOCS)
        r = get_redis(settings)
        runs = Coalescer(r, settings).runs_key()
        question = f"What is Redis used as? ({uuid.uuid4().hex[:6]})"
        jobs = [enqueue(TaskName.QUERY, {"question": question}, settings=settings) for _ in range(20)]
        records = [wait_job(settings, j, timeout=60) for j in jobs]
    finally:
        fleet.stop()
        llm.stop()
    assert all(rec["status"] == "done" for rec in records)
    assert {rec["result"]["answer"] for rec in records} == {"Redis is used as a broker and a cache [1]."}
    followers = [rec for rec in records if rec["result"].get("coalesced_with")]
    print(
        f"\n20 identical queries during a 2 s LLM call: provider calls={llm.calls} "
        f"coalesced={len(followers)} pipeline runs={r.get(runs)}"
    )
    assert llm.calls == 1
    assert int(r.get(runs) or 0) == 1
    assert len(followers) >= 10, "identical questions in flight must join the leader, not queue behind it"
    assert len({f["result"]["coalesced_with"] for f in followers}) == 1, "one leader for the flight"
