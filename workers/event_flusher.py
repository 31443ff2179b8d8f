"""Task events (what Flower shows) published from a thread of the worker's own, not its event loop.

With an event loop (every pool here), Celery buffers task events and flushes them with
`hub.call_soon`: the next loop iteration publishes them and waits for Redis's reply before it
polls again. That loop is the one that takes the next message off the queue and hands it to the
pool, so each query's `task-received` (and `task-started`, `task-succeeded`) PUBLISH round trip
sat between a message arriving and its task starting, on both hops of the query's critical path:
py-spy on a running fleet put ~25 % of the retrieval pool parent's and ~20 % of the generation
worker's samples in that flush. Here the flush runs in a daemon thread per consumer, woken by an
`Event`; the loop only sets it. Celery's dispatcher already guards its buffers and producer with a
mutex (it flushes from several threads itself: a full buffer, the heartbeat), so the thread uses
it as is; it always flushes whatever dispatcher the consumer holds now (a reconnect makes a new
one), and a failed publish stays buffered by Celery (`buffer_while_offline`) for the next flush.
It flushes 2 ms after it is woken, not at once: woken the moment a message is handed to the pool,
it would take the GIL (threads pool) or a core (prefork parent) from the task that has just begun.
Paired A/B (bench/bench_ab.py, 700 questions): the delay took another 0.8 ms off a query's P50.

The events, their order within a worker and their content are Celery's own; only who sends them
changes. Off with `RAGFLEET_TASK_EVENTS_THREAD=false` (Celery's own flush in the loop).

Not in solo pools (the retrieval nodes): there the task runs in the loop's own thread, so Celery's
flush waits for the task to end anyway, and a flusher thread could only publish in the middle of
the task, taking the GIL from it. Paired A/B on the supervised solo retrieval nodes (400
questions): with the thread, -0.65 ms outside the retrieval stage and a retrieval stage +0.73 ms
slower; with Celery's flush, -1.15 ms outside it and +0.52 ms (within noise) for the stage.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from celery.concurrency.solo import TaskPool as SoloPool
from celery.worker.consumer.consumer import Consumer

log = logging.getLogger("ragfleet.worker")

_ATTR = "_ragfleet_event_flusher"
_MARK = "_ragfleet_off_loop"
FLUSH_DELAY_S = 0.002
_CREATE = threading.Lock()  # task threads of a threads pool send their first events at once


class EventFlusher:
    def __init__(self, consumer: Any) -> None:
        self._consumer = consumer
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ragfleet-event-flusher", daemon=True)
        self._thread.start()

    def request(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            # Let the task that sent the event take the GIL first: it is on a query's critical path,
            # its events are not (Flower sees them 2 ms later, often two in one PUBLISH).
            time.sleep(FLUSH_DELAY_S)
            self._wake.clear()
            dispatcher = self._consumer.event_dispatcher
            if dispatcher is None:  # between a lost connection and the next one: flushed on reconnect
                continue
            try:
                dispatcher.flush()
            except Exception:  # never let one bad flush end the thread (and every later event)
                log.exception("publishing task events failed")


def install() -> None:
    """Route Celery's buffered-event flush to the consumer's flusher thread. Idempotent."""
    original = Consumer.on_send_event_buffered
    if getattr(original, _MARK, False):
        return

    def on_send_event_buffered(self: Any) -> None:
        if not self.hub or isinstance(self.pool, SoloPool):
            original(self)
            return None
        flusher = self.__dict__.get(_ATTR)
        if flusher is None:
            with _CREATE:
                flusher = self.__dict__.get(_ATTR) or EventFlusher(self)
                self.__dict__[_ATTR] = flusher
        flusher.request()
        return None

    setattr(on_send_event_buffered, _MARK, True)
    on_send_event_buffered.__wrapped_original__ = original  # type: ignore[attr-defined]
    Consumer.on_send_event_buffered = on_send_event_buffered
