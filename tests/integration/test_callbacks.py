"""Completion callbacks (ragfleet/callbacks.py) end to end on real parts: a real Redis, a real
`callbacks` worker subprocess, real HTTP receivers (http.server threads), a foreign Celery app's
worker, and the served API.

Jobs end here through the same calls the pools make (`JobStore.finish` / `fail`, `fail_job`, a
batch's cancel through the API): the delivery is what is under test, and no pool that loads the
embedding model is started (the whole module stays within a few seconds of worker start-up)."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from pydantic import SecretStr

from ragfleet.callback_spec import CallbackRequest, CallbackTask, verify_signature
from ragfleet.callbacks import DeliveryLog, post_once, record_fields
from ragfleet.dead_letters import DeadLetters, ReplayOutcome
from ragfleet.outcomes import fail_job
from ragfleet.resources import Resources
from ragfleet.schemas import ErrorCode
from ragfleet.settings import Settings
from tests.conftest import PYTHON, free_port
from tests.fleet import Worker
from tests.helpers import api_client, isolated, wait_for

SECRET, OLD_SECRET = "whsec-new", "whsec-old"
RECEIVER_QUEUE = "producer_cb"
HERE = Path(__file__).parent


class Receiver:
    """A webhook receiver on loopback: answers each POST with the next status of `script` (the last
    one repeats), or hangs `hang_s` first; keeps what it got and when."""

    def __init__(self, script: list[int], hang_s: float = 0.0) -> None:
        self.script, self.hang_s = script, hang_s
        self.got: list[tuple[float, dict[str, str], bytes, int]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                status = outer.script[min(len(outer.got), len(outer.script) - 1)]
                outer.got.append((time.time(), dict(self.headers.items()), body, status))
                if outer.hang_s:
                    time.sleep(outer.hang_s)
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", f"http://127.0.0.1:{self.server.server_address[1]}/moved")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Callable[..., Receiver]]:
    made: list[Receiver] = []

    def make(script: list[int], hang_s: float = 0.0) -> Receiver:
        made.append(Receiver(script, hang_s))
        return made[-1]

    yield make
    for r in made:
        r.close()


def callback_settings(base: Settings, **update: Any) -> Settings:
    defaults: dict[str, Any] = {
        "callback_secrets": SecretStr(f"default:{SECRET}|{OLD_SECRET},other:x"),
        "callback_allowed_hosts": "127.0.0.1,localhost",
        "callback_allowed_networks": "127.0.0.1/32,::1/128",
        "callback_allowed_tasks": f"producer.*@{RECEIVER_QUEUE}",
        "callback_timeout_s": 1.0,
        "callback_max_attempts": 4,
        "callback_backoff_s": 0.05,
        "callback_backoff_max_s": 0.2,
    }
    return isolated(base, "cb", **{**defaults, **update})


@pytest.fixture(scope="module")
def cb_settings(base_settings: Settings) -> Settings:
    return callback_settings(base_settings)


@pytest.fixture(scope="module")
def foreign_worker(cb_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A `celery worker` of tests/integration/callback_receiver_app.py on its own queue; yields the
    Redis list its task appends to. Started before the callbacks worker, so both warm up together."""
    result_key = cb_settings.key("foreign", "got")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAGFLEET_") and k != "PYTHONPATH"}
    env.update(
        CB_BROKER=cb_settings.broker, CB_PREFIX=cb_settings.broker_key_prefix, CB_RESULT_KEY=result_key
    )
    log = (tmp_path_factory.mktemp("foreign") / "worker.log").open("ab")
    proc = subprocess.Popen(
        [PYTHON, "-m", "celery", "-A", "callback_receiver_app", "worker", "-Q", RECEIVER_QUEUE,
         "--pool", "solo", "-n", f"foreign-{uuid.uuid4().hex[:6]}@testhost", "--without-mingle",
         "--without-gossip", "-l", "INFO"],
        cwd=HERE, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        yield result_key
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def callbacks_worker(
    cb_settings: Settings, foreign_worker: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Worker]:
    w = Worker("callbacks", "callbacks", "threads", 4, cb_settings, tmp_path_factory.mktemp("cb-logs"))
    w.start().wait_ready()
    try:
        yield w
    finally:
        w.stop()


def new_job(res: Resources, request: CallbackRequest, *, kind: str = "query", tenant: str = "default") -> str:
    job_id = uuid.uuid4().hex
    res.jobs.create(job_id, kind, tenant=tenant, extra=record_fields(res.settings, job_id, tenant, request))
    return job_id


def deliveries(
    res: Resources, job_id: str, *, until: Callable[[list[Any]], bool], timeout: float = 15
) -> list[Any]:
    book = DeliveryLog(res.redis, res.settings)
    return wait_for(
        lambda: (lambda d: d if until(d) else None)(book.list(job_id)),
        timeout=timeout,
        what=f"deliveries of {job_id}",
    )


def hmac_of(secret: str, timestamp: str, body: bytes) -> str:
    """Computed here, independently of ragfleet.callback_spec.sign: what a receiver does."""
    return hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


@pytest.mark.workers
def test_webhook_that_fails_twice_gets_one_accepted_signed_delivery(
    cb_settings: Settings, callbacks_worker: Worker, receiver: Callable[..., Receiver]
) -> None:
    hook = receiver([500, 503, 200])
    res = Resources(cb_settings)
    job_id = new_job(res, CallbackRequest(callback_url=hook.url))
    assert res.jobs.finish(job_id, {"answer": "forty-two", "sources": []})

    log = deliveries(res, job_id, until=lambda d: any(x.outcome == "accepted" for x in d))
    assert [(x.attempt, x.outcome, x.status_code) for x in log] == [
        (1, "retrying", 500), (2, "retrying", 503), (3, "accepted", 200),
    ]  # fmt: skip
    assert len({x.event_id for x in log}) == 1
    assert [status for *_, status in hook.got] == [500, 503, 200]
    _, headers, body, _ = hook.got[-1]
    event = json.loads(body)
    assert event["event_id"] == log[0].event_id == headers["X-Ragfleet-Event-Id"]
    assert (event["job_id"], event["kind"], event["status"]) == (job_id, "query", "done")
    assert event["result"]["answer"] == "forty-two" and event["error"] is None
    fields = [f.split("=", 1) for f in headers["X-Ragfleet-Signature"].split(",")]
    (t,) = [v for k, v in fields if k == "t"]
    assert abs(int(t) - time.time()) < 60
    # one MAC per active secret of the tenant: a receiver on either side of a rotation verifies
    assert sorted(v for k, v in fields if k == "v1") == sorted(
        hmac_of(s, t, body) for s in (SECRET, OLD_SECRET)
    )
    assert verify_signature(SECRET, body, headers["X-Ragfleet-Signature"])
    assert not verify_signature(SECRET, body + b" ", headers["X-Ragfleet-Signature"])
    assert not verify_signature(SECRET, body, headers["X-Ragfleet-Signature"], now=time.time() + 600)


@pytest.mark.workers
def test_receiver_down_ends_in_a_failed_delivery_while_the_job_is_done(
    cb_settings: Settings, callbacks_worker: Worker
) -> None:
    res = Resources(cb_settings)
    down = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there
    job_id = new_job(res, CallbackRequest(callback_url=down))
    assert res.jobs.finish(job_id, {"answer": "x"})
    log = deliveries(res, job_id, until=lambda d: any(x.outcome == "failed" for x in d))
    assert [x.outcome for x in log] == ["retrying"] * 3 + ["failed"]
    assert all(x.status_code is None and "ConnectError" in (x.error or "") for x in log)
    assert all(x.next_in_s is not None and 0.025 <= x.next_in_s <= 0.2 for x in log[:-1])
    record = res.jobs.get(job_id)
    assert record is not None and record.status.value == "done"


@pytest.mark.workers
def test_callback_task_reaches_a_foreign_apps_worker_by_name(
    cb_settings: Settings, callbacks_worker: Worker, foreign_worker: str
) -> None:
    res = Resources(cb_settings)
    job_id = new_job(
        res, CallbackRequest(callback_task=CallbackTask(name="producer.job_finished", queue=RECEIVER_QUEUE))
    )
    assert fail_job(res, job_id, ErrorCode.TIMEOUT, "too slow", retry_after=5)  # failures call back too
    raw = wait_for(lambda: res.redis.lpop(foreign_worker), timeout=30, what="the foreign worker's task")
    got = json.loads(raw)
    assert got["our_modules"] == []
    assert got["record"]["job_id"] == job_id and got["record"]["status"] == "failed"
    assert got["record"]["error"]["code"] == "timeout"
    (entry,) = deliveries(res, job_id, until=lambda d: len(d) == 1)  # appended after the send
    assert (entry.target, entry.outcome, entry.event_id) == ("task", "sent", got["task_id"])


@pytest.mark.workers
def test_dead_letter_replay_calls_back_again_with_a_new_event_id(
    cb_settings: Settings, callbacks_worker: Worker, receiver: Callable[..., Receiver]
) -> None:
    hook = receiver([200])
    res = Resources(cb_settings)
    job_id = new_job(res, CallbackRequest(callback_url=hook.url))
    assert fail_job(res, job_id, ErrorCode.INTERNAL, "a bug")
    dlq = DeadLetters(res.redis, res.settings)
    entry = dlq.record(
        task="ragfleet.query", task_id=job_id, job_id=job_id, payload={"question": "q", "job_id": job_id},
        code=ErrorCode.INTERNAL, message="a bug", deliveries=1, node="n", queue="retrieval",
    )  # fmt: skip
    deliveries(res, job_id, until=lambda d: len(d) == 1)
    assert dlq.replay(entry)[0] is ReplayOutcome.REPLAYED
    assert res.jobs.finish(job_id, {"answer": "fixed"})  # what the replayed run's end does
    log = deliveries(res, job_id, until=lambda d: len(d) == 2)
    assert [x.job_attempt for x in log] == [1, 2] and log[0].event_id != log[1].event_id
    assert [json.loads(b)["status"] for _, _, b, _ in hook.got] == ["failed", "done"]
    assert [json.loads(b)["attempt"] for _, _, b, _ in hook.got] == [1, 2]


@pytest.mark.workers
def test_api_batch_with_callback_url_calls_back_when_cancelled(
    cb_settings: Settings, callbacks_worker: Worker, receiver: Callable[..., Receiver]
) -> None:
    hook = receiver([200])
    with api_client(cb_settings) as api:
        r = api.post("/v1/batches", json={"questions": ["a?", "b?"], "callback_url": hook.url})
        assert r.status_code == 202, r.text
        batch_id = r.json()["batch_id"]
        assert api.delete(f"/v1/batches/{batch_id}").status_code == 200
        logged = wait_for(
            lambda: api.get(f"/v1/jobs/{batch_id}/deliveries").json() or None,
            timeout=15,
            what="the batch's delivery",
        )
        assert [(d["target"], d["outcome"]) for d in logged] == [("url", "accepted")]
        assert api.get(f"/v1/jobs/{uuid.uuid4().hex}/deliveries").status_code == 404
    event = json.loads(hook.got[0][2])
    assert (event["job_id"], event["kind"], event["status"]) == (batch_id, "batch", "cancelled")


@pytest.mark.workers
def test_a_query_answered_from_the_cache_calls_back_too(
    cb_settings: Settings, callbacks_worker: Worker, receiver: Callable[..., Receiver]
) -> None:
    """The API's cache path creates the job done at birth (JobStore.put_done): no Lua transition runs,
    so it pushes the delivery itself, in the same MULTI."""
    from ragfleet.cache import AnswerCache, answer_key_for
    from ragfleet.schemas import QueryPayload

    hook = receiver([200])
    question = f"cached question {uuid.uuid4().hex}?"
    key = answer_key_for(cb_settings, QueryPayload(question=question, tenant="default"), 0)
    AnswerCache(Resources(cb_settings).redis, cb_settings).put(
        key, {"question": question, "answer": "from cache"}
    )
    with api_client(cb_settings) as api:
        r = api.post("/v1/queries?wait=1", json={"question": question, "callback_url": hook.url})
        assert r.status_code == 200 and r.json()["result"]["cached"], r.text
    wait_for(lambda: hook.got or None, timeout=15, what="the cached answer's webhook")
    event = json.loads(hook.got[0][2])
    assert (event["job_id"], event["status"], event["result"]["answer"]) == (
        r.json()["job_id"],
        "done",
        "from cache",
    )


# --- refused at submit (no worker needed) ---------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"callback_url": "ftp://127.0.0.1/x"}, ["callback_url"]),
        ({"callback_url": "not a url"}, ["callback_url"]),
        ({"callback_url": "http://127.0.0.1:99999/x"}, ["callback_url"]),
        ({"callback_url": "https://evil.example/x"}, ["callback_url"]),
        ({"callback_url": "https://127.0.0.1.evil.example/x"}, ["callback_url"]),
        ({"callback_url": "http://u:p@127.0.0.1/x"}, ["callback_url"]),
        ({"callback_task": {"name": "ragfleet.query", "queue": RECEIVER_QUEUE}}, ["callback_task", "name"]),
        ({"callback_task": {"name": "producer.x", "queue": "retrieval"}}, ["callback_task", "queue"]),
        ({"callback_task": {"name": "producer.x", "queue": "callbacks"}}, ["callback_task", "queue"]),
        ({"callback_task": {"name": "other.x", "queue": RECEIVER_QUEUE}}, ["callback_task", "name"]),
    ],
)
def test_api_refuses_callbacks_the_deployment_does_not_allow(
    refusing_api: tuple[Settings, httpx.Client], body: dict[str, Any], loc: list[str]
) -> None:
    """The request schema is built from the allow-lists (api_shim.models.callback_fields_model), so
    these are schema violations, named by location; the reasons no schema can state are checked by
    ragfleet.callback_spec (tests/unit/test_callback_spec.py, and the tenant test below)."""
    s, api = refusing_api
    for path, extra in (
        ("/v1/queries", {"question": "q?"}),
        ("/v1/documents", {"documents": [{"id": "d", "text": "t"}]}),
        ("/v1/batches", {"questions": ["q?"]}),
    ):
        r = api.post(path, json={**extra, **body})
        assert r.status_code == 422, (path, r.text)
        assert any(e["loc"][1:] == loc for e in r.json()["detail"]), (path, r.text)
    # nothing was enqueued or recorded
    client = redis.Redis.from_url(s.redis_url)
    assert not client.keys(s.key("job", "*")) and not client.keys(s.broker_key_prefix + "*")


