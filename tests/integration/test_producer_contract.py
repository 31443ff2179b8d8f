"""Another team's service: a bare Celery app, `send_task` by name, no import of our code."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from ragfleet.settings import Settings
from tests.integration.test_fleet_e2e import DOCS, index

pytestmark = [pytest.mark.redis, pytest.mark.workers, pytest.mark.model]

PRODUCER = textwrap.dedent(
    """
    import json, sys, time, uuid
    from celery import Celery
    import redis

    broker, job_prefix, queue_prefix = sys.argv[1:4]
    app = Celery("other-service", broker=broker)
    # only for test isolation: a real producer on a dedicated Redis leaves transport options alone
    app.conf.broker_transport_options = {"global_keyprefix": queue_prefix}
    app.conf.task_serializer = "json"
    job_id = uuid.uuid4().hex
    app.send_task(
        "ragfleet.query",
        kwargs={"payload": {"question": "What does LanceDB store on local disk?", "use_cache": False}},
        task_id=job_id, queue="retrieval", expires=120, priority=0,
    )
    r = redis.Redis.from_url(broker, decode_responses=True)
    deadline = time.monotonic() + 60
    record = {}
    while time.monotonic() < deadline:
        record = r.hgetall(f"{job_prefix}:job:{job_id}")
        if record.get("status") in ("done", "failed"):
            break
        time.sleep(0.05)
    ours = sorted(m for m in sys.modules if m.split(".")[0] in ("ragfleet", "tasks", "workers", "api_shim"))
    print(json.dumps({"record": record, "project_modules": ours}))
    """
)


def test_send_task_by_name_without_project_import(
    fleet: Any, base_settings: Settings, tmp_path: Path
) -> None:
    index(base_settings, DOCS)
    script = tmp_path / "producer.py"
    script.write_text(PRODUCER)
    out = subprocess.run(
        [
            sys.executable,
            "-I",
            str(script),
            base_settings.redis_url,
            base_settings.key_prefix,
            base_settings.broker_key_prefix,
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout.strip().splitlines()[-1])
    assert data["project_modules"] == []
    record = data["record"]
    assert record["status"] == "done", record
    result = json.loads(record["result"])
    assert result["sources"][0]["doc_id"] == "lancedb"
    assert "[1]" in result["answer"]


def test_enqueue_on_a_pipeline_pushes_the_message_enqueue_sends(base_settings: Settings) -> None:
    """The hand-off rides in the retrieval stage's last round trip (`enqueue_on`): the message must
    be the one Celery and kombu publish by themselves, on the same queue key, so any worker reads it."""
    import base64
    import uuid

    import redis

    from ragfleet.names import Priority, TaskName
    from ragfleet.producer import enqueue, enqueue_on

    tag = uuid.uuid4().hex[:8]
    s = base_settings.model_copy(update={"broker_key_prefix": f"{base_settings.key_prefix}-eo{tag}:q:"})
    r = redis.Redis.from_url(s.redis_url, decode_responses=True)
    payload = {"job_id": f"job-{tag}", "question": "q", "sources": [{"n": 1, "text": "a passage"}]}
    try:
        enqueue(
            TaskName.GENERATE, payload, settings=s, job_id=f"job-{tag}:gen", priority=Priority.INTERACTIVE
        )
        pipe = r.pipeline(transaction=True)
        pipe.set(f"{s.broker_key_prefix}probe", "1")  # the caller's own write, in the same round trip
        assert (
            enqueue_on(
                pipe,
                TaskName.GENERATE,
                payload,
                settings=s,
                job_id=f"job-{tag}:gen",
                priority=Priority.INTERACTIVE,
            )
            == f"job-{tag}:gen"
        )
        keys = r.keys(f"{s.broker_key_prefix}*")
        # only the queue's list: a `queue=` send declares nothing (no binding set) and needs nothing
        assert keys == [f"{s.broker_key_prefix}generation"]
        assert r.llen(keys[0]) == 1  # nothing sent yet
        pipe.execute()
        assert r.get(f"{s.broker_key_prefix}probe") == "1"
        assert sorted(r.keys(f"{s.broker_key_prefix}*")) == sorted([*keys, f"{s.broker_key_prefix}probe"])
        keys = [f"{s.broker_key_prefix}generation"]  # priority 0 is the bare queue name
        sent_by_kombu, sent_by_us = (json.loads(m) for m in r.lrange(keys[0], 0, -1)[::-1])

        def comparable(m: dict[str, Any]) -> dict[str, Any]:
            m = json.loads(json.dumps(m))
            del m["properties"]["delivery_tag"], m["headers"]["expires"]
            m["headers"].pop("ragfleet_enqueued_at", None)  # a clock reading, when metrics are on
            return m

        assert comparable(sent_by_us) == comparable(sent_by_kombu)
        body = json.loads(base64.b64decode(sent_by_us["body"]))
        assert body[1] == {"payload": payload} and sent_by_us["headers"]["task"] == "ragfleet.generate"
        assert sent_by_us["properties"]["priority"] == 0
    finally:
        for k in r.scan_iter(f"{s.broker_key_prefix}*"):
            r.delete(k)
