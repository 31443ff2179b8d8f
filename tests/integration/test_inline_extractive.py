"""With no LLM provider configured, the retrieval node answers a query at the end of its stage: no
message on the generation queue, and the job ends exactly as with the hop (`inline_extractive=false`):
same result, same record fields, same events; a coalesced follower gets the leader's answer; the
generation step is a span inside the retrieval task's. With a provider configured, the hop is used.

A fleet of real `celery worker` processes on an isolated prefix per test; its pools are restarted
with other settings between the cases (ragfleet.answering.answers_inline).
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ragfleet.events import JobEvents
from ragfleet.metrics.queue_depth import queue_depth_collector
from ragfleet.names import TaskName
from ragfleet.producer import enqueue
from ragfleet.redis_conn import get_redis
from ragfleet.settings import Settings
from tests.conftest import REPO, settings_env
from tests.fleet import POOLS, Fleet, Worker
from tests.helpers import index, isolated, wait_job
from tests.integration.fake_llm_server import FakeLLM
from tests.integration.test_fleet_e2e import DOCS
from tests.otlp_receiver import OtlpReceiver

pytestmark = [pytest.mark.redis, pytest.mark.workers, pytest.mark.model, pytest.mark.slow]

QUESTION = "Which database stores vectors on local disk?"


@pytest.fixture
def setup(base_settings: Settings, tmp_path: Path) -> Iterator[tuple[Settings, Fleet]]:
    s = isolated(base_settings, "inline", data_dir=tmp_path / "data")
    fleet = Fleet(s, tmp_path)
    try:
        fleet.start("retrieval", "indexing")  # no generation pool
        assert index(s, DOCS)["status"] == "done"
        yield s, fleet
    finally:
        fleet.stop()


def generation_depth(s: Settings) -> int:
    return queue_depth_collector(s, ["generation"]).depths()["generation"]


def record_fields(s: Settings, job_id: str) -> set[str]:
    return set(get_redis(s).hkeys(s.key("job", job_id)))


def event_types(s: Settings, job_id: str) -> list[str]:
    return [e.type for e in JobEvents(get_redis(s), s).read(job_id)]


def ask_uncached(s: Settings) -> dict[str, Any]:
    job_id = enqueue(TaskName.QUERY, {"question": QUESTION, "use_cache": False}, settings=s)
    rec = wait_job(s, job_id, timeout=90)
    assert rec["status"] == "done", rec
    return rec


def test_the_extractive_answer_skips_the_hop_and_equals_the_hopped_one(setup: tuple[Settings, Fleet]) -> None:
    s, fleet = setup
    retrieval = fleet.workers["retrieval"]

    inline = ask_uncached(s)  # no generation worker runs: only the retrieval node can have answered
    assert generation_depth(s) == 0
    stages = inline["stages"]
    assert stages["generation"]["worker"] == stages["retrieval"]["worker"] == retrieval.node
    assert stages["generation"]["queue"] == "retrieval"
    assert event_types(s, inline["job_id"]) == ["sources", "answer_chunk", "done"]

    retrieval.stop()  # the same question with the hop forced
    fleet.start("retrieval", "generation", extra_env={"RAGFLEET_INLINE_EXTRACTIVE": "false"})
    hop = ask_uncached(s)
    assert hop["stages"]["generation"]["worker"] == fleet.workers["generation"].node
    assert hop["stages"]["generation"]["queue"] == "generation"

    assert inline["result"] == hop["result"]
    assert inline["result"]["answer"] and "[1]" in inline["result"]["answer"]
    assert record_fields(s, inline["job_id"]) == record_fields(s, hop["job_id"])
    assert event_types(s, inline["job_id"]) == event_types(s, hop["job_id"])


def test_with_an_llm_configured_the_query_is_handed_to_the_generation_pool(
    setup: tuple[Settings, Fleet],
) -> None:
    s, fleet = setup
    llm = FakeLLM(answer="LanceDB stores vectors on local disk [1].").start()
    env = {"RAGFLEET_GENERATOR": "openai", "RAGFLEET_LLM_BASE_URL": llm.url, "RAGFLEET_LLM_MAX_RETRIES": "0"}
    try:
        fleet.workers["retrieval"].stop()
        fleet.start("retrieval", extra_env=env)  # the generation pool not yet running
        job_id = enqueue(TaskName.QUERY, {"question": QUESTION, "use_cache": False}, settings=s)
        wait_job(s, job_id, timeout=90, statuses=("generating",))
        assert generation_depth(s) == 1  # handed off, waiting for a generation worker
        fleet.start("generation", extra_env=env)
        rec = wait_job(s, job_id, timeout=90)
    finally:
        llm.stop()
    assert rec["status"] == "done", rec
    assert rec["result"]["answer"] == llm.answer
    assert rec["stages"]["generation"]["worker"] == fleet.workers["generation"].node
    assert llm.calls == 1


def test_followers_of_an_inline_leader_get_its_answer(setup: tuple[Settings, Fleet], tmp_path: Path) -> None:
    """Two retrieval nodes whose search takes 2 s: the second identical question joins the first's
    flight, and the leader's inline generation stage finishes it (no generation pool runs)."""
    s, fleet = setup
    fleet.workers["retrieval"].stop()
    slow = {"RAGFLEET_CHAOS_DELAY_S": "2"}  # tests/faults: before each search
    nodes = [Worker(f"retrieval-{i}", *POOLS["retrieval"], s, tmp_path, slow) for i in range(2)]
    try:
        for w in nodes:
            w.start()
        for w in nodes:
            w.wait_ready()
        question = f"{QUESTION} ({uuid.uuid4().hex[:6]})"
        jobs = [enqueue(TaskName.QUERY, {"question": question}, settings=s) for _ in range(2)]
        records = [wait_job(s, j, timeout=60) for j in jobs]
    finally:
        for w in nodes:
            w.stop()
    assert [r["status"] for r in records] == ["done", "done"], records
    leader, follower = sorted(records, key=lambda r: r["result"].get("coalesced_with") is not None)
    assert follower["result"]["coalesced_with"] == leader["job_id"]

    def answer(rec: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in rec["result"].items() if k != "coalesced_with"}

    assert answer(follower) == answer(leader)
    assert generation_depth(s) == 0
    assert event_types(s, follower["job_id"]) == ["sources", "answer_chunk", "done"]


