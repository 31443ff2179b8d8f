"""Per-process hooks: logging, metrics, and warm-up of heavy resources.

Prefork children get fresh Redis clients and their own model in `worker_process_init` (never the
parent's sockets); thread and solo pools warm up once in `worker_ready`. What to warm depends on
the queues the worker consumes: the generation pool never loads the embedding model.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import (
    celeryd_after_setup,
    celeryd_init,
    task_revoked,
    worker_process_init,
    worker_ready,
)

from ragfleet import metrics
from ragfleet.jobs import set_worker_hostname
from ragfleet.logs import configure_logging
from ragfleet.names import Queue
from ragfleet.outcomes import fail_job
from ragfleet.redis_conn import reset_clients
from ragfleet.resources import get_resources, reset_resources
from ragfleet.schemas import ErrorCode
from workers import inflight, time_limits
from workers.app import INTERACTIVE_QUEUES, interactive_transport_options

log = logging.getLogger("ragfleet.worker")
_QUEUES: set[str] = set()
_POOL: str = "prefork"
_NODE: str = "unknown"
_ORPHANS: list[str] = []  # delivery tags this node's previous run died holding (workers/inflight.py)
_KEEPER: list[inflight.NodeKeeper] = []  # this node's liveness + gone-node sweep thread (workers/inflight.py)

_MODEL_QUEUES = {Queue.RETRIEVAL.value, Queue.INDEXING.value, Queue.MAINTENANCE.value}


def _setup_observability(process: str, *, main: bool = False) -> None:
    s = get_resources().settings
    configure_logging(s.log_level, process=process, force=True)
    if main and s.metrics_dir is not None:
        # one directory per worker node: its children write there, its main process serves it
        metrics.configure_multiproc(s.metrics_dir / process.replace("@", "_"), wipe=True)
    if main and s.metrics_port:
        metrics.start_worker_metrics_server(s.metrics_port + s.metrics_port_offset)


def _warm() -> None:
    res = get_resources()
    res.warm_up(model=bool(_QUEUES & _MODEL_QUEUES))
    # tests and `ragfleet up` wait for this marker: the pool can serve without a cold start
    res.redis.set(res.settings.key("warm", _NODE), "1", ex=3_600)
    log.info("warmed up queues=%s", sorted(_QUEUES))


# A prefork child warms up (torch import, model load) in `worker_process_init`, before it reports UP.
# Celery SIGKILLs a child that is not UP within `worker_proc_alive_timeout` (4 s by default) and forks
# another: on a busy host, once a child dies (OOM, poison message), its replacements are killed in a
# loop and the pool never serves again. Seen in tests/chaos on 2 busy cores: 5-6 s per warm-up.
PROC_ALIVE_TIMEOUT_S = 120.0


@celeryd_init.connect
def _init(conf: Any, **_: Any) -> None:
    if float(conf.worker_proc_alive_timeout or 0) < PROC_ALIVE_TIMEOUT_S:
        conf.worker_proc_alive_timeout = PROC_ALIVE_TIMEOUT_S


@celeryd_after_setup.connect
def _after_setup(sender: str, instance: Any, **_: Any) -> None:
    set_worker_hostname(sender)
    global _POOL, _NODE, _ORPHANS
    _NODE = sender
    # before the consumer takes a message: what this node's previous run died holding
    _ORPHANS = inflight.claim(get_resources().settings, sender)
    _QUEUES.update(instance.app.amqp.queues.consume_from.keys())
    _POOL = str(getattr(instance, "pool_cls", "prefork"))
    if "prefork" not in _POOL.lower():
        # Celery enforces time limits only in prefork pools; a supervised solo node also exits
        solo = "solo" in _POOL.lower()
        time_limits.enable(exit_after_hard_limit=solo and get_resources().settings.exit_on_hard_time_limit)
    if _QUEUES and _QUEUES <= INTERACTIVE_QUEUES:
        # before the consumer connects: its channel reads these when it opens
        s = get_resources().settings
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
    _setup_observability(sender, main=True)
    _start_node_keeper(instance.app, sender)


def _start_node_keeper(app: Any, node: str) -> None:
    """After the transport options are final: its sweep restores through a channel of its own."""
    s = get_resources().settings
    unacked = {
        str(app.conf.broker_transport_options.get("unacked_key", "unacked")),
        "unacked",
        str(interactive_transport_options(s)["unacked_key"]),
    }
    _KEEPER.append(inflight.NodeKeeper(s, node, app.connection_for_write, frozenset(unacked)).start())


@worker_process_init.connect
def _process_init(**_: Any) -> None:
    reset_clients()
    reset_resources()
    _setup_observability(_NODE)
    from ragfleet.embedding import pin_threads

    pin_threads(get_resources().settings.torch_threads)
    _warm()


@worker_ready.connect
def _ready(sender: Any = None, **_: Any) -> None:
    global _ORPHANS
    if _ORPHANS and sender is not None:
        inflight.requeue(sender, _NODE, _ORPHANS)
        _ORPHANS = []
    if "prefork" not in _POOL.lower():
        _warm()


@task_revoked.connect
def _revoked(request: Any = None, expired: bool = False, terminated: bool = False, **_: Any) -> None:
    """An expired message never runs: its job must not stay `queued` until its TTL."""
    if request is None or not getattr(request, "id", None):
        return
    res = get_resources()
    job_id = str(request.id).removesuffix(":gen")
    redelivered = bool((getattr(request, "delivery_info", None) or {}).get("redelivered"))
    if expired and redelivered:
        # put back by workers/inflight.py (or the visibility sweep) after its node died holding it
        message = (
            "the worker holding this task died (or stopped), and the task expired before another "
            "worker could take it over; retry"
        )
        code = ErrorCode.WORKER_LOST
    elif expired:
        message = "the task expired in the queue before a worker could start it (backlog); retry later"
        code = ErrorCode.TIMEOUT
    else:
        message, code = "the task was revoked", ErrorCode.CANCELLED
    fail_job(res, job_id, code, message, retry_after=(5 if redelivered else 30) if expired else None)
