"""The small typed functions the rest of the code calls: `observe_stage("retrieval", s)` and friends.

Call sites never touch prometheus objects; these validate label values, so a typo cannot create a
new time series.
"""

from __future__ import annotations

import time

from ragfleet.metrics.registry import _counter, _gauge, _histogram
from ragfleet.metrics.spec import (
    BREAKER_STATES,
    CACHE_LAYERS,
    COALESCE_ROLES,
    STAGES,
    CacheLayer,
    CoalesceRole,
    Stage,
)


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


def set_replica_lag(replica: str, lag_bytes: int, lag_seconds: float) -> None:
    """`replica`: host:port, never the URL (it may carry a password)."""
    _gauge("ragfleet_store_replica_lag_bytes").labels(replica=replica).set(max(lag_bytes, 0))
    _gauge("ragfleet_store_replica_lag_seconds").labels(replica=replica).set(max(lag_seconds, 0.0))


def set_store_up(store: str, role: str, server: str, up: bool) -> None:
    """What a worker's last probe of a store server found (ragfleet/store_health.py)."""
    _gauge("ragfleet_store_up").labels(store=store, role=role, server=server).set(1 if up else 0)


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


def callback_delivery(target: str, outcome: str) -> None:
    _counter("ragfleet_callback_deliveries").labels(target=target, outcome=outcome).inc()


def observe_callback_lag(seconds: float) -> None:
    _histogram("ragfleet_callback_lag_seconds").observe(max(seconds, 0.0))


def task_retried(task: str) -> None:
    _counter("ragfleet_task_retries").labels(task=task).inc()


# --- task lifecycle (the Celery signal handlers that call these are in workers/hooks/metrics.py) ------


def task_in_progress(task: str, delta: int) -> None:
    _gauge("ragfleet_tasks_in_progress").labels(task=task).inc(delta)


def install_celery_metrics() -> None:
    """Stamp the enqueue time on every task message this process publishes through
    `ragfleet.producer` (ragfleet.task_headers), so the worker can measure queue wait; idempotent."""
    from ragfleet import task_headers

    task_headers.enable(enqueued_at=True)
