"""Per-process hooks: logging, metrics, and warm-up of heavy resources.

Prefork children get fresh Redis clients and their own model in `worker_process_init` (never the
parent's sockets); thread and solo pools warm up once in `worker_ready`. What to warm depends on
the queues the worker consumes: the generation pool never loads the embedding model.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import celeryd_after_setup, worker_process_init, worker_process_shutdown, worker_ready

from ragfleet.jobs import set_worker_hostname
from ragfleet.names import Queue
from ragfleet.redis_conn import reset_clients
from ragfleet.resources import get_resources, reset_resources

log = logging.getLogger("ragfleet.worker")
_QUEUES: set[str] = set()
_POOL: str = "prefork"
_NODE: str = "unknown"

_MODEL_QUEUES = {Queue.RETRIEVAL.value, Queue.INDEXING.value, Queue.MAINTENANCE.value}


def _setup_observability(process: str) -> None:
    try:
        from ragfleet.logs import configure_logging

        configure_logging(get_resources().settings.log_level, process=process)
    except ImportError:  # pragma: no cover - observability modules are optional at bootstrap
        logging.basicConfig(level=logging.INFO)


def _warm() -> None:
    res = get_resources()
    res.warm_up(model=bool(_QUEUES & _MODEL_QUEUES))
    # tests and `ragfleet up` wait for this marker: the pool can serve without a cold start
    res.redis.set(res.settings.key("warm", _NODE), "1", ex=3_600)
    log.info("warmed up queues=%s", sorted(_QUEUES))


@celeryd_after_setup.connect
def _after_setup(sender: str, instance: Any, **_: Any) -> None:
    set_worker_hostname(sender)
    global _POOL, _NODE
    _NODE = sender
    _QUEUES.update(instance.app.amqp.queues.consume_from.keys())
    _POOL = str(getattr(instance, "pool_cls", "prefork"))
    _setup_observability(sender)


@worker_process_init.connect
def _process_init(**_: Any) -> None:
    reset_clients()
    reset_resources()
    _setup_observability("child")
    try:
        from ragfleet.embedding import pin_threads

        pin_threads(get_resources().settings.torch_threads)
    except ImportError:  # pragma: no cover
        pass
    _warm()


@worker_ready.connect
def _ready(**_: Any) -> None:
    if "prefork" not in _POOL.lower():
        _warm()


@worker_process_shutdown.connect
def _process_shutdown(pid: int | None = None, **_: Any) -> None:
    try:
        from prometheus_client import multiprocess

        if pid is not None:
            multiprocess.mark_process_dead(pid)
    except (ImportError, KeyError, ValueError):
        pass
