"""A node restarted under its own name requeues at once what its previous run died holding
(workers/inflight.py): it claims the tags before its consumer takes a message, and requeues them
once the consumer is up."""

from __future__ import annotations

from typing import Any

from celery import Celery, signals

from ragfleet.settings import get_settings
from workers import inflight
from workers.hooks import node

_orphans: list[str] = []  # delivery tags this node's previous run died holding


def _after_setup(sender: str, **_: Any) -> None:
    global _orphans
    _orphans = inflight.claim(get_settings(), sender)


def _ready(sender: Any = None, **_: Any) -> None:
    global _orphans
    if _orphans and sender is not None:
        inflight.requeue(sender, node.current.name, _orphans)
        _orphans = []


def install(app: Celery) -> None:
    signals.celeryd_after_setup.connect(
        _after_setup, weak=False, dispatch_uid="ragfleet.hooks.inflight.claim"
    )
    signals.worker_ready.connect(_ready, weak=False, dispatch_uid="ragfleet.hooks.inflight.requeue")
