"""Time limits for the pools Celery enforces none in: threads (generation, feedback) and solo
(maintenance).

Celery's time limits are the prefork pool's: its parent signals a child past the soft limit and kills
it past the hard one. The threads pool submits a task to an executor and the solo pool calls it
inline; both ignore `time_limit` and `soft_time_limit`, so a generation call stuck past its 60 s, or
a reindex past its 1800 s, would hold its job `generating` / `running` until the record's TTL and
every caller polling it would wait in vain. Here, in those pools:

- the hard limit ends the job: a watchdog thread (one per process, waking every 0.25 s) fails the
  job with `timeout` once a task runs past it. A thread cannot be killed, so the call itself goes on
  until it returns, and its late finish is a no-op on the terminal job (the finish is atomic); the
  pool has one thread fewer meanwhile, which the error log line says.
- a solo node with `exit_on_hard_time_limit` (set by infra/supervisor/retrieval.conf) then exits:
  its one thread is stuck, so the node could serve nothing until the call returns. Its supervisor
  starts it again under the same name, and the fresh node requeues the stuck message
  (workers/inflight.py), whose redelivery finds its job terminal and does nothing. That is what the
  prefork parent does to a child past the hard limit.
- the soft limit raises `SoftTimeLimitExceeded` in a task running on the main thread (solo), from a
  `SIGALRM` timer, as prefork's SIGUSR1 does: the task's own handler turns it into its error result.
  A threads-pool task's calls are bounded by their own timeouts (the LLM gateway's per-call timeout,
  retries and circuit breaker); no exception can be raised into a thread blocked in a C call.

Limits come from the message (`timelimit` header) or the task, as Celery resolves them. Prefork pools
are left to Celery (`enable` is called only for the other kinds, by workers/hooks/time_limits.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded

from ragfleet.jobs import job_id_of
from ragfleet.outcomes import fail_job
from ragfleet.resources import get_resources
from ragfleet.schemas import ErrorCode

log = logging.getLogger("ragfleet.worker")

WATCHDOG_INTERVAL_S = 0.25


@dataclass(slots=True)
class _Running:
    task: Any
    task_id: str
    kwargs: Any
    hard: float
    deadline: float
    fired: bool = False


class _Watchdog:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[str, _Running] = {}
        self._thread: threading.Thread | None = None
        self.exit_after_expiry = False

    def add(self, entry: _Running) -> None:
        with self._lock:
            self._running[entry.task_id] = entry
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="ragfleet-time-limits", daemon=True)
                self._thread.start()

    def remove(self, task_id: str) -> None:
        with self._lock:
            self._running.pop(task_id, None)

    def _run(self) -> None:
        while True:
            time.sleep(WATCHDOG_INTERVAL_S)
            now = time.monotonic()
            with self._lock:
                due = [e for e in self._running.values() if not e.fired and now >= e.deadline]
                for e in due:
                    e.fired = True
            for e in due:
                self._expire(e)
            if due and self.exit_after_expiry:
                log.error("exiting: this solo node's only thread is stuck; its supervisor starts a fresh one")
                logging.shutdown()
                os._exit(70)  # EX_SOFTWARE; no cleanup can be trusted with a thread stuck mid-call

    @staticmethod
    def _expire(e: _Running) -> None:
        job_id = job_id_of(e.task_id, e.kwargs)
        message = (
            f"task {e.task.name} exceeded its hard time limit ({e.hard:g} s); its job ends here "
            "(the call itself cannot be stopped in this pool and may still finish, to no effect)"
        )
        log.error("%s: task %s, job %s", message, e.task_id, job_id)
        try:
            fail_job(get_resources(), job_id, ErrorCode.TIMEOUT, message, retry_after=5)
        except Exception:  # Redis is down too: the job's TTL ends it; the watchdog must go on
            log.exception("could not fail the job of task %s past its time limit", e.task_id)


_watchdog = _Watchdog()
_enabled = False


def enable(*, exit_after_hard_limit: bool = False) -> None:
    """This process's pool enforces no time limits itself (threads, solo). `exit_after_hard_limit`:
    a solo node under a supervisor (see the module docstring)."""
    global _enabled
    _enabled = True
    _watchdog.exit_after_expiry = exit_after_hard_limit


def limits_of(task: Any) -> tuple[float | None, float | None]:
    """(hard, soft) in seconds, as Celery resolves them: the message's `timelimit` header, else the
    task's own, else the app's defaults."""
    header = getattr(task.request, "timelimit", None) or (None, None)
    conf = task.app.conf
    hard = header[0] or task.time_limit or conf.task_time_limit
    soft = header[1] or task.soft_time_limit or conf.task_soft_time_limit
    return (float(hard) if hard else None, float(soft) if soft else None)


def _raise_soft(signum: int, frame: Any) -> None:
    raise SoftTimeLimitExceeded()


@contextlib.contextmanager
def enforced(task: Any, task_id: str, kwargs: Any) -> Iterator[None]:
    """Around a task's body (`RagfleetTask.__call__`); a no-op unless `enable` was called."""
    if not _enabled:
        yield
        return
    hard, soft = limits_of(task)
    on_main = threading.current_thread() is threading.main_thread()
    previous: Any = None
    if soft and on_main:
        previous = signal.signal(signal.SIGALRM, _raise_soft)
        signal.setitimer(signal.ITIMER_REAL, soft)
    if hard:
        _watchdog.add(_Running(task, task_id, kwargs, hard, time.monotonic() + hard))
    try:
        yield
    finally:
        if soft and on_main:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous if previous is not None else signal.SIG_DFL)
        if hard:
            _watchdog.remove(task_id)
