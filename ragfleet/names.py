"""Task, queue and priority names shared by producers and workers.

This module has no dependencies on purpose: other services copy these strings (docs/tasks.md lists
them), the API imports them without pulling in Celery workers, and a renamed constant is a breaking
change of the producer contract.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum


class Queue(StrEnum):
    RETRIEVAL = "retrieval"
    GENERATION = "generation"
    INDEXING = "indexing"
    FEEDBACK = "feedback"
    MAINTENANCE = "maintenance"


class TaskName(StrEnum):
    QUERY = "ragfleet.query"
    GENERATE = "ragfleet.generate"
    INDEX_DOCUMENTS = "ragfleet.index_documents"
    INDEX_DOCUMENT_SINGLE = "ragfleet.index_document"
    DELETE_DOCUMENT = "ragfleet.delete_document"
    FEEDBACK_RECORD = "ragfleet.feedback.record"
    FEEDBACK_AGGREGATE = "ragfleet.feedback.aggregate"
    REINDEX = "ragfleet.reindex"
    EVAL_GOLDEN = "ragfleet.eval_golden"
    BATCH_DISPATCH = "ragfleet.batch.dispatch"
    HEARTBEAT = "ragfleet.heartbeat"
    INDEX_FLUSH = "ragfleet.index_flush"


class Priority(IntEnum):
    """Redis-transport priorities: 0 is served first (kombu sorts priority queues ascending)."""

    INTERACTIVE = 0
    DEFAULT = 3
    BATCH = 6
    BACKGROUND = 9


# kombu's Redis transport option `priority_steps`, the same in every producer and worker: with 0..9
# every priority has its own list, so none waits behind another's backlog
PRIORITY_STEPS: tuple[int, ...] = tuple(range(10))
# what kombu's Redis channel puts between a queue's name and a priority step (`Channel.sep`)
_PRIORITY_LIST_SEP = "\x06\x16"


def priority_list(queue: str, priority: int, *, steps: tuple[int, ...] = PRIORITY_STEPS) -> str:
    """The Redis list kombu's Redis transport uses for `queue` at `priority` (kombu 5.7,
    `Channel._q_for_pri`): the largest step not above it; step 0 is the bare queue name."""
    step = max((s for s in steps if s <= priority), default=steps[0])
    return f"{queue}{_PRIORITY_LIST_SEP}{step}" if step else queue


TASK_QUEUES: dict[TaskName, Queue] = {
    TaskName.QUERY: Queue.RETRIEVAL,
    TaskName.GENERATE: Queue.GENERATION,
    TaskName.INDEX_DOCUMENTS: Queue.INDEXING,
    TaskName.INDEX_DOCUMENT_SINGLE: Queue.INDEXING,
    TaskName.DELETE_DOCUMENT: Queue.INDEXING,
    TaskName.FEEDBACK_RECORD: Queue.FEEDBACK,
    TaskName.FEEDBACK_AGGREGATE: Queue.FEEDBACK,
    TaskName.REINDEX: Queue.MAINTENANCE,
    TaskName.EVAL_GOLDEN: Queue.MAINTENANCE,
    TaskName.BATCH_DISPATCH: Queue.RETRIEVAL,
    TaskName.HEARTBEAT: Queue.MAINTENANCE,
    TaskName.INDEX_FLUSH: Queue.INDEXING,
}

KEY_PREFIX = "ragfleet"
