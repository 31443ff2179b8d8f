"""A guard for a kombu/Celery crash on broker connection loss that would otherwise kill a worker.

When Redis goes away, Celery's consumer first `collect()`s the broken connection (which detaches
the transport from its kombu `Connection`) and then `close()`s it. Closing the channel tries to
put the worker's unacknowledged messages back on their queues; the Redis channel then builds a
connection pool from `self.connection.client`, which `collect()` has just set to None, and raises
AttributeError. Celery only ignores connection errors there, so the AttributeError becomes
"Unrecoverable error" and the worker shuts down: seen in tests/chaos/test_redis_outage.py, where
a generation worker holding a message when Redis was killed stopped and every later query stayed
`retrieving`.

`install()` makes that case raise the transport's own ConnectionError instead: Celery ignores it,
reconnects as it does for any outage, and the unacknowledged messages stay in Redis's unacked
hash, from where kombu's visibility-timeout sweep restores them (the documented path when a worker
dies). Idempotent; called when the worker app is built.
"""

from __future__ import annotations

from typing import Any

import redis.exceptions
from kombu.transport import redis as kombu_redis

_MARK = "_ragfleet_guarded"


def install() -> None:
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
