"""The fleet's Prometheus metrics and the small typed functions the rest of the code calls.

Why the shape:
- Celery prefork children and several uvicorn workers each hold their own counters, so the fleet runs
  prometheus-client in multiprocess mode: every process writes mmap files into one directory
  (`PROMETHEUS_MULTIPROC_DIR`) and whoever serves `/metrics` merges them with `MultiProcessCollector`.
  prometheus-client picks its value class from the environment when it is *imported*; to let a process
  decide later (after reading Settings) `configure_multiproc()` switches the value class and the metric
  objects here are built lazily, on first use, so they always match the current mode.
- Without `configure_multiproc()` (and without the environment variable) the module works as a plain
  single-process registry: tests, scripts and a one-process API need nothing special.
- `METRICS` is the single list of what exists; the Grafana dashboard and the alert rules are tested
  against it (tests/integration/test_promtool.py), so a renamed metric breaks a test, not a graph.
- Call sites never touch prometheus objects: they call `observe_stage("retrieval", s)` and friends, which
  validate label values, so a typo cannot create a new time series.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, get_args

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    start_http_server,
    values,
)
from prometheus_client.exposition import choose_encoder, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

from ragfleet.names import PRIORITY_STEPS, priority_list

if TYPE_CHECKING:
    from collections.abc import Callable
    from wsgiref.simple_server import WSGIServer

    import redis

    from ragfleet.settings import Settings

MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"
ENQUEUED_AT_HEADER: Final = "ragfleet_enqueued_at"

Stage = Literal["cache", "retrieval", "generation", "total", "embedding", "indexing"]
CacheLayer = Literal["l1", "l2", "embedding"]
CoalesceRole = Literal["leader", "follower"]
GaugeMode = Literal[
    "all", "liveall", "min", "livemin", "max", "livemax", "sum", "livesum", "mostrecent", "livemostrecent"
]
MetricKind = Literal["counter", "gauge", "histogram"]

STAGES: Final = frozenset(get_args(Stage))
CACHE_LAYERS: Final = frozenset(get_args(CacheLayer))
COALESCE_ROLES: Final = frozenset(get_args(CoalesceRole))
BREAKER_STATES: Final[dict[str, int]] = {"closed": 0, "half-open": 1, "half_open": 1, "open": 2}

# 1 ms .. 10 s; 0.75 and 3 are bucket edges on purpose: the P50/P99 alerts compare against them and
# histogram_quantile is exact only at bucket boundaries.
LATENCY_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0,
    5.0, 7.5, 10.0,
)  # fmt: skip
# tasks run from milliseconds (a cached query) to the 30-minute reindex
TASK_RUNTIME_BUCKETS: Final = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0,
)  # fmt: skip
TASK_WAIT_BUCKETS: Final = (
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One metric as declared; `name` is the base name (a counter is exposed as `<name>_total`)."""

    name: str
    kind: MetricKind
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()
    mode: GaugeMode = "all"

    def series(self) -> tuple[str, ...]:
        """The sample names a scrape shows, which is what PromQL refers to."""
        if self.kind == "counter":
            return (f"{self.name}_total",)
        if self.kind == "histogram":
            return (f"{self.name}_bucket", f"{self.name}_sum", f"{self.name}_count")
        return (self.name,)


