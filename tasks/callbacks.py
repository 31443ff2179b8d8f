"""Callbacks pool: deliver a finished job's webhook and `callback_task` (ragfleet.callbacks).

Its own pool (threads: a delivery waits on a receiver and on backoff delays, never on the CPU), so a
slow or dead receiver never holds a retrieval or generation slot and never delays an answer.
"""

from __future__ import annotations

from typing import Any

from ragfleet import callbacks
from ragfleet.callback_spec import DeliverPayload
from ragfleet.names import TaskName
from ragfleet.resources import get_resources
from workers.base import CallbackDeliveryTask, task


@task(TaskName.CALLBACK_DELIVER, base=CallbackDeliveryTask)
def deliver(self: CallbackDeliveryTask, *, payload: dict[str, Any]) -> dict[str, Any]:
    p = DeliverPayload.model_validate(payload)
    res = get_resources()

    def send(name: str, queue: str, record: dict[str, Any], event_id: str) -> None:
        # like Celery's `link`: the task gets the job's final record; its id is the event id
        self.app.send_task(name, args=[record], queue=queue, task_id=event_id)

    done = callbacks.deliver(res.redis, res.settings, p.job_id, send)
    return {"job_id": p.job_id.removesuffix(callbacks.CALLBACK_SUFFIX), "deliveries": len(done)}
