"""Who this node is (name, queues, pool), recorded once the worker is set up, for the other hooks.

Also: a prefork child warms up (torch import, model load) in `worker_process_init`, before it
reports UP. Celery SIGKILLs a child that is not UP within `worker_proc_alive_timeout` (4 s by
default) and forks another: on a busy host, once a child dies (OOM, poison message), its
replacements are killed in a loop and the pool never serves again. Seen in tests/chaos on 2 busy
cores: 5-6 s per warm-up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from celery import Celery, signals

from ragfleet.jobs import set_worker_hostname

PROC_ALIVE_TIMEOUT_S = 120.0


@dataclass(slots=True)
class Node:
    name: str = "unknown"
    queues: frozenset[str] = field(default_factory=frozenset)
    pool: str = "prefork"

    @property
    def prefork(self) -> bool:
        return "prefork" in self.pool.lower()


# this process's node; a prefork child inherits its parent's
current = Node()


def _init(conf: Any, **_: Any) -> None:
    if float(conf.worker_proc_alive_timeout or 0) < PROC_ALIVE_TIMEOUT_S:
        conf.worker_proc_alive_timeout = PROC_ALIVE_TIMEOUT_S


def _after_setup(sender: str, instance: Any, **_: Any) -> None:
    set_worker_hostname(sender)  # the `worker` of each stage in the job record
    current.name = sender
    current.queues = frozenset(instance.app.amqp.queues.consume_from.keys())
    current.pool = str(getattr(instance, "pool_cls", "prefork"))


def install(app: Celery) -> None:
    signals.celeryd_init.connect(_init, weak=False, dispatch_uid="ragfleet.hooks.node.init")
    signals.celeryd_after_setup.connect(_after_setup, weak=False, dispatch_uid="ragfleet.hooks.node.setup")
