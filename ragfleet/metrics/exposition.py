"""What `/metrics` shows (merged multiprocess files, or this process's registry, plus scrape-time
collectors), and the ways to serve it: a response body, an ASGI app, a worker's HTTP thread."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from prometheus_client import start_http_server
from prometheus_client.exposition import choose_encoder, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from ragfleet.metrics.registry import built_registry, extra_collectors, multiproc_dir

if TYPE_CHECKING:
    from collections.abc import Callable
    from wsgiref.simple_server import WSGIServer


class _Exposition(Collector):
    """What `/metrics` shows: merged multiprocess files (or this process's registry) plus extras."""

    def collect(self) -> Iterator[Metric]:
        directory = multiproc_dir()
        if directory is not None:
            merged = MultiProcessCollector(None, path=str(directory))  # type: ignore[no-untyped-call]
            yield from merged.collect()  # type: ignore[no-untyped-call]
        else:
            yield from built_registry().collect()
        for collector in extra_collectors():
            yield from collector.collect()


EXPOSITION: Final = _Exposition()


def render_latest(accept: str | None = None) -> tuple[bytes, str]:
    """Body and Content-Type for a `/metrics` response (text format unless OpenMetrics is asked for)."""
    encoder: Callable[[Collector], bytes]
    encoder, content_type = choose_encoder(accept or "")
    if encoder is generate_latest:
        return generate_latest(EXPOSITION), content_type
    return encoder(EXPOSITION), content_type


def metrics_app() -> Any:
    """An ASGI app serving `/metrics` (mount it in FastAPI: `app.mount("/metrics", metrics_app())`)."""
    from prometheus_client import make_asgi_app

    return make_asgi_app(EXPOSITION)


@dataclass(frozen=True, slots=True)
class MetricsServer:
    port: int
    server: WSGIServer
    thread: threading.Thread

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def start_worker_metrics_server(port: int, *, addr: str = "127.0.0.1") -> MetricsServer:
    """Serve `/metrics` from a daemon thread of a Celery *main* process (port 0 picks a free one).

    The main process of a prefork pool runs no tasks: call `configure_multiproc(dir, wipe=True)` first,
    so it serves what its children write.
    """
    server, thread = start_http_server(port, addr=addr, registry=EXPOSITION)
    return MetricsServer(port=int(server.server_port), server=server, thread=thread)
