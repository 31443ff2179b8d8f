"""A node that consumes the feedback queue brings the feedback schema to head before it takes work.

Failure is logged, not fatal: the database may come up later, and each process retries the
migration on its first task (`repository.ensure_schema`).
"""

from __future__ import annotations

from typing import Any

from celery import Celery, signals

from ragfleet.feedback import repository
from ragfleet.logs import get_logger
from ragfleet.names import Queue
from ragfleet.settings import get_settings

log = get_logger("ragfleet.feedback")


def _migrate_on_start(sender: str, instance: Any, **_: Any) -> None:
    if Queue.FEEDBACK.value not in instance.app.amqp.queues.consume_from:
        return
    try:
        revision = repository.upgrade_to_head(get_settings().feedback_db_url)
    except Exception as exc:
        log.error("feedback_migration_failed", error=f"{type(exc).__name__}: {exc}", node=sender)
        return
    log.info("feedback_schema_ready", revision=revision, node=sender)


def install(app: Celery) -> None:
    signals.celeryd_after_setup.connect(
        _migrate_on_start, weak=False, dispatch_uid="ragfleet.hooks.feedback_schema"
    )
