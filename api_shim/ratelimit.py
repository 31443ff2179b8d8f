"""Per-caller rate limits shared by every API replica through Redis (`limits`, moving window).

A moving window never lets a burst of 2x the limit through at a window edge, and its reset time
gives an honest `Retry-After`. Keys live under `Settings.key("rl")` so tests and fleets sharing one
Redis stay isolated.

The check runs on `redis.asyncio` in the API's event loop (`AsyncRateLimiter`): no worker-thread
hop on every request (a hop costs ~0.2-0.3 ms here, and the thread pool caps how many requests
can wait on Redis at once).
"""

from __future__ import annotations

import asyncio
import math
import time
import weakref

from limits import RateLimitItem, parse_many
from limits.aio.storage import RedisStorage as AsyncRedisStorage
from limits.aio.strategies import MovingWindowRateLimiter as AsyncMovingWindowRateLimiter

from ragfleet.settings import Settings


class AsyncRateLimiter:
    """The moving-window limit per caller, on redis.asyncio: one storage per event loop (a
    connection belongs to the loop it was opened on, and a test client may run several loops in
    one process)."""

    def __init__(self, settings: Settings) -> None:
        self.items: list[RateLimitItem] = parse_many(settings.rate_limit) if settings.rate_limit else []
        self._s = settings
        self._limiters: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncMovingWindowRateLimiter] = (
            weakref.WeakKeyDictionary()
        )

    def _limiter(self) -> AsyncMovingWindowRateLimiter:
        loop = asyncio.get_running_loop()
        limiter = self._limiters.get(loop)
        if limiter is None:
            timeout = self._s.redis_socket_timeout_s
            storage = AsyncRedisStorage(
                "async+" + self._s.redis_url,
                implementation="redispy",
                key_prefix=self._s.key("rl"),
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
            )
            limiter = AsyncMovingWindowRateLimiter(storage)
            self._limiters[loop] = limiter
        return limiter

    async def hit(self, identity: str) -> float | None:
        """Count one request; None if allowed, else the seconds to wait (one Redis round trip)."""
        limiter = self._limiter()
        for item in self.items:
            if not await limiter.hit(item, identity):
                stats = await limiter.get_window_stats(item, identity)
                return max(1.0, float(math.ceil(stats.reset_time - time.time())))
        return None

    def describe(self) -> str:
        return "; ".join(str(item) for item in self.items)
