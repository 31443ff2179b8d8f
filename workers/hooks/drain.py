"""SIGTERM drains the node within `Settings.drain_grace_s` (workers/drain.py): the timer starts on
Celery's `worker_shutting_down` signal of a warm shutdown (SIGTERM, a first Ctrl+C)."""

from __future__ import annotations

import os
from typing import Any

from celery import Celery, signals

from ragfleet.settings import get_settings
from workers.drain import Drain

_drain: list[Drain] = []  # this node's drain timer, built once the worker is set up


def _after_setup(sender: str, instance: Any, **_: Any) -> None:
    def children() -> list[int]:
        pool = getattr(instance, "pool", None)  # the WorkController's pool, once started
        info = pool.info if pool is not None else {}
        # `celery inspect stats`' list: a prefork pool's children; a solo pool names its own process
        return [int(pid) for pid in info.get("processes", []) if int(pid) != os.getpid()]

    _drain[:] = [Drain(get_settings(), sender, instance.app.connection_for_write, children)]


def _shutting_down(sender: Any = None, how: str = "", **_: Any) -> None:
    if how == "Warm" and _drain:
        _drain[0].start()


def _shutdown(**_: Any) -> None:
    """Celery's warm shutdown is over (the last thing it does): nothing is held any more."""
    if not _drain or not _drain[0].started:
        return
    _drain[0].finished()


def install(app: Celery) -> None:
    signals.celeryd_after_setup.connect(_after_setup, weak=False, dispatch_uid="ragfleet.hooks.drain.setup")
    signals.worker_shutting_down.connect(
        _shutting_down, weak=False, dispatch_uid="ragfleet.hooks.drain.shutting_down"
    )
    signals.worker_shutdown.connect(_shutdown, weak=False, dispatch_uid="ragfleet.hooks.drain.shutdown")
