"""Batch query jobs end to end: real workers, real Redis, a real uvicorn server of the API.

The 1,000-question SciFact batch also measures what the batch costs interactive users: the P50/P99
latency of single queries (cache off) with no batch running and while the batch runs, in the same
test, printed and written to bench/out/batch_latency.json.
"""

from __future__ import annotations

import csv
import json
import statistics
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from ragfleet.client import FleetClient
from ragfleet.producer import client_app
from ragfleet.settings import Settings
from tests.conftest import REPO, need, scifact_dir
from tests.fleet import Fleet
from tests.helpers import api_client, index, wait_for, wait_job
from tests.integration.test_fleet_e2e import DOCS

pytestmark = [pytest.mark.redis, pytest.mark.workers, pytest.mark.model]

SCIFACT = scifact_dir()
KEY = "batch-key-" + uuid.uuid4().hex[:8]
OTHER_KEY = "batch-other-" + uuid.uuid4().hex[:8]


@pytest.fixture(scope="module")
def batch_settings(base_settings: Settings) -> Settings:
    return base_settings.model_copy(
        update={
            "api_keys": f"{KEY}:default,{OTHER_KEY}:other",
            "rate_limit": "100000/minute",
            "max_batch_questions": 2_000,
            "long_poll_max_s": 30.0,
        }
    )


@pytest.fixture(scope="module")
def api(fleet: Fleet, batch_settings: Settings) -> Iterator[httpx.Client]:
    assert index(batch_settings, DOCS)["status"] == "done"
    with api_client(batch_settings, headers={"Authorization": f"Bearer {KEY}"}, timeout=30) as client:
        yield client


def wait_batch(api: httpx.Client, batch_id: str, timeout: float = 120) -> dict[str, Any]:
    """The batch's status body (as the API serves it) once the batch is terminal."""

    def probe() -> dict[str, Any] | None:
        body: dict[str, Any] = api.get(f"/v1/batches/{batch_id}").json()
        return body if body["status"] in ("done", "failed", "cancelled") else None

    return wait_for(probe, timeout=timeout, interval=0.1, what=f"batch {batch_id} finished")


def results(api: httpx.Client, batch_id: str) -> list[dict[str, Any]]:
    r = api.get(f"/v1/batches/{batch_id}/results")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
    return [json.loads(line) for line in r.text.splitlines()]


def test_json_batch_answers_in_input_order_with_per_question_errors_absent(api: httpx.Client) -> None:
    questions = [
        "What is Redis used as?",
        {"question": "Which database stores vectors?", "top_k": 2, "id": "q2"},
    ]
    r = api.post("/v1/batches", json={"questions": questions, "use_cache": False})
    assert r.status_code == 202, r.text
    batch_id = r.json()["batch_id"]
    assert r.headers["location"] == f"/v1/batches/{batch_id}"
    final = wait_batch(api, batch_id)
    assert final["status"] == "done"
    assert final["progress"] == {"total": 2, "done": 2, "failed": 0, "dispatched": 2}
    rows = results(api, batch_id)
    assert [row["index"] for row in rows] == [0, 1]
    assert (
        rows[0]["question"] == "What is Redis used as?"
        and rows[0]["result"]["sources"][0]["doc_id"] == "redis"
    )
    assert rows[1]["id"] == "q2" and len(rows[1]["result"]["sources"]) == 2
    # the batch is also a job record, and its items are ordinary query jobs
    assert api.get(f"/v1/jobs/{batch_id}").json()["kind"] == "batch"
    assert api.get(f"/v1/jobs/{rows[0]['job_id']}").json()["status"] == "done"


def test_jsonl_body_and_multipart_upload(api: httpx.Client) -> None:
    jsonl = '"What is Celery?"\n\n{"question": "What is LanceDB?"}\n'
    r = api.post("/v1/batches", content=jsonl, headers={"Content-Type": "application/x-ndjson"})
    assert r.status_code == 202, r.text
    r2 = api.post("/v1/batches", files={"file": ("q.jsonl", jsonl.encode(), "application/jsonl")})
    assert r2.status_code == 202, r2.text
    for resp in (r, r2):
        batch_id = resp.json()["batch_id"]
        assert resp.json()["total"] == 2
        assert wait_batch(api, batch_id)["status"] == "done"
        assert [row["question"] for row in results(api, batch_id)] == ["What is Celery?", "What is LanceDB?"]


