"""Three patches to kombu's Redis transport, installed by every process that talks to the broker
(workers in `workers.app`, producers in `ragfleet.producer`). Idempotent.

1. A guard for a crash on broker connection loss that would otherwise kill a worker.

   When Redis goes away, Celery's consumer first `collect()`s the broken connection (which detaches
   the transport from its kombu `Connection`) and then `close()`s it. Closing the channel tries to
   put the worker's unacknowledged messages back on their queues; the Redis channel then builds a
   connection pool from `self.connection.client`, which `collect()` has just set to None, and raises
   AttributeError. Celery only ignores connection errors there, so the AttributeError becomes
   "Unrecoverable error" and the worker shuts down: seen in tests/chaos/test_redis_outage.py, where
   a generation worker holding a message when Redis was killed stopped and every later query stayed
   `retrieving`. The guard makes that case raise the transport's own ConnectionError instead: Celery
   ignores it, reconnects as it does for any outage, and the unacknowledged messages stay in Redis's
   unacked hash, from where kombu's visibility-timeout sweep restores them (the documented path when
   a worker dies).

2. One synchronous redis client per channel connection pool, not one per command.

   kombu builds a new `redis.Redis` around the channel's pool for every synchronous operation:
   each publish, each unacked-index write when a message arrives, each ack, each task event. On
   redis-py 8 a client costs ~80 us to build (it fills a ~170-entry response-callback table), and a
   query crosses four of them per hop on its critical path, in single-threaded event loops that
   every other message also waits on. A `redis.Redis` is safe to share between threads (each command
   checks a connection out of the pool), so the channel keeps the one it built for as long as its
   pool lives; a reconnect makes a new pool and with it a new client.

3. Each worker node's unacknowledged delivery tags, also in a set of its own (`workers/inflight.py`).

   kombu writes a delivered message into its unacked hash and index in one pipeline, and removes it
   from both when it is acked, rejected or restored. Once `track_inflight(node)` is called, the
   same pipelines also add the tag to, and remove it from, `ragfleet.inflight.<node>` (under the
   broker prefix, like kombu's own keys): no round trip of its own. A node restarted under the same
   name reads that set before it consumes, and requeues at once what its dead predecessor held,
   instead of leaving it to the visibility-timeout sweep.
"""

from __future__ import annotations

import time
from typing import Any

import redis.exceptions
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.json import dumps as _kombu_dumps

dumps: Any = _kombu_dumps  # kombu's JSON (its unacked entries must read back with its `loads`)

_MARK = "_ragfleet_guarded"
_CLIENT_ATTR = "_ragfleet_sync_client"
_inflight: list[str | None] = [None]  # this process's in-flight set (unprefixed), once tracking is on


def install() -> None:
    _install_close_guard()
    _install_client_reuse()
    _install_inflight_tracking()


def inflight_key(node: str) -> str:
    """The set of `node`'s unacknowledged delivery tags, before kombu's `global_keyprefix`."""
    return f"ragfleet.inflight.{node}"


def track_inflight(node: str | None) -> None:
    """From now on, this process's consumers record their unacked tags under `node` (None: stop)."""
    _inflight[0] = inflight_key(node) if node else None


def _install_close_guard() -> None:
    channel: Any = kombu_redis.Channel
    original = channel._connparams
    if getattr(original, _MARK, False):
        return

    def _connparams(self: Any, asynchronous: bool = False) -> Any:
        if self.connection is None or self.connection.client is None:
            raise redis.exceptions.ConnectionError("broker connection already closed")
        return original(self, asynchronous=asynchronous)

    setattr(_connparams, _MARK, True)
    _connparams.__wrapped_original__ = original  # type: ignore[attr-defined]
    channel._connparams = _connparams


def _install_client_reuse() -> None:
    channel: Any = kombu_redis.Channel
    original = channel._create_client
    if getattr(original, _MARK, False):
        return

    def _create_client(self: Any, asynchronous: bool = False) -> Any:
        if asynchronous:  # the BRPOP/pub-sub client: kombu caches it itself
            return original(self, asynchronous=True)
        pool = self.pool
        cached = self.__dict__.get(_CLIENT_ATTR)
        if cached is not None and cached[0] is pool:
            return cached[1]
        client = original(self, asynchronous=False)
        self.__dict__[_CLIENT_ATTR] = (pool, client)
        return client

    setattr(_create_client, _MARK, True)
    _create_client.__wrapped_original__ = original  # type: ignore[attr-defined]
    channel._create_client = _create_client


def _install_inflight_tracking() -> None:
    qos: Any = kombu_redis.QoS
    if getattr(qos.append, _MARK, False):
        return
    original_append, original_remove = qos.append, qos._remove_from_indices

    def append(self: Any, message: Any, delivery_tag: str) -> None:
        key = _inflight[0]
        if key is None:
            original_append(self, message, delivery_tag)
            return
        # kombu's own append (kombu/transport/redis.py, QoS.append), plus the SADD in its pipeline
        delivery = message.delivery_info
        raw = dumps([message._raw, delivery["exchange"], delivery["routing_key"]])
        with self.pipe_or_acquire() as pipe:
            pipe.zadd(self.unacked_index_key, {delivery_tag: time.time()}).hset(
                self.unacked_key, delivery_tag, raw
            ).sadd(key, delivery_tag).execute()
            base: Any = virtual.QoS
            base.append(self, message, delivery_tag)

    def _remove_from_indices(self: Any, delivery_tag: str, pipe: Any = None) -> Any:
        out = original_remove(self, delivery_tag, pipe)
        key = _inflight[0]
        return out if key is None else out.srem(key, delivery_tag)

    for fn, orig in ((append, original_append), (_remove_from_indices, original_remove)):
        setattr(fn, _MARK, True)
        setattr(fn, "__wrapped_original__", orig)  # noqa: B010 - the same marker the other patches set
    qos.append = append
    qos._remove_from_indices = _remove_from_indices
