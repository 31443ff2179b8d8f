"""Task, queue and priority names shared by producers and workers, and what each task is (`TASKS`).

Light on purpose (pydantic models and Settings, no Celery): other services copy these strings
(docs/tasks.md lists them), the API imports them without pulling in Celery workers, and a renamed
constant is a breaking change of the producer contract. `TASKS` is the one declaration of each task:
its queue, payload and result models, time limits, expiry and priority. The task decorators
(workers.base.task), the producer's defaults, the beat schedule and docs/tasks.md read it; a new
pool is a new `Queue`, its `TaskName`s and `TaskSpec`s here, plus its role in workers/roles.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, StrEnum

from pydantic import BaseModel

from ragfleet import callback_spec, schemas
from ragfleet.settings import Settings


class Queue(StrEnum):
    RETRIEVAL = "retrieval"
    GENERATION = "generation"
    INDEXING = "indexing"
    FEEDBACK = "feedback"
    MAINTENANCE = "maintenance"
    CALLBACKS = "callbacks"


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
    CALLBACK_DELIVER = "ragfleet.callbacks.deliver"


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


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """What one task is, declared once.

    A time limit or an expiry given as a string names the Settings field that holds it (so a
    deployment tunes it through `RAGFLEET_*`); a number is fixed. `soft_margin_s`: the soft limit is
    the hard one minus this, so a task can turn it into its own error result before the hard limit
    stops it (None: none of its own; the worker app's default lies past a short hard limit).
    `summary`: the task's entry in docs/tasks.md (None: internal or scheduled, not listed there).
    """

    name: TaskName
    queue: Queue
    payload: type[BaseModel] | None
    result: type[BaseModel] | None
    time_limit: str | float
    soft_margin_s: float | None
    expires: str | float
    priority: Priority = Priority.DEFAULT
    max_retries: int = 3
    # the job record is the result (polled, streamed, TTL'd): Celery's copy would add a STARTED and
    # a SUCCESS write to the backend on the interactive path of both pools
    ignore_result: bool = False
    summary: str | None = None

    def time_limits(self, settings: Settings) -> tuple[float, float | None]:
        """(hard, soft) in seconds for this deployment."""
        hard = float(_setting(settings, self.time_limit))
        return hard, (hard - self.soft_margin_s if self.soft_margin_s is not None else None)

    def expires_s(self, settings: Settings) -> int:
        """The `expires` a producer sets unless it chooses one: a message nobody waits for any more
        must not burn a worker."""
        return int(_setting(settings, self.expires))


def _setting(settings: Settings, value: str | float) -> float:
    return float(getattr(settings, value)) if isinstance(value, str) else float(value)


_QUERY_EXPIRES, _INDEX_EXPIRES, _FEEDBACK_EXPIRES = "query_expires_s", "index_expires_s", "feedback_expires_s"

TASKS: dict[TaskName, TaskSpec] = {
    s.name: s
    for s in (  # docs/tasks.md documents them in this order
        TaskSpec(
            TaskName.QUERY,
            Queue.RETRIEVAL,
            schemas.QueryPayload,
            schemas.Answer,
            time_limit="query_time_limit_s",
            soft_margin_s=5,
            expires=_QUERY_EXPIRES,
            max_retries=2,
            ignore_result=True,
            summary="Ask a question. Retrieval runs here, then hands off to "
            "`ragfleet.generate`; the job record's `result` is an Answer.",
        ),
        TaskSpec(
            TaskName.INDEX_DOCUMENTS,
            Queue.INDEXING,
            schemas.IndexDocumentsPayload,
            schemas.IndexResult,
            time_limit="index_time_limit_s",
            soft_margin_s=30,
            expires=_INDEX_EXPIRES,
            summary="Index a batch of documents "
            "(`{id, text, title?, metadata?, tenant?}` each). Invalid documents are reported in `errors`; "
            "the rest are indexed.",
        ),
        TaskSpec(
            TaskName.INDEX_DOCUMENT_SINGLE,
            Queue.INDEXING,
            schemas.IndexDocumentPayload,
            schemas.IndexResult,
            time_limit=60,
            soft_margin_s=5,
            expires=_INDEX_EXPIRES,
            summary="Index one document; the indexing pool gathers these into batches before embedding.",
        ),
        TaskSpec(
            TaskName.DELETE_DOCUMENT,
            Queue.INDEXING,
            schemas.DeleteDocumentPayload,
            schemas.IndexResult,
            time_limit=120,
            soft_margin_s=10,
            expires=_INDEX_EXPIRES,
            summary="Delete a document and all its chunks.",
        ),
        TaskSpec(
            TaskName.FEEDBACK_RECORD,
            Queue.FEEDBACK,
            schemas.FeedbackPayload,
            None,
            time_limit=30,
            soft_margin_s=5,
            expires=_FEEDBACK_EXPIRES,
            summary="Rate an answered query (1-5).",
        ),
        TaskSpec(
            TaskName.REINDEX,
            Queue.MAINTENANCE,
            schemas.ReindexPayload,
            None,
            time_limit="reindex_time_limit_s",
            soft_margin_s=60,
            expires=_INDEX_EXPIRES,
            priority=Priority.BACKGROUND,
            summary="Rebuild the index as a new version and switch atomically (normally run by beat).",
        ),
        TaskSpec(
            TaskName.BATCH_DISPATCH,
            Queue.RETRIEVAL,
            schemas.BatchDispatchPayload,
            None,
            time_limit=120,
            soft_margin_s=None,
            expires=_INDEX_EXPIRES,
            summary="Submit a whole batch of questions; the task id is the batch id. Progress "
            "(done/failed/total) is in the batch's job record; item i's answer is the job `<batch_id>.<i>`.",
        ),
        TaskSpec(
            TaskName.GENERATE,
            Queue.GENERATION,
            schemas.GeneratePayload,
            schemas.Answer,
            time_limit="generate_time_limit_s",
            soft_margin_s=5,
            expires=_QUERY_EXPIRES,
            ignore_result=True,
            summary="Internal: the retrieval pool's hand-off. Do not send it yourself.",
        ),
        TaskSpec(
            TaskName.INDEX_FLUSH,
            Queue.INDEXING,
            None,
            None,
            time_limit="index_time_limit_s",
            soft_margin_s=30,
            expires=_INDEX_EXPIRES,
        ),
        TaskSpec(
            TaskName.FEEDBACK_AGGREGATE,
            Queue.FEEDBACK,
            schemas.AggregatePayload,
            None,
            time_limit=60,
            soft_margin_s=10,
            expires=_FEEDBACK_EXPIRES,
            priority=Priority.BACKGROUND,
            max_retries=2,
        ),
        TaskSpec(
            TaskName.EVAL_GOLDEN,
            Queue.MAINTENANCE,
            None,
            None,
            time_limit=900,
            soft_margin_s=30,
            expires=_INDEX_EXPIRES,
            priority=Priority.BACKGROUND,
        ),
        TaskSpec(
            TaskName.CALLBACK_DELIVER,
            Queue.CALLBACKS,
            callback_spec.DeliverPayload,
            None,
            time_limit="callback_time_limit_s",
            soft_margin_s=None,
            # the message is built when the job is submitted and sent when it ends (ragfleet.callbacks)
            expires="job_ttl_s",
            max_retries=0,
            ignore_result=True,
            summary="Internal: delivers a finished job's `callback_url` / `callback_task` on the "
            "`callbacks` pool (docs/http.md#callbacks). Built with the job, sent when it ends: "
            "do not send it yourself.",
        ),
        TaskSpec(
            TaskName.HEARTBEAT,
            Queue.MAINTENANCE,
            None,
            None,
            time_limit=30,
            soft_margin_s=5,
            expires=_INDEX_EXPIRES,
            priority=Priority.BACKGROUND,
        ),
    )
}

# kept for the producers that read it: the queue of each task, from its spec
TASK_QUEUES: dict[TaskName, Queue] = {name: spec.queue for name, spec in TASKS.items()}

KEY_PREFIX = "ragfleet"