def test_a_deployment_without_callbacks_offers_no_callback_fields(base_settings: Settings) -> None:
    s = isolated(base_settings, "nocb", callback_allowed_hosts="", callback_allowed_tasks="")
    with api_client(s) as api:
        r = api.post("/v1/queries", json={"question": "q?", "callback_url": "http://127.0.0.1/x"})
        assert r.status_code == 422 and r.json()["detail"][0]["type"] == "extra_forbidden"
        schemas = api.get("/openapi.json").json()["components"]["schemas"]
    assert not any("callback_url" in m.get("properties", {}) for m in schemas.values())


@pytest.fixture(scope="module")
def refusing_api(base_settings: Settings) -> Iterator[tuple[Settings, httpx.Client]]:
    s = callback_settings(base_settings)
    with api_client(s) as api:
        yield s, api


def test_api_tenant_without_a_secret_cannot_set_callback_url(base_settings: Settings) -> None:
    s = callback_settings(base_settings, api_keys="k-default:default,k-nosecret:nosecret")
    url = f"http://127.0.0.1:{free_port()}/hook"
    with api_client(s) as api:
        r = api.post(
            "/v1/queries", json={"question": "q?", "callback_url": url}, headers={"X-API-Key": "k-nosecret"}
        )
        assert r.status_code == 422 and "no signing secret" in r.text
        r = api.post(
            "/v1/queries", json={"question": "q?", "callback_url": url}, headers={"X-API-Key": "k-default"}
        )
        assert r.status_code == 202, r.text
        raw = redis.Redis.from_url(s.redis_url, decode_responses=True).hgetall(
            s.key("job", r.json()["job_id"])
        )
        assert json.loads(raw["callback"]) == {"callback_url": url}


