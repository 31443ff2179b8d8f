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
