"""JSON logs for every process, and one request id that follows a request through every pool.

Why the shape:
- Every line is one JSON object on stderr, whoever wrote it: our structlog loggers and the stdlib
  loggers of Celery, kombu, uvicorn and friends all go through the same `ProcessorFormatter`, so a log
  shipper never has to parse two formats.
- The request id lives in a `ContextVar`: the API binds it per request, the producer copies it
  into the message headers (`ragfleet_request_id`, ragfleet.task_headers), and the worker binds it
  again around the task (workers/hooks/request_id.py), where the next stage's publish copies it on.
  Grepping one id shows the API line, the retrieval task and the generation task.
- With tracing on (ragfleet.tracing), a line written inside a span carries its `trace_id` and
  `span_id`: from a log line to the whole trace, and back.
- Celery configures logging itself unless a `setup_logging` receiver exists; workers/hooks/logging.py
  connects one, so the worker's own lines ("Task ... succeeded") are JSON too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import uuid
from collections.abc import Iterator
from contextvars import ContextVar, Token
from typing import Any, Final, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from ragfleet.tracing import add_trace_ids

REQUEST_ID_HEADER: Final = "ragfleet_request_id"
HTTP_REQUEST_ID_HEADER: Final = "X-Request-ID"

_request_id: ContextVar[str | None] = ContextVar("ragfleet_request_id", default=None)
_configured = False
_process = "ragfleet"

# Loggers that install their own handlers (uvicorn's dictConfig, Celery's hijack): send them to root.
_ADOPTED_LOGGERS: Final = (
    "uvicorn",
    "uvicorn.error",
    "uvicorn.access",
    "celery",
    "celery.task",
    "celery.redirected",
    "celery.worker",
    "kombu",
)


# --- request id ------------------------------------------------------------------------------------


def new_request_id() -> str:
    return uuid.uuid4().hex


def get_request_id() -> str | None:
    return _request_id.get()


def bind_request_id(rid: str | None) -> Token[str | None]:
    """Bind `rid` for the current context (task, asyncio task, thread); returns the token to undo it."""
    return _request_id.set(rid)


def reset_request_id(token: Token[str | None]) -> None:
    try:
        _request_id.reset(token)
    except ValueError:  # token from another context: fall back to clearing
        _request_id.set(None)


@contextlib.contextmanager
def request_context(rid: str | None = None) -> Iterator[str]:
    """Bind a request id (a new one if none is given) for the duration of the block."""
    rid = rid or new_request_id()
    token = bind_request_id(rid)
    try:
        yield rid
    finally:
        reset_request_id(token)


@contextlib.contextmanager
def log_fields(**fields: Any) -> Iterator[None]:
    """Add fields (job_id, task, queue, tenant, ...) to every log line written inside the block."""
    with structlog.contextvars.bound_contextvars(**{k: v for k, v in fields.items() if v is not None}):
        yield


def get_logger(name: str | None = None, **initial: Any) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name, **initial)
    return logger


# --- configuration ---------------------------------------------------------------------------------


def _add_request_id(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    rid = _request_id.get()
    if rid is not None:
        event_dict.setdefault("request_id", rid)
    return event_dict


def _add_process(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    event_dict.setdefault("process", _process)
    event_dict.setdefault("pid", os.getpid())  # read per line: prefork children log their own pid
    return event_dict


def configure_logging(
    level: str = "INFO", *, process: str, stream: TextIO | None = None, force: bool = False
) -> None:
    """Configure structlog and the stdlib root logger once per process (`force` reconfigures).

    `process` names the role in every line (api, worker-retrieval, beat, ...). Forked children inherit
    the configuration; the pid is read per line.
    """
    global _configured, _process
    if _configured and not force:
        return
    _process = process
    # The Logging HOWTO's "Optimization" switches: no line of ours shows the caller's file and line,
    # thread or process name (`_add_process` reads the pid itself), so no record computes them:
    # 24.5 -> 19.8 us a line (a Celery "Task ... succeeded" line, 30 frames deep, warm process).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        _add_request_id,
        add_trace_ids,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _add_process,
    ]
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # loggers made at import time must pick up this configuration, even after `force`
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            structlog.processors.UnicodeDecoder(),
            structlog.processors.JSONRenderer(sort_keys=False),
        ],
    )
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level.upper())
    for name in _ADOPTED_LOGGERS:
        adopted = logging.getLogger(name)
        adopted.handlers = []
        adopted.propagate = True
    logging.captureWarnings(True)
    _configured = True


def install_celery_request_id() -> None:
    """Stamp the bound request id on every task message this process publishes through
    `ragfleet.producer` (ragfleet.task_headers); idempotent. A worker also binds it around each task
    and carries it through Celery's own publishes (workers/hooks/request_id.py)."""
    from ragfleet import task_headers  # it reads the request id from here

    task_headers.enable(request_id=True)
