"""`ragfleet_dead_letters`: dead letters waiting for an operator, read from Redis at scrape time.

Like queue depth, a count that lives in Redis, not in any process: a collector reads it when
Prometheus scrapes (one ZCOUNT of the index, `ragfleet.dead_letters.DeadLetters.count`), so every
process that exposes it reports the same number. Only the API exposes it (as it does queue depth).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ragfleet.metrics.registry import register_collector
from ragfleet.metrics.spec import DEAD_LETTERS

if TYPE_CHECKING:
    from ragfleet.dead_letters import DeadLetters
    from ragfleet.settings import Settings

_HELP = "Dead letters kept for an operator (parked poison messages, worker_lost and internal failures)."


class DeadLettersCollector(Collector):
    """A Redis error yields no sample (the scrape still succeeds; `ragfleet_queue_depth_up` says
    whether Redis answered)."""

    def __init__(self, letters: DeadLetters) -> None:
        self._letters = letters

    def describe(self) -> Iterable[Metric]:
        # without describe() registering would call collect() and hit Redis
        yield GaugeMetricFamily(DEAD_LETTERS, _HELP)

    def collect(self) -> Iterable[Metric]:
        import redis as redis_mod

        try:
            n = self._letters.count()
        except redis_mod.RedisError:
            return
        yield GaugeMetricFamily(DEAD_LETTERS, _HELP, value=float(n))


def enable_dead_letters(settings: Settings) -> DeadLettersCollector:
    """Expose the dead-letter count from this process (the API)."""
    from ragfleet.dead_letters import DeadLetters
    from ragfleet.redis_conn import get_redis

    collector = DeadLettersCollector(DeadLetters(get_redis(settings), settings))
    register_collector(collector)
    return collector
