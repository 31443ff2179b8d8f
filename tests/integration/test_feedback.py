"""The feedback loop end to end: real worker processes, real Redis, real model, a real SQLite file,
a real webhook receiver and the real HTTP API (uvicorn in a thread)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from ragfleet.feedback import repository
from ragfleet.feedback.models import Feedback
from ragfleet.names import TaskName
from ragfleet.producer import enqueue
from ragfleet.settings import Settings
from tests.fleet import POOLS, Fleet, Worker
from tests.helpers import api_client, ask, index, wait_job
from tests.integration.test_fleet_e2e import DOCS
from tests.unit.test_feedback_service import Webhook, seed

pytestmark = [pytest.mark.redis, pytest.mark.workers, pytest.mark.model]

KEY_A, KEY_B = "fb-key-a-" + uuid.uuid4().hex[:8], "fb-key-b-" + uuid.uuid4().hex[:8]


@pytest.fixture(scope="module")
def webhook() -> Iterator[Webhook]:
    with Webhook() as hook:
        yield hook


@pytest.fixture(scope="module")
def fb_settings(
    base_settings: Settings, tmp_path_factory: pytest.TempPathFactory, webhook: Webhook
) -> Settings:
    """The session's Redis prefix and data dir (so the fleet's query jobs are visible), plus a
    feedback database of this module's own and the webhook receiver."""
    db = tmp_path_factory.mktemp("feedback") / "feedback.db"
    return base_settings.model_copy(
        update={"feedback_db_url": f"sqlite:///{db}", "feedback_alert_webhook": webhook.url}
    )


@pytest.fixture(scope="module")
def feedback_worker(
    fleet: Fleet, fb_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Worker]:
    queues, pool, concurrency = POOLS["feedback"]
    worker = Worker("feedback", queues, pool, concurrency, fb_settings, tmp_path_factory.mktemp("fb-logs"))
    try:
        worker.start().wait_ready()
        yield worker
    finally:
        worker.stop()
        repository.dispose_engines()


@pytest.fixture(scope="module")
def answered(fleet: Fleet, base_settings: Settings) -> dict[str, Any]:
    assert index(base_settings, DOCS)["status"] == "done"
    q = ask(base_settings, "Which database stores vectors on local disk?", use_cache=False)
    assert q["status"] == "done", q
    return q


def rate(settings: Settings, payload: dict[str, Any]) -> dict[str, Any]:
    """Send like any producer: the task id is a fresh feedback job id, the payload names the rated job."""
    job_id = enqueue(TaskName.FEEDBACK_RECORD, payload, settings=settings, job_id=uuid.uuid4().hex)
    return wait_job(settings, job_id, timeout=30)


def rows(settings: Settings, **where: Any) -> list[Feedback]:
    sessions = repository.get_session_factory(settings.feedback_db_url)
    with sessions() as s:
        stmt = select(Feedback).filter_by(**where).order_by(Feedback.created_at)
        return list(s.scalars(stmt).all())


def test_worker_migrates_the_schema_before_taking_work(
    feedback_worker: Worker, fb_settings: Settings
) -> None:
    assert repository.current_revision(fb_settings.feedback_db_url) == "0001"
    assert "feedback_schema_ready" in feedback_worker.output()


def test_rating_is_stored_with_the_question_answer_and_sources(
    feedback_worker: Worker, fb_settings: Settings, answered: dict[str, Any]
) -> None:
    rec = rate(fb_settings, {"job_id": answered["job_id"], "rating": 2, "comment": "missed the point"})
    assert rec["status"] == "done", rec
    assert rec["kind"] == "feedback"
    assert rec["result"]["rated_job_id"] == answered["job_id"]
    assert rec["stages"]["feedback"]["worker"] == feedback_worker.node

    [row] = rows(fb_settings, id=rec["job_id"])
    result = answered["result"]
    assert row.job_id == answered["job_id"] and row.tenant == "default"
    assert (row.rating, row.comment) == (2, "missed the point")
    assert row.question == result["question"] == "Which database stores vectors on local disk?"
    assert row.answer == result["answer"] and "[1]" in row.answer
    assert [s["doc_id"] for s in row.sources] == [s["doc_id"] for s in result["sources"]]


def test_rating_what_cannot_be_rated_fails_with_an_error_code(
    feedback_worker: Worker, fb_settings: Settings, answered: dict[str, Any], base_settings: Settings
) -> None:
    missing = rate(fb_settings, {"job_id": "no-such-job", "rating": 3})
    assert missing["status"] == "failed" and missing["error"]["code"] == "not_found"

    other_tenant = rate(fb_settings, {"job_id": answered["job_id"], "rating": 3, "tenant": "b"})
    assert other_tenant["error"]["code"] == "not_found"

    index_job = index(base_settings, DOCS[:1])
    not_query = rate(fb_settings, {"job_id": index_job["job_id"], "rating": 3})
    assert not_query["error"]["code"] == "invalid_payload" and "only queries" in not_query["error"]["message"]

    bad = rate(fb_settings, {"job_id": answered["job_id"], "rating": 9})
    assert bad["status"] == "failed" and bad["error"]["code"] == "invalid_payload"
    assert "rating" in bad["error"]["message"]
    # the rated job's record is never touched by a failing feedback job
    assert wait_job(base_settings, answered["job_id"])["status"] == "done"
    assert rows(fb_settings, job_id="no-such-job") == []


