"""Turn on workers/time_limits.py's watchdog in the pools Celery enforces no time limit in
(threads, solo), in the mode workers.roles names for the pool this node runs."""

from __future__ import annotations

from typing import Any

from celery import Celery, signals

from ragfleet.settings import get_settings
from workers import time_limits
from workers.hooks import node
from workers.roles import TimeLimitMode, time_limit_mode


def _after_setup(sender: str, **_: Any) -> None:
    mode = time_limit_mode(node.current.pool, exit_on_hard_limit=get_settings().exit_on_hard_time_limit)
    if mode is not TimeLimitMode.CELERY:
        time_limits.enable(exit_after_hard_limit=mode is TimeLimitMode.WATCHDOG_EXIT)


def install(app: Celery) -> None:
    signals.celeryd_after_setup.connect(_after_setup, weak=False, dispatch_uid="ragfleet.hooks.time_limits")
