"""Enqueue tasks by name through a client-only Celery app.

The API and the Python client use this; it imports no task code and no heavy dependency, exactly
like another team's service would. It patches nothing (docs/compat.md: no patch of Celery or kombu
is installed in a producer's process). Every enqueue carries an `expires` (a query nobody waits for any
more must not burn a worker) and a priority.
"""

from __future__ import annotations

import base64
import json
import os
import uuid
from functools import lru_cache
from typing import Any

from celery import Celery, signals
from celery.utils.nodenames import anon_nodename

from ragfleet import task_headers
from ragfleet.names import PRIORITY_STEPS, TASK_QUEUES, TASKS, Priority, TaskName, priority_list
from ragfleet.settings import Settings, get_settings


@lru_cache(maxsize=4)
def _client_app(broker: str, backend: str, visibility_timeout: int, key_prefix: str) -> Celery:
    # No result backend: producers poll job records, and a Redis result backend makes every send_task
    # subscribe to a result channel it never leaves (a leak, and a 19 s stall when Redis is down).
    del backend
    app = Celery("ragfleet-client", broker=broker, backend=None, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        broker_transport_options={
            "visibility_timeout": visibility_timeout,
            "queue_order_strategy": "priority",
            "priority_steps": list(PRIORITY_STEPS),
            # a frozen Redis must fail the publish fast (the API answers 503), not block forever
            "socket_timeout": 2.0,
            "socket_connect_timeout": 2.0,
            **({"global_keyprefix": key_prefix} if key_prefix else {}),
        },
        broker_connection_retry_on_startup=False,
        broker_connection_timeout=2.0,
        broker_connection_max_retries=1,
        task_publish_retry_policy={"max_retries": 2, "interval_start": 0.1, "interval_step": 0.2},
    )
    return app


def client_app(settings: Settings | None = None) -> Celery:
    s = settings or get_settings()
    return _client_app(s.broker, s.backend, s.visibility_timeout_s, s.broker_key_prefix)


def default_expires(task: TaskName, settings: Settings) -> int:
    return TASKS[task].expires_s(settings)


_origin: tuple[int, str] | None = None


def _origin_of_this_process() -> str:
    """Celery's `origin` header (`anon_nodename()`: gen<pid>@<host>), once per process."""
    global _origin
    pid = os.getpid()
    if _origin is None or _origin[0] != pid:
        _origin = (pid, anon_nodename())
    return _origin[1]


def build_message(
    task: TaskName,
    payload: dict[str, Any],
    *,
    settings: Settings | None = None,
    job_id: str | None = None,
    priority: Priority = Priority.DEFAULT,
    expires: float | None = None,
    headers: dict[str, Any] | None = None,
) -> tuple[str, str, str]:
    """(task id, queue key, message): the Redis list entry `enqueue` would publish, built directly.

    Two layers. Celery's task message (protocol 2: headers, properties, body) is built by Celery
    itself, `app.amqp.as_task_v2`, with the arguments `send_task` gives it for this call (`queue=`,
    `args=()`, `kwargs={"payload": ...}`, an `expires`, a priority, our `argsrepr`/`kwargsrepr`), and
    Celery's `before_task_publish` signal is sent as `send_task` sends it (our hooks add the request
    id and the enqueue time). kombu's Redis list envelope around it (the base64 body, `delivery_info`,
    `priority`, `body_encoding`, `delivery_tag`, the content type) is written here: kombu has no
    public call that returns it without sending. docs/compat.md lists that envelope and the priority
    list name (`names.priority_list`) as kept touches; tests/integration/test_producer_contract.py
    compares this message with the one kombu publishes itself, field for field and in order, inside
    and outside a running task.

    Why not `send_task` with a collecting producer: its routing, option merging, producer pool and
    retry wrappers cost ~190 us of CPU per message in a warm process and 0.6 ms in a retrieval worker
    right after a search (cold caches), and a message built here can be LPUSHed in the same MULTI as
    its job record (`enqueue_on`). Not done here: `add_to_parent` (a running task's
    `request.children` trail, which only a stored result would show; our query tasks store none),
    and the `after_task_publish` signal (the LPUSH runs later, in the caller's round trip; nothing
    listens)."""
    s = settings or get_settings()
    app = client_app(s)
    task_id, payload = _task_id_and_payload(payload, job_id)
    name, queue = task.value, TASK_QUEUES[task].value
    expires_s = float(expires if expires is not None else default_expires(task, s))
    root_id, parent_id = None, None
    parent = app.current_worker_task  # what send_task reads for a task sent from a running task
    if parent is not None:
        root_id = parent.request.root_id or parent.request.id
        parent_id = parent.request.id
    kwargsrepr = _kwargsrepr(task_id)
    message_headers, properties, body, _sent_event = app.amqp.as_task_v2(
        task_id,
        name,
        args=(),
        kwargs={"payload": payload},
        expires=expires_s,
        reply_to=app.thread_oid,
        root_id=root_id,
        parent_id=parent_id,
        origin=_origin_of_this_process(),
        ignore_result=None,
        argsrepr="()",
        kwargsrepr=kwargsrepr,
    )
    message_headers.update(task_headers.for_publish(headers))
    # send_task passes its leftover options on as message properties: these two, here
    properties.update(argsrepr="()", kwargsrepr=kwargsrepr)
    signals.before_task_publish.send(
        sender=name,
        body=body,
        exchange="",
        routing_key=queue,
        declare=[],
        headers=message_headers,
        properties=properties,
        retry_policy=None,
    )
    # kombu's Redis envelope (kombu/transport/redis.py: Channel._put via virtual.Channel.basic_publish)
    properties.update(
        delivery_mode=2,
        expiration=str(int(expires_s * 1000)),
        delivery_info={"exchange": "", "routing_key": queue},
        priority=int(priority),
        body_encoding="base64",
        delivery_tag=str(uuid.uuid4()),
    )
    message = {
        "body": base64.b64encode(json.dumps(body).encode()).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": message_headers,
        "properties": properties,
    }
    return task_id, s.broker_key_prefix + priority_list(queue, int(priority)), json.dumps(message)


