"""Cross-cutting task behaviour: redelivery cap, job-record bookkeeping, error codes.

Celery has no limit on redeliveries of an acks_late message whose worker died: a message that
crashes its worker (OOM, segfault, SIGKILL) would loop forever. We count deliveries per task id in
Redis and park the message once it exceeds `max_redeliveries`, with its error visible in the job
record and in the `<prefix>:parked` list, and record it as a dead letter (`ragfleet.dead_letters`,
with its payload) that an operator can replay or purge. A job that ends `internal` here is a dead
letter too.

A task that ends in an exception its body did not turn into an error result (a bug, or the hard
time limit, which kills the process mid-call: Celery then runs `on_failure` in the pool's main
process) still ends its job, with `internal` or `timeout`: otherwise the job would stay
`retrieving` until its TTL and every caller polling it would wait in vain.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from celery import Task, shared_task
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded

from ragfleet.dead_letters import DeadLetters
from ragfleet.jobs import job_id_of
from ragfleet.names import TASKS, TaskName
from ragfleet.outcomes import fail_job
from ragfleet.resources import get_resources
from ragfleet.schemas import ErrorCode
from ragfleet.settings import get_settings
from workers import time_limits
from workers.drain import handback_key

# The first redelivery finds no counter: it is the second delivery. A message a draining node handed
# back (KEYS[2], workers/drain.py) is a redelivery no worker died of: not counted, the mark cleared.
_COUNT_REDELIVERY = """
if redis.call('DEL', KEYS[2]) == 1 then return tonumber(redis.call('GET', KEYS[1]) or '1') end
local n = redis.call('INCR', KEYS[1])
if n == 1 then n = redis.call('INCR', KEYS[1]) end
redis.call('EXPIRE', KEYS[1], ARGV[1])
return n
"""


class RagfleetTask(Task):  # type: ignore[misc]
    abstract = True
    typing = True

    def deliveries(self) -> int:
        """How many times this message has been delivered, this delivery included.

        A first delivery costs nothing: only a message kombu put back after its worker died (it
        marks it `redelivered`) is counted, in `<prefix>:deliveries:<task id>`, which starts at 2.
        That keeps a Redis round trip off every task on the interactive path.
        """
        if not (self.request.delivery_info or {}).get("redelivered"):
            return 1
        res = get_resources()
        key = res.settings.key("deliveries", str(self.request.id))
        handback = handback_key(res.settings, str(self.request.id))
        return int(res.redis.eval(_COUNT_REDELIVERY, 2, key, handback, res.settings.job_ttl_s))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.request.id and not self.request.is_eager:
            res = get_resources()
            n = self.deliveries()
            # retries are new deliveries too; only unexplained redeliveries count against the cap
            limit = res.settings.max_redeliveries + 1 + int(self.request.retries or 0)
            if n > limit:
                return self.park(n)
            # threads and solo pools: Celery enforces no time limit there (workers/time_limits.py)
            with time_limits.enforced(self, str(self.request.id), kwargs):
                return super().__call__(*args, **kwargs)
        return super().__call__(*args, **kwargs)

    def on_failure(self, exc: Exception, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        if isinstance(exc, TimeLimitExceeded):
            code = ErrorCode.TIMEOUT
            message = f"task {self.name} exceeded its hard time limit ({exc}) and was stopped"
        elif isinstance(exc, SoftTimeLimitExceeded):  # one the task did not turn into its own error
            code = ErrorCode.TIMEOUT
            message = f"task {self.name} exceeded its soft time limit and was stopped"
        else:
            code = ErrorCode.INTERNAL
            message = f"task {self.name} failed: {type(exc).__name__}: {exc}"
        try:
            failed = fail_job(get_resources(), job_id_of(task_id, kwargs), code, message, retry_after=5)
        except Exception:  # Redis is down too: the job's TTL ends it; the worker must go on
            logging.getLogger("ragfleet.worker").exception("could not fail the job of task %s", task_id)
            return
        if failed and code == ErrorCode.INTERNAL:  # once per job: a late duplicate failed nothing
            self.record_dead_letter(task_id, kwargs, code, message, self.delivery_count(), parked=False)

    def delivery_count(self) -> int:
        """The delivery count as last counted (`deliveries`), without counting again."""
        if not (self.request.delivery_info or {}).get("redelivered"):
            return 1
        try:
            res = get_resources()
            return int(res.redis.get(res.settings.key("deliveries", str(self.request.id))) or 2)
        except Exception:
            return 2

    def record_dead_letter(
        self, task_id: str, kwargs: Any, code: ErrorCode, message: str, deliveries: int, *, parked: bool
    ) -> None:
        """Best effort: a dead letter that cannot be written is logged; the worker goes on."""
        try:
            res = get_resources()
            payload = (kwargs or {}).get("payload") if isinstance(kwargs, dict) else None
            DeadLetters(res.redis, res.settings).record(
                task=str(self.name),
                task_id=str(task_id),
                job_id=job_id_of(task_id, kwargs),
                payload=payload,
                code=code,
                message=message,
                deliveries=deliveries,
                node=str(self.request.hostname or ""),
                parked=parked,
                queue=str((self.request.delivery_info or {}).get("routing_key") or "") or None,
            )
        except Exception:
            logging.getLogger("ragfleet.worker").exception("could not record the dead letter of %s", task_id)

    def park(self, deliveries: int) -> dict[str, Any]:
        res = get_resources()
        job_id = job_id_of(str(self.request.id), self.request.kwargs)
        message = (
            f"task {self.name} was delivered {deliveries} times and its worker died each time; "
            "parked as a poison message"
        )
        fail_job(res, job_id, ErrorCode.WORKER_LOST, message)  # a streaming client must not wait in vain
        res.redis.lpush(
            res.settings.key("parked"),
            json.dumps(
                {
                    "task": self.name,
                    "task_id": str(self.request.id),
                    "job_id": job_id,
                    "at": time.time(),
                    "error": message,
                }
            ),
        )
        self.record_dead_letter(
            str(self.request.id), self.request.kwargs, ErrorCode.WORKER_LOST, message, deliveries, parked=True
        )
        return {"error": {"code": ErrorCode.WORKER_LOST.value, "message": message}}


class CallbackDeliveryTask(RagfleetTask):
    """The delivery of a job's callbacks (tasks/callbacks.py). Its job is terminal already and its
    outcome is the delivery log (`ragfleet.callbacks`): a failure of the delivery must neither touch
    the job nor become a dead letter of it (a replay would reopen a finished job)."""

    abstract = True

    def on_failure(self, exc: Exception, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        logging.getLogger("ragfleet.callbacks").error("callback delivery %s failed: %r", task_id, exc)

    def record_dead_letter(
        self, task_id: str, kwargs: Any, code: ErrorCode, message: str, deliveries: int, *, parked: bool
    ) -> None:
        logging.getLogger("ragfleet.callbacks").error("callback delivery %s parked: %s", task_id, message)


def task(name: TaskName, base: type[RagfleetTask] = RagfleetTask) -> Callable[[Callable[..., Any]], Any]:
    """The decorator of a project task: `shared_task` (the module builds no app; workers.app binds it),
    bound, on `RagfleetTask`, with its name, time limits, retries and result policy from its spec
    (ragfleet.names.TASKS). Its queue is routed by the app (`task_routes`, from the same specs)."""
    spec = TASKS[name]
    hard, soft = spec.time_limits(get_settings())
    decorator: Callable[[Callable[..., Any]], Any] = shared_task(
        name=spec.name.value,
        bind=True,
        base=base,
        time_limit=hard,
        soft_time_limit=soft,
        max_retries=spec.max_retries,
        ignore_result=spec.ignore_result,
    )
    return decorator
