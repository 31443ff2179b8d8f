"""A diagnostic probe, loaded by every process of a fleet that `bench/hop_timeline.py` starts (it puts
this directory first on PYTHONPATH): with RAGFLEET_HOP_TIMELINE_DIR set, it wraps the steps a message
goes through in kombu, Celery, redis-py and uvicorn, and writes `time.time()` at each into
`<dir>/tl-<pid>.jsonl`. Never loaded by a fleet started any other way, and a no-op without the variable.

The wrapped names are Celery 5.7 / kombu 5.7 internals; a rename makes the probe fail loudly at start.
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

_DIR = os.environ.get("RAGFLEET_HOP_TIMELINE_DIR")


def _install(out_dir: str) -> None:
    files: dict[int, Any] = {}
    lock = threading.Lock()

    def mark(name: str) -> None:
        line = json.dumps({"t": time.time(), "ev": name, "th": threading.get_ident() % 100_000}) + "\n"
        with lock:
            pid = os.getpid()  # a forked child gets its own file
            f = files.get(pid)
            if f is None:
                f = files[pid] = open(os.path.join(out_dir, f"tl-{pid}.jsonl"), "a", buffering=1)  # noqa: SIM115
            f.write(line)

    def around(owner: Any, attr: str, name: str, *, end: bool = False) -> None:
        original = getattr(owner, attr)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            mark(name)
            try:
                return original(*args, **kwargs)
            finally:
                if end:
                    mark(f"{name}:end")

        setattr(owner, attr, wrapper)

    def around_async(owner: Any, attr: str, name: str) -> None:
        original = getattr(owner, attr)

        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            mark(name)
            try:
                return await original(*args, **kwargs)
            finally:
                mark(f"{name}:end")

        setattr(owner, attr, wrapper)

    import celery.app.trace as trace
    import celery.concurrency.base as pool_base
    import celery.concurrency.thread as pool_thread
    import celery.worker.request as request
    import celery.worker.strategy as strategy
    import kombu.transport.redis as kombu_redis
    import redis.asyncio.client as redis_async
    import redis.client as redis_sync

    around(kombu_redis.Channel, "_brpop_read", "brpop_read")
    around(kombu_redis.QoS, "append", "unacked_write", end=True)
    around(kombu_redis.QoS, "ack", "ack", end=True)
    around(redis_sync.Pipeline, "execute", "pipeline", end=True)
    around_async(redis_async.Pipeline, "execute", "async_pipeline")
    around_async(redis_async.Redis, "xread", "async_xread")

    build_strategy = strategy.default

    def default(*args: Any, **kwargs: Any) -> Any:
        handler = build_strategy(*args, **kwargs)

        def task_message_handler(*a: Any, **k: Any) -> Any:
            mark("strategy")
            try:
                return handler(*a, **k)
            finally:
                mark("strategy:end")

        return task_message_handler

    strategy.default = default

    apply_target = pool_base.apply_target

    def traced_apply_target(*args: Any, **kwargs: Any) -> Any:
        mark("thread_start")
        return apply_target(*args, **kwargs)

    pool_thread.apply_target = traced_apply_target  # the threads pool submits this to its executor

    fast_trace_task = trace.fast_trace_task

    def traced_fast_trace_task(*args: Any, **kwargs: Any) -> Any:
        mark("tracer")
        return fast_trace_task(*args, **kwargs)

    # prefork pickles the tracer by reference: the replacement must be findable under the same name
    traced_fast_trace_task.__name__ = traced_fast_trace_task.__qualname__ = "fast_trace_task"
    traced_fast_trace_task.__module__ = "celery.app.trace"
    trace.fast_trace_task = traced_fast_trace_task
    request.fast_trace_task = traced_fast_trace_task

    try:
        import uvicorn.protocols.http.httptools_impl as httptools_impl
    except ImportError:  # a worker without the API's extras
        return
    around(httptools_impl.HttpToolsProtocol, "data_received", "http_request")


if _DIR:
    _install(_DIR)
