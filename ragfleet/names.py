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
