"""The headers our producers stamp on a task message: the request id and the enqueue time.

The request id (`ragfleet_request_id`) lets one grep follow a request from the API through every
pool (ragfleet.logs); the enqueue time (`ragfleet_enqueued_at`) is what a worker measures queue wait
from (`ragfleet_task_wait_seconds`). A process turns them on with `ragfleet.logs.install_celery_request_id`
and `ragfleet.metrics.install_celery_metrics` (the API does); `ragfleet.producer` then adds them to
every message it builds, itself: the core connects no Celery signal. The W3C `traceparent` of
the current span goes on every message too, when tracing is on (ragfleet.tracing). A worker also stamps the
messages Celery publishes for it (retries, `send_task`), from its publish hooks
(workers/hooks/request_id.py, workers/hooks/metrics.py), with the same two functions.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, MutableMapping
from typing import Any, Final

from ragfleet import tracing
from ragfleet.logs import REQUEST_ID_HEADER, get_request_id

ENQUEUED_AT_HEADER: Final = "ragfleet_enqueued_at"

_stamp_request_id = False
_stamp_enqueued_at = False


def enable(*, request_id: bool = False, enqueued_at: bool = False) -> None:
    """Stamp these headers on every message this process publishes through ragfleet.producer."""
    global _stamp_request_id, _stamp_enqueued_at
    _stamp_request_id = _stamp_request_id or request_id
    _stamp_enqueued_at = _stamp_enqueued_at or enqueued_at


def add_request_id(headers: MutableMapping[str, Any]) -> None:
    """The bound request id, unless the message carries one already."""
    rid = get_request_id()
    if rid and not headers.get(REQUEST_ID_HEADER):
        headers[REQUEST_ID_HEADER] = rid


def add_enqueued_at(headers: MutableMapping[str, Any]) -> None:
    """Now: a retry is published again, so the wait is measured per attempt."""
    headers[ENQUEUED_AT_HEADER] = time.time()


def for_publish(headers: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """`headers` plus the stamps this process has turned on, in the order Celery's publish hooks
    used to add them (request id, then enqueue time), and the current trace context (`traceparent`,
    when tracing is on and the caller did not bring its own: ragfleet.tracing)."""
    out = dict(headers or {})
    tracing.inject(out)
    if _stamp_request_id:
        add_request_id(out)
    if _stamp_enqueued_at:
        add_enqueued_at(out)
    return out
