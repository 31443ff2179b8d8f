"""Another team's Celery app, for tests/integration/test_callbacks.py: the worker a `callback_task`
reaches. It imports nothing of ragfleet's (the task reports which modules its process loaded, and
the test checks that none is ours): a producer receives callbacks with plain Celery.

Configured by the environment the test gives its `celery worker` subprocess: CB_BROKER (the broker
URL), CB_PREFIX (kombu's `global_keyprefix`, the fleet's broker prefix), CB_RESULT_KEY (a Redis list
the task appends what it received to).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import redis
from celery import Celery

app = Celery("producer", broker=os.environ["CB_BROKER"], backend=None)
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    broker_transport_options={"global_keyprefix": os.environ.get("CB_PREFIX", "")},
    broker_connection_retry_on_startup=True,
)


@app.task(name="producer.job_finished", bind=True)
def job_finished(self: Any, record: dict[str, Any]) -> None:
    ours = sorted(m for m in sys.modules if m.split(".")[0] in ("ragfleet", "workers", "tasks", "api_shim"))
    got = {"task_id": self.request.id, "record": record, "our_modules": ours}
    redis.Redis.from_url(os.environ["CB_BROKER"]).rpush(os.environ["CB_RESULT_KEY"], json.dumps(got))
