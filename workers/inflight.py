"""A node restarted under its own name puts back, at once, the messages its dead predecessor held.

Late acks keep every delivered message in kombu's unacked hash until its task ends. A prefork
pool's parent survives a child's death and requeues that child's message itself
(`task_reject_on_worker_lost`). When the whole node dies (an OOM kill of a threads or solo pool, a
crash of the consumer, a reboot), nothing does that: its messages wait for the visibility-timeout
sweep, 300 s for queries and an hour elsewhere, while their callers poll.

A supervisor (honcho under systemd, Kubernetes, a platform's process manager) restarts the process
with the same `-n` name (`generation@%h`). So every node records the delivery tags it holds in a
set named after it: `ragfleet.kombu_fixes` writes the set in the same pipelines as kombu's own
unacked entries, so it costs no round trip. Before a node consumes, it takes over what its last run
left in that set (`claim`, in `celeryd_after_setup`). Once its consumer is up, it requeues each
of those messages that is still unacknowledged (`requeue`, in `worker_ready`), through kombu's
own `restore_by_tag`: kombu marks the message `redelivered`, and the redelivery cap in
`workers.base` counts it. A message another node's sweep has already restored is gone from the
hash and is skipped.

A node that finds another live node with its own name (two processes started with one `-n`)
requeues nothing: that node may still be running those tasks.
"""

from __future__ import annotations

import logging
from typing import Any

import redis

from ragfleet import kombu_fixes
from ragfleet.settings import Settings

log = logging.getLogger("ragfleet.worker")


def claim(settings: Settings, node: str) -> list[str]:
    """Take `node`'s in-flight set left by its previous run, and start tracking this run's.

    Atomic (MULTI: read, then delete), and done before this run's consumer takes a message, so
    the tags returned are only the previous run's."""
    key = settings.broker_key_prefix + kombu_fixes.inflight_key(node)
    timeout = settings.redis_socket_timeout_s
    r = redis.Redis.from_url(
        settings.broker, socket_timeout=timeout, socket_connect_timeout=timeout, decode_responses=True
    )
    pipe = r.pipeline(transaction=True)
    pipe.smembers(key)
    pipe.delete(key)
    kombu_fixes.track_inflight(node)
    try:
        members, _ = pipe.execute()
    except redis.RedisError as exc:  # a broker that is down: start anyway and wait for it, as Celery does
        log.warning("could not read what %s held before it restarted: %s", node, exc)
        return []
    finally:
        r.close()
    return sorted(members)


def requeue(consumer: Any, node: str, tags: list[str], *, ping_timeout_s: float = 1.0) -> int:
    """Put the claimed messages that are still unacknowledged back on their queues; returns how many."""
    if not tags:
        return 0
    replies = consumer.app.control.ping(destination=[node], timeout=ping_timeout_s)
    if any(node in reply for reply in replies or []):
        log.warning("another live node is named %s: not requeueing the %d it may hold", node, len(tags))
        return 0
    channel = consumer.task_consumer.channel
    qos = channel.qos
    requeued = 0
    for tag in tags:
        if channel.client.hget(qos.unacked_key, tag) is None:
            continue  # acked after all, or already restored by another node's sweep
        qos.restore_by_tag(tag)
        requeued += 1
    if requeued:
        log.warning(
            "requeued %d message(s) that the previous run of %s died holding (of %d it had recorded)",
            requeued,
            node,
            len(tags),
        )
    return requeued