def test_invalid_batches_are_rejected_whole_with_reasons(api: httpx.Client, batch_settings: Settings) -> None:
    r = api.post("/v1/batches", json={"questions": ["ok", "   ", {"question": "x", "top_k": 0}]})
    assert r.status_code == 422
    locs = [e["loc"] for e in r.json()["detail"]]
    assert ["body", "questions", 1] in [loc[:3] for loc in locs]
    assert any(loc[:3] == ["body", "questions", 2] for loc in locs)
    too_many = ["q"] * (batch_settings.max_batch_questions + 1)
    assert api.post("/v1/batches", json={"questions": too_many}).status_code == 422
    # optional fields may be left out, not sent as null (the schema has no null; schemathesis found it)
    for body in ({"questions": ["q"], "top_k": None}, {"questions": [{"question": "q", "use_cache": None}]}):
        r = api.post("/v1/batches", json=body)
        assert r.status_code == 422, (body, r.text)
        assert "not null" in r.text
    assert (
        api.post(
            "/v1/batches", content="not json\n", headers={"Content-Type": "application/x-ndjson"}
        ).status_code
        == 422
    )
    assert (
        api.post("/v1/batches", content="{", headers={"Content-Type": "application/json"}).status_code == 400
    )
    assert api.post("/v1/batches", content="x", headers={"Content-Type": "text/csv"}).status_code == 415
    other = {"Authorization": f"Bearer {OTHER_KEY}"}
    batch_id = api.post("/v1/batches", json={"questions": ["What is Redis?"]}).json()["batch_id"]
    assert api.get(f"/v1/batches/{batch_id}", headers=other).status_code == 404
    assert api.delete(f"/v1/batches/{batch_id}", headers=other).status_code == 404
    assert api.get(f"/v1/batches/{batch_id}/results", headers=other).status_code == 404


def test_batch_submitted_by_task_name(fleet: Fleet, batch_settings: Settings, api: httpx.Client) -> None:
    batch_id = uuid.uuid4().hex
    client_app(batch_settings).send_task(
        "ragfleet.batch.dispatch",
        kwargs={"payload": {"questions": ["What is Redis?", {"question": "What is Celery?"}], "top_k": 3}},
        task_id=batch_id,
        queue="retrieval",
    )
    assert wait_job(batch_settings, batch_id)["status"] == "done"
    rows = results(api, batch_id)
    assert [len(r["result"]["sources"]) for r in rows] == [3, 3]
    bad = uuid.uuid4().hex
    client_app(batch_settings).send_task(
        "ragfleet.batch.dispatch", kwargs={"payload": {"questions": [""]}}, task_id=bad, queue="retrieval"
    )
    rec = wait_job(batch_settings, bad)
    assert rec["status"] == "failed" and rec["error"]["code"] == "invalid_payload"


def test_python_client_batch_over_http(api: httpx.Client) -> None:
    client = FleetClient.over_http(str(api.base_url), api_key=KEY)
    batch_id = client.batch(["What is Redis?", "What is LanceDB?", "What is Celery?"], use_cache=False)
    rows = list(client.batch_results(batch_id, timeout=60))
    assert [r["index"] for r in rows] == [0, 1, 2] and all(r["status"] == "done" for r in rows)
    assert client.batch_status(batch_id)["progress"]["done"] == 3


# --- the big one ------------------------------------------------------------------------------


def scifact() -> tuple[list[dict[str, Any]], list[str]]:
    need((SCIFACT / "queries.jsonl").exists(), f"SciFact data missing in {SCIFACT}")
    with (SCIFACT / "qrels" / "dev.tsv").open() as fh:
        qrels = list(csv.DictReader(fh, delimiter="\t"))
    wanted = {row["corpus-id"] for row in qrels}
    dev_queries = {row["query-id"] for row in qrels}
    docs = []
    with (SCIFACT / "corpus.jsonl").open() as fh:
        for line in fh:
            d = json.loads(line)
            if d["_id"] in wanted:
                docs.append({"id": d["_id"], "title": d.get("title") or None, "text": d["text"]})
    queries = [json.loads(line) for line in (SCIFACT / "queries.jsonl").open()]
    dev = [q["text"] for q in queries if q["_id"] in dev_queries]
    rest = [q["text"] for q in queries if q["_id"] not in dev_queries]
    return docs[:200], dev + rest


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def timed_query(api: httpx.Client, question: str) -> tuple[float, float]:
    """(client-observed ms through the API's long poll, job record ms from enqueue to answer)."""
    t0 = time.perf_counter()
    r = api.post("/v1/queries", params={"wait": 20}, json={"question": question, "use_cache": False})
    elapsed = (time.perf_counter() - t0) * 1000
    assert r.status_code == 200 and r.json()["status"] == "done", r.text
    rec = r.json()
    return elapsed, (rec["updated_at"] - rec["created_at"]) * 1000


