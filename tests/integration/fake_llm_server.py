"""A real OpenAI-compatible HTTP server for tests: POST /v1/chat/completions, plain or SSE stream.

It runs `http.server` in a thread on a free loopback port, so the provider's real httpx client,
timeouts and error handling are exercised end to end. `mode` switches the behaviour between
requests: "ok", "500", "429", "400", "hang" (sleeps past any client timeout, then answers),
"cut" (streams two deltas, then drops the connection).
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that time out hang up mid-answer: that is the point of "hang"


class FakeLLM:
    def __init__(
        self,
        answer: str = "Aspirin lowers fever [1].",
        *,
        prompt_tokens: int = 120,
        completion_tokens: int = 8,
    ):
        self.mode = "ok"
        self.answer = answer
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = completion_tokens
        self.hang_s = 5.0
        self.requests: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._server = _QuietServer(("127.0.0.1", 0), self._handler())
        # shutdown() waits for the serve loop to look at its flag: every 0.5 s by default, which was
        # half a second of every test's teardown
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    @property
    def calls(self) -> int:
        with self._lock:
            return len(self.requests)

    def start(self) -> FakeLLM:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()  # releases hanging handlers
        self._server.shutdown()
        self._server.server_close()

    def _pieces(self) -> list[str]:
        words = self.answer.split(" ")
        return [w if i == 0 else " " + w for i, w in enumerate(words)]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # else header and body writes meet delayed ACKs: +40 ms a call

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _json(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                with fake._lock:
                    fake.requests.append(
                        {
                            "body": body,
                            "auth": self.headers.get("Authorization"),
                            "traceparent": self.headers.get("traceparent"),
                            "at": time.time(),
                        }
                    )
                mode = fake.mode
                if self.path != "/v1/chat/completions":
                    self._json(404, {"error": {"message": "not found"}})
                elif mode == "500":
                    self._json(500, {"error": {"message": "upstream exploded"}})
                elif mode == "429":
                    self._json(429, {"error": {"message": "slow down"}}, {"Retry-After": "0"})
                elif mode == "400":
                    self._json(400, {"error": {"message": "bad request: context too long"}})
                else:
                    if mode == "hang":
                        fake._stop.wait(fake.hang_s)
                    if body.get("stream"):
                        self._stream(body, cut=mode == "cut")
                    else:
                        self._complete(body)

            def _usage(self) -> dict[str, int]:
                return {
                    "prompt_tokens": fake.prompt_tokens,
                    "completion_tokens": fake.completion_tokens,
                    "total_tokens": fake.prompt_tokens + fake.completion_tokens,
                }

            def _complete(self, body: dict[str, Any]) -> None:
                self._json(
                    200,
                    {
                        "id": "chatcmpl-fake",
                        "object": "chat.completion",
                        "model": body.get("model"),
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": fake.answer},
                                "finish_reason": "stop",
                            }
                        ],
                        "usage": self._usage(),
                    },
                )

            def _stream(self, body: dict[str, Any], *, cut: bool) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True

                def event(data: dict[str, Any] | str) -> None:
                    payload = data if isinstance(data, str) else json.dumps(data)
                    self.wfile.write(f"data: {payload}\n\n".encode())
                    self.wfile.flush()

                self.wfile.write(b": keep-alive comment\n\n")
                for i, piece in enumerate(fake._pieces()):
                    if cut and i == 2:
                        return  # connection closes without finish_reason or [DONE]
                    event(
                        {
                            "id": "c",
                            "model": body.get("model"),
                            "choices": [{"index": 0, "delta": {"content": piece}}],
                        }
                    )
                event({"id": "c", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
                if (body.get("stream_options") or {}).get("include_usage"):
                    event({"id": "c", "choices": [], "usage": self._usage()})
                event("[DONE]")

        return Handler
