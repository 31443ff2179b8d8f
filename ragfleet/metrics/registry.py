"""The metric objects, built lazily into one registry, and the switch to multiprocess mode.

Celery prefork children and several uvicorn workers each hold their own counters, so the fleet runs
prometheus-client in multiprocess mode: every process writes mmap files into one directory
(`PROMETHEUS_MULTIPROC_DIR`) and whoever serves `/metrics` merges them. prometheus-client picks its
value class from the environment when it is *imported*; to let a process decide later (after reading
Settings) `configure_multiproc()` switches the value class, and the metric objects are built on
first use, so they always match the current mode.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, values
from prometheus_client.multiprocess import mark_process_dead
from prometheus_client.registry import Collector

from ragfleet.metrics.spec import METRICS, MULTIPROC_ENV

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


def built_registry() -> CollectorRegistry:
    """This process's registry (single-process mode), built if it was not yet."""
    _build()
    assert _registry is not None
    return _registry


def extra_collectors() -> list[Collector]:
    """The scrape-time collectors added with `register_collector`, in order (a copy)."""
    return list(_extra_collectors)


def register_collector(collector: Collector) -> None:
    """Add a scrape-time collector to what this process exposes (e.g. the API adds queue depth)."""
    with _lock:
        if collector not in _extra_collectors:
            _extra_collectors.append(collector)