METRICS: Final[tuple[MetricSpec, ...]] = (
    # --- API --------------------------------------------------------------------------------------
    MetricSpec(
        "ragfleet_http_requests",
        "counter",
        "HTTP requests by route template and status.",
        ("route", "status"),
    ),
    MetricSpec(
        "ragfleet_http_request_duration_seconds",
        "histogram",
        "HTTP request latency by route.",
        ("route",),
        LATENCY_BUCKETS,
    ),
    # --- pipeline stages --------------------------------------------------------------------------
    MetricSpec(
        "ragfleet_stage_duration_seconds",
        "histogram",
        "Time spent per pipeline stage; stage='total' is enqueue-to-answer of one query.",
        ("stage",),
        LATENCY_BUCKETS,
    ),
    MetricSpec(
        "ragfleet_cache_requests",
        "counter",
        "Cache lookups by layer and result (l1 is asked for every query, l2 only after an l1 miss).",
        ("layer", "result"),
    ),
    MetricSpec(
        "ragfleet_coalesced",
        "counter",
        "Identical concurrent queries: one leader computes, followers wait for its answer.",
        ("role",),
    ),
    MetricSpec(
        "ragfleet_degraded",
        "counter",
        "Answers served in a degraded mode (e.g. extractive fallback when every LLM provider failed).",
        ("reason",),
    ),
    # --- generation providers ---------------------------------------------------------------------
    MetricSpec(
        "ragfleet_breaker_state",
        "gauge",
        "Circuit breaker per provider: 0 closed, 1 half-open, 2 open.",
        ("provider",),
        mode="mostrecent",
    ),
    MetricSpec(
        "ragfleet_llm_tokens",
        "counter",
        "LLM tokens by provider and kind (prompt|completion).",
        ("provider", "kind"),
    ),
    MetricSpec("ragfleet_llm_cost_usd", "counter", "Estimated LLM spend in USD by provider.", ("provider",)),
    # --- index and quality ------------------------------------------------------------------------
    MetricSpec("ragfleet_index_version", "gauge", "Version of the index being served.", mode="mostrecent"),
    MetricSpec("ragfleet_index_chunks", "gauge", "Chunks in the index being served.", mode="mostrecent"),
    MetricSpec(
        "ragfleet_retrieval_quality_ndcg",
        "gauge",
        "nDCG@10 of the last evaluation, by golden set (labelled so no series exists before one ran).",
        ("dataset",),
        mode="mostrecent",
    ),
    MetricSpec(
        "ragfleet_feedback_ratings", "counter", "User ratings received, by rating (1-5).", ("rating",)
    ),
    MetricSpec("ragfleet_feedback_rating_avg", "gauge", "Rolling average user rating.", mode="mostrecent"),
    MetricSpec(
        "ragfleet_feedback_rating_count", "gauge", "Ratings inside the rolling window.", mode="mostrecent"
    ),
    # --- Celery -----------------------------------------------------------------------------------
    MetricSpec(
        "ragfleet_task_runtime_seconds",
        "histogram",
        "Task run time by task and final state.",
        ("task", "state"),
        TASK_RUNTIME_BUCKETS,
    ),
    MetricSpec(
        "ragfleet_task_wait_seconds",
        "histogram",
        "Time a message waited in its queue (publish or ETA to start).",
        ("task", "queue"),
        TASK_WAIT_BUCKETS,
    ),
    MetricSpec(
        "ragfleet_task_failures",
        "counter",
        "Tasks that raised, by task and exception type.",
        ("task", "exception"),
    ),
    MetricSpec("ragfleet_task_retries", "counter", "Task retries by task.", ("task",)),
    MetricSpec(
        "ragfleet_tasks_in_progress",
        "gauge",
        "Tasks executing now (live processes only).",
        ("task",),
        mode="livesum",
    ),
    MetricSpec(
        "ragfleet_queue_workers",
        "gauge",
        "Workers currently consuming each queue.",
        ("queue",),
        mode="mostrecent",
    ),
    MetricSpec(
        "ragfleet_beat_last_run_timestamp_seconds",
        "gauge",
        "Unix time a beat-scheduled task last ran, by schedule entry.",
        ("schedule",),
        mode="max",
    ),
    MetricSpec(
        "ragfleet_beat_expected_interval_seconds",
        "gauge",
        "How often each beat schedule entry is meant to run; the silent-beat alert compares with it.",
        ("schedule",),
        mode="mostrecent",
    ),
)

# Collected at scrape time, not stored: see QueueDepthCollector.
QUEUE_DEPTH: Final = "ragfleet_queue_depth"
QUEUE_DEPTH_UP: Final = "ragfleet_queue_depth_up"


def exposed_series() -> frozenset[str]:
    """Every sample name this module can expose (dashboard and alert rules may reference only these)."""
    names = {s for spec in METRICS for s in spec.series()}
    return frozenset(names | {QUEUE_DEPTH, QUEUE_DEPTH_UP})


# --- the metric objects, built lazily ------------------------------------------------------------

_lock = threading.Lock()
_built: dict[str, Counter | Gauge | Histogram] | None = None
_registry: CollectorRegistry | None = None
_extra_collectors: list[Collector] = []

# `_created` samples exist only in single-process mode: without them both modes expose the same series
disable_created_metrics()  # type: ignore[no-untyped-call]


def _build() -> dict[str, Counter | Gauge | Histogram]:
    global _built, _registry
    with _lock:
        if _built is not None:
            return _built
        registry = CollectorRegistry()
        built: dict[str, Counter | Gauge | Histogram] = {}
        for spec in METRICS:
            if spec.kind == "counter":
                built[spec.name] = Counter(spec.name, spec.help, spec.labels, registry=registry)
            elif spec.kind == "gauge":
                built[spec.name] = Gauge(
                    spec.name, spec.help, spec.labels, registry=registry, multiprocess_mode=spec.mode
                )
            else:
                built[spec.name] = Histogram(
                    spec.name, spec.help, spec.labels, registry=registry, buckets=spec.buckets
                )
        _registry, _built = registry, built
        return built


def _counter(name: str) -> Counter:
    m = _build()[name]
    assert isinstance(m, Counter)
    return m


