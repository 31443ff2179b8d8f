"""ragfleet.logs: every line is JSON, and the request id bound in a context is on each of them.

No services: Celery hooks are exercised through Celery's own signal dispatch and eager `apply()`
(which fires task_prerun/task_postrun like a worker does). The cross-process path (API -> headers ->
worker -> next stage) is covered with a real worker in tests/integration/test_metrics.py.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery, signals

from ragfleet import logs, task_headers
from workers.hooks import request_id as request_id_hook


@pytest.fixture
def out() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    buf = io.StringIO()
    logs.configure_logging("DEBUG", process="unit", stream=buf, force=True)
    yield buf
    root.handlers = saved_handlers
    root.setLevel(saved_level)
    logging.captureWarnings(False)


def lines(buf: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buf.getvalue().splitlines() if line.strip()]


def test_structlog_lines_are_json_with_the_bound_request_id(out: io.StringIO) -> None:
    log = logs.get_logger("ragfleet.test")
    with logs.request_context("rid-123"):
        log.info("query received", top_k=5)
    (line,) = lines(out)
    assert line["event"] == "query received"
    assert line["request_id"] == "rid-123"
    assert line["top_k"] == 5
    assert line["level"] == "info"
    assert line["logger"] == "ragfleet.test"
    assert line["process"] == "unit"
    assert isinstance(line["pid"], int)
    assert line["timestamp"].endswith("Z")


def test_stdlib_logger_lines_are_json_with_the_request_id(out: io.StringIO) -> None:
    token = logs.bind_request_id("rid-std")
    try:
        logging.getLogger("celery.worker.strategy").warning("received %s from %s", "task", "queue")
        logging.getLogger("kombu").error("lost connection")
    finally:
        logs.reset_request_id(token)
    first, second = lines(out)
    assert first["event"] == "received task from queue"
    assert first["logger"] == "celery.worker.strategy"
    assert first["level"] == "warning"
    assert first["request_id"] == "rid-std"
    assert second["logger"] == "kombu"
    assert second["request_id"] == "rid-std"


def test_loggers_with_their_own_handlers_are_adopted(out: io.StringIO) -> None:
    """uvicorn and Celery attach handlers and stop propagation; configure_logging undoes that."""
    uvicorn = logging.getLogger("uvicorn.access")
    uvicorn.setLevel(logging.NOTSET)  # an earlier test's uvicorn.Config(log_level=...) may have raised it
    uvicorn.addHandler(logging.StreamHandler(io.StringIO()))
    uvicorn.propagate = False
    logs.configure_logging("DEBUG", process="unit", stream=out, force=True)
    uvicorn.info('127.0.0.1 - "GET /health" 200')
    (line,) = lines(out)
    assert line["logger"] == "uvicorn.access"


def test_exceptions_and_warnings_are_json_too(out: io.StringIO) -> None:
    log = logs.get_logger("ragfleet.test")
    try:
        raise RuntimeError("store down")
    except RuntimeError:
        log.exception("retrieval failed")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("deprecated knob", UserWarning, stacklevel=1)
    failure, warning = lines(out)
    assert failure["level"] == "error"
    assert "RuntimeError: store down" in failure["exception"]
    assert "deprecated knob" in warning["event"]


def test_no_request_id_outside_a_request(out: io.StringIO) -> None:
    assert logs.get_request_id() is None
    logs.get_logger().info("startup")
    (line,) = lines(out)
    assert "request_id" not in line


def test_log_fields_add_and_then_remove_job_fields(out: io.StringIO) -> None:
    log = logs.get_logger("ragfleet.test")
    with logs.log_fields(job_id="j1", task="ragfleet.query", queue="retrieval", tenant=None):
        log.info("inside")
    log.info("outside")
    inside, outside = lines(out)
    assert (inside["job_id"], inside["task"], inside["queue"]) == ("j1", "ragfleet.query", "retrieval")
    assert "tenant" not in inside
    assert "job_id" not in outside


def test_request_ids_do_not_leak_between_concurrent_requests(out: io.StringIO) -> None:
    log = logs.get_logger("ragfleet.test")

    async def handle(rid: str) -> None:
        with logs.request_context(rid):
            await asyncio.sleep(0.01)  # interleave with the other request
            log.info("handled", expected=rid)

    async def main() -> None:
        await asyncio.gather(handle("rid-a"), handle("rid-b"))

    asyncio.run(main())
    got = [line for line in lines(out) if line["event"] == "handled"]
    assert len(got) == 2
    assert all(line["request_id"] == line["expected"] for line in got)


def test_new_request_ids_are_unique_hex() -> None:
    ids = {logs.new_request_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


def test_configure_logging_is_once_per_process_unless_forced() -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        first, second = io.StringIO(), io.StringIO()
        logs.configure_logging("INFO", process="unit", stream=first, force=True)
        logs.configure_logging("INFO", process="other", stream=second)  # ignored: already configured
        logs.get_logger().info("once")
        assert json.loads(first.getvalue())["process"] == "unit"
        assert second.getvalue() == ""
    finally:
        root.handlers, _ = saved
        root.setLevel(saved[1])


# --- Celery hooks (workers/hooks/request_id.py) and the producer's own stamp ------------------------


@pytest.fixture
def app() -> Celery:
    request_id_hook.install()
    return Celery("rftest-logs", set_as_current=False)


def test_the_producer_stamps_the_request_id_once_the_process_turns_it_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The API publishes through ragfleet.producer, which connects no Celery signal: it adds the
    header itself, once `install_celery_request_id` turned the stamp on (the API does)."""
    monkeypatch.setattr(task_headers, "_stamp_request_id", False)
    monkeypatch.setattr(task_headers, "_stamp_enqueued_at", False)  # another test may have turned it on
    with logs.request_context("rid-off"):
        assert logs.REQUEST_ID_HEADER not in task_headers.for_publish({"x": 1})
    logs.install_celery_request_id()
    with logs.request_context("rid-on"):
        stamped = task_headers.for_publish({"x": 1})
        assert stamped == {"x": 1, logs.REQUEST_ID_HEADER: "rid-on"}
        explicit = task_headers.for_publish({logs.REQUEST_ID_HEADER: "rid-explicit"})
        assert explicit[logs.REQUEST_ID_HEADER] == "rid-explicit"  # a producer's explicit id wins
    assert logs.REQUEST_ID_HEADER not in task_headers.for_publish()  # none bound: none stamped


