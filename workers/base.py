"""Cross-cutting task behaviour: redelivery cap, job-record bookkeeping, error codes.

Celery has no limit on redeliveries of an acks_late message whose worker died: a message that
crashes its worker (OOM, segfault, SIGKILL) would loop forever. We count deliveries per task id in
Redis and park the message once it exceeds `max_redeliveries`, with its error visible in the job
record and in the `<prefix>:parked` list.
"""

from __future__ import annotations

import json
import time
from typing import Any

from celery import Task

from ragfleet.resources import get_resources
from ragfleet.schemas import ErrorCode

# The first redelivery finds no counter: it is the second delivery.
_COUNT_REDELIVERY = """
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
        return int(res.redis.eval(_COUNT_REDELIVERY, 1, key, res.settings.job_ttl_s))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.request.id and not self.request.is_eager:
            res = get_resources()
            n = self.deliveries()
            # retries are new deliveries too; only unexplained redeliveries count against the cap
            limit = res.settings.max_redeliveries + 1 + int(self.request.retries or 0)
            if n > limit:
                return self.park(n)
        return super().__call__(*args, **kwargs)

    def park(self, deliveries: int) -> dict[str, Any]:
        res = get_resources()
        # the job the caller polls: a hand-off task (`<job>:gen`) carries it in its payload
        payload = (self.request.kwargs or {}).get("payload")
        job_id = str(self.request.id)
        if isinstance(payload, dict) and payload.get("job_id"):
            job_id = str(payload["job_id"])
        message = (
            f"task {self.name} was delivered {deliveries} times and its worker died each time; "
            "parked as a poison message"
        )
        if res.jobs.fail(job_id, ErrorCode.WORKER_LOST, message):  # a streaming client must not wait in vain
            res.events.emit(job_id, "error", {"code": ErrorCode.WORKER_LOST.value, "message": message})
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
        return {"error": {"code": ErrorCode.WORKER_LOST.value, "message": message}}
