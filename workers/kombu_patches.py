"""The two patches to kombu's Redis transport that the fleet keeps, installed by the worker app only
(`workers.app.create_app`), never in a producer's or client's process. Idempotent. docs/compat.md
lists them with the reliability property each buys, the test that shows it, and what to check after
a kombu upgrade (`pytest -m compat` fails when the installed kombu is not the one checked).

1. A guard for a crash on broker connection loss that would otherwise kill a worker
   (`kombu.transport.redis.Channel._connparams`).

   When Redis goes away, Celery's consumer first `collect()`s the broken connection (which detaches
   the transport from its kombu `Connection`) and then `close()`s it. Closing the channel tries to
   put the worker's unacknowledged messages back on their queues; the Redis channel then builds a
   connection pool from `self.connection.client`, which `collect()` has just set to None, and raises
   AttributeError. Celery only ignores connection errors there, so the AttributeError becomes
   "Unrecoverable error" and the worker shuts down: seen in tests/chaos/test_redis_outage.py, where
   a generation worker holding a message when Redis was killed stopped and every later query stayed
   `retrieving`. The guard makes that case raise the transport's own ConnectionError instead: Celery
   ignores it, reconnects as it does for any outage, and the unacknowledged messages stay in Redis's
   unacked hash, from where they are restored (workers/inflight.py, or kombu's visibility sweep).

2. Each worker node's unacknowledged delivery tags, also in a set of its own
   (`kombu.transport.redis.QoS.append`, `QoS._remove_from_indices`; for workers/inflight.py).

   kombu writes a delivered message into its unacked hash and index in one pipeline, and removes it
   from both when it is acked, rejected or restored. Once `track_inflight(node, ttl)` is called, the
   same pipelines also add the tag to (and give the set its TTL), and remove it from,
   `ragfleet.inflight.<node>` (under the broker prefix, like kombu's own keys): no round trip of its
   own. `append` repeats the body of kombu 5.7's `QoS.append` (two commands) with the SADD added;
   tests/integration/test_kombu_fixes.py checks that its hash entries are shaped as kombu's own.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import redis.exceptions
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.json import dumps as kombu_dumps

# kombu ships partial type hints; these names are used untyped (and are what the compat scan resolves)
Channel: Any = kombu_redis.Channel
QoS: Any = kombu_redis.QoS
VirtualQoS: Any = virtual.QoS
dumps: Any = kombu_dumps  # kombu's JSON (its unacked entries must read back with its `loads`)

_MARK = "_ragfleet_patch"
# this process's in-flight set (unprefixed) and its TTL in seconds, once tracking is on
_inflight: list[tuple[str, int] | None] = [None]


def install() -> None:
    _install_close_guard()
    _install_inflight_tracking()


def installed() -> dict[str, bool]:
    """Which kombu methods carry our patch now (a producer's process must show none)."""
    return {
        "kombu.transport.redis.Channel._connparams": _is_ours(Channel._connparams),
        "kombu.transport.redis.QoS.append": _is_ours(QoS.append),
        "kombu.transport.redis.QoS._remove_from_indices": _is_ours(QoS._remove_from_indices),
    }


def original(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The kombu function a patch wraps (the function itself when it is not ours)."""
    wrapped: Callable[..., Any] = getattr(fn, "__wrapped_original__", fn)
    return wrapped


def inflight_key(node: str) -> str:
    """The set of `node`'s unacknowledged delivery tags, before kombu's `global_keyprefix`."""
    return f"ragfleet.inflight.{node}"


def track_inflight(node: str | None, ttl_s: int = 3_600) -> None:
    """From now on, this process's consumers record their unacked tags under `node` (None: stop)."""
    _inflight[0] = (inflight_key(node), int(ttl_s)) if node else None


def _is_ours(fn: Any) -> bool:
    return bool(getattr(fn, _MARK, False))


def _mark(fn: Callable[..., Any], wrapped: Callable[..., Any]) -> None:
    setattr(fn, _MARK, True)
    setattr(fn, "__wrapped_original__", wrapped)  # noqa: B010 - a function attribute, read by `original`


def _install_close_guard() -> None:
    if _is_ours(Channel._connparams):
        return
    connparams = Channel._connparams

    def _connparams(self: Any, asynchronous: bool = False) -> Any:
        if self.connection is None or self.connection.client is None:
            raise redis.exceptions.ConnectionError("broker connection already closed")
        return connparams(self, asynchronous=asynchronous)

    _mark(_connparams, connparams)
    Channel._connparams = _connparams


def _install_inflight_tracking() -> None:
    if _is_ours(QoS.append):
        return
    original_append, original_remove = QoS.append, QoS._remove_from_indices

    def append(self: Any, message: Any, delivery_tag: str) -> None:
        tracked = _inflight[0]
        if tracked is None:
            original_append(self, message, delivery_tag)
            return
        key, ttl = tracked
        # kombu's own append (kombu/transport/redis.py, QoS.append), plus the SADD and PEXPIRE in its
        # pipeline (a set created here outlives its node by at most `ttl`; PEXPIRE, not EXPIRE: it
        # is one of the commands kombu's `global_keyprefix` client prefixes)
        delivery = message.delivery_info
        raw = dumps([message._raw, delivery["exchange"], delivery["routing_key"]])
        with self.pipe_or_acquire() as pipe:
            pipe.zadd(self.unacked_index_key, {delivery_tag: time.time()}).hset(
                self.unacked_key, delivery_tag, raw
            ).sadd(key, delivery_tag).pexpire(key, ttl * 1000).execute()
            VirtualQoS.append(self, message, delivery_tag)

    def _remove_from_indices(self: Any, delivery_tag: str, pipe: Any = None) -> Any:
        out = original_remove(self, delivery_tag, pipe)
        tracked = _inflight[0]
        return out if tracked is None else out.srem(tracked[0], delivery_tag)

    _mark(append, original_append)
    _mark(_remove_from_indices, original_remove)
    QoS.append = append
    QoS._remove_from_indices = _remove_from_indices
