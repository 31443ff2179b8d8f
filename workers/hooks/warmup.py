"""Warm-up of heavy resources before a node reports warm.

Prefork children get fresh Redis clients and their own model in `worker_process_init` (never the
parent's sockets); thread and solo pools warm up once in `worker_ready`. What to warm depends on
the queues the node consumes (workers.roles.MODEL_QUEUES): the generation pool never loads the
embedding model.

The indexing pool (a node that consumes the indexing queue and no interactive one) encodes with
`indexing_threads` (both cores of a small machine for a bulk ingest) at `indexing_nice`: the OS
scheduler then runs a retrieval node first whenever a query arrives, and bulk work takes what is left.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import Celery, signals

from ragfleet.memory import limit_malloc_arenas
from ragfleet.names import Queue
from ragfleet.redis_conn import reset_clients
from ragfleet.resources import Resources, get_resources, reset_resources
from workers.hooks import node
from workers.roles import INTERACTIVE_QUEUES, MODEL_QUEUES

log = logging.getLogger("ragfleet.worker")


def bulk_indexing(queues: frozenset[str]) -> bool:
    return Queue.INDEXING.value in queues and not queues & INTERACTIVE_QUEUES


def _tune_for_bulk(res: Resources) -> None:
    """Before the model loads: its thread count is fixed when the session is built."""
    if not bulk_indexing(node.current.queues):
        return
    if res.settings.embedding_runtime == "onnx":  # torch keeps `torch_threads` (set on the pool's line)
        res.embedding_threads = res.settings.indexing_threads
    if res.settings.indexing_nice:
        os.nice(res.settings.indexing_nice)  # once: this runs once per process, before the warm-up
    log.info("bulk indexing process: encoder threads %s, nice %d", res.embedding_threads, os.nice(0))


def _warm() -> None:
    res = get_resources()
    _tune_for_bulk(res)
    if Queue.RETRIEVAL.value in node.current.queues:  # before its search threads start allocating
        limit_malloc_arenas(res.settings.retrieval_malloc_arena_max)
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
