"""A node restarted under its own name requeues at once what its previous run died holding
(workers/inflight.py): it claims the tags before its consumer takes a message, and requeues them
once the consumer is up. Every node also keeps its liveness key and sweeps the in-flight sets of
nodes gone for good (`inflight.NodeKeeper`), so a query held by a node that never comes back is
terminal within its expiry + a few seconds."""

from __future__ import annotations

from typing import Any

from celery import Celery, signals

from ragfleet.settings import get_settings
from workers import inflight
from workers.hooks import node
from workers.hooks.interactive import interactive_transport_options

_orphans: list[str] = []  # delivery tags this node's previous run died holding
_keeper: list[inflight.NodeKeeper] = []  # this node's liveness + gone-node sweep thread


def _after_setup(sender: str, instance: Any, **_: Any) -> None:
    global _orphans
    s = get_settings()
    _orphans = inflight.claim(s, sender)
    # after workers.hooks.interactive (HOOKS order): the transport options are final here, and the
    # sweep restores through a channel of its own
    unacked = {
        str(instance.app.conf.broker_transport_options.get("unacked_key", "unacked")),
        "unacked",
        str(interactive_transport_options(s)["unacked_key"]),
    }
    _keeper.append(
        inflight.NodeKeeper(s, sender, instance.app.connection_for_write, frozenset(unacked)).start()
    )


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