# --- one attempt against real receivers (no worker needed) ----------------------------------------


def test_a_hanging_receiver_is_cut_off_by_the_timeout(
    base_settings: Settings, receiver: Callable[..., Receiver]
) -> None:
    hook = receiver([200], hang_s=3.0)
    s = callback_settings(base_settings, callback_timeout_s=0.3)
    start = time.monotonic()
    entry = post_once(s, hook.url, b"{}", "evt_x", "default")
    assert time.monotonic() - start < 2.0
    assert entry.outcome == "retrying" and "Timeout" in (entry.error or "") and entry.status_code is None


def test_redirects_are_not_followed(base_settings: Settings, receiver: Callable[..., Receiver]) -> None:
    hook = receiver([302])
    entry = post_once(callback_settings(base_settings), hook.url, b"{}", "evt_x", "default")
    assert (entry.outcome, entry.status_code, entry.error) == ("retrying", 302, "redirect not followed")
    assert len(hook.got) == 1  # the Location was never requested


def test_loopback_is_refused_at_connect_time_unless_allowed(
    base_settings: Settings, receiver: Callable[..., Receiver]
) -> None:
    hook = receiver([200])
    # `localhost` passes the host allow-list at submit; the address it resolves to is checked here
    url = hook.url.replace("127.0.0.1", "localhost")
    entry = post_once(
        callback_settings(base_settings, callback_allowed_networks=""), url, b"{}", "evt_x", "default"
    )
    assert entry.outcome == "retrying" and "not allowed" in (entry.error or "")
    assert hook.got == []
    assert post_once(callback_settings(base_settings), url, b"{}", "evt_x", "default").outcome == "accepted"
    assert hook.got[0][1]["Host"] == url.split("/")[2]  # the name, though the connection went to the address


