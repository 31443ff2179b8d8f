"""A real OTLP/HTTP trace receiver on loopback, for the tracing tests.

What a collector does with `POST /v1/traces`: decode the protobuf `ExportTraceServiceRequest`
(opentelemetry-proto, the same definitions the exporter encodes with; gzip if the exporter
compresses) and answer an `ExportTraceServiceResponse`. Spans are kept flat, with their resource's
attributes, so a test can rebuild a trace across processes.
"""

from __future__ import annotations

import gzip
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue


@dataclass(frozen=True)
class ReceivedSpan:
    trace_id: str
    span_id: str
    parent_span_id: str  # "" for a root span
    name: str
    kind: int  # opentelemetry.proto.trace.v1.trace_pb2.Span.SpanKind
    attributes: dict[str, Any]
    resource: dict[str, Any]
    links: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)  # trace, span, attrs
    status_code: int = 0

    @property
    def service(self) -> str:
        return str(self.resource.get("service.name", ""))


def _value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    return getattr(v, kind) if kind else None


def _attrs(kvs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in kvs}


class OtlpReceiver:
    def __init__(self, port: int = 0) -> None:
        self.spans: list[ReceivedSpan] = []
        self.requests = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    @property
    def endpoint(self) -> str:
        """`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (the full URL, path included)."""
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1/traces"

    def start(self) -> OtlpReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _add(self, body: bytes) -> None:
        req = ExportTraceServiceRequest()
        req.ParseFromString(body)
        got = []
        for rs in req.resource_spans:
            resource = _attrs(rs.resource.attributes)
            for ss in rs.scope_spans:
                for s in ss.spans:
                    got.append(
                        ReceivedSpan(
                            trace_id=s.trace_id.hex(),
                            span_id=s.span_id.hex(),
                            parent_span_id=s.parent_span_id.hex(),
                            name=s.name,
                            kind=int(s.kind),
                            attributes=_attrs(s.attributes),
                            resource=resource,
                            links=[
                                (lk.trace_id.hex(), lk.span_id.hex(), _attrs(lk.attributes)) for lk in s.links
                            ],
                            status_code=int(s.status.code),
                        )
                    )
        with self._lock:
            self.spans.extend(got)
            self.requests += 1

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path != "/v1/traces":
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                receiver._add(body)
                out = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

        return Handler

    # --- queries -------------------------------------------------------------------------------------

    def snapshot(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self.spans)

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        return [s for s in self.snapshot() if s.trace_id == trace_id]

    def find(self, name: str | None = None, **attrs: Any) -> list[ReceivedSpan]:
        return [
            s
            for s in self.snapshot()
            if (name is None or s.name == name) and all(s.attributes.get(k) == v for k, v in attrs.items())
        ]

    def wait_for(self, name: str | None = None, timeout: float = 20.0, **attrs: Any) -> ReceivedSpan:
        """The first span named `name` with these attributes, once some process has exported it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.find(name, **attrs)
            if found:
                return found[0]
            time.sleep(0.05)
        names = sorted({(s.service, s.name) for s in self.snapshot()})
        raise TimeoutError(f"no span {name!r} with {attrs} within {timeout} s; received: {names}")
