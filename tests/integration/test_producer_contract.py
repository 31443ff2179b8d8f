"""Another team's service: a bare Celery app, `send_task` by name, no import of our code."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
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


@pytest.mark.parametrize("inside_a_task", [False, True], ids=["from-a-service", "from-a-running-task"])
@pytest.mark.parametrize("priority", [0, 3], ids=["interactive", "default"])
def test_enqueue_on_a_pipeline_pushes_the_message_enqueue_sends(
    base_settings: Settings, inside_a_task: bool, priority: int
) -> None:
    """The hand-off rides in the retrieval stage's last round trip (`enqueue_on`, which builds the
    message itself: `build_message`): it must be the message Celery and kombu publish by themselves,
    on the same queue key, so any worker reads it, with the same task tree (root and parent ids) when
    a running task hands off, and the headers our publish hooks add (request id, enqueue time)."""
    import base64
    import uuid

    import redis
    from celery import Celery
    from celery._state import _task_stack

    from ragfleet.logs import install_celery_request_id, request_context
    from ragfleet.metrics import install_celery_metrics
    from ragfleet.names import Priority, TaskName
    from ragfleet.producer import enqueue, enqueue_on

    install_celery_request_id()  # the publish hooks every producer of ours has (idempotent)
    install_celery_metrics()
    tag = uuid.uuid4().hex[:8]
    s = base_settings.model_copy(update={"broker_key_prefix": f"{base_settings.key_prefix}-eo{tag}:q:"})
    r = redis.Redis.from_url(s.redis_url, decode_responses=True)
    payload = {"job_id": f"job-{tag}", "question": "q", "sources": [{"n": 1, "text": "a passage"}]}
    running = None
    if inside_a_task:  # what Celery's tracer does around a task's body

        def stage() -> None: ...

        running = Celery("parent", set_as_current=False).task(name="parent.stage")(stage)
        running.push_request(id=f"parent-{tag}", root_id=f"root-{tag}", called_directly=False)
        _task_stack.push(running)
    try:
        with request_context(f"rid-{tag}"):
            enqueue(
                TaskName.GENERATE, payload, settings=s, job_id=f"job-{tag}:gen", priority=Priority(priority)
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
                    priority=Priority(priority),
                )
                == f"job-{tag}:gen"
            )
        queue_key = f"{s.broker_key_prefix}generation" + (f"\x06\x16{priority}" if priority else "")
        keys = r.keys(f"{s.broker_key_prefix}*")
        # only the queue's list: a `queue=` send declares nothing (no binding set) and needs nothing
        assert keys == [queue_key]
        assert r.llen(queue_key) == 1  # nothing sent yet
        pipe.execute()
        assert r.get(f"{s.broker_key_prefix}probe") == "1"
        assert sorted(r.keys(f"{s.broker_key_prefix}*")) == sorted([queue_key, f"{s.broker_key_prefix}probe"])
        sent_by_kombu, sent_by_us = (json.loads(m) for m in r.lrange(queue_key, 0, -1)[::-1])

        def comparable(m: dict[str, Any]) -> dict[str, Any]:
            m = json.loads(json.dumps(m))
            del m["properties"]["delivery_tag"], m["headers"]["expires"]
            m["headers"].pop("ragfleet_enqueued_at", None)  # a clock reading, when metrics are on
            return m

        assert comparable(sent_by_us) == comparable(sent_by_kombu)
        assert list(sent_by_us) == list(sent_by_kombu)  # the same fields, in the same order
        assert list(sent_by_us["headers"]) == list(sent_by_kombu["headers"])
        assert list(sent_by_us["properties"]) == list(sent_by_kombu["properties"])
        body = json.loads(base64.b64decode(sent_by_us["body"]))
        assert body[1] == {"payload": payload} and sent_by_us["headers"]["task"] == "ragfleet.generate"
        assert sent_by_us["properties"]["priority"] == priority
        assert sent_by_us["headers"]["ragfleet_request_id"] == f"rid-{tag}"
        assert abs(float(sent_by_us["headers"]["ragfleet_enqueued_at"]) - time.time()) < 60
        expected_tree = (f"root-{tag}", f"parent-{tag}") if inside_a_task else (f"job-{tag}:gen", None)
        assert (sent_by_us["headers"]["root_id"], sent_by_us["headers"]["parent_id"]) == expected_tree
        # the same expiry instant, to the clock's drift between the two builds
        from datetime import datetime

        ours, theirs = (datetime.fromisoformat(m["headers"]["expires"]) for m in (sent_by_us, sent_by_kombu))
        assert ours.utcoffset() is not None and abs((ours - theirs).total_seconds()) < 1
    finally:
        if running is not None:
            _task_stack.pop()
            running.pop_request()
        for k in r.scan_iter(f"{s.broker_key_prefix}*"):
            r.delete(k)
