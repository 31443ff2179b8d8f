"""Tracing end to end (ragfleet.tracing): a real OTLP/HTTP receiver on loopback, the API and three
pools as real processes exporting to it, and the raw broker messages of every enqueue path."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from ragfleet.names import TaskName
from ragfleet.producer import enqueue
from ragfleet.settings import Settings
from tests.conftest import PYTHON, REPO, free_port, settings_env
from tests.fleet import Fleet
from tests.helpers import index, isolated, wait_for, wait_job
from tests.integration.fake_llm_server import FakeLLM
from tests.integration.test_fleet_e2e import DOCS
from tests.otlp_receiver import OtlpReceiver, ReceivedSpan

pytestmark = [pytest.mark.redis, pytest.mark.workers, pytest.mark.model, pytest.mark.slow]

TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$")
SERVER, CLIENT, PRODUCER, CONSUMER = 2, 3, 4, 5  # OTLP span kinds
MODEL = "gpt-4o-mini"


def otel_env(receiver: OtlpReceiver) -> dict[str, str]:
    """The standard variables an operator sets; a short batch delay so spans arrive within the test."""
    return {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }


class Traced:
    """The API (its own process, `python -m api_shim.serve`) and the retrieval (solo), generation
    (threads) and indexing (prefork) pools, all exporting to one receiver; a slow fake LLM (1 s)
    so identical questions coalesce."""

    def __init__(self, base: Settings, tmp: Path) -> None:
        self.receiver = OtlpReceiver().start()
        self.llm = FakeLLM(answer="Celery runs tasks on workers [1].").start()
        self.llm.mode, self.llm.hang_s = "hang", 1.0
        self.settings = isolated(
            base,
            "otel",
            data_dir=tmp / "data",
            generator="openai",
            llm_base_url=self.llm.url,
            llm_model=MODEL,
            llm_max_retries=0,
            llm_timeout_s=10.0,
        )
        self.fleet = Fleet(self.settings, tmp)
        self.port = free_port()
        self.api_log = tmp / "api.log"
        self.api: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Traced:
        env = otel_env(self.receiver)
        self.fleet.start("retrieval", "generation", "indexing", extra_env=env, wait=False)
        self.api = subprocess.Popen(
            [PYTHON, "-m", "api_shim.serve", "--port", str(self.port), "--workers", "1"],
            cwd=REPO,
            env={**settings_env(self.settings), **env},
            stdout=self.api_log.open("ab"),
            stderr=subprocess.STDOUT,
        )
        for w in self.fleet.workers.values():
            w.wait_ready()
        wait_for(self._healthy, timeout=30, interval=0.1, what="API /healthz")
        assert index(self.settings, DOCS)["status"] == "done"
        return self

    def _healthy(self) -> bool:
        try:
            return httpx.get(f"{self.base}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.api is not None:
            self.api.kill()
            self.api.wait(15)
        for w in self.fleet.workers.values():
            w.kill()  # what they exported is here already: no graceful shutdown to wait for
        self.llm.stop()
        self.receiver.stop()

    def output(self) -> str:
        logs = [self.api_log.read_text(errors="replace")] if self.api_log.exists() else []
        return "\n".join([*logs, *(w.output() for w in self.fleet.workers.values())])


@pytest.fixture(scope="module")
def traced(base_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Traced]:
    t = Traced(base_settings, tmp_path_factory.mktemp("otel"))
    try:
        yield t.start()
    finally:
        t.stop()


def _one(spans: list[ReceivedSpan], what: str) -> ReceivedSpan:
    assert len(spans) == 1, f"{what}: expected one span, got {spans}"
    return spans[0]


def _query_spans(t: Traced, job_id: str) -> tuple[ReceivedSpan, ReceivedSpan]:
    """The retrieval and generation task spans of `job_id`, once both processes exported them."""
    gen = t.receiver.wait_for("run ragfleet.generate", **{"ragfleet.job_id": job_id})
    retr = t.receiver.wait_for("run ragfleet.query", **{"ragfleet.job_id": job_id})
    return retr, gen


def test_one_query_is_one_trace_across_the_api_retrieval_generation_and_the_llm_call(traced: Traced) -> None:
    """A producer's own `traceparent` on the HTTP request: every span of the job joins its trace,
    each a child of the one before, from three processes (and the LLM got the client span's id)."""
    t = traced
    producer_trace, producer_span = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    question = f"What does Celery run? ({uuid.uuid4().hex[:6]})"
    r = httpx.post(
        f"{t.base}/v1/queries",
        json={"question": question},
        params={"wait": 20},
        headers={"traceparent": f"00-{producer_trace}-{producer_span}-01"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    job_id = r.json()["job_id"]
    assert r.json()["status"] == "done"
    retr, gen = _query_spans(t, job_id)
    wait_for(
        lambda: any(s.kind == SERVER for s in t.receiver.trace(producer_trace)),
        timeout=10,
        what="the API's server span",
    )
    spans = t.receiver.trace(producer_trace)
    server = _one([s for s in spans if s.kind == SERVER], "API server span")
    enq = _one([s for s in spans if s.kind == PRODUCER], "enqueue span")
    chat = _one([s for s in spans if s.kind == CLIENT], "LLM client span")
    # one trace, the producer's, parent to child across the queue
    assert retr.trace_id == gen.trace_id == producer_trace
    assert server.parent_span_id == producer_span
    assert (enq.name, enq.parent_span_id) == ("enqueue ragfleet.query", server.span_id)
    assert enq.attributes["ragfleet.job_id"] == job_id
    assert (retr.kind, retr.parent_span_id) == (CONSUMER, enq.span_id)
    assert (gen.kind, gen.parent_span_id) == (CONSUMER, retr.span_id)
    assert (chat.name, chat.parent_span_id) == (f"chat {MODEL}", gen.span_id)
    # three processes: told apart by service name and pid
    services = {s.service: s.resource["process.pid"] for s in (server, retr, gen)}
    assert set(services) == {"ragfleet-api", "ragfleet-retrieval", "ragfleet-generation"}
    assert len(set(services.values())) == 3
    # what each stage knew
    assert retr.attributes["ragfleet.index_version"] >= 1
    assert retr.attributes["ragfleet.coalesce.role"] == "leader"
    assert retr.attributes["ragfleet.retry_count"] == 0
    assert gen.attributes["ragfleet.llm.provider"] == "default"
    assert gen.attributes["gen_ai.request.model"] == MODEL
    assert gen.attributes["gen_ai.usage.input_tokens"] == t.llm.prompt_tokens
    assert gen.attributes["ragfleet.llm.cost_usd"] > 0
    assert gen.attributes["ragfleet.breaker.state"] == "default:closed"
    assert chat.attributes["gen_ai.usage.output_tokens"] == t.llm.completion_tokens
    # the provider's request carried the client span's context
    sent = [q["traceparent"] for q in t.llm.requests if question in json.dumps(q["body"])]
    assert [s[: -len("-01")] for s in sent] == [f"00-{producer_trace}-{chat.span_id}"]
    # the job's stream entries carry the writer's context; log lines carry the trace id
    entries = redis.Redis.from_url(t.settings.redis_url, decode_responses=True).xrange(
        t.settings.key("events", job_id)
    )
    assert entries and all(TRACEPARENT.match(e[1]["traceparent"]) for e in entries)
    assert {TRACEPARENT.match(e[1]["traceparent"]).group(1) for e in entries} == {producer_trace}  # type: ignore[union-attr]
    lines = [json.loads(x) for x in t.output().splitlines() if producer_trace in x and x.startswith("{")]
    assert lines, "no log line carries the trace id"
    assert all(line["trace_id"] == producer_trace and len(line["span_id"]) == 16 for line in lines)


def test_a_prefork_child_traces_after_the_fork(traced: Traced) -> None:
    """The indexing pool is prefork: its task spans come from the child (its own provider, made
    after the fork), not from the parent that consumed nothing."""
    worker = traced.fleet.workers["indexing"]
    span = traced.receiver.wait_for("run ragfleet.index_documents")
    assert span.service == "ragfleet-indexing"
    assert span.resource["process.pid"] in worker.children()
    assert span.resource["process.pid"] != worker.proc.pid  # type: ignore[union-attr]


def test_a_coalesced_follower_and_a_cache_hit_link_to_the_run_that_produced_their_answer(
    traced: Traced,
) -> None:
    t = traced
    question = f"How do Celery workers run tasks? ({uuid.uuid4().hex[:6]})"
    with httpx.Client(base_url=t.base, timeout=30) as http:
        leader = http.post("/v1/queries", json={"question": question}).json()["job_id"]
        follower = http.post("/v1/queries", json={"question": question}).json()["job_id"]
        assert wait_job(t.settings, leader)["status"] == "done"
        assert wait_job(t.settings, follower)["result"]["coalesced_with"] == leader
        hit = http.post("/v1/queries", json={"question": question}, params={"wait": 10}).json()
    assert hit["result"]["cached"] in ("l1", "l2")
    lead_retr, lead_gen = _query_spans(t, leader)
    follow = t.receiver.wait_for("run ragfleet.query", **{"ragfleet.job_id": follower})
    assert follow.attributes["ragfleet.coalesce.role"] == "follower"
    assert follow.trace_id != lead_retr.trace_id  # its own trace (its own request) ...
    leader_trace = lead_retr.trace_id
    links = [(tr, kind["ragfleet.link"]) for tr, _sp, kind in follow.links]
    assert links == [(leader_trace, "coalesced_leader")]  # ... linked to the leader's
    # the API answered the third at once from the cache: its span links to the leader's generation
    cached = t.receiver.wait_for(None, **{"ragfleet.job_id": hit["job_id"], "ragfleet.cache.layer": "l2"})
    assert [(tr, sp) for tr, sp, _ in cached.links] == [(leader_trace, lead_gen.span_id)]
    assert "traceparent" not in hit["result"]  # the link's context is not part of the answer


def test_an_unparsable_traceparent_starts_a_new_trace_and_fails_nothing(traced: Traced) -> None:
    t = traced
    bad = "00-not-a-trace-id-zz"
    job_id = enqueue(
        TaskName.QUERY, {"question": "What runs tasks?"}, settings=t.settings, headers={"traceparent": bad}
    )
    assert wait_job(t.settings, job_id)["status"] == "done"
    r = httpx.post(
        f"{t.base}/v1/queries", json={"question": "What is Celery?"}, headers={"traceparent": bad}, timeout=10
    )
    assert r.status_code == 202, r.text
    assert wait_job(t.settings, r.json()["job_id"])["status"] == "done"
    by_name, by_name_gen = _query_spans(t, job_id)
    assert by_name.parent_span_id == "" and by_name_gen.trace_id == by_name.trace_id  # a new root
    over_http, _ = _query_spans(t, r.json()["job_id"])
    wait_for(lambda: any(s.kind == SERVER for s in t.receiver.trace(over_http.trace_id)), timeout=10)
    server = _one([s for s in t.receiver.trace(over_http.trace_id) if s.kind == SERVER], "server span")
    assert server.parent_span_id == ""  # the API's span is the new root


def test_a_failed_job_is_a_failed_span_with_its_error_code(traced: Traced) -> None:
    job_id = enqueue(TaskName.QUERY, {"question": ""}, settings=traced.settings)  # an empty question
    assert wait_job(traced.settings, job_id)["error"]["code"] == "invalid_payload"
    span = traced.receiver.wait_for("run ragfleet.query", **{"ragfleet.job_id": job_id})
    assert span.attributes["ragfleet.error_code"] == "invalid_payload"
    assert span.status_code == 2  # ERROR


# --- the raw messages of the three enqueue paths -------------------------------------------------------

_PROBE = r"""
import asyncio, json, sys
import httpx
from ragfleet import answering, tracing
from ragfleet.names import Priority, TaskName
from ragfleet.producer import enqueue
from ragfleet.resources import Resources
from ragfleet.schemas import QueryPayload
from ragfleet.settings import get_settings

producer_tp, own_tp = sys.argv[1], sys.argv[2]
assert tracing.setup("probe")
s = get_settings()
from api_shim.app import create_app
app = create_app(s)
out = {}

async def api():
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as c:
        r = await c.post("/v1/queries", json={"question": "API"}, headers={"traceparent": producer_tp})
        out["api"] = r.json()["job_id"]
        r = await c.post("/v1/queries", json={"question": "bad header"}, headers={"traceparent": "zz-bad"})
        out["bad"] = r.json()["job_id"]

asyncio.run(api())
with tracing.span("a producer's span"):
    out["by_name_tp"] = tracing.current_traceparent()
    out["by_name"] = enqueue(TaskName.QUERY, {"question": "by name"}, settings=s)
out["own"] = enqueue(TaskName.QUERY, {"question": "own"}, settings=s, headers={"traceparent": own_tp})
with tracing.span("the retrieval task's span"):
    out["handoff_tp"] = tracing.current_traceparent()
    out["handoff"] = "handoff-" + producer_tp[3:11]
    p = QueryPayload(question="hand off", job_id=out["handoff"])
    answering.retrieve(Resources(s), p, priority=Priority.DEFAULT)
tracing.shutdown()
print(json.dumps(out))
"""


def test_traceparent_is_in_the_messages_of_all_three_enqueue_paths(
    base_settings: Settings, tmp_path: Path, redis_client: redis.Redis
) -> None:
    """The API's MULTI, the producer by name and the retrieval stage's hand-off all put the current
    context in the Celery headers (no worker runs here: the messages stay in Redis to be read)."""
    receiver = OtlpReceiver().start()
    # the hop forced: with no LLM the retrieval stage would answer inline and hand nothing off
    s = isolated(
        base_settings, "otel-msgs", data_dir=tmp_path / "data", search_mode="fts", inline_extractive=False
    )
    producer_tp = f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01"
    own_tp = f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01"
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _PROBE, producer_tp, own_tp],
            cwd=REPO,
            env={**settings_env(s), **otel_env(receiver)},
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        receiver.stop()
    assert proc.returncode == 0, proc.stderr[-3000:]
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    headers: dict[str, dict[str, Any]] = {}
    for key in redis_client.scan_iter(f"{s.broker_key_prefix}*"):
        if redis_client.type(key) == "list":
            for raw in redis_client.lrange(key, 0, -1):
                h = json.loads(raw)["headers"]
                headers[h["id"]] = h
    # the API continues the producer's trace (its enqueue span is the parent); a bad header starts a new one
    api_tp = TRACEPARENT.match(headers[out["api"]]["traceparent"])
    assert api_tp and api_tp.group(1) == producer_tp[3:35] and api_tp.group(2) != producer_tp[36:52]
    assert redis_client.hget(s.key("job", out["api"]), "traceparent") == headers[out["api"]]["traceparent"]
    bad_tp = TRACEPARENT.match(headers[out["bad"]]["traceparent"])
    assert bad_tp and bad_tp.group(1) not in (producer_tp, own_tp)
    # by name: the current span's context; a producer's own `traceparent` header is kept
    assert headers[out["by_name"]]["traceparent"] == out["by_name_tp"]
    assert headers[out["own"]]["traceparent"] == own_tp
    # the hand-off to generation, and the stream entry written with it
    assert headers[f"{out['handoff']}:gen"]["traceparent"] == out["handoff_tp"]
    entries = redis_client.xrange(s.key("events", out["handoff"]))
    assert [e[1]["traceparent"] for e in entries] == [out["handoff_tp"]]
