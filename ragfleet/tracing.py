"""OpenTelemetry tracing: one trace per job, across the API, the broker and every pool.

Configured only by the standard `OTEL_*` variables, read by the OpenTelemetry SDK itself (the one
place outside `ragfleet.settings` where the environment is read: the SDK reads it, and operators
already know these names). Off unless an exporter is asked for: `OTEL_TRACES_EXPORTER=otlp` (or
`console`), or an OTLP endpoint (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`);
`OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none` keep it off. Off, every helper here returns
after one boolean test: no span objects, no context lookups, no header (bench/bench_ab.py measures it).

Set up once per process, where that process's threads will run spans (`setup`): the API in its
lifespan (each uvicorn worker process), a solo or threads worker once when it is set up, a prefork
child after the fork (`worker_process_init`; a provider made before the fork would own an export
thread the child does not have). workers/hooks/tracing.py does the worker part.

Trace context travels as W3C `traceparent` (`OTEL_PROPAGATORS`, default tracecontext and baggage):
in the Celery message headers of every enqueue (ragfleet.task_headers: the API's MULTI, the producer
by name, the retrieval stage's hand-off, a worker's own publishes), in each job's Redis Stream
entries (ragfleet.events), in the job record (so a coalesced follower can link to its leader), in a
cached answer (so a cache hit links to the run that produced it), and on the LLM provider's HTTP
request. A `traceparent` that does not parse is ignored: a new trace starts, nothing fails.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, MutableMapping
from typing import Any, Final

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, Status, StatusCode
from opentelemetry.trace import SpanKind as SpanKind  # re-exported: callers need no opentelemetry import
from structlog.typing import EventDict, WrappedLogger

TRACEPARENT: Final = "traceparent"
TRACESTATE: Final = "tracestate"
TRACER_NAME: Final = "ragfleet"

# attribute names: ours under `ragfleet.`, the LLM call's after OpenTelemetry's gen_ai conventions
JOB_ID: Final = "ragfleet.job_id"
TENANT: Final = "ragfleet.tenant"
INDEX_VERSION: Final = "ragfleet.index_version"
CACHE_LAYER: Final = "ragfleet.cache.layer"
COALESCE_ROLE: Final = "ragfleet.coalesce.role"
RETRY_COUNT: Final = "ragfleet.retry_count"
ERROR_CODE: Final = "ragfleet.error_code"
BREAKER_STATE: Final = "ragfleet.breaker.state"
PROVIDER: Final = "ragfleet.llm.provider"  # the provider's name in RAGFLEET_LLM_PROVIDERS
MODEL: Final = "gen_ai.request.model"
INPUT_TOKENS: Final = "gen_ai.usage.input_tokens"
OUTPUT_TOKENS: Final = "gen_ai.usage.output_tokens"
COST: Final = "ragfleet.llm.cost_usd"

_enabled = False
_setup_pid: int | None = None
_provider: Any = None  # the SDK's TracerProvider, when this process set one up


def requested() -> bool:
    """Whether the environment asks for traces (module docstring: off by default)."""
    env = os.environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporters == "none":
        return False
    return bool(
        exporters or env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def enabled() -> bool:
    return _enabled


def setup(role: str) -> bool:
    """Install this process's tracer provider, if the environment asks for traces; idempotent per
    process (a forked child sets up its own). `role` names the process in the resource
    (`ragfleet.role`, and `service.name` = `ragfleet-<role>` unless `OTEL_SERVICE_NAME` or
    `OTEL_RESOURCE_ATTRIBUTES` name the service). Returns whether tracing is on."""
    global _enabled, _setup_pid, _provider
    pid = os.getpid()
    if _setup_pid == pid:
        return _enabled
    _setup_pid, _enabled = pid, False
    if not requested():
        return False
    from opentelemetry.sdk.resources import OTELResourceDetector, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

    attrs: dict[str, Any] = {"ragfleet.role": role, "process.pid": pid}
    if "service.name" not in OTELResourceDetector().detect().attributes:
        attrs["service.name"] = f"ragfleet-{role}"
    provider = TracerProvider(resource=Resource.create(attrs))
    names = os.environ.get("OTEL_TRACES_EXPORTER", "otlp") or "otlp"
    for name in {n.strip().lower() for n in names.split(",") if n.strip()}:
        exporter: SpanExporter
        if name == "console":
            exporter = ConsoleSpanExporter()
        elif name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()  # endpoint, headers, timeout, compression: OTEL_EXPORTER_OTLP_*
        else:
            raise ValueError(f"OTEL_TRACES_EXPORTER={name!r}: ragfleet exports otlp (HTTP) or console")
        provider.add_span_processor(BatchSpanProcessor(exporter))  # OTEL_BSP_* tune the batching
    trace.set_tracer_provider(provider)
    _provider, _enabled = provider, True
    return True


def shutdown() -> None:
    """Flush and stop this process's exporter (a worker or child going away, the API's shutdown)."""
    global _enabled
    if _provider is not None and _setup_pid == os.getpid():
        _enabled = False
        _provider.shutdown()


def tracer() -> trace.Tracer:
    return trace.get_tracer(TRACER_NAME)


# --- context across processes ------------------------------------------------------------------------


def inject(carrier: MutableMapping[str, Any]) -> None:
    """Add the current trace context (`traceparent`, `tracestate`) unless `carrier` has one: a
    producer's own `traceparent` is kept, so its trace goes on through ragfleet."""
    if _enabled and not carrier.get(TRACEPARENT):
        propagate.inject(carrier)