def test_aggregate_task_alerts_on_a_bad_hour(
    feedback_worker: Worker, fb_settings: Settings, webhook: Webhook
) -> None:
    sessions = repository.get_session_factory(fb_settings.feedback_db_url)
    seed(sessions, [1] * 12, datetime.now(UTC))  # whatever else this module rated, the hour is bad
    before = len(webhook.bodies)
    job_id = enqueue(TaskName.FEEDBACK_AGGREGATE, {}, settings=fb_settings, job_id=uuid.uuid4().hex)
    rec = wait_job(fb_settings, job_id, timeout=30)
    assert rec["status"] == "done", rec
    result = rec["result"]
    assert result["alert"] is True and result["count"] >= 12 and result["avg"] < 3.5
    assert result["webhook"] == {"ok": True, "status": 204}
    assert len(webhook.bodies) == before + 1
    assert webhook.bodies[-1]["event"] == "feedback_quality_alert"
    assert webhook.bodies[-1]["count"] == result["count"]
    lines = [json.loads(x) for x in feedback_worker.output().splitlines() if "feedback_quality_alert" in x]
    assert lines, "no alert line in the worker log"
    assert lines[-1]["level"] == "warning" and lines[-1]["count"] == result["count"]


# --- the HTTP route ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def api(fb_settings: Settings, feedback_worker: Worker) -> Iterator[httpx.Client]:
    settings = fb_settings.model_copy(
        update={"api_keys": f"{KEY_A}:default,{KEY_B}:tenant-b", "rate_limit": "10000/minute"}
    )
    with api_client(settings) as client:  # create_app mounts the feedback routes itself
        yield client


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_post_feedback_enqueues_and_the_pool_records_it(
    api: httpx.Client, fb_settings: Settings, answered: dict[str, Any]
) -> None:
    r = api.post(
        "/v1/feedback",
        json={"job_id": answered["job_id"], "rating": 5, "comment": "spot on"},
        headers=auth(KEY_A),
    )
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["status"] == "queued" and body["job_id"] != answered["job_id"]
    assert r.headers["Location"] == f"/v1/jobs/{body['job_id']}"
    rec = wait_job(fb_settings, body["job_id"], timeout=30)
    assert rec["status"] == "done", rec
    assert rec["request_id"]  # the API's request id travelled with the job
    [row] = rows(fb_settings, id=body["job_id"])
    assert (row.rating, row.comment, row.job_id) == (5, "spot on", answered["job_id"])
    # and the job record is readable through the API by its tenant
    assert api.get(f"/v1/jobs/{body['job_id']}", headers=auth(KEY_A)).json()["kind"] == "feedback"


@pytest.mark.parametrize("rating", [0, 6, "5", None, 4.5, True])
def test_post_feedback_rejects_a_bad_rating(api: httpx.Client, answered: dict[str, Any], rating: Any) -> None:
    r = api.post("/v1/feedback", json={"job_id": answered["job_id"], "rating": rating}, headers=auth(KEY_A))
    assert r.status_code == 422, r.text
    assert any(err["loc"][-1] == "rating" for err in r.json()["detail"])


def test_post_feedback_404_for_missing_or_other_tenants_job(
    api: httpx.Client, answered: dict[str, Any]
) -> None:
    missing = api.post("/v1/feedback", json={"job_id": "nope", "rating": 3}, headers=auth(KEY_A))
    assert missing.status_code == 404 and missing.json() == {"detail": "job not found"}
    # tenant-b cannot rate (nor learn about) tenant default's job
    other = api.post("/v1/feedback", json={"job_id": answered["job_id"], "rating": 3}, headers=auth(KEY_B))
    assert other.status_code == 404
    anonymous = api.post("/v1/feedback", json={"job_id": answered["job_id"], "rating": 3})
    assert anonymous.status_code == 401


def test_post_feedback_is_documented(api: httpx.Client) -> None:
    op = api.get("/openapi.json").json()["paths"]["/v1/feedback"]["post"]
    assert {"202", "404", "422", "401", "503"} <= set(op["responses"])
    schema = api.get("/openapi.json").json()["components"]["schemas"]["FeedbackRequest"]
    assert schema["properties"]["rating"]["minimum"] == 1 and schema["properties"]["rating"]["maximum"] == 5