def enqueue_on(
    pipe: Any,
    task: TaskName,
    payload: dict[str, Any],
    *,
    settings: Settings | None = None,
    job_id: str | None = None,
    priority: Priority = Priority.DEFAULT,
    expires: float | None = None,
) -> str:
    """`enqueue`, queued onto the caller's Redis pipeline (redis-py, sync or asyncio) instead of sent.

    The message is the one `enqueue` publishes (`build_message`); only its LPUSH runs in the
    caller's round trip. A stage's last writes and the next stage's message then go out together,
    or not at all with a MULTI: no window in which the record says "handed off" and the broker has
    no message, and one round trip fewer on the query's critical path.
    """
    task_id, key, message = build_message(
        task, payload, settings=settings, job_id=job_id, priority=priority, expires=expires
    )
    pipe.lpush(key, message)
    return task_id


def _task_id_and_payload(payload: dict[str, Any], job_id: str | None) -> tuple[str, dict[str, Any]]:
    """The Celery task id is the job id; the payload carries it too."""
    task_id = job_id or payload.get("job_id") or uuid.uuid4().hex
    rest = {k: v for k, v in payload.items() if v is not None or k != "job_id"}
    return task_id, {"job_id": task_id, **rest}


def _kwargsrepr(task_id: str) -> str:
    # Celery would saferepr() the whole payload for the message headers that Flower shows: slow
    # for a hand-off carrying five source passages, and it would put user text in task events.
    return f"{{'payload': {{'job_id': {task_id!r}, ...}}}}"


def enqueue(
    task: TaskName,
    payload: dict[str, Any],
    *,
    settings: Settings | None = None,
    job_id: str | None = None,
    priority: Priority = Priority.DEFAULT,
    expires: float | None = None,
    headers: dict[str, Any] | None = None,
) -> str:
    """Send `task` with `kwargs={"payload": payload}`; the Celery task id is the job id."""
    s = settings or get_settings()
    task_id, payload = _task_id_and_payload(payload, job_id)
    client_app(s).send_task(
        task.value,
        kwargs={"payload": payload},
        argsrepr="()",
        kwargsrepr=_kwargsrepr(task_id),
        task_id=task_id,
        queue=TASK_QUEUES[task].value,
        priority=int(priority),
        expires=expires if expires is not None else default_expires(task, s),
        headers=task_headers.for_publish(headers),
        # Celery routes a `queue=` send through kombu's anonymous exchange (an LPUSH onto the
        # queue's list, no binding lookup), so declaring the queue on every publish only costs
        # kombu's copy-and-bind of two entities (~25 % of a publish's CPU, on the API's and the
        # hand-off's critical path). Workers declare their queues when they start consuming.
        declare=[],
    )
    return task_id