def _gauge(name: str) -> Gauge:
    m = _build()[name]
    assert isinstance(m, Gauge)
    return m


def _histogram(name: str) -> Histogram:
    m = _build()[name]
    assert isinstance(m, Histogram)
    return m


def multiproc_dir() -> Path | None:
    raw = os.environ.get(MULTIPROC_ENV)
    return Path(raw) if raw else None


def configure_multiproc(path: Path | str, *, wipe: bool = False) -> Path:
    """Switch this process (and the children it forks or spawns) to multiprocess collection in `path`.

    Call it in the process that serves `/metrics` (API, Celery main process) before it forks, with
    `wipe=True` there: files left by a previous run would otherwise add old counts to new ones. Forked
    children need nothing more (prometheus-client notices the pid change).
    """
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    if wipe:
        for db in directory.glob("*.db"):
            db.unlink(missing_ok=True)
    global _built, _registry
    with _lock:
        os.environ[MULTIPROC_ENV] = str(directory)
        values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]
        _built, _registry = None, None  # rebuilt on next use with mmap-backed values
    return directory


def mark_dead(pid: int) -> None:
    """Drop a dead process's live gauges (`live*` modes); counters and histograms keep its counts."""
    directory = multiproc_dir()
    if directory is not None:
        mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]


# --- the functions the code calls -----------------------------------------------------------------


def observe_request(route: str, status: int, seconds: float) -> None:
    """`route` is the route template (`/jobs/{job_id}`), never the raw path: one series per route."""
    _counter("ragfleet_http_requests").labels(route=route, status=str(int(status))).inc()
    _histogram("ragfleet_http_request_duration_seconds").labels(route=route).observe(max(seconds, 0.0))


def observe_stage(stage: Stage, seconds: float) -> None:
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; one of {sorted(STAGES)}")
    _histogram("ragfleet_stage_duration_seconds").labels(stage=stage).observe(max(seconds, 0.0))


def cache_event(layer: CacheLayer, hit: bool) -> None:
    """Record one lookup. The hit-rate alert assumes l1 is asked for every query and l2 only after an
    l1 miss, so answers-from-cache / queries = (l1 hits + l2 hits) / l1 lookups."""
    if layer not in CACHE_LAYERS:
        raise ValueError(f"unknown cache layer {layer!r}")
    _counter("ragfleet_cache_requests").labels(layer=layer, result="hit" if hit else "miss").inc()


def coalesced(role: CoalesceRole) -> None:
    if role not in COALESCE_ROLES:
        raise ValueError(f"unknown coalescing role {role!r}")
    _counter("ragfleet_coalesced").labels(role=role).inc()


def degraded(reason: str = "fallback") -> None:
    _counter("ragfleet_degraded").labels(reason=reason).inc()


def set_breaker_state(provider: str, state: str) -> None:
    """`state` as pybreaker names it: closed, half-open or open."""
    try:
        value = BREAKER_STATES[state.lower()]
    except KeyError:
        raise ValueError(f"unknown breaker state {state!r}") from None
    _gauge("ragfleet_breaker_state").labels(provider=provider).set(value)


def record_usage(provider: str, prompt_tokens: int, completion_tokens: int, cost_usd: float) -> None:
    tokens = _counter("ragfleet_llm_tokens")
    tokens.labels(provider=provider, kind="prompt").inc(max(prompt_tokens, 0))
    tokens.labels(provider=provider, kind="completion").inc(max(completion_tokens, 0))
    _counter("ragfleet_llm_cost_usd").labels(provider=provider).inc(max(cost_usd, 0.0))


def set_index_info(version: int, chunks: int) -> None:
    _gauge("ragfleet_index_version").set(version)
    _gauge("ragfleet_index_chunks").set(chunks)


def set_retrieval_quality(ndcg: float, *, dataset: str = "golden") -> None:
    if not 0.0 <= ndcg <= 1.0:
        raise ValueError(f"nDCG must be in [0, 1], got {ndcg}")
    _gauge("ragfleet_retrieval_quality_ndcg").labels(dataset=dataset).set(ndcg)


def observe_feedback(rating: int) -> None:
    if not 1 <= rating <= 5:
        raise ValueError(f"rating must be 1..5, got {rating}")
    _counter("ragfleet_feedback_ratings").labels(rating=str(rating)).inc()


def set_feedback_rolling(avg: float, count: int) -> None:
    _gauge("ragfleet_feedback_rating_avg").set(avg)
    _gauge("ragfleet_feedback_rating_count").set(count)


def set_workers_per_queue(queue: str, n: int) -> None:
    _gauge("ragfleet_queue_workers").labels(queue=queue).set(n)


