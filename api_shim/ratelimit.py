"""Per-caller rate limits shared by every API replica through Redis (`limits`, moving window).

A moving window never lets a burst of 2x the limit through at a window edge, and its reset time
gives an honest `Retry-After`. Keys live under `Settings.key("rl")` so tests and fleets sharing one
Redis stay isolated.
"""

from __future__ import annotations

import math
import time

from limits import RateLimitItem, parse_many
from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter

from ragfleet.settings import Settings


class RateLimiter:
    def __init__(self, settings: Settings) -> None:
        self.items: list[RateLimitItem] = parse_many(settings.rate_limit) if settings.rate_limit else []
        timeout = settings.redis_socket_timeout_s
        self._storage = RedisStorage(
            settings.redis_url,
            key_prefix=settings.key("rl"),
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
        )
        self._limiter = MovingWindowRateLimiter(self._storage)

    def hit(self, identity: str) -> float | None:
        """Count one request; None if allowed, else the seconds to wait. Blocking (Redis round trip)."""
        for item in self.items:
            if not self._limiter.hit(item, identity):
                stats = self._limiter.get_window_stats(item, identity)
                return max(1.0, float(math.ceil(stats.reset_time - time.time())))
        return None

    def describe(self) -> str:
        return "; ".join(str(item) for item in self.items)
