"""Warm-up of heavy resources before a node reports warm.

Prefork children get fresh Redis clients and their own model in `worker_process_init` (never the
parent's sockets); thread and solo pools warm up once in `worker_ready`. What to warm depends on
the queues the node consumes (workers.roles.MODEL_QUEUES): the generation pool never loads the
embedding model.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, signals

from ragfleet.redis_conn import reset_clients
from ragfleet.resources import get_resources, reset_resources
from workers.hooks import node
from workers.roles import MODEL_QUEUES

log = logging.getLogger("ragfleet.worker")


def _warm() -> None:
    res = get_resources()
    res.warm_up(model=bool(node.current.queues & MODEL_QUEUES))
    # tests and `ragfleet up` wait for this marker: the pool can serve without a cold start
    res.redis.set(res.settings.key("warm", node.current.name), "1", ex=3_600)
    log.info("warmed up queues=%s", sorted(node.current.queues))


def _process_init(**_: Any) -> None:
    reset_clients()
    reset_resources()
    from ragfleet.embedding import pin_threads  # torch: only in a pool that forks children

    pin_threads(get_resources().settings.torch_threads)
    _warm()


def _ready(**_: Any) -> None:
    if not node.current.prefork:
        _warm()


def install(app: Celery) -> None:
    signals.worker_process_init.connect(
        _process_init, weak=False, dispatch_uid="ragfleet.hooks.warmup.process"
    )
    signals.worker_ready.connect(_ready, weak=False, dispatch_uid="ragfleet.hooks.warmup.ready")
