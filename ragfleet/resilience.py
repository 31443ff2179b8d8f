"""Circuit breakers shared by the whole fleet, and jittered retries.

The breaker state lives in Redis (pybreaker's `CircuitRedisStorage`) so that when one worker
process sees a provider fail `fail_max` times in a row, every process stops calling it at once,
instead of each of N processes paying `fail_max` timeouts of its own. Keys live under
`Settings.key("breaker", <name>)`, so a test prefix or a second fleet on the same Redis is isolated.

pybreaker facts that shape this module (measured, see NOTES):
- the storage needs a bytes client (`decode_responses=False`): it calls `.decode()` on what it reads;
- the call that trips the breaker raises `CircuitBreakerError`, not the provider's error;
- `opened_at` is stored in whole seconds, so the reset timeout is exact to about one second;
- a `CircuitBreaker` object holds a lock for the whole guarded call: share state, not objects,
  between threads (the gateway keeps one object per thread);
- if Redis is unreachable, the storage reads as "closed": a Redis outage never blocks generation.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

import pybreaker
import redis

from ragfleet.settings import Settings

T = TypeVar("T")

CircuitBreakerError = pybreaker.CircuitBreakerError
STATE_OPEN = pybreaker.STATE_OPEN
STATE_CLOSED = pybreaker.STATE_CLOSED
STATE_HALF_OPEN = pybreaker.STATE_HALF_OPEN


def breaker_namespace(settings: Settings, name: str) -> str:
    return settings.key("breaker", name)


def _require_bytes_client(client: redis.Redis) -> None:
    if client.connection_pool.connection_kwargs.get("decode_responses"):
        raise ValueError(
            "the breaker's Redis client must use decode_responses=False (pybreaker decodes itself)"
        )


def make_breaker(
    client: redis.Redis,
    settings: Settings,
    name: str,
    *,
    fail_max: int | None = None,
    reset_s: float | None = None,
    exclude: list[Callable[[BaseException], bool]] | None = None,
) -> pybreaker.CircuitBreaker:
    """A breaker whose state any process building one with the same `name` and prefix sees.

    `exclude` predicates mark errors that say nothing about the provider's health (a 400 is our
    bug): pybreaker counts those as successes.
    """
    _require_bytes_client(client)
    storage = pybreaker.CircuitRedisStorage(
        pybreaker.STATE_CLOSED, client, namespace=breaker_namespace(settings, name)
    )
    return pybreaker.CircuitBreaker(
        fail_max=fail_max if fail_max is not None else settings.llm_breaker_fail_max,
        reset_timeout=reset_s if reset_s is not None else settings.llm_breaker_reset_s,
        exclude=list(exclude or []),
        state_storage=storage,
        name=name,
    )


def breaker_state(client: redis.Redis, settings: Settings, name: str) -> str:
    """The shared state as stored ("closed", "open", "half-open"), read without creating keys.

    An open breaker whose reset timeout has elapsed still reads "open" here: pybreaker moves it to
    half-open on the next guarded call, in whichever process makes it.
    """
    raw = client.get(f"{breaker_namespace(settings, name)}:pybreaker:state")
    if raw is None:
        return STATE_CLOSED
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def reset_breaker(client: redis.Redis, settings: Settings, name: str) -> None:
    """Forget a breaker's shared state (an operator's "provider is fixed" button; tests)."""
    prefix = f"{breaker_namespace(settings, name)}:pybreaker:"
    client.delete(*(prefix + k for k in ("state", "fail_counter", "success_counter", "opened_at")))


def backoff_delay(attempt: int, *, base_s: float, max_s: float, retry_after: float | None = None) -> float:
    """Full-jitter exponential backoff (uniform in [0, base * 2**attempt], capped): jitter keeps a
    fleet that failed together from retrying together. A server's Retry-After is a floor."""
    delay = random.uniform(0.0, min(max_s, base_s * (2**attempt)))
    if retry_after is not None:
        delay = max(delay, min(retry_after, max_s))
    return delay


def call_with_retries(
    fn: Callable[[], T],
    *,
    max_retries: int,
    is_retryable: Callable[[BaseException], bool],
    base_s: float = 0.2,
    max_s: float = 5.0,
    retry_after: Callable[[BaseException], float | None] = lambda _e: None,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call `fn`; on a retryable error wait and call again, up to `max_retries` more times.

    Non-retryable errors and `CircuitBreakerError` (the provider is known to be down) are raised
    at once: waiting on an open breaker only delays the fallback.
    """
    attempt = 0
    while True:
        try:
            return fn()
        except CircuitBreakerError:
            raise
        except Exception as exc:
            if attempt >= max_retries or not is_retryable(exc):
                raise
            sleep(backoff_delay(attempt, base_s=base_s, max_s=max_s, retry_after=retry_after(exc)))
            attempt += 1
