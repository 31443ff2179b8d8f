"""The fleet's Prometheus metrics and the small typed functions the rest of the code calls.

One module a concern: `spec` (what exists), `registry` (the lazily built objects, multiprocess
mode), `recorders` (what call sites call), `queue_depth` (a scrape-time collector), `exposition`
(serving `/metrics`); the Celery signal handlers that record task metrics are in
workers/hooks/metrics.py. Import from here:
`from ragfleet import metrics; metrics.observe_stage(...)`.

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

from ragfleet.metrics.dead_letters import DeadLettersCollector, enable_dead_letters
from ragfleet.metrics.exposition import (
    EXPOSITION,
    MetricsServer,
    metrics_app,
    render_latest,
    start_worker_metrics_server,
)
from ragfleet.metrics.queue_depth import (
    QueueDepthCollector,
    enable_queue_depth,
    queue_depth_collector,
    queue_keys,
)
from ragfleet.metrics.recorders import (
    beat_heartbeat,
    cache_event,
    callback_delivery,
    coalesced,
    degraded,
    install_celery_metrics,
    observe_callback_lag,
    observe_feedback,
    observe_request,
    observe_stage,
    observe_task,
    observe_task_wait,
    record_usage,
    set_breaker_state,
    set_feedback_rolling,
    set_index_info,
    set_replica_lag,
    set_retrieval_quality,
    set_store_up,
    set_workers_per_queue,
    task_failed,
    task_in_progress,
    task_retried,
)
from ragfleet.metrics.registry import (
    _counter,
    _extra_collectors,
    _gauge,
    _histogram,
    configure_multiproc,
    mark_dead,
    multiproc_dir,
    register_collector,
)
from ragfleet.metrics.spec import (
    BREAKER_STATES,
    CACHE_LAYERS,
    COALESCE_ROLES,
    ENQUEUED_AT_HEADER,
    LATENCY_BUCKETS,
    METRICS,
    MULTIPROC_ENV,
    QUEUE_DEPTH,
    QUEUE_DEPTH_UP,
    STAGES,
    TASK_RUNTIME_BUCKETS,
    TASK_WAIT_BUCKETS,
    CacheLayer,
    CoalesceRole,
    GaugeMode,
    MetricKind,
    MetricSpec,
    Stage,
    exposed_series,
)

__all__ = [
    "BREAKER_STATES",
    "CACHE_LAYERS",
    "COALESCE_ROLES",
    "ENQUEUED_AT_HEADER",
    "EXPOSITION",
    "LATENCY_BUCKETS",
    "METRICS",
    "MULTIPROC_ENV",
    "QUEUE_DEPTH",
    "QUEUE_DEPTH_UP",
    "STAGES",
    "TASK_RUNTIME_BUCKETS",
    "TASK_WAIT_BUCKETS",
    "CacheLayer",
    "CoalesceRole",
    "DeadLettersCollector",
    "GaugeMode",
    "MetricKind",
    "MetricSpec",
    "MetricsServer",
    "QueueDepthCollector",
    "Stage",
    "_counter",
    "_extra_collectors",
    "_gauge",
    "_histogram",
    "beat_heartbeat",
    "cache_event",
    "callback_delivery",
    "coalesced",
    "configure_multiproc",
    "degraded",
    "enable_dead_letters",
    "enable_queue_depth",
    "exposed_series",
    "install_celery_metrics",
    "mark_dead",
    "metrics_app",
    "multiproc_dir",
    "observe_callback_lag",
    "observe_feedback",
    "observe_request",
    "observe_stage",
    "observe_task",
    "observe_task_wait",
    "queue_depth_collector",
    "queue_keys",
    "record_usage",
    "register_collector",
    "render_latest",
    "set_breaker_state",
    "set_feedback_rolling",
    "set_index_info",
    "set_replica_lag",
    "set_retrieval_quality",
    "set_store_up",
    "set_workers_per_queue",
    "start_worker_metrics_server",
    "task_failed",
    "task_in_progress",
    "task_retried",
]
