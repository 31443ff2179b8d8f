"""`ragfleet_dead_letters`: dead letters waiting for an operator, and
`ragfleet_dead_letters_recorded_total`: every one ever recorded, both read from Redis at scrape time.

The alert on new dead letters uses the counter: the gauge stops growing at `RAGFLEET_DEAD_LETTER_MAX`
(the oldest are dropped as new ones arrive) and falls on a purge, so a rise of the gauge would miss
every dead letter recorded at the cap.

Like queue depth, a count that lives in Redis, not in any process: a collector reads it when
Prometheus scrapes (one ZCOUNT of the index, `ragfleet.dead_letters.DeadLetters.count`), so every
process that exposes it reports the same number. Only the API exposes it (as it does queue depth).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ragfleet.metrics.registry import register_collector
from ragfleet.metrics.spec import DEAD_LETTERS, DEAD_LETTERS_RECORDED

if TYPE_CHECKING:
    from ragfleet.dead_letters import DeadLetters
    from ragfleet.settings import Settings

_HELP = "Dead letters kept for an operator (parked poison messages, worker_lost and internal failures)."
_HELP_RECORDED = "Dead letters ever recorded (not lowered by the size cap, the TTL or a purge)."


class DeadLettersCollector(Collector):
    """A Redis error yields no sample (the scrape still succeeds; `ragfleet_queue_depth_up` says
    whether Redis answered)."""

    def __init__(self, letters: DeadLetters) -> None:
        self._letters = letters

    def describe(self) -> Iterable[Metric]:
        # without describe() registering would call collect() and hit Redis
        yield GaugeMetricFamily(DEAD_LETTERS, _HELP)
        yield CounterMetricFamily(DEAD_LETTERS_RECORDED, _HELP_RECORDED)

    def collect(self) -> Iterable[Metric]:
        import redis as redis_mod

        try:
            n, recorded = self._letters.count_and_recorded()
        except redis_mod.RedisError:
            return
        yield GaugeMetricFamily(DEAD_LETTERS, _HELP, value=float(n))
        yield CounterMetricFamily(DEAD_LETTERS_RECORDED, _HELP_RECORDED, value=float(recorded))


def enable_dead_letters(settings: Settings) -> DeadLettersCollector:
    """Expose the dead-letter count from this process (the API)."""
    from ragfleet.dead_letters import DeadLetters
    from ragfleet.redis_conn import get_redis

    collector = DeadLettersCollector(DeadLetters(get_redis(settings), settings))
    register_collector(collector)
    return collector
