"""JSON logs in every worker process (ragfleet.logs), instead of Celery's text handlers.

Celery configures logging itself unless a `setup_logging` receiver exists; this connects one. The
main process names its lines after the node once it knows it; a prefork child does the same after
the fork.
"""

from __future__ import annotations

from typing import Any

from celery import Celery, signals

from ragfleet.logs import configure_logging
from ragfleet.settings import get_settings
from workers.hooks import node


def _setup_logging(loglevel: Any = None, **_: Any) -> None:
    configure_logging(get_settings().log_level, process="celery", force=True)


def _after_setup(sender: str, **_: Any) -> None:
    configure_logging(get_settings().log_level, process=sender, force=True)


def _process_init(**_: Any) -> None:
    configure_logging(get_settings().log_level, process=node.current.name, force=True)


def install(app: Celery) -> None:
    signals.setup_logging.connect(
        _setup_logging, weak=False, dispatch_uid="ragfleet.hooks.logs.setup_logging"
    )
    signals.celeryd_after_setup.connect(_after_setup, weak=False, dispatch_uid="ragfleet.hooks.logs.setup")
    signals.worker_process_init.connect(_process_init, weak=False, dispatch_uid="ragfleet.hooks.logs.process")
