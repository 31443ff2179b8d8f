"""What metrics exist: one `MetricSpec` per metric, its labels' allowed values and its buckets.

`METRICS` is the single list of what exists; the Grafana dashboard and the alert rules are tested
against it (tests/integration/test_promtool.py), so a renamed metric breaks a test, not a graph.
Nothing here builds a prometheus object or touches the environment.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal, get_args

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
    # PostgreSQL read replicas, as a worker last saw them (ragfleet/stores/postgres_store.py): bytes of
    # WAL not yet replayed (behind the primary's or the index pointer's position) and for how long
    MetricSpec(
        "ragfleet_store_up",
        "gauge",
        "1 when a worker's last probe of a vector store server (PostgreSQL primary or replica) got an "
        "answer, 0 when it did not (the reason is in `ragfleet status` and the worker's log).",
        ("store", "role", "server"),
        mode="mostrecent",
    ),
    MetricSpec(
        "ragfleet_store_replica_lag_bytes",
        "gauge",
        "WAL bytes a PostgreSQL read replica has not replayed yet, when a worker last checked it.",
        ("replica",),
        mode="mostrecent",
    ),
    MetricSpec(
        "ragfleet_store_replica_lag_seconds",
        "gauge",
        "Seconds since a lagging PostgreSQL read replica last replayed a transaction (0 when caught up).",
        ("replica",),
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
        "ragfleet_callback_deliveries",
        "counter",
        "Callback delivery attempts (ragfleet.callbacks) by target (url, task) and outcome (accepted, "
        "retrying, failed, sent).",
        ("target", "outcome"),
    ),
    MetricSpec(
        "ragfleet_callback_lag_seconds",
        "histogram",
        "From a job's end to its webhook accepted by the receiver (retries included).",
        (),
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
# Collected at scrape time too: see ragfleet.metrics.dead_letters.
DEAD_LETTERS: Final = "ragfleet_dead_letters"
DEAD_LETTERS_RECORDED: Final = "ragfleet_dead_letters_recorded"  # a counter: `<name>_total`


def exposed_series() -> frozenset[str]:
    """Every sample name this module can expose (dashboard and alert rules may reference only these)."""
    names = {s for spec in METRICS for s in spec.series()}
    return frozenset(names | {QUEUE_DEPTH, QUEUE_DEPTH_UP, DEAD_LETTERS, f"{DEAD_LETTERS_RECORDED}_total"})
