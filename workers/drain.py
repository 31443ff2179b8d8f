"""Graceful drain: after SIGTERM a node takes nothing new, lets what it holds finish for
`Settings.drain_grace_s`, then hands back to its queue whatever still runs and exits.

SIGTERM is Celery's warm shutdown: the consumer stops taking messages at its event loop's next turn
(the signal handler only sets a flag; a message that the Redis transport's blocking pop, already in
flight, returns in that turn still runs, within the grace like anything held) and the worker waits
for its running tasks, with no bound. An indexing batch may run for 15 minutes, longer than any
orchestrator waits (Kubernetes then SIGKILLs the pod, and the batch waits for the node-gone sweep
or the visibility timeout). So the `worker_shutting_down` signal (sent in the main process by
Celery's SIGTERM handler) starts a timer thread; if the process is still alive when the grace
ends, the thread:

1. SIGKILLs a prefork node's pool children, so a task cut short cannot still write a result;
2. puts every message the node still holds (its in-flight set, workers/inflight.py: started and
   prefetched ones alike) back on its queue through kombu's `QoS.restore_by_tag` (a WATCHed
   transaction: restored at most once, whoever else races to restore it), after marking each
   task id as handed back, so the redelivery cap (workers/base.py) does not count a drain as a
   worker death;
3. drops the node's liveness key and exits the process (`os._exit`: the running thread of a
   threads or solo pool cannot be stopped any other way).

A task that finishes within the grace is acknowledged as usual and the node exits by itself, so
the timer never fires. A handed-back task runs again from its start on another node: tasks are
idempotent (a job record is terminal once, ragfleet/jobs.py; chunk ids are content hashes), so a
run that ends in the instant between the hand-back and the exit cannot give its job a second result.

Why not Celery 5.7's soft shutdown (`worker_soft_shutdown_timeout`, read in celery/worker/worker.py
and celery/apps/worker.py): it runs on SIGQUIT (or SIGTERM with `REMAP_SIGTERM=SIGQUIT`), sleeps the
whole timeout inside the signal handler whenever a task is active (a 1 s task holds the node for
the whole grace, and a prefork parent's event loop, which acknowledges finished tasks, stops during
the sleep), and then cancels tasks through `pool.terminate_job`, which the threads and solo pools
do not implement (NotImplementedError): two of the fleet's three pool kinds.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import signal
import threading
from collections.abc import Callable
from typing import Any

import redis

from ragfleet.settings import Settings
from workers import kombu_patches
from workers.inflight import alive_key

log = logging.getLogger("ragfleet.worker")


def handback_key(settings: Settings, task_id: str) -> str:
    """Set while a task's message is back on its queue because a node drained, not because it died."""
    return settings.key("handback", task_id)


def held(settings: Settings, node: str, qos: Any, r: redis.Redis) -> dict[str, str]:
    """What `node` holds in `qos`'s unacked hash, delivery tag -> task id, each task id marked as
    handed back (before anything is restored: a prefork parent requeues a killed child's message
    itself). `r`: a plain client on the broker (decode_responses)."""
    p = settings.broker_key_prefix
    out: dict[str, str] = {}
    for tag in sorted(str(t) for t in r.smembers(p + kombu_patches.inflight_key(node))):
        raw = r.hget(p + qos.unacked_key, tag)
        if raw is None:
            continue  # acked meanwhile, or in another pool kind's hash
        out[tag] = task_id = str(json.loads(raw)[0].get("headers", {}).get("id", ""))
        if task_id:
            r.set(handback_key(settings, task_id), node, ex=max(60, settings.visibility_timeout_s))
    return out


class Drain:
    """The timer of one node's drain. `connect` returns a kombu Connection with this node's
    transport options (its own channel: the consumer's belongs to the event loop); `children`
    returns the pids of a prefork node's pool processes (empty elsewhere)."""

    def __init__(
        self,
        settings: Settings,
        node: str,
        connect: Callable[[], Any],
        children: Callable[[], list[int]],
        exit_: Callable[[int], None] = os._exit,
    ) -> None:
        self.settings = settings
        self.node = node
        self._connect = connect
        self._children = children
        self._exit = exit_
        self._thread: threading.Thread | None = None
        self.cancelled = threading.Event()

    def start(self) -> None:
        if self._thread is not None:
            return  # a second SIGTERM: the first one's grace still runs
        log.warning(
            "%s draining: taking nothing new; what still runs in %g s is handed back",
            self.node,
            self.settings.drain_grace_s,
        )
        self._thread = threading.Thread(target=self._run, name="ragfleet-drain", daemon=True)
        self._thread.start()

    @property
    def started(self) -> bool:
        return self._thread is not None

    def finished(self) -> None:
        """Celery's warm shutdown ended within the grace: what the node held is done and acked."""
        self.cancelled.set()
        log.warning("%s drained: everything it held finished within the grace", self.node)
        # then exit at once: the interpreter's own teardown (native libraries' threads and runtimes)
        # took 6-9 s more on an idle retrieval node, measured here; the atexit hooks (span export) run
        atexit._run_exitfuncs()
        self._flush_logs()
        self._exit(0)

    @staticmethod
    def _flush_logs() -> None:
        for h in logging.getLogger().handlers:
            h.flush()

    def _kill_children(self) -> None:
        for pid in self._children():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _run(self) -> None:
        if self.cancelled.wait(self.settings.drain_grace_s):
            return
        self.expire()

    def expire(self) -> None:
        """The grace is over: stop the pool's work, hand back what it held, exit."""
        handed: list[str] = []
        try:
            s = self.settings
            r = redis.Redis.from_url(s.broker, socket_timeout=s.redis_socket_timeout_s, decode_responses=True)
            conn = self._connect()
            try:
                qos = conn.default_channel.qos
                tags = held(s, self.node, qos, r)
                self._kill_children()
                for tag, task_id in tags.items():
                    qos.restore_by_tag(tag)  # a no-op where the prefork parent requeued it first
                    handed.append(task_id)
                r.delete(s.broker_key_prefix + alive_key(self.node))  # the node-gone sweep may act now
            finally:
                conn.release()
                r.close()
        except Exception:  # Redis down: the in-flight set stays, the node-gone sweep restores it later
            log.exception("%s: could not hand back what it held", self.node)
            self._kill_children()
        log.warning(
            "%s drained: %d message(s) still held after %g s handed back to their queue: %s",
            self.node,
            len(handed),
            self.settings.drain_grace_s,
            ", ".join(handed) or "-",
        )
        self._flush_logs()
        self._exit(0)