def beat_heartbeat(schedule: str = "heartbeat", *, interval_s: float = 300.0) -> None:
    """Called by every beat-scheduled task when it runs, with its schedule's period.

    The silent-beat alert fires when `time() - last_run > 1.1 * interval + 300`: ~10.5 min for the
    5-minute heartbeat entry, ~26.5 h for the nightly reindex. It cannot tell a dead beat from a dead
    maintenance pool (both stop the heartbeat); the queue-workers alert tells which.
    """
    _gauge("ragfleet_beat_last_run_timestamp_seconds").labels(schedule=schedule).set(time.time())
    _gauge("ragfleet_beat_expected_interval_seconds").labels(schedule=schedule).set(interval_s)


def observe_task(task: str, state: str, seconds: float) -> None:
    _histogram("ragfleet_task_runtime_seconds").labels(task=task, state=state).observe(max(seconds, 0.0))


def observe_task_wait(task: str, queue: str, seconds: float) -> None:
    _histogram("ragfleet_task_wait_seconds").labels(task=task, queue=queue).observe(max(seconds, 0.0))


def task_failed(task: str, exception: str) -> None:
    _counter("ragfleet_task_failures").labels(task=task, exception=exception).inc()


def task_retried(task: str) -> None:
    _counter("ragfleet_task_retries").labels(task=task).inc()


# --- queue depth, read from Redis at scrape time ----------------------------------------------------


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

    from ragfleet.names import Queue

    client = redis_mod.Redis.from_url(
        settings.broker,
        socket_timeout=settings.redis_socket_timeout_s,
        socket_connect_timeout=settings.redis_socket_timeout_s,
    )
    return QueueDepthCollector(
        client,
        [q.value for q in Queue] if queues is None else queues,
        global_keyprefix=settings.broker_key_prefix,
    )


def register_collector(collector: Collector) -> None:
    """Add a scrape-time collector to what this process exposes (e.g. the API adds queue depth)."""
    with _lock:
        if collector not in _extra_collectors:
            _extra_collectors.append(collector)


def enable_queue_depth(settings: Settings) -> QueueDepthCollector:
    """Expose queue depth from this process. Only one scrape target should (the API, see prometheus.yml)."""
    collector = queue_depth_collector(settings)
    register_collector(collector)
    return collector


# --- exposition --------------------------------------------------------------------------------------


class _Exposition(Collector):
    """What `/metrics` shows: merged multiprocess files (or this process's registry) plus extras."""

    def collect(self) -> Iterator[Metric]:
        directory = multiproc_dir()
        if directory is not None:
            merged = MultiProcessCollector(None, path=str(directory))  # type: ignore[no-untyped-call]
            yield from merged.collect()  # type: ignore[no-untyped-call]
        else:
            _build()
            assert _registry is not None
            yield from _registry.collect()
        for collector in list(_extra_collectors):
            yield from collector.collect()


EXPOSITION: Final = _Exposition()


def render_latest(accept: str | None = None) -> tuple[bytes, str]:
    """Body and Content-Type for a `/metrics` response (text format unless OpenMetrics is asked for)."""
    encoder: Callable[[Collector], bytes]
    encoder, content_type = choose_encoder(accept or "")
    if encoder is generate_latest:
        return generate_latest(EXPOSITION), content_type
    return encoder(EXPOSITION), content_type


def metrics_app() -> Any:
    """An ASGI app serving `/metrics` (mount it in FastAPI: `app.mount("/metrics", metrics_app())`)."""
    from prometheus_client import make_asgi_app

    return make_asgi_app(EXPOSITION)


@dataclass(frozen=True, slots=True)
class MetricsServer:
    port: int
    server: WSGIServer
    thread: threading.Thread

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def start_worker_metrics_server(port: int, *, addr: str = "127.0.0.1") -> MetricsServer:
    """Serve `/metrics` from a daemon thread of a Celery *main* process (port 0 picks a free one).

    The main process of a prefork pool runs no tasks: call `configure_multiproc(dir, wipe=True)` first,
    so it serves what its children write.
    """
    server, thread = start_http_server(port, addr=addr, registry=EXPOSITION)
    return MetricsServer(port=int(server.server_port), server=server, thread=thread)


# --- task lifecycle (the Celery signal handlers that call these are in workers/hooks/metrics.py) ------


def task_in_progress(task: str, delta: int) -> None:
    _gauge("ragfleet_tasks_in_progress").labels(task=task).inc(delta)


def install_celery_metrics() -> None:
    """Stamp the enqueue time on every task message this process publishes through
    `ragfleet.producer` (ragfleet.task_headers), so the worker can measure queue wait; idempotent."""
    from ragfleet import task_headers

    task_headers.enable(enqueued_at=True)
