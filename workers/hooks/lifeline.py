"""A prefork child dies with its parent node (ragfleet/lifeline.py says why).

Celery's prefork parent is the process supervisord (or systemd, or the kubelet) watches. When it is
SIGKILLed, its children would otherwise stay up with their model loaded, next to the restarted
node's new children. SIGKILL, not SIGTERM: the child's message was acked late by the dead parent's
connection, so it is redelivered to the restarted node (docs/reliability.md); the child has no one
to report a result to.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery, signals

from ragfleet.lifeline import die_with_parent

# the node's main process; a prefork child inherits the value with the parent's memory at fork
_parent_pid = os.getpid()


def _record_parent(**_: Any) -> None:
    global _parent_pid
    _parent_pid = os.getpid()


def _child_started(**_: Any) -> None:
    # the solo pool sends worker_process_init in the node's own process: no parent to die with
    if os.getpid() != _parent_pid:
        die_with_parent(_parent_pid)


def install(app: Celery) -> None:
    signals.worker_init.connect(_record_parent, weak=False, dispatch_uid="ragfleet.lifeline.init")
    signals.worker_process_init.connect(_child_started, weak=False, dispatch_uid="ragfleet.lifeline.child")
