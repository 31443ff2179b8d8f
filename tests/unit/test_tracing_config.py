"""Tracing is off unless the standard OTEL_* variables ask for an exporter (ragfleet.tracing), and off
it adds nothing: no header on a message, no field on a log line."""

from __future__ import annotations

import pytest

from ragfleet import task_headers, tracing


@pytest.mark.parametrize(
    ("env", "on"),
    [
        ({}, False),
        ({"OTEL_SERVICE_NAME": "x"}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, False),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, False),
    ],
)
def test_tracing_is_requested_only_by_an_exporter_or_an_endpoint(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], on: bool
) -> None:
    for name in (
        "OTEL_SDK_DISABLED",
        "OTEL_TRACES_EXPORTER",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_SERVICE_NAME",
    ):
        monkeypatch.delenv(name, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert tracing.requested() is on


def test_off_it_adds_no_header_no_log_field_and_ignores_any_traceparent() -> None:
    assert not tracing.enabled()
    assert tracing.TRACEPARENT not in task_headers.for_publish({})
    own = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    assert task_headers.for_publish(own)["traceparent"] == own["traceparent"]  # passed on as given
    assert tracing.add_trace_ids(None, "info", {"event": "x"}) == {"event": "x"}
    assert tracing.extract(own) is None and tracing.current_traceparent() == ""
    with tracing.span("nothing") as s:
        assert s is None
