"""Streaming answers end to end: real workers write the job's Redis Stream, a real uvicorn server of
the API serves it as NDJSON or SSE, and clients resume after a disconnect with no gap and no repeat."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from api_shim.streaming import events_key
from ragfleet.client import BrokerTransport, FleetClient
from ragfleet.events import JobEvents
from ragfleet.jobs import JobStore
from ragfleet.names import TaskName
from ragfleet.producer import enqueue
from ragfleet.redis_conn import get_redis
from ragfleet.settings import Settings
from tests.fleet import Fleet
from tests.helpers import api_client, index, wait_job
from tests.integration.test_fleet_e2e import DOCS

pytestmark = [pytest.mark.redis, pytest.mark.workers, pytest.mark.model]

KEY = "stream-key-" + uuid.uuid4().hex[:8]
OTHER_KEY = "stream-other-" + uuid.uuid4().hex[:8]
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def stream_settings(base_settings: Settings) -> Settings:
    return base_settings.model_copy(
        update={"api_keys": f"{KEY}:default,{OTHER_KEY}:other", "rate_limit": "100000/minute"}
    )


@pytest.fixture(scope="module")
def api(fleet: Fleet, stream_settings: Settings) -> Iterator[httpx.Client]:
    assert index(stream_settings, DOCS)["status"] == "done"
    with api_client(stream_settings, headers=AUTH, timeout=30) as client:
        yield client


def ask(api: httpx.Client, question: str) -> str:
    r = api.post("/v1/queries", json={"question": question, "use_cache": False})
    assert r.status_code == 202, r.text
    return str(r.json()["job_id"])


def ndjson(api: httpx.Client, job_id: str, **params: str) -> list[dict[str, Any]]:
    with api.stream("GET", f"/v1/queries/{job_id}/stream", params=params) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("application/x-ndjson")
        return [json.loads(line) for line in r.iter_lines() if line.strip()]


def sse_frames(text: str) -> list[dict[str, str]]:
    frames = []
    for block in text.split("\n\n"):
        frame: dict[str, str] = {}
        for line in block.splitlines():
            if line.startswith(":"):
                frame["comment"] = line[1:].strip()
                continue
            name, _, value = line.partition(":")
            frame[name] = value[1:] if value.startswith(" ") else value
        if frame:
            frames.append(frame)
    return frames


def test_events_key_matches_the_workers_stream(stream_settings: Settings) -> None:
    assert events_key(stream_settings, "j1") == JobEvents(get_redis(stream_settings), stream_settings).key(
        "j1"
    )


def test_stream_has_sources_before_answer_chunks_then_done(
    api: httpx.Client, stream_settings: Settings
) -> None:
    job_id = ask(api, "Which database stores vectors on local disk?")
    events = ndjson(api, job_id)
    types = [e["type"] for e in events]
    assert types[0] == "sources", types
    assert types[-1] == "done", types
    assert "answer_chunk" in types and types.index("sources") < types.index("answer_chunk")
    assert set(types[1:-1]) == {"answer_chunk"}
    assert events[0]["data"]["sources"][0]["doc_id"] == "lancedb"
    done = events[-1]["data"]
    assert done["latency_ms"] > 0 and "usage" in done
    # the chunks are the answer, in order; every event has a distinct, increasing stream id
    record = wait_job(stream_settings, job_id)
    assert (
        "".join(e["data"]["text"] for e in events if e["type"] == "answer_chunk")
        == record["result"]["answer"]
    )
    ids = [tuple(map(int, e["id"].split("-"))) for e in events]
    assert ids == sorted(set(ids))


def test_reconnect_with_last_event_id_continues_with_no_gap_and_no_repeat(api: httpx.Client) -> None:
    job_id = ask(api, "What is Redis used as?")
    seen: list[dict[str, Any]] = []
    # read only the first event, then drop the connection mid-stream
    with api.stream("GET", f"/v1/queries/{job_id}/stream") as r:
        for line in r.iter_lines():
            if line.strip():
                seen.append(json.loads(line))
                break
    assert seen and seen[0]["type"] == "sources"
    # NDJSON resume with ?after=, then SSE resume with Last-Event-ID from the middle
    rest = ndjson(api, job_id, after=seen[-1]["id"])
    full = ndjson(api, job_id)
    assert [e["id"] for e in seen + rest] == [e["id"] for e in full]
    assert seen + rest == full
    middle = full[1]["id"]
    r = api.get(
        f"/v1/queries/{job_id}/stream", headers={"Accept": "text/event-stream", "Last-Event-ID": middle}
    )
    frames = [f for f in sse_frames(r.text) if "event" in f]
    assert [f["id"] for f in frames] == [e["id"] for e in full[2:]]


def test_sse_framing_with_accept_event_stream(api: httpx.Client) -> None:
    job_id = ask(api, "Which data store is used as a lock server?")
    r = api.get(f"/v1/queries/{job_id}/stream", headers={"Accept": "text/event-stream"})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["cache-control"] == "no-cache"
    assert r.text.endswith("\n\n")
    frames = sse_frames(r.text)
    assert frames[0] == {"retry": "1000"}
    events = [f for f in frames if "event" in f]
    assert events[0]["event"] == "sources" and events[-1]["event"] == "done"
    for f in events:
        assert set(f) == {"id", "event", "data"}
        json.loads(f["data"])


def test_other_tenants_job_is_not_found_and_bad_ids_are_rejected(api: httpx.Client) -> None:
    job_id = ask(api, "What is Celery?")
    r = api.get(f"/v1/queries/{job_id}/stream", headers={"Authorization": f"Bearer {OTHER_KEY}"})
    assert r.status_code == 404 and r.json() == {"detail": "job not found"}
    assert api.get("/v1/queries/no-such-job/stream").status_code == 404
    r = api.get(f"/v1/queries/{job_id}/stream", params={"after": "not-an-id"})
    assert r.status_code == 422 and "after" in json.dumps(r.json()["detail"])
    assert (
        api.get(f"/v1/queries/{job_id}/stream", headers={"Authorization": "Bearer nope"}).status_code == 401
    )


def test_idle_stream_sends_heartbeats_and_ends_at_its_time_limit(stream_settings: Settings) -> None:
    s = stream_settings.model_copy(update={"stream_max_s": 1.2, "stream_heartbeat_s": 0.3})
    job_id = "idle-" + uuid.uuid4().hex
    JobStore(get_redis(s), s).create(job_id, "query", tenant="default")  # nobody will ever run it
    with api_client(s, headers=AUTH) as client:
        t0 = time.monotonic()
        lines = [json.loads(x) for x in client.get(f"/v1/queries/{job_id}/stream").text.splitlines()]
        elapsed = time.monotonic() - t0
        sse = client.get(f"/v1/queries/{job_id}/stream", headers={"Accept": "text/event-stream"}).text
    assert 1.0 < elapsed < 3.0
    assert lines.count({"type": "heartbeat"}) >= 2
    assert lines[-1] == {"id": None, "type": "timeout", "data": {"after": "0-0"}}
    assert ": keep-alive" in sse and "event: timeout" in sse


def test_job_that_fails_before_any_event_still_ends_its_stream(
    api: httpx.Client, stream_settings: Settings
) -> None:
    # an invalid payload fails the record in `parse`, which writes no event
    job_id = enqueue(TaskName.QUERY, {"question": " ", "tenant": "default"}, settings=stream_settings)
    assert wait_job(stream_settings, job_id)["status"] == "failed"
    events = ndjson(api, job_id)
    assert [e["type"] for e in events] == ["error"]
    assert events[0]["data"]["code"] == "invalid_payload"


def test_python_client_streams_over_http_and_over_the_broker(
    api: httpx.Client, stream_settings: Settings
) -> None:
    http = FleetClient.over_http(str(api.base_url), api_key=KEY)
    events = list(http.stream("Which database supports hybrid search without a server?", use_cache=False))
    assert events[0]["type"] == "sources" and events[-1]["type"] == "done"

    broker = FleetClient(BrokerTransport(stream_settings))
    job_id = broker.submit("What is LanceDB?", use_cache=False)
    first = next(iter(broker.stream(job_id)))
    rest = list(broker.stream(job_id, after=first["id"]))
    assert [first, *rest] == list(broker.stream(job_id))
    assert rest[-1]["type"] == "done"


def test_post_query_accepts_stream_true(api: httpx.Client) -> None:
    r = api.post("/v1/queries", json={"question": "What is Redis?", "stream": True})
    assert r.status_code == 202, r.text
