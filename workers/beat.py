"""The beat schedule. Run with the RedBeat scheduler so two beats never schedule twice:

    celery -A workers.app beat -S redbeat.RedBeatScheduler

Every entry carries `expires`: a beat tick that could not be delivered in time is dropped rather
than piling up behind an outage. The reindex itself also takes a lock (tasks.maintenance), so even
a manual trigger during the nightly run exits cleanly.
"""

from __future__ import annotations

from typing import Any

from celery.schedules import crontab

from ragfleet.names import TASKS, TaskName
from ragfleet.settings import Settings


def _cron(expr: str) -> crontab:
    minute, hour, dom, month, dow = expr.split()
    return crontab(minute=minute, hour=hour, day_of_month=dom, month_of_year=month, day_of_week=dow)


def beat_schedule(s: Settings) -> dict[str, dict[str, Any]]:
    def entry(task: TaskName, schedule: Any, expires: int, payload: dict[str, Any]) -> dict[str, Any]:
        """`expires` is the entry's own (below its interval: a tick late by a whole interval is
        stale); queue and priority are the task's (ragfleet.names.TASKS)."""
        spec = TASKS[task]
        return {
            "task": task.value,
            "schedule": schedule,
            "kwargs": {"payload": payload},
            "options": {"queue": spec.queue.value, "expires": expires, "priority": int(spec.priority)},
        }

    return {
        "nightly-reindex": entry(TaskName.REINDEX, _cron(s.reindex_cron), 3_600, {"reason": "scheduled"}),
        "feedback-aggregate": entry(TaskName.FEEDBACK_AGGREGATE, 300.0, 240, {}),
        "golden-eval": entry(TaskName.EVAL_GOLDEN, _cron("30 3 * * *"), 3_600, {}),
        # proves beat is alive and refreshes fleet gauges (workers per queue, index size)
        "heartbeat": entry(TaskName.HEARTBEAT, 60.0, 50, {}),
    }
