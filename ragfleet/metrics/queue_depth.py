"""`ragfleet_queue_depth`: messages waiting per queue, read from the broker's Redis at scrape time."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ragfleet.metrics.registry import register_collector
from ragfleet.metrics.spec import QUEUE_DEPTH, QUEUE_DEPTH_UP
from ragfleet.names import PRIORITY_STEPS, priority_list

if TYPE_CHECKING:
    import redis

    from ragfleet.settings import Settings


def queue_keys(
    queue: str, *, global_keyprefix: str = "", priority_steps: Sequence[int] = PRIORITY_STEPS
) -> list[str]:
    """The Redis lists kombu's Redis transport uses for `queue`, one per priority step
    (`ragfleet.names.priority_list`), all behind the transport's `global_keyprefix`."""
    steps = tuple(sorted(set(priority_steps)))
    return [f"{global_keyprefix}{priority_list(queue, pri, steps=steps)}" for pri in steps]


class QueueDepthCollector(Collector):
    """`ragfleet_queue_depth{queue}`: messages waiting (not yet delivered) per queue, all priorities.

    Messages a worker has reserved but not acknowledged live in kombu's `unacked` hash and are not
    counted. A Redis error yields `ragfleet_queue_depth_up 0` and no depth, never a failed scrape.
    """

    def __init__(
        self,
        client: redis.Redis,
        queues: Iterable[str],
        *,
        global_keyprefix: str = "",
        priority_steps: Sequence[int] = PRIORITY_STEPS,
    ) -> None:
        self._client = client
        self._keys = {
            q: queue_keys(q, global_keyprefix=global_keyprefix, priority_steps=priority_steps) for q in queues
        }

    def depths(self) -> dict[str, int]:
        pipe = self._client.pipeline(transaction=False)
        for keys in self._keys.values():
            for key in keys:
                pipe.llen(key)
        sizes = iter(pipe.execute())
        return {q: sum(int(next(sizes)) for _ in keys) for q, keys in self._keys.items()}

    def describe(self) -> Iterable[Metric]:
        # without describe() registering would call collect() and hit Redis
        yield GaugeMetricFamily(QUEUE_DEPTH, "Messages waiting in each queue.", labels=["queue"])
        yield GaugeMetricFamily(QUEUE_DEPTH_UP, "1 if the last queue-depth read from Redis worked.")

    def collect(self) -> Iterable[Metric]:
        import redis as redis_mod

        up = GaugeMetricFamily(QUEUE_DEPTH_UP, "1 if the last queue-depth read from Redis worked.")
        try:
            depths = self.depths()
        except redis_mod.RedisError:
            up.add_metric([], 0.0)
            yield up
            return
        depth = GaugeMetricFamily(QUEUE_DEPTH, "Messages waiting in each queue.", labels=["queue"])
        for queue, n in depths.items():
            depth.add_metric([queue], float(n))
        up.add_metric([], 1.0)
        yield depth
        yield up


def queue_depth_collector(settings: Settings, queues: Iterable[str] | None = None) -> QueueDepthCollector:
    """A collector for the broker named in `settings`, with the same key prefix the producer uses."""
    import redis as redis_mod
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from ragfleet.names import Queue

    # no retries: redis-py 8 retries a failed command several times by default, so a scrape during a
    # Redis outage took ~4 s; one attempt answers `ragfleet_queue_depth_up 0` within the socket timeout
    client = redis_mod.Redis.from_url(
        settings.broker,
        socket_timeout=settings.redis_socket_timeout_s,
        socket_connect_timeout=settings.redis_socket_timeout_s,
        retry=Retry(NoBackoff(), 0),
    )
    return QueueDepthCollector(
        client,
        [q.value for q in Queue] if queues is None else queues,
        global_keyprefix=settings.broker_key_prefix,
    )


def enable_queue_depth(settings: Settings) -> QueueDepthCollector:
    """Expose queue depth from this process. Only one scrape target should (the API, see prometheus.yml)."""
    collector = queue_depth_collector(settings)
    register_collector(collector)
    return collector
