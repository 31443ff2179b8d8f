"""A heartbeat file for liveness probes that cost no broker round trip (Onyx does the same).

With `Settings.heartbeat_file` set, the node's main process touches that file every
`INTERVAL_S` from a daemon thread of its own, from `worker_ready` (after the warm-up of a thread
or solo node) until the process exits. A probe then only compares the file's age with a bound
(infra/k8s: `STALE_AFTER_S`): a process that is gone, or whose interpreter no longer runs Python
code, stops touching it. A `celery inspect ping` probe instead costs a broadcast through Redis per
check and per pod, and fails for every node at once when Redis blips.

What it does not prove: that a task is progressing (the time limits watch that) or that the
broker connection is up (kombu reconnects on its own; killing the pod would not help).

Nodes that use the vector store (retrieval, indexing, maintenance) also probe it every `INTERVAL_S`
from a second thread (ragfleet/store_health.py: a record in Redis for `ragfleet status`, the
`ragfleet_store_up` gauge, a log line on each change), and the heartbeat file holds that record.
The store's state never fails the liveness probe: restarting a worker does not bring a database
back, and the worker recovers by itself once it answers.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from celery import Celery, signals

from ragfleet.names import Queue
from ragfleet.redis_conn import get_redis
from ragfleet.settings import get_settings
from ragfleet.store_health import StoreWatch
from workers.hooks import node

log = logging.getLogger("ragfleet.worker")

INTERVAL_S = 5.0
STALE_AFTER_S = 30  # the probe's bound: six missed beats, never one slow one

STORE_QUEUES = frozenset({Queue.RETRIEVAL.value, Queue.INDEXING.value, Queue.MAINTENANCE.value})

_started: dict[str, threading.Event] = {}
_watch: list[StoreWatch] = []  # this process's store watch, once started


def beat_forever(
    path: Path,
    stop: threading.Event,
    interval_s: float = INTERVAL_S,
    content: Callable[[], str] | None = None,
) -> None:
    """Touch `path` now and every `interval_s` until `stop` is set (writing `content()` into it,
    when given). An OSError (a full disk, a missing directory) is logged and retried: the probe,
    not this thread, decides."""
    while True:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if content is not None:
                path.write_text(content())
            else:
                path.touch()
        except OSError as e:
            log.warning("heartbeat file %s: %s", path, e)
        if stop.wait(interval_s):
            return


def start(
    path: Path, interval_s: float = INTERVAL_S, content: Callable[[], str] | None = None
) -> threading.Event:
    """Start the heartbeat thread for `path` (once a process: a second call returns the first's
    stop event)."""
    key = str(path)
    if key not in _started:
        stop = threading.Event()
        threading.Thread(
            target=beat_forever,
            args=(path, stop, interval_s, content),
            name="ragfleet-heartbeat",
            daemon=True,
        ).start()
        _started[key] = stop
    return _started[key]


def watch_forever(watch: StoreWatch, stop: threading.Event, interval_s: float = INTERVAL_S) -> None:
    """Probe the store now and every `interval_s` until `stop` is set; never raises."""
    while True:
        try:
            watch.check()
        except Exception:
            log.exception("store probe failed")
        if stop.wait(interval_s):
            return


def _ready(**_: Any) -> None:
    s = get_settings()
    if node.current.queues & STORE_QUEUES and not _watch:
        _watch.append(StoreWatch(s, get_redis(s), node.current.name))
        threading.Thread(
            target=watch_forever,
            args=(_watch[0], threading.Event()),
            name="ragfleet-store-watch",
            daemon=True,
        ).start()
    if s.heartbeat_file is not None:
        start(s.heartbeat_file, content=_heartbeat_content if _watch else None)


def _heartbeat_content() -> str:
    return json.dumps({"store": _watch[0].record}) if _watch else "{}"


def install(app: Celery) -> None:
    signals.worker_ready.connect(_ready, weak=False, dispatch_uid="ragfleet.hooks.heartbeat.ready")
