"""Per-caller rate limits shared by every API replica through Redis (`limits`, moving window).

A moving window never lets a burst of 2x the limit through at a window edge, and its reset time
gives an honest `Retry-After`. Keys live under `Settings.key("rl")` so tests and fleets sharing one
Redis stay isolated.

Two budgets per caller, each its own window: `submit` (`Settings.rate_limit`: submissions and every
other request that is not a read) and `read` (`Settings.read_rate_limit`: a caller's reads of its own
jobs, streams and batches). A producer that submits and then polls must not be refused a submission
because it polled; a 429 names the budget it exhausted (`RateLimitedError.limit`) and whose it was
(`scope`: the key's, the tenant's where several keys share one, the client address's on an open API;
`api_shim.auth`).

The check runs on `redis.asyncio` in the API's event loop (`AsyncRateLimiter`): no worker-thread
hop on every request (a hop costs ~0.2-0.3 ms here, and the thread pool caps how many requests
can wait on Redis at once).
"""

from __future__ import annotations

import asyncio
import math
import time
import weakref
from typing import Literal, cast

from limits import RateLimitItem, parse_many
from limits.aio.storage import RedisStorage as AsyncRedisStorage
from limits.aio.strategies import MovingWindowRateLimiter as AsyncMovingWindowRateLimiter

from ragfleet.settings import Settings

LimitName = Literal["submit", "read"]
LimitScope = Literal["key", "tenant", "ip"]  # the prefix of a caller's identity (api_shim.auth.Caller)
_WHOSE: dict[LimitScope, str] = {
    "key": "for this API key",
    "tenant": "for this tenant's keys together",
    "ip": "for this client address",
}


class RateLimitedError(Exception):
    """A caller exhausted one of its budgets: answered 429 with `Retry-After` and `{"detail", "limit",
    "scope"}`."""

    def __init__(self, limit: LimitName, detail: str, retry_after: float, scope: LimitScope) -> None:
        super().__init__(detail)
        self.limit = limit
        self.scope: LimitScope = scope
        self.detail = detail
        self.retry_after = retry_after


class AsyncRateLimiter:
    """One named moving-window budget per caller, on redis.asyncio: one storage per event loop (a
    connection belongs to the loop it was opened on, and a test client may run several loops in
    one process). The name is part of every window's key: two budgets with the same rate never
    share a counter."""

    def __init__(self, settings: Settings, rate: str | None = None, name: LimitName = "submit") -> None:
        rate = settings.rate_limit if rate is None else rate
        self.items: list[RateLimitItem] = parse_many(rate) if rate.strip() else []
        self.name: LimitName = name
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
        bucket = identity if self.name == "submit" else f"{self.name}:{identity}"
        for item in self.items:
            if not await limiter.hit(item, bucket):
                stats = await limiter.get_window_stats(item, bucket)
                return max(1.0, float(math.ceil(stats.reset_time - time.time())))
        return None

    def describe(self) -> str:
        return "; ".join(str(item) for item in self.items)

    async def check(self, identity: str) -> None:
        """Count one request; raise `RateLimitedError` naming this budget if it is exhausted."""
        wait = await self.hit(identity)
        if wait is not None:
            scope = cast(LimitScope, identity.split(":", 1)[0])
            detail = f"rate limit exceeded ({self.describe()}) {_WHOSE[scope]}"
            raise RateLimitedError(self.name, detail, wait, scope)