_PROBE = r"""
import sys
from ragfleet import answering, tracing
from ragfleet.names import Priority
from ragfleet.resources import Resources
from ragfleet.schemas import QueryPayload
from ragfleet.settings import get_settings

assert tracing.setup("probe")
with tracing.span("the retrieval task's span"):
    p = QueryPayload(question="what is inline?", job_id=sys.argv[1])
    print(answering.retrieve(Resources(get_settings()), p, priority=Priority.DEFAULT)["status"])
tracing.shutdown()
"""


def test_the_inline_generation_step_is_a_span_inside_the_retrieval_task(
    base_settings: Settings, tmp_path: Path
) -> None:
    """In a traced process (an empty index: no sources, the extractive no-sources answer), the
    generation step is `inline ragfleet.generate`, a child of the retrieval task's span, carrying the
    attributes the generation task's span carries."""
    s = isolated(base_settings, "inline-otel", data_dir=tmp_path / "data")
    receiver = OtlpReceiver().start()
    job_id = f"inline-{uuid.uuid4().hex[:8]}"
    otel = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.endpoint}
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _PROBE, job_id],
            cwd=REPO,
            env={**settings_env(s), **otel},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert proc.stdout.strip().splitlines()[-1] == "done"
        gen = receiver.wait_for("inline ragfleet.generate", **{"ragfleet.job_id": job_id})
        task = receiver.wait_for("the retrieval task's span")
    finally:
        receiver.stop()
    assert gen.parent_span_id == task.span_id and gen.trace_id == task.trace_id
    assert gen.attributes["ragfleet.llm.provider"] == "extractive"
    assert gen.attributes["ragfleet.inline"] is True
