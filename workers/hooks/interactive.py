"""Broker options of the pools that serve only queries (workers.roles.INTERACTIVE_QUEUES).

Such a pool gets its own unacked hash, index and mutex (`unacked:interactive`...), so its short
visibility timeout never restores a background pool's long task, and a restore sweep every few
seconds instead of kombu's ~100 s (interval x throttle), so a dead node's query comes back about one
timeout after it died. Set in `celeryd_after_setup`, before the consumer connects: its channel reads
them when it opens.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, signals

from ragfleet.settings import Settings, get_settings
from workers.hooks import node
from workers.roles import INTERACTIVE_QUEUES


def interactive_transport_options(s: Settings) -> dict[str, object]:
    vt = s.interactive_visibility_timeout_s
    return {
        "visibility_timeout": vt,
        "unacked_key": "unacked:interactive",
        "unacked_index_key": "unacked_index:interactive",
        "unacked_mutex_key": "unacked_mutex:interactive",
        "unacked_restore_interval": max(1, min(10, vt // 4)),
        "unacked_restore_throttle": 1,
    }


def _after_setup(sender: str, instance: Any, **_: Any) -> None:
    if not node.current.queues or not node.current.queues <= INTERACTIVE_QUEUES:
        return
    s = get_settings()
    instance.app.conf.broker_transport_options = {
        **instance.app.conf.broker_transport_options,
        **interactive_transport_options(s),
    }
    if not s.log_interactive_task_received:
        # Celery reads this level once, when the consumer builds its task strategies (after this
        # signal); only the per-task "received" INFO line lives there. Like Dramatiq, which logs
        # a message's receipt at DEBUG: on a query's two hops it cost ~0.2 ms each (the JSON
        # line is formatted in the loop, before the task reaches the pool).
        logging.getLogger("celery.worker.strategy").setLevel(logging.WARNING)


def install(app: Celery) -> None:
    signals.celeryd_after_setup.connect(_after_setup, weak=False, dispatch_uid="ragfleet.hooks.interactive")