def test_publish_copies_the_current_request_id_into_message_headers(app: Celery) -> None:
    headers: dict[str, Any] = {"id": "j1"}
    with logs.request_context("rid-pub"):
        signals.before_task_publish.send(sender="ragfleet.query", body=((), {}, {}), headers=headers)
    assert headers[logs.REQUEST_ID_HEADER] == "rid-pub"

    explicit: dict[str, Any] = {logs.REQUEST_ID_HEADER: "rid-explicit"}
    with logs.request_context("rid-pub"):
        signals.before_task_publish.send(sender="ragfleet.query", body=((), {}, {}), headers=explicit)
    assert explicit[logs.REQUEST_ID_HEADER] == "rid-explicit"  # a producer's explicit id wins

    untouched: dict[str, Any] = {}
    signals.before_task_publish.send(sender="ragfleet.query", body=((), {}, {}), headers=untouched)
    assert logs.REQUEST_ID_HEADER not in untouched


def test_task_binds_the_request_id_from_headers_then_payload_and_clears_it(
    app: Celery, out: io.StringIO
) -> None:
    @app.task(name="rftest.echo")  # type: ignore[untyped-decorator]
    def echo(payload: dict[str, Any] | None = None) -> str | None:
        logs.get_logger("rftest").info("in task")
        return logs.get_request_id()

    from_header = echo.apply(
        kwargs={"payload": {"request_id": "rid-payload"}},
        headers={logs.REQUEST_ID_HEADER: "rid-header"},
        task_id="job-1",
    )
    assert from_header.get() == "rid-header"
    assert (
        echo.apply(kwargs={"payload": {"request_id": "rid-payload"}}, task_id="job-2").get() == "rid-payload"
    )
    assert echo.apply(kwargs={"payload": {}}, task_id="job-3").get() is None
    assert logs.get_request_id() is None  # postrun restored the caller's (empty) context

    in_task = [line for line in lines(out) if line["event"] == "in task"]
    assert [(line.get("request_id"), line["job_id"], line["task"]) for line in in_task] == [
        ("rid-header", "job-1", "rftest.echo"),
        ("rid-payload", "job-2", "rftest.echo"),
        (None, "job-3", "rftest.echo"),
    ]


def test_an_eager_task_restores_the_callers_request_id(app: Celery) -> None:
    @app.task(name="rftest.inner")  # type: ignore[untyped-decorator]
    def inner(payload: dict[str, Any] | None = None) -> str | None:
        return logs.get_request_id()

    with logs.request_context("rid-outer"):
        assert inner.apply(kwargs={"payload": {"request_id": "rid-inner"}}).get() == "rid-inner"
        assert logs.get_request_id() == "rid-outer"
