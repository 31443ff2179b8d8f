"""The HTTP API against a real Redis, served by a real uvicorn server on a free port.

What is checked is what a client sees on the wire: status codes, `{"detail": ...}` bodies, headers
(`Retry-After`, `X-Request-ID`, `Location`), the message that lands on the broker queue and the job
record in Redis.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from pydantic import ValidationError

from ragfleet.events import JobEvents, finish_query
from ragfleet.jobs import JobStore
from ragfleet.names import Queue
from ragfleet.producer import client_app
from ragfleet.schemas import ErrorCode, clean_text
from ragfleet.settings import Settings
from tests.conftest import REPO, RedisServer, settings_env
from tests.helpers import api_client, isolated, wait_for
from tests.helpers import serve as serve  # moved to tests/helpers.py; importable here for older imports

pytestmark = pytest.mark.redis

KEY_A, KEY_B = "key-a-" + uuid.uuid4().hex[:8], "key-b-" + uuid.uuid4().hex[:8]
AUTH_A = {"Authorization": f"Bearer {KEY_A}"}
AUTH_B = {"X-API-Key": KEY_B}


@pytest.fixture(scope="module")
def api_settings(base_settings: Settings) -> Settings:
    # Its own key prefix (cleaned with the session's): these tests inspect the messages the API
    # leaves on the queues, which the session fleet's workers would otherwise consume, whatever
    # test started that fleet earlier.
    prefix = f"{base_settings.key_prefix}-api"
    return base_settings.model_copy(
        update={
            "key_prefix": prefix,
            "broker_key_prefix": f"{prefix}:q:",
            "api_keys": f"{KEY_A}:tenant-a, {KEY_B}:tenant-b",
            "rate_limit": "10000/minute",
            "max_documents_per_request": 3,
            "max_document_chars": 1_000,
            "max_question_chars": 200,
            "max_top_k": 20,
            "max_request_bytes": 20_000,
            "long_poll_max_s": 2.0,
        }
    )


@pytest.fixture(scope="module")
def api(api_settings: Settings) -> Iterator[httpx.Client]:
    with api_client(api_settings) as client:
        yield client


@pytest.fixture(scope="module")
def jobs(api_settings: Settings, redis_client: redis.Redis) -> JobStore:
    return JobStore(redis_client, api_settings)


def take_task(
    settings: Settings,
    queue: Queue,
    job_id: str | None = None,
    *,
    request_id: str | None = None,
    timeout: float = 3.0,
) -> dict[str, Any]:
    """Pop messages off `queue` (this session's broker prefix, no worker consumes it) until ours,
    matched by job id or by the request id in its payload: the test plays the worker."""
    app = client_app(settings)
    with app.connection_for_read() as conn:
        q = conn.SimpleQueue(queue.value)
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                try:
                    msg = q.get(block=True, timeout=max(0.05, deadline - time.monotonic()))
                except q.Empty:
                    break
                msg.ack()
                _args, kwargs, _embed = msg.payload
                payload = kwargs["payload"]
                if msg.headers.get("id") == job_id or (
                    request_id and payload.get("request_id") == request_id
                ):
                    return {"headers": msg.headers, "payload": payload, "priority": msg.properties}
        finally:
            q.close()
    raise AssertionError(f"no message for job {job_id} / request {request_id} on queue {queue.value}")


def assert_detail(resp: httpx.Response, status: int) -> Any:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert "detail" in body, body
    return body["detail"]


# --- happy paths: message on the right queue, job record created --------------------------------


def test_post_documents_enqueues_index_task_and_creates_job(
    api: httpx.Client, api_settings: Settings, jobs: JobStore
) -> None:
    docs = [{"id": "d1", "text": "hello world", "title": "T", "metadata": {"lang": "en", "n": 2}}]
    resp = api.post("/v1/documents", json={"documents": docs}, headers={**AUTH_A, "X-Request-ID": "req-123"})
    assert resp.status_code == 202, resp.text
    body = resp.json()
    assert body["status"] == "queued"
    job_id = body["job_id"]
    assert resp.headers["x-request-id"] == "req-123"
    assert resp.headers["location"] == f"/v1/jobs/{job_id}"

    record = jobs.get(job_id)
    assert record is not None
    assert (record.kind, record.status, record.tenant, record.request_id) == (
        "index",
        "queued",
        "tenant-a",
        "req-123",
    )

    msg = take_task(api_settings, Queue.INDEXING, job_id)
    assert msg["headers"]["task"] == "ragfleet.index_documents"
    payload = msg["payload"]
    assert payload["tenant"] == "tenant-a"
    assert payload["request_id"] == "req-123"
    assert payload["job_id"] == job_id
    assert payload["documents"] == [
        {"id": "d1", "text": "hello world", "title": "T", "metadata": {"lang": "en", "n": 2}}
    ]


def test_post_query_enqueues_interactive_query_task(
    api: httpx.Client, api_settings: Settings, jobs: JobStore
) -> None:
    resp = api.post("/v1/queries", json={"question": "what is x?", "top_k": 7, "mode": "fts"}, headers=AUTH_B)
    assert resp.status_code == 202, resp.text
    job_id = resp.json()["job_id"]
    rid = resp.headers["x-request-id"]
    assert len(rid) == 32  # generated uuid4 hex when the caller sent none

    record = jobs.get(job_id)
    assert record is not None
    assert (record.kind, record.tenant, record.request_id) == ("query", "tenant-b", rid)

    msg = take_task(api_settings, Queue.RETRIEVAL, job_id)
    assert msg["headers"]["task"] == "ragfleet.query"
    assert msg["headers"]["expires"] is not None  # a query nobody waits for must not burn a worker
    assert msg["priority"]["priority"] == 0
    p = msg["payload"]
    assert (p["question"], p["top_k"], p["mode"], p["tenant"], p["request_id"]) == (
        "what is x?",
        7,
        "fts",
        "tenant-b",
        rid,
    )


def test_delete_document_enqueues_delete_for_callers_tenant(
    api: httpx.Client, api_settings: Settings, jobs: JobStore
) -> None:
    resp = api.delete("/v1/documents/docs/readme.md", headers=AUTH_A)
    assert resp.status_code == 202, resp.text
    job_id = resp.json()["job_id"]
    record = jobs.get(job_id)
    assert record is not None
    assert record.kind == "delete"
    assert record.tenant == "tenant-a"
    msg = take_task(api_settings, Queue.INDEXING, job_id)
    assert msg["headers"]["task"] == "ragfleet.delete_document"
    assert msg["payload"]["doc_id"] == "docs/readme.md"
    assert msg["payload"]["tenant"] == "tenant-a"


def test_job_is_readable_by_its_tenant_only(api: httpx.Client) -> None:
    job_id = api.post("/v1/queries", json={"question": "mine"}, headers=AUTH_A).json()["job_id"]
    own = api.get(f"/v1/jobs/{job_id}", headers=AUTH_A)
    assert own.status_code == 200
    assert own.json()["job_id"] == job_id
    assert own.json()["tenant"] == "tenant-a"
    other = api.get(f"/v1/jobs/{job_id}", headers=AUTH_B)
    assert assert_detail(other, 404) == "job not found"


def test_unknown_job_is_404(api: httpx.Client) -> None:
    assert assert_detail(api.get(f"/v1/jobs/{uuid.uuid4().hex}", headers=AUTH_A), 404) == "job not found"


# --- validation at the edge ----------------------------------------------------------------------

LONG_Q = "q" * 201
DOC = {"id": "ok", "text": "fine"}


@pytest.mark.parametrize(
    ("path", "body", "loc"),
    [
        ("/v1/queries", {"question": ""}, ["body", "question"]),
        ("/v1/queries", {"question": " \n\t "}, ["body", "question"]),
        ("/v1/queries", {"question": "\x01\x02"}, ["body", "question"]),
        ("/v1/queries", {"question": LONG_Q}, ["body", "question"]),
        ("/v1/queries", {"question": "q", "top_k": 0}, ["body", "top_k"]),
        ("/v1/queries", {"question": "q", "top_k": 21}, ["body", "top_k"]),
        ("/v1/queries", {"question": "q", "top_k": "5"}, ["body", "top_k"]),
        ("/v1/queries", {"question": "q", "mode": "magic"}, ["body", "mode"]),
        ("/v1/queries", {"question": "q", "tenant": "tenant-b"}, ["body", "tenant"]),
        ("/v1/documents", {"documents": []}, ["body", "documents"]),
        ("/v1/documents", {"documents": [DOC] * 4}, ["body", "documents"]),
        (
            "/v1/documents",
            {"documents": [DOC, {"id": "big", "text": "x" * 1_001}]},
            ["body", "documents", 1, "text"],
        ),
        ("/v1/documents", {"documents": [DOC, DOC, {"text": "no id"}]}, ["body", "documents", 2, "id"]),
        ("/v1/documents", {"documents": [DOC, {"id": "b", "text": "   "}]}, ["body", "documents", 1, "text"]),
        ("/v1/documents", {"documents": [{"id": " ", "text": "t"}]}, ["body", "documents", 0, "id"]),
        ("/v1/documents", {"documents": [{**DOC, "tenant": "tenant-b"}]}, ["body", "documents", 0, "tenant"]),
    ],
)
def test_invalid_requests_are_422_with_location(
    api: httpx.Client, path: str, body: dict[str, Any], loc: list[Any]
) -> None:
    detail = assert_detail(api.post(path, json=body, headers=AUTH_A), 422)
    assert [e["loc"] for e in detail] == [loc], detail
    assert all(e["msg"] for e in detail)


def test_schema_patterns_agree_with_worker_validators_on_every_character() -> None:
    """The OpenAPI patterns must reject exactly what `DocumentIn` / `QueryPayload` reject."""
    from api_shim.models import ID_PATTERN, NOT_BLANK
    from ragfleet.schemas import DocumentIn

    not_blank = re.compile(NOT_BLANK)
    for code in range(0x110000):
        if 0xD800 <= code < 0xE000:  # lone surrogates cannot arrive in valid UTF-8 JSON
            continue
        c = chr(code)
        assert bool(not_blank.search(c)) == bool(clean_text(c).strip()), hex(code)
    for c in ("a", " ", "\x85", "\ufeff", "\x01", "a\x7f", " a ", "\u3000b", "a\tb"):
        try:
            DocumentIn(id=c, text="t")
            worker_ok = True
        except ValidationError:
            worker_ok = False
        assert bool(ID_PATTERN.search(c)) == worker_ok, repr(c)


def test_unparsable_json_is_422_and_undecodable_body_400(api: httpx.Client) -> None:
    headers = {**AUTH_A, "Content-Type": "application/json"}
    detail = assert_detail(api.post("/v1/queries", content=b'{"question": ', headers=headers), 422)
    assert detail[0]["type"] == "json_invalid"
    assert isinstance(assert_detail(api.post("/v1/queries", content=b"\xff\xfe{", headers=headers), 400), str)


def test_oversized_body_is_413_by_content_length_and_by_bytes_read(api: httpx.Client) -> None:
    big = json.dumps({"documents": [{"id": "x", "text": "y" * 25_000}]}).encode()
    headers = {**AUTH_A, "Content-Type": "application/json"}
    assert "20000 bytes" in assert_detail(api.post("/v1/documents", content=big, headers=headers), 413)

    def chunked() -> Iterator[bytes]:  # no Content-Length: the limit must count bytes
        for i in range(0, len(big), 4_096):
            yield big[i : i + 4_096]

    resp = api.post("/v1/documents", content=chunked(), headers=headers)
    assert "content-length" not in resp.request.headers
    assert_detail(resp, 413)


# --- auth and rate limits ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer nope"}, {"X-API-Key": "nope"}, {"Authorization": f"Basic {KEY_A}"}],
)
def test_missing_or_invalid_key_is_401(api: httpx.Client, headers: dict[str, str]) -> None:
    resp = api.post("/v1/queries", json={"question": "q"}, headers=headers)
    assert assert_detail(resp, 401) in ("missing API key", "invalid API key")
    assert resp.headers["www-authenticate"] == "Bearer"
    assert_detail(api.get(f"/v1/jobs/{uuid.uuid4().hex}", headers=headers), 401)


def test_rate_limit_is_429_with_retry_after(base_settings: Settings, redis_client: redis.Redis) -> None:
    key = "rl-" + uuid.uuid4().hex[:8]
    prefix = f"{base_settings.key_prefix}-rl"  # its own: the test asserts nothing was written
    s = base_settings.model_copy(
        update={
            "api_keys": f"{key}:t-rl,other-{key}:t-rl2",
            "rate_limit": "3/minute",
            "key_prefix": prefix,
            "broker_key_prefix": f"{prefix}:q:",
        }
    )
    with api_client(s) as c:
        # three invalid submissions spend the submission budget (polls would not: they have their own)
        codes = [
            c.post("/v1/queries", json={"question": ""}, headers={"X-API-Key": key}).status_code
            for _ in range(3)
        ]
        assert codes == [422, 422, 422]
        # the query route checks the limit while it validates and builds the job (see Admission):
        # the cache path, the queue path and an invalid question are all refused, and nothing is written
        for body in ({"question": "q"}, {"question": "q", "use_cache": False}, {"question": ""}):
            resp = c.post("/v1/queries", json=body, headers={"X-API-Key": key})
            assert assert_detail(resp, 429).startswith("rate limit exceeded"), body
            assert resp.json()["limit"] == "submit"
            assert resp.json()["scope"] == "key"
            assert 1 <= int(resp.headers["retry-after"]) <= 60
        assert list(redis_client.scan_iter(f"{prefix}:job:*")) == []

        def queued() -> list[str]:  # kombu's binding sets are there too: the producer declared queues
            return [k for k in redis_client.scan_iter(f"{prefix}:q:*") if redis_client.type(k) == "list"]

        assert queued() == []
        # the limit is per key: another caller is not affected
        other = c.get(f"/v1/jobs/{uuid.uuid4().hex}", headers={"X-API-Key": f"other-{key}"})
        assert other.status_code == 404
        body = {"question": "q", "use_cache": False}
        resp = c.post("/v1/queries", json=body, headers={"X-API-Key": f"other-{key}"})
        assert resp.status_code == 202, resp.text
        assert redis_client.exists(f"{prefix}:job:{resp.json()['job_id']}")
        assert queued() == [f"{prefix}:q:retrieval"]  # what a refused query did not leave behind


def test_polling_has_its_own_budget_and_a_429_names_it(
    base_settings: Settings, redis_client: redis.Redis
) -> None:
    """A producer that submits and then polls must not be refused submissions because it polled,
    and a poll past the read budget is a 429 that says `read`."""
    key = "rd-" + uuid.uuid4().hex[:8]
    prefix = f"{base_settings.key_prefix}-rd"
    s = base_settings.model_copy(
        update={
            "api_keys": f"{key}:t-rd",
            "rate_limit": "2/minute",
            "read_rate_limit": "510/minute",
            "key_prefix": prefix,
            "broker_key_prefix": f"{prefix}:q:",
        }
    )
    auth = {"X-API-Key": key}
    with api_client(s) as c:
        submitted = [
            c.post("/v1/queries", json={"question": "q", "use_cache": False}, headers=auth) for _ in range(2)
        ]
        assert [r.status_code for r in submitted] == [202, 202]
        job_id = submitted[0].json()["job_id"]
        refused = c.post("/v1/queries", json={"question": "q", "use_cache": False}, headers=auth)
        assert assert_detail(refused, 429).startswith("rate limit exceeded")
        assert refused.json()["limit"] == "submit"
        started = time.monotonic()
        polls = [c.get(f"/v1/jobs/{job_id}", headers=auth).status_code for _ in range(500)]
        assert time.monotonic() - started < 60
        assert polls == [200] * 500  # submissions are limited all along; polls are not
        refused = c.post("/v1/queries", json={"question": "q", "use_cache": False}, headers=auth)
        assert refused.status_code == 429 and refused.json()["limit"] == "submit"
        # the read budget is its own, and finite: the 511th read (a batch or a stream counts too) is refused
        extra = [c.get(f"/v1/jobs/{job_id}", headers=auth).status_code for _ in range(9)]
        extra.append(c.get(f"/v1/batches/{uuid.uuid4().hex}", headers=auth).status_code)
        assert extra == [200] * 9 + [404]
        resp = c.get(f"/v1/jobs/{job_id}", headers=auth)
        assert assert_detail(resp, 429).startswith("rate limit exceeded (510 per 1 minute)")
        assert resp.json()["limit"] == "read"
        assert 1 <= int(resp.headers["retry-after"]) <= 60
        stream = c.get(f"/v1/queries/{job_id}/stream", headers=auth)
        assert stream.status_code == 429 and stream.json()["limit"] == "read"


def test_keys_of_one_tenant_spend_its_budgets_together(base_settings: Settings) -> None:
    """A second key for a tenant (a rotation, another service of the same team) adds no more than the
    tenant's budget: each key keeps its own, and the tenant's keys together spend the tenant's. A key
    alone on its tenant has only its own. The 429 says whose budget it was."""
    k1, k2, solo = (f"{n}-{uuid.uuid4().hex[:8]}" for n in ("sh1", "sh2", "solo"))
    s = isolated(
        base_settings,
        "shared",
        api_keys=f"{k1}:t-shared,{k2}:t-shared,{solo}:t-solo",
        rate_limit="2/minute",
        tenant_rate_limit="3/minute",
        read_rate_limit="3/minute",
        tenant_read_rate_limit="4/minute",
    )
    invalid = {"question": ""}  # spends the submission budget, writes nothing

    def submit(key: str) -> httpx.Response:
        return c.post("/v1/queries", json=invalid, headers={"X-API-Key": key})

    def read(key: str) -> httpx.Response:
        return c.get(f"/v1/jobs/{uuid.uuid4().hex}", headers={"X-API-Key": key})

    def refused(resp: httpx.Response) -> tuple[str, str, str]:
        body = resp.json()
        return assert_detail(resp, 429).split(") ")[-1], body["limit"], body["scope"]

    with api_client(s) as c:
        assert [submit(k1).status_code, submit(k1).status_code] == [422, 422]
        assert refused(submit(k1)) == ("for this API key", "submit", "key")  # the key's own budget
        assert submit(k2).status_code == 422  # the tenant's third
        assert refused(submit(k2)) == ("for this tenant's keys together", "submit", "tenant")
        assert [read(k1).status_code for _ in range(3)] == [404] * 3
        assert refused(read(k1)) == ("for this API key", "read", "key")
        assert read(k2).status_code == 404
        assert refused(read(k2)) == ("for this tenant's keys together", "read", "tenant")
        # a key alone on its tenant: its own budgets only, untouched by the other tenant's
        assert [submit(solo).status_code for _ in range(3)] == [422, 422, 429]
        assert [read(solo).status_code for _ in range(4)] == [404, 404, 404, 429]
    # unset, a tenant's budgets are the per-key ones: its keys together get no more than one key
    s = isolated(base_settings, "unset", api_keys=f"{k1}:t-shared,{k2}:t-shared", rate_limit="2/minute")
    with api_client(s) as c:
        assert [submit(k1).status_code, submit(k2).status_code] == [422, 422]
        assert refused(submit(k2)) == ("for this tenant's keys together", "submit", "tenant")


# --- long poll -----------------------------------------------------------------------------------


def long_poll_while(
    api: httpx.Client,
    settings: Settings,
    end_job: Callable[[str], None],
    early: Callable[[str], None] | None = None,
) -> tuple[httpx.Response, str, float, float]:
    """POST a query with `?wait=2` while a stand-in worker takes it off the queue, calls `early`
    at once and, 0.3 s later, `end_job(job_id)`. Returns the response, the job id, the seconds
    from the start of `end_job` to the answer, and the whole request's seconds."""
    rid = "lp-" + uuid.uuid4().hex
    seen: dict[str, Any] = {}

    def worker() -> None:
        msg = take_task(settings, Queue.RETRIEVAL, request_id=rid, timeout=5)
        seen["job_id"] = job_id = msg["payload"]["job_id"]
        if early is not None:
            early(job_id)
        time.sleep(0.3)
        seen["ended_at"] = time.monotonic()
        end_job(job_id)

    t = threading.Thread(target=worker)
    t.start()
    started = time.monotonic()
    resp = api.post(
        "/v1/queries", params={"wait": 2}, json={"question": "q"}, headers={**AUTH_A, "X-Request-ID": rid}
    )
    answered_at = time.monotonic()
    t.join()
    return resp, seen["job_id"], answered_at - seen["ended_at"], answered_at - started


def test_long_poll_returns_200_with_record_when_job_finishes_in_time(
    api: httpx.Client, api_settings: Settings, redis_client: redis.Redis
) -> None:
    store = JobStore(redis_client, api_settings)
    resp, job_id, _, elapsed = long_poll_while(api, api_settings, lambda j: store.finish(j, {"answer": "42"}))
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["job_id"] == job_id
    assert body["status"] == "done"
    assert body["result"] == {"answer": "42"}
    assert elapsed < 1.9  # answered when the job finished, not at the wait bound


def test_long_poll_wakes_on_the_workers_finish_not_on_its_record_recheck(
    api: httpx.Client, api_settings: Settings, redis_client: redis.Redis
) -> None:
    """The worker's finish writes the job's end stream; the long poll blocks on it and answers at
    once. (A finish without it, as above, is only seen when the ~1 s block times out.)"""
    store, events = JobStore(redis_client, api_settings), JobEvents(redis_client, api_settings)

    def chunk(job_id: str) -> None:  # not the end: the poll keeps waiting
        events.emit(job_id, "answer_chunk", {"text": "4"})

    def finish(job_id: str) -> None:
        assert finish_query(store, events, job_id, {"answer": "42"}, replay=False) is not None

    resp, _, after_end, _ = long_poll_while(api, api_settings, finish, early=chunk)
    assert resp.status_code == 200, resp.text
    assert resp.json()["result"] == {"answer": "42"}
    assert after_end < 0.5, "the poll slept through the end event"


def test_long_poll_of_a_failed_job_answers_with_its_record(
    api: httpx.Client, api_settings: Settings, redis_client: redis.Redis
) -> None:
    """An end entry without a record (a failure) wakes the poll too, which then reads the record."""
    store, events = JobStore(redis_client, api_settings), JobEvents(redis_client, api_settings)

    def fail(job_id: str) -> None:
        assert store.fail(job_id, ErrorCode.RETRIEVAL_FAILED, "store unreachable")
        events.emit(job_id, "error", {"code": "retrieval_failed", "message": "store unreachable"})

    resp, _, after_end, _ = long_poll_while(api, api_settings, fail)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["status"] == "failed" and body["error"]["code"] == "retrieval_failed"
    assert after_end < 0.5, "the poll slept through the error event"


def test_long_poll_returns_202_after_the_wait_bound(api: httpx.Client) -> None:
    started = time.monotonic()
    resp = api.post("/v1/queries", params={"wait": 0.5}, json={"question": "q"}, headers=AUTH_A)
    elapsed = time.monotonic() - started
    assert resp.status_code == 202
    assert resp.json()["status"] == "queued"
    assert 0.5 <= elapsed < 1.5


def test_long_poll_wait_above_maximum_is_422(api: httpx.Client) -> None:
    detail = assert_detail(
        api.post("/v1/queries", params={"wait": 2.5}, json={"question": "q"}, headers=AUTH_A), 422
    )
    assert detail[0]["loc"] == ["query", "wait"]


# --- ops endpoints -------------------------------------------------------------------------------


def test_health_metrics_and_not_ready_without_workers(api: httpx.Client) -> None:
    assert api.get("/healthz").json() == {"status": "ok"}
    metrics = api.get("/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    assert b"# TYPE" in metrics.content
    api.get(f"/v1/jobs/{uuid.uuid4().hex}", headers=AUTH_A)
    text = api.get("/metrics").text  # requests are counted per route template, not per raw path
    assert 'route="/v1/jobs/{job_id}",status="404"' in text
    ready = api.get("/readyz")
    assert ready.status_code == 503
    body = ready.json()
    assert set(body["failing"]) == {"workers"}  # Redis answers; nobody consumes this session's queues
    assert "retrieval" in body["failing"]["workers"]
    assert "indexing" in body["failing"]["workers"]


PROBE_WORKER = """
import os
from celery import Celery
app = Celery("probe", broker=os.environ["RAGFLEET_REDIS_URL"])
app.conf.broker_transport_options = {"global_keyprefix": os.environ["RAGFLEET_BROKER_KEY_PREFIX"]}
"""


@pytest.mark.workers
@pytest.mark.slow
def test_ready_when_a_live_worker_consumes_every_required_queue(
    base_settings: Settings, tmp_path: Path
) -> None:
    # A private broker prefix: this worker must not eat other tests' messages.
    s = base_settings.model_copy(update={"broker_key_prefix": f"{base_settings.key_prefix}:ready:"})
    (tmp_path / "probe_app.py").write_text(PROBE_WORKER)
    env = {**settings_env(s), "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}"}
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "probe_app", "worker", "-P", "solo", "-Q",
         "retrieval,generation,indexing", "-n", f"probe-{uuid.uuid4().hex[:6]}@%h", "--without-mingle",
         "--without-gossip", "-l", "warning"],
        env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        with api_client(s) as c:

            def ready() -> httpx.Response | None:
                resp = c.get("/readyz")
                return resp if resp.status_code == 200 else None

            resp = wait_for(ready, timeout=30, interval=0.2, what="/readyz answers 200")
            assert resp.json()["checks"] == ["redis", "workers"]
    finally:
        worker.kill()
        worker.wait(10)


# --- Redis down ----------------------------------------------------------------------------------


@pytest.fixture
def private_redis(base_settings: Settings) -> Iterator[tuple[RedisServer, Settings]]:
    server = RedisServer().start()
    try:
        # Open API (no keys): also covers the default tenant. A short socket timeout: the property is
        # "503 within the configured timeout", whatever it is, and a frozen Redis costs it per request.
        fast = {"redis_url": server.url, "api_keys": "", "redis_socket_timeout_s": 0.5}
        yield server, base_settings.model_copy(update=fast)
    finally:
        if server.proc is not None and server.proc.poll() is None:
            server.proc.send_signal(signal.SIGCONT)
        server.kill()


def _assert_fast_503(c: httpx.Client, method: str, path: str, budget: float, **kw: Any) -> None:
    started = time.monotonic()
    resp = c.request(method, path, **kw)
    elapsed = time.monotonic() - started
    assert_detail(resp, 503)
    assert int(resp.headers["retry-after"]) >= 1
    assert elapsed < budget, f"{method} {path} took {elapsed:.2f} s"


@pytest.mark.parametrize("failure", ["killed", "frozen"])
def test_redis_down_answers_503_with_retry_after_quickly(
    private_redis: tuple[RedisServer, Settings], failure: str
) -> None:
    server, s = private_redis
    with api_client(s, timeout=15) as c:
        ok = c.post("/v1/queries", json={"question": "warm the pools"})
        assert ok.status_code == 202, ok.text
        rec = c.get(f"/v1/jobs/{ok.json()['job_id']}").json()
        assert rec["tenant"] == s.default_tenant
        assert rec["status"] == "queued"

        assert server.proc is not None
        if failure == "killed":
            server.kill()
        else:
            server.proc.send_signal(signal.SIGSTOP)  # accepts nothing, answers nothing: timeouts only
        budget = s.redis_socket_timeout_s + 1.0
        _assert_fast_503(c, "POST", "/v1/queries", budget, json={"question": "q"})
        _assert_fast_503(c, "POST", "/v1/documents", budget, json={"documents": [DOC]})
        _assert_fast_503(c, "GET", f"/v1/jobs/{uuid.uuid4().hex}", budget)
        started = time.monotonic()
        ready = c.get("/readyz")
        assert ready.status_code == 503
        assert "redis" in ready.json()["failing"]
        assert time.monotonic() - started < budget + 1.0
        assert c.get("/healthz").status_code == 200
