"""A heartbeat file for liveness probes that cost no broker round trip (Onyx does the same).

With `Settings.heartbeat_file` set, the node's main process touches that file every
`INTERVAL_S` from a daemon thread of its own, from `worker_ready` (after the warm-up of a thread
or solo node) until the process exits. A probe then only compares the file's age with a bound
(infra/k8s: `STALE_AFTER_S`): a process that is gone, or whose interpreter no longer runs Python
code, stops touching it. A `celery inspect ping` probe instead costs a broadcast through Redis per
check and per pod, and fails for every node at once when Redis blips.

What it does not prove: that a task is progressing (the time limits watch that) or that the
broker connection is up (kombu reconnects on its own; killing the pod would not help).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from celery import Celery, signals

from ragfleet.settings import get_settings

log = logging.getLogger("ragfleet.worker")

INTERVAL_S = 5.0
STALE_AFTER_S = 30  # the probe's bound: six missed beats, never one slow one

_started: dict[str, threading.Event] = {}


def beat_forever(path: Path, stop: threading.Event, interval_s: float = INTERVAL_S) -> None:
    """Touch `path` now and every `interval_s` until `stop` is set. An OSError (a full disk, a
    missing directory) is logged and retried: the probe, not this thread, decides."""
    while True:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
        except OSError as e:
            log.warning("heartbeat file %s: %s", path, e)
        if stop.wait(interval_s):
            return


def start(path: Path, interval_s: float = INTERVAL_S) -> threading.Event:
    """Start the heartbeat thread for `path` (once a process: a second call returns the first's
    stop event)."""
    key = str(path)
    if key not in _started:
        stop = threading.Event()
        threading.Thread(
            target=beat_forever, args=(path, stop, interval_s), name="ragfleet-heartbeat", daemon=True
        ).start()
        _started[key] = stop
    return _started[key]


def _ready(**_: Any) -> None:
    path = get_settings().heartbeat_file
    if path is not None:
        start(path)


def install(app: Celery) -> None:
    signals.worker_ready.connect(_ready, weak=False, dispatch_uid="ragfleet.hooks.heartbeat.ready")