def test_api_route_is_documented(refusing_api: tuple[Settings, httpx.Client]) -> None:
    spec = refusing_api[1].get("/openapi.json").json()
    assert "/v1/jobs/{job_id}/deliveries" in spec["paths"]
    props = spec["components"]["schemas"]
    assert any("callback_url" in m.get("properties", {}) for m in props.values())


@pytest.mark.workers
def test_a_file_upload_names_its_callbacks_as_form_fields(
    cb_settings: Settings, callbacks_worker: Worker, receiver: Callable[..., Receiver]
) -> None:
    """`POST /v1/documents/files` (multipart) takes `callback_url` and `callback_task` once per request,
    checked like a JSON body's; the indexing job's end calls back (ended here with the transition the
    indexing pool runs)."""
    hook = receiver([200])
    files = {"files": ("note.txt", b"A note about callbacks.", "text/plain")}
    with api_client(cb_settings) as api:
        refused = [
            api.post("/v1/documents/files", files=files, data={"callback_url": "ftp://127.0.0.1/x"}),
            api.post("/v1/documents/files", files=files, data={"callback_task": "{not json"}),
            api.post(
                "/v1/documents/files",
                files=files,
                data={"callback_task": json.dumps({"name": "ragfleet.query", "queue": RECEIVER_QUEUE})},
            ),
        ]
        for r, field in zip(refused, ("callback_url", "callback_task", "callback_task"), strict=True):
            assert r.status_code == 422 and r.json()["detail"][0]["loc"][1] == field, r.text
        r = api.post("/v1/documents/files", files=files, data={"callback_url": hook.url})
        assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    res = Resources(cb_settings)
    assert res.jobs.finish(job_id, {"indexed": 1, "errors": []})
    wait_for(lambda: hook.got or None, timeout=15, what="the upload's webhook")
    event = json.loads(hook.got[0][2])
    assert (event["job_id"], event["kind"], event["status"]) == (job_id, "index", "done")
