"""Pure ASGI middleware: request ids, request metrics and the body size limit.

Pure ASGI rather than `BaseHTTPMiddleware` so that long polls and large bodies are not buffered or
copied twice, and so that responses produced here (413) still get a request id and are counted.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import re
import time
import uuid
from collections.abc import Callable
from functools import lru_cache

from starlette.datastructures import MutableHeaders
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ragfleet.logs import bind_request_id, reset_request_id

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "x-request-id"
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")

Observer = Callable[[str, int, float], None]


@lru_cache(maxsize=1)
def metrics_observer() -> Observer | None:
    """`ragfleet.metrics.observe_request` if that module exists; metrics are optional, requests are not."""
    if importlib.util.find_spec("ragfleet.metrics") is None:
        return None
    try:
        module = importlib.import_module("ragfleet.metrics")
    except Exception:
        log.exception("ragfleet.metrics failed to import; request metrics disabled")
        return None
    observe: Observer | None = getattr(module, "observe_request", None)
    return observe


def request_id_from(scope: Scope) -> str:
    """A caller's id is kept only if it is short and plain: it ends up in logs, headers and payloads."""
    for name, value in scope.get("headers", []):
        if name == REQUEST_ID_HEADER.encode():
            candidate: str = value.decode("latin-1")
            if _SAFE_REQUEST_ID.match(candidate):
                return candidate
            break
    return uuid.uuid4().hex


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = request_id_from(scope)
        scope.setdefault("state", {})["request_id"] = rid
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = rid
            await send(message)

        # bound for this request's context: log lines and enqueued task headers carry it
        token = bind_request_id(rid)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            reset_request_id(token)
            observe = metrics_observer()
            if observe is not None:
                route = scope.get("route")
                name = str(getattr(route, "path", None) or "<unmatched>")
                try:
                    observe(name, status, time.perf_counter() - started)
                except Exception:
                    log.exception("observe_request failed")


class BodyLimitMiddleware:
    """Rejects bodies over `max_bytes` with 413, by Content-Length first and by bytes actually read."""

    def __init__(self, app: ASGIApp, max_bytes: int, uploads: dict[str, int] | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        # upload paths and their own limits: those bodies are streamed to the handler (which spools
        # files to disk), counted but never buffered here
        self.uploads = uploads or {}

    def _too_large(self, limit: int | None = None) -> JSONResponse:
        limit = self.max_bytes if limit is None else limit
        return JSONResponse({"detail": f"request body exceeds {limit} bytes"}, status_code=413)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        limit = self.uploads.get(scope.get("path", ""), self.max_bytes)
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > limit:
                    await self._too_large(limit)(scope, receive, send)
                    return
        if scope.get("path", "") in self.uploads:
            await self._stream_counted(scope, receive, send, limit)
            return
        # Read the body here, counting, so chunked uploads without Content-Length are bounded too;
        # the handler would buffer it anyway to parse JSON.
        chunks: list[bytes] = []
        size = 0
        more = True
        disconnected: Message | None = None
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                disconnected = message
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._too_large()(scope, receive, send)
                return
            chunks.append(chunk)
            more = bool(message.get("more_body", False))
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                if disconnected is not None:
                    return disconnected
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _stream_counted(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        """Pass the body through, counting; past `limit` the handler's read fails and the client gets
        a 413 (the handler reads the whole body before it answers, so nothing was sent yet)."""
        size = 0
        started = False

        async def counted() -> Message:
            nonlocal size
            message = await receive()
            size += len(message.get("body", b""))
            if size > limit:
                raise _BodyTooLargeError
            return message

        async def tracking(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, tracking)
        except _BodyTooLargeError:
            if started:
                raise
            await self._too_large(limit)(scope, receive, send)


class _BodyTooLargeError(Exception):
    """Raised from `receive` inside the app; only `BodyLimitMiddleware` catches it."""