@pytest.mark.slow
def test_thousand_question_batch_keeps_interactive_latency_and_cancel_works(
    api: httpx.Client, batch_settings: Settings
) -> None:
    docs, questions = scifact()
    t_index = time.perf_counter()
    for start in range(0, len(docs), 100):
        assert index(batch_settings, docs[start : start + 100], tenant="default")["status"] == "done"
    index_s = time.perf_counter() - t_index
    # 500 distinct questions twice: the second copy is answered from the cache (kept fast for CI)
    batch_qs = questions[:500] * 2
    probes = [q + " (interactive)" for q in questions[-120:]]

    for q in probes[:5]:  # warm the path (first use of each code path in each process)
        timed_query(api, q)
    baseline = [timed_query(api, q) for q in probes[5:35]]

    t0 = time.perf_counter()
    r = api.post("/v1/batches", json={"questions": batch_qs})
    assert r.status_code == 202, r.text
    batch_id = r.json()["batch_id"]
    during: list[tuple[float, float]] = []
    status: dict[str, Any] = {}
    for q in probes[35:]:
        status = api.get(f"/v1/batches/{batch_id}").json()
        if status["status"] != "running":
            break
        # the window bounds what the batch puts on the queues at any time
        assert (
            status["progress"]["dispatched"] - status["progress"]["done"] - status["progress"]["failed"] <= 8
        )
        during.append(timed_query(api, q))
    final = wait_batch(api, batch_id, timeout=180)
    batch_s = time.perf_counter() - t0

    assert final["status"] == "done", final
    assert final["progress"]["done"] == 1000 and final["progress"]["failed"] == 0
    rows = results(api, batch_id)
    assert [row["index"] for row in rows] == list(range(1000))
    assert [row["question"] for row in rows] == batch_qs
    assert all(row["status"] == "done" and row["result"]["answer"] for row in rows)

    # cancel a second batch: nothing more is dispatched, in-flight questions may finish
    r = api.post("/v1/batches", json={"questions": questions[:400], "use_cache": False})
    second = r.json()["batch_id"]
    time.sleep(0.3)
    cancelled = api.delete(f"/v1/batches/{second}").json()
    assert cancelled["status"] == "cancelled"
    time.sleep(1.0)
    after = api.get(f"/v1/batches/{second}").json()
    assert after["status"] == "cancelled"
    assert after["progress"]["dispatched"] <= cancelled["progress"]["dispatched"] + 0
    assert after["progress"]["done"] + after["progress"]["failed"] <= after["progress"]["dispatched"] < 400
    rows2 = results(api, second)
    assert len(rows2) == 400
    assert {row["status"] for row in rows2[after["progress"]["dispatched"] :]} == {"cancelled"}
    assert rows2[-1]["error"]["code"] == "cancelled"

    report = {
        "batch_questions": 1000,
        "batch_seconds": round(batch_s, 1),
        "batch_questions_per_s": round(1000 / batch_s, 1),
        "index_docs": len(docs),
        "index_seconds": round(index_s, 1),
        "interactive_without_batch_ms": summary([c for c, _ in baseline]),
        "interactive_during_batch_ms": summary([c for c, _ in during]),
        "interactive_without_batch_server_ms": summary([j for _, j in baseline]),
        "interactive_during_batch_server_ms": summary([j for _, j in during]),
        "cancelled_batch_dispatched": after["progress"]["dispatched"],
    }
    out = REPO / "bench" / "out" / "batch_latency.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print("\nbatch latency report:", json.dumps(report, indent=2))
    assert len(during) >= 5, "the batch finished before interactive queries could be measured"


def summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50": round(statistics.median(values), 1),
        "p99": round(percentile(values, 99), 1),
        "max": round(max(values), 1),
    }
