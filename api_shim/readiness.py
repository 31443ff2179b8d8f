"""`/readyz`: may this replica take traffic? Redis must answer and each queue the API feeds must
have a live consumer, else accepted jobs would only pile up.

The Redis ping is cheap and runs on every probe, so a dead Redis shows within one probe. Asking the
workers is a broadcast that waits its full timeout for replies, so that answer is cached for a few
seconds. `Readiness.checks` is the hook for more probes (e.g. the vector store): append
`(name, probe)`, where `probe()` blocks briefly and raises on failure.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from typing import Any

import anyio
import redis

from ragfleet.names import Queue

Probe = Callable[[], None]
ReadyCheck = tuple[str, Probe]


class CheckFailedError(Exception):
    pass


def redis_probe(client: redis.Redis) -> Probe:
    def probe() -> None:
        client.ping()

    return probe


class WorkerProbe:
    """Fails unless every required queue has at least one consumer answering `active_queues`."""

    def __init__(
        self,
        celery_app: Any,
        queues: Iterable[Queue],
        *,
        timeout_s: float = 1.0,
        cache_s: float = 5.0,
    ) -> None:
        self._app = celery_app
        self.queues = [q.value for q in queues]
        self._timeout = timeout_s
        self._cache_s = cache_s
        self._cached: tuple[float, str | None] | None = None

    def missing(self) -> list[str]:
        replies: dict[str, list[dict[str, Any]]] | None = self._app.control.inspect(
            timeout=self._timeout
        ).active_queues()
        served = {q.get("name") for queues in (replies or {}).values() for q in queues}
        return [q for q in self.queues if q not in served]

    def __call__(self) -> None:
        now = time.monotonic()
        if self._cached is None or now - self._cached[0] > self._cache_s:
            try:
                missing = self.missing()
                reason = f"no live worker for queue(s): {', '.join(missing)}" if missing else None
            except Exception as exc:  # a broker error is a failed check, not a 500
                reason = f"{type(exc).__name__}: {exc}"
            self._cached = (time.monotonic(), reason)
        reason = self._cached[1]
        if reason:
            raise CheckFailedError(reason)


class Readiness:
    def __init__(self, checks: Iterable[ReadyCheck], *, timeout_s: float) -> None:
        self.checks: list[ReadyCheck] = list(checks)
        self._timeout = timeout_s
        self._lock = asyncio.Lock()

    async def _run_one(self, probe: Probe) -> str | None:
        try:
            with anyio.fail_after(self._timeout):
                await anyio.to_thread.run_sync(probe, abandon_on_cancel=True)
        except TimeoutError:
            return f"no answer within {self._timeout:g} s"
        except Exception as exc:
            return str(exc) or type(exc).__name__
        return None

    async def failing(self) -> dict[str, str]:
        """Run all checks concurrently, each bounded; returns {check name: reason} for failures."""
        async with self._lock:  # one broadcast at a time; waiters then hit the warm cache
            names = [name for name, _ in self.checks]
            reasons = await asyncio.gather(*(self._run_one(probe) for _, probe in self.checks))
        return {name: reason for name, reason in zip(names, reasons, strict=True) if reason}
