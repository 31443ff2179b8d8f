"""A chat provider for any OpenAI-compatible `/v1/chat/completions` endpoint (OpenAI, vLLM, Ollama,
llama.cpp server, LiteLLM proxy ...), over plain httpx.

Errors are classified here, once, because retries and the circuit breaker both depend on it:
timeouts, connection failures, 408, 429 and 5xx are the provider's trouble and are retryable; any
other 4xx is ours (a bad request, a bad key) and retrying it only burns quota.

`timeout_s` bounds the whole call, not just each socket read: a server that trickles a token every
second would otherwise hold a worker for minutes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from typing import Any

import httpx

from ragfleet import tracing
from ragfleet.schemas import Source, Usage

Message = dict[str, str]

SYSTEM_PROMPT = (
    "You answer questions using only the numbered sources provided. Cite every claim with the number "
    "of its source in square brackets, like [1] or [2][3]. Quote or paraphrase closely; do not add facts "
    "that are not in the sources. If the sources do not contain the answer, say so in one sentence."
)


class ProviderError(Exception):
    """A failed provider call. `retryable` says whether the same request may succeed later."""

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status = status
        self.retry_after = retry_after


def build_messages(
    question: str, sources: Sequence[Source], *, max_source_chars: int = 4_000
) -> list[Message]:
    """Sources numbered [1]..[n] with their `Source.n`, so the model's citations index `sources`."""
    blocks = []
    for src in sources:
        text = src.text if len(src.text) <= max_source_chars else src.text[:max_source_chars] + " ..."
        blocks.append(f"[{src.n}] {text.strip()}")
    user = (
        "Sources:\n\n" + "\n\n".join(blocks) + f"\n\nQuestion: {question.strip()}\n\nAnswer with citations:"
    )
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _status_error(response: httpx.Response) -> ProviderError:
    status = response.status_code
    try:
        detail = response.read().decode("utf-8", "replace")[:300]
    except httpx.HTTPError:
        detail = ""
    retryable = status in (408, 429) or status >= 500
    return ProviderError(
        f"HTTP {status}: {detail}".strip(),
        retryable=retryable,
        status=status,
        retry_after=_retry_after(response),
    )


class ChatStream(Iterator[str]):
    """Text deltas of a streamed completion; `usage` is filled once the stream is exhausted."""

    def __init__(self, deltas: Iterator[str]) -> None:
        self._deltas = deltas
        self.usage = Usage()

    def __iter__(self) -> ChatStream:
        return self

    def __next__(self) -> str:
        return next(self._deltas)


class OpenAICompatProvider:
    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout: float = 20.0,
        *,
        name: str = "openai",
        client: httpx.Client | None = None,
    ) -> None:
        self.name = name
        self.model = model
        self.timeout = timeout
        self.url = base_url.rstrip("/")
        self._url = self.url + "/chat/completions"
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = client or httpx.Client(timeout=httpx.Timeout(timeout))
        self._headers = headers

    def close(self) -> None:
        self._client.close()

    def _body(self, messages: Sequence[Message], stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "messages": list(messages), "temperature": 0}
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return body

    def _usage(self, data: dict[str, Any] | None) -> Usage:
        data = data or {}
        return Usage(
            prompt_tokens=int(data.get("prompt_tokens") or 0),
            completion_tokens=int(data.get("completion_tokens") or 0),
            provider=self.name,
            model=self.model,
        )

    def _lines(self, messages: Sequence[Message], stream: bool) -> Iterator[str]:
        """Response lines, with transport failures and the overall deadline mapped to ProviderError."""
        deadline = time.monotonic() + self.timeout
        try:
            headers = tracing.with_context(self._headers)  # the provider may join the trace
            with self._client.stream(
                "POST", self._url, json=self._body(messages, stream), headers=headers
            ) as response:
                if response.status_code != 200:
                    raise _status_error(response)
                for line in response.iter_lines():
                    if time.monotonic() > deadline:
                        raise ProviderError(
                            f"{self.name}: no complete answer within {self.timeout} s", retryable=True
                        )
                    yield line
        except httpx.TimeoutException as exc:
            raise ProviderError(f"{self.name}: timeout ({type(exc).__name__})", retryable=True) from exc
        except httpx.HTTPError as exc:  # connection refused/reset, protocol and decoding errors
            raise ProviderError(f"{self.name}: {type(exc).__name__}: {exc}", retryable=True) from exc

    def complete(self, messages: Sequence[Message]) -> tuple[str, Usage]:
        body = "\n".join(self._lines(messages, stream=False))
        try:
            data = json.loads(body)
            text = data["choices"][0]["message"]["content"] or ""
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise ProviderError(f"{self.name}: malformed completion: {body[:200]!r}", retryable=True) from exc
        return str(text), self._usage(data.get("usage"))

    def stream(self, messages: Sequence[Message]) -> ChatStream:
        """Server-sent events: `data: {json}` lines, ended by `data: [DONE]`."""
        result = ChatStream(iter(()))

        def deltas() -> Iterator[str]:
            finished = False
            for line in self._lines(messages, stream=True):
                if not line.startswith("data:"):
                    continue  # comments, event names, keep-alives
                payload = line[5:].strip()
                if payload == "[DONE]":
                    return
                try:
                    event = json.loads(payload)
                except ValueError as exc:
                    raise ProviderError(
                        f"{self.name}: malformed event {payload[:200]!r}", retryable=True
                    ) from exc
                if "error" in event:
                    raise ProviderError(f"{self.name}: stream error {event['error']!r}"[:300], retryable=True)
                if event.get("usage"):
                    result.usage = self._usage(event["usage"])
                for choice in event.get("choices") or []:
                    finished = finished or bool(choice.get("finish_reason"))
                    piece = (choice.get("delta") or {}).get("content")
                    if piece:
                        yield str(piece)
            if not finished:  # some servers omit [DONE]; a stream cut mid-answer has no finish_reason
                raise ProviderError(f"{self.name}: stream ended before the answer did", retryable=True)

        result._deltas = deltas()
        return result
