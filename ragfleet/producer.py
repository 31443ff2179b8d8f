"""Enqueue tasks by name through a client-only Celery app.

The API and the Python client use this; it imports no task code and no heavy dependency, exactly
like another team's service would. Every enqueue carries an `expires` (a query nobody waits for any
more must not burn a worker) and a priority.
"""

from __future__ import annotations

import uuid
from functools import lru_cache
from typing import Any

from celery import Celery

from ragfleet import kombu_fixes
from ragfleet.names import TASK_QUEUES, Priority, TaskName
from ragfleet.settings import Settings, get_settings


@lru_cache(maxsize=4)
def _client_app(broker: str, backend: str, visibility_timeout: int, key_prefix: str) -> Celery:
    # No result backend: producers poll job records, and a Redis result backend makes every send_task
    # subscribe to a result channel it never leaves (a leak, and a 19 s stall when Redis is down).
    del backend
    kombu_fixes.install()  # one redis client per broker pool, not one per publish (see module)
    app = Celery("ragfleet-client", broker=broker, backend=None, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        broker_transport_options={
            "visibility_timeout": visibility_timeout,
            "queue_order_strategy": "priority",
            "priority_steps": list(range(10)),
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
    if task in (TaskName.QUERY, TaskName.GENERATE):
        return settings.query_expires_s
    if task in (TaskName.FEEDBACK_RECORD, TaskName.FEEDBACK_AGGREGATE):
        return settings.feedback_expires_s
    return settings.index_expires_s


class _Collected:
    """Stands in for kombu's Redis publish batch (kombu 5.7, `Producer.batch()`): the Redis
    channel hands a batch the final commands of each publish (`add("lpush", queue_key, message)`)
    instead of running them. Collected here, they run in the caller's own pipeline."""

    def __init__(self) -> None:
        self.commands: list[tuple[str, tuple[Any, ...]]] = []
        self.keyprefix = ""

    def add(self, name: str, *args: Any) -> None:
        self.commands.append((name, args))

    def publish(self, channel: Any, message: Any, **kwargs: Any) -> None:
        """What kombu's batch state does per message (kombu.messaging._ProducerBatchState)."""
        self.keyprefix = getattr(channel, "global_keyprefix", "") or ""
        channel.basic_publish(message, _publish_batch=self, **kwargs)


class MessageProducer:
    """A kombu producer of its own for `enqueue_on` in an event loop (the API's).

    Opening it is I/O (kombu pings Redis when it opens a channel, and binds each queue once per
    connection), so `open` runs off the loop; from then on `enqueue_on(producer=...)` only builds
    messages: it never touches this connection again, and nothing in the loop blocks on it.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._producer: Any = None

    @property
    def producer(self) -> Any:
        """The open producer, or None until `open` has succeeded."""
        return self._producer

    def open(self) -> None:
        if self._producer is not None:
            return
        app = client_app(self._settings)
        producer = app.amqp.Producer(app.connection_for_write())
        for queue in {q.value for q in TASK_QUEUES.values()}:
            producer.maybe_declare(app.amqp.queues[queue])
        self._producer = producer


def enqueue_on(
    pipe: Any,
    task: TaskName,
    payload: dict[str, Any],
    *,
    settings: Settings | None = None,
    job_id: str | None = None,
    priority: Priority = Priority.DEFAULT,
    expires: float | None = None,
    producer: Any = None,
) -> str:
    """`enqueue`, queued onto the caller's Redis pipeline (redis-py, sync or asyncio) instead of sent.

    The message is built by Celery and kombu exactly as `enqueue` builds it; only its LPUSH runs
    in the caller's round trip. A stage's last writes and the next stage's message then go out
    together, or not at all with a MULTI: no window in which the record says "handed off" and the
    broker has no message, and one round trip fewer on the query's critical path.
    """
    collected = _Collected()
    app = client_app(settings)
    with app.producer_or_acquire(producer) as producer:
        producer._batch_local.current = collected  # kombu's batch hook, see _Collected
        try:
            task_id = enqueue(
                task,
                payload,
                settings=settings,
                job_id=job_id,
                priority=priority,
                expires=expires,
                producer=producer,
            )
        finally:
            del producer._batch_local.current
    if [name for name, _ in collected.commands] != ["lpush"]:
        raise RuntimeError(f"unexpected broker commands for one publish: {collected.commands!r}")
    (_, (key, message)) = collected.commands[0]
    pipe.lpush(collected.keyprefix + key, message)
    return task_id


def enqueue(
    task: TaskName,
    payload: dict[str, Any],
    *,
    settings: Settings | None = None,
    job_id: str | None = None,
    priority: Priority = Priority.DEFAULT,
    expires: float | None = None,
    headers: dict[str, Any] | None = None,
    producer: Any = None,
) -> str:
    """Send `task` with `kwargs={"payload": payload}`; the Celery task id is the job id."""
    s = settings or get_settings()
    task_id = job_id or payload.get("job_id") or uuid.uuid4().hex
    payload = {"job_id": task_id, **{k: v for k, v in payload.items() if v is not None or k != "job_id"}}
    client_app(s).send_task(
        task.value,
        kwargs={"payload": payload},
        # Celery would saferepr() the whole payload for the message headers that Flower shows: slow
        # for a hand-off carrying five source passages, and it would put user text in task events.
        argsrepr="()",
        kwargsrepr=f"{{'payload': {{'job_id': {task_id!r}, ...}}}}",
        task_id=task_id,
        queue=TASK_QUEUES[task].value,
        priority=int(priority),
        expires=expires if expires is not None else default_expires(task, s),
        headers=headers or {},
        producer=producer,
        # Celery routes a `queue=` send through kombu's anonymous exchange (an LPUSH onto the
        # queue's list, no binding lookup), so declaring the queue on every publish only costs
        # kombu's copy-and-bind of two entities (~25 % of a publish's CPU, on the API's and the
        # hand-off's critical path). Workers declare their queues when they start consuming.
        declare=[],
    )
    return task_id