def with_context(headers: dict[str, str]) -> dict[str, str]:
    """`headers` plus the current trace context, for an outgoing HTTP request (the LLM provider's);
    `headers` itself, untouched, when tracing is off."""
    if not _enabled:
        return headers
    out = dict(headers)
    propagate.inject(out)
    return out


def current_traceparent() -> str:
    """The current span's `traceparent`, or "" (tracing off, or no span)."""
    if not _enabled:
        return ""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get(TRACEPARENT, "")


def record_fields() -> dict[str, str] | None:
    """The job record's `traceparent` field (the span that created the job), or None when off."""
    tp = current_traceparent()
    return {TRACEPARENT: tp} if tp else None


def extract(carrier: Mapping[str, Any]) -> Context | None:
    """The trace context a message, record or stream entry carries; None when tracing is off or
    there is none worth using (an unparsable `traceparent` is ignored, never an error)."""
    if not _enabled:
        return None
    clean = {k: v for k in (TRACEPARENT, TRACESTATE) if isinstance(v := carrier.get(k), str) and v}
    if not clean:
        return None
    ctx = propagate.extract(clean)
    return ctx if trace.get_current_span(ctx).get_span_context().is_valid else None


def span_context_of(traceparent: str | None) -> trace.SpanContext | None:
    """The span a `traceparent` names, for a link; None if it does not parse."""
    ctx = extract({TRACEPARENT: traceparent}) if traceparent else None
    return None if ctx is None else trace.get_current_span(ctx).get_span_context()


# --- spans -------------------------------------------------------------------------------------------


def start_span(
    name: str, *, parent: Context | None = None, kind: SpanKind = SpanKind.INTERNAL, **attrs: Any
) -> tuple[Span, object] | None:
    """Start a span, make it current, return (span, token) for `end_span`; None when off. For spans
    that begin and end in different callbacks (Celery's task_prerun / task_postrun)."""
    if not _enabled:
        return None
    span = tracer().start_span(name, context=parent, kind=kind, attributes=_clean(attrs))
    token = otel_context.attach(trace.set_span_in_context(span, parent))
    return span, token


def end_span(started: tuple[Span, object] | None, *, error: str | None = None) -> None:
    if started is None:
        return
    span, token = started
    if error:
        span.set_attribute(ERROR_CODE, error)
        span.set_status(Status(StatusCode.ERROR, error))
    span.end()
    with contextlib.suppress(ValueError):  # a token from another context: nothing to restore
        otel_context.detach(token)  # type: ignore[arg-type]


_OFF: contextlib.AbstractContextManager[None] = contextlib.nullcontext()  # reusable: no state


def span(
    name: str, *, kind: SpanKind = SpanKind.INTERNAL, **attrs: Any
) -> contextlib.AbstractContextManager[Span | None]:
    """A child span of the current one around a `with` block (it yields None when off: one shared
    no-op context, no generator); an exception marks the span as failed."""
    if not _enabled:
        return _OFF
    return tracer().start_as_current_span(name, kind=kind, attributes=_clean(attrs))


def set_attrs(**attrs: Any) -> None:
    """Attributes on the current span, e.g. `set_attrs(**{tracing.JOB_ID: job_id})` (the names are
    dotted: the constants above); None values are skipped."""
    if _enabled:
        trace.get_current_span().set_attributes(_clean(attrs))


def link(traceparent: str | None, relation: str) -> None:
    """Link the current span to the span `traceparent` names (the leader a coalesced follower waits
    for, the run whose answer a cache hit returns); `relation` says which. Unparsable: no link."""
    if not _enabled:
        return
    target = span_context_of(traceparent)
    if target is not None:
        trace.get_current_span().add_link(target, {"ragfleet.link": relation})


def _clean(attrs: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in attrs.items() if v is not None}


# --- logs --------------------------------------------------------------------------------------------


def add_trace_ids(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """structlog processor: the current span's `trace_id` and `span_id` (hex, as trace backends show
    them) on every log line written inside a span."""
    if _enabled:
        ctx = trace.get_current_span().get_span_context()
        if ctx.is_valid:
            event_dict.setdefault("trace_id", format(ctx.trace_id, "032x"))
            event_dict.setdefault("span_id", format(ctx.span_id, "016x"))
    return event_dict
