"""Redis clients, one pool per process, built from Settings.

Socket timeouts are always set: a Redis blip must surface as a fast error (HTTP 503 at the API,
a retry in a worker), never as a hung request.
"""

from __future__ import annotations

from functools import lru_cache

import redis

from ragfleet.settings import Settings, get_settings


@lru_cache(maxsize=8)
def _client(url: str, timeout: float, decode: bool) -> redis.Redis:
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=15,
        retry_on_timeout=False,
        decode_responses=decode,
    )


def get_redis(settings: Settings | None = None, *, decode: bool = True) -> redis.Redis:
    s = settings or get_settings()
    return _client(s.redis_url, s.redis_socket_timeout_s, decode)


def reset_clients() -> None:
    """Drop pooled connections; called after fork so children never share a parent's sockets."""
    _client.cache_clear()
