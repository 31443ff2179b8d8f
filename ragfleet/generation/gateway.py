"""The LLM gateway: an ordered chain of OpenAI-compatible providers, each behind retries and a
fleet-wide circuit breaker, with the extractive answerer as the floor that never fails.

Configuration (all through Settings, i.e. `RAGFLEET_*` environment variables):

- `RAGFLEET_GENERATOR=extractive` (default) answers extractively and never calls an LLM, whatever
  else is set: the one switch that stops LLM spend.
- `RAGFLEET_GENERATOR=openai` uses the chain `RAGFLEET_LLM_PROVIDERS=primary,backup` (fallback
  order). Each name takes its settings from `RAGFLEET_LLM_PROVIDER_CONFIG`, a JSON object
  `{"primary": {"base_url": "https://...", "model": "...", "api_key": "...", "timeout_s": 10,
  "max_retries": 1}, "backup": {...}}`; any field left out falls back to `RAGFLEET_LLM_BASE_URL`,
  `_LLM_MODEL`, `_LLM_API_KEY`, `_LLM_TIMEOUT_S`, `_LLM_MAX_RETRIES`. With `LLM_PROVIDERS` empty and
  `LLM_BASE_URL` set, the chain is one provider named "default". No provider → extractive.
- Breakers: `RAGFLEET_LLM_BREAKER_FAIL_MAX` consecutive failed attempts open a provider's breaker
  for `RAGFLEET_LLM_BREAKER_RESET_S` seconds, in every process (state in Redis).
- Cost: `RAGFLEET_LLM_PRICE_TABLE` "model=prompt_usd_per_1k:completion_usd_per_1k,...".

Failure policy: a retryable error (timeout, connection, 429, 5xx) is retried with jittered backoff
on the same provider, then the next provider is tried; a non-retryable one (400, 401, ...) skips to
the next provider at once and does not count against the breaker (it is about the request, not the
provider's health). When the chain is exhausted the answer is extractive with `degraded=True`.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Sequence
from typing import Any

import pybreaker
import redis
from pydantic import BaseModel, Field, SecretStr, TypeAdapter

from ragfleet import resilience, tracing
from ragfleet.generation.extractive import (
    NO_SOURCES_ANSWER,
    answer_from_passages,
    best_quote,
    split_sentences,
)
from ragfleet.generation.openai_compat import Message, OpenAICompatProvider, ProviderError, build_messages
from ragfleet.schemas import Quote, Source, Usage
from ragfleet.settings import Settings

log = logging.getLogger(__name__)

_CITATION = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")


class ProviderSpec(BaseModel):
    name: str
    base_url: str
    model: str
    api_key: SecretStr | None = None
    timeout_s: float
    max_retries: int


class _ProviderOverrides(BaseModel):
    base_url: str | None = None
    model: str | None = None
    api_key: SecretStr | None = None
    timeout_s: float | None = None
    max_retries: int | None = None


class GenerationOutcome(BaseModel):
    answer: str
    quotes: list[Quote] = Field(default_factory=list)
    usage: Usage = Field(default_factory=Usage)
    degraded: bool = False
    provider: str = "extractive"
    errors: dict[str, str] = Field(
        default_factory=dict, description="Last error of each provider that failed."
    )


def provider_specs(settings: Settings) -> list[ProviderSpec]:
    """The configured chain, in fallback order (empty: extractive only)."""
    if settings.generator == "extractive":
        return []
    names = [n.strip() for n in settings.llm_providers.split(",") if n.strip()]
    if not names and settings.llm_base_url:
        names = ["default"]
    raw = settings.llm_provider_config.get_secret_value() if settings.llm_provider_config else "{}"
    overrides = TypeAdapter(dict[str, _ProviderOverrides]).validate_json(raw)
    specs = []
    for name in names:
        o = overrides.get(name, _ProviderOverrides())
        base_url = o.base_url or settings.llm_base_url
        if not base_url:
            raise ValueError(
                f"LLM provider {name!r} has no base_url (RAGFLEET_LLM_PROVIDER_CONFIG or _LLM_BASE_URL)"
            )
        specs.append(
            ProviderSpec(
                name=name,
                base_url=base_url,
                model=o.model or settings.llm_model,
                api_key=o.api_key or settings.llm_api_key,
                timeout_s=o.timeout_s if o.timeout_s is not None else settings.llm_timeout_s,
                max_retries=o.max_retries if o.max_retries is not None else settings.llm_max_retries,
            )
        )
    return specs


def parse_price_table(table: str) -> dict[str, tuple[float, float]]:
    prices: dict[str, tuple[float, float]] = {}
    for item in table.split(","):
        model, sep, pair = item.strip().rpartition("=")
        prompt, sep2, completion = pair.partition(":")
        if sep and sep2:
            prices[model.strip()] = (float(prompt), float(completion))
    return prices


def quotes_for_answer(answer: str, sources: Sequence[Source]) -> list[Quote]:
    """Back each citation [n] of an LLM answer with the sentence of source n closest to the
    answer sentences that cite it; citations of sources that do not exist are dropped."""
    by_n = {s.n: s for s in sources}
    cited: dict[int, list[str]] = {}
    for sentence in split_sentences(answer):
        for group in _CITATION.findall(sentence):
            for num in group.split(","):
                n = int(num)
                if n in by_n:
                    cited.setdefault(n, []).append(_CITATION.sub(" ", sentence))
    quotes = []
    for n, claims in cited.items():
        quote = best_quote(" ".join(claims), by_n[n])
        if quote is not None:
            quotes.append(quote)
    return quotes


class LLMGateway:
    """One per worker process; safe to share between threads."""

    def __init__(self, settings: Settings, redis_bytes_client: redis.Redis) -> None:
        self.settings = settings
        self.specs = provider_specs(settings)
        self.prices = parse_price_table(settings.llm_price_table)
        self._redis = redis_bytes_client
        self._providers = {
            s.name: OpenAICompatProvider(
                s.base_url,
                s.model,
                s.api_key.get_secret_value() if s.api_key else None,
                s.timeout_s,
                name=s.name,
            )
            for s in self.specs
        }
        self._local = threading.local()

    @property
    def in_process(self) -> bool:
        """No provider to call: every answer is the extractive one, written here in ~1 ms, so there
        is no paid call to spare a cancelled job and nothing long-running to show in its record."""
        return not self.specs

    def close(self) -> None:
        for provider in self._providers.values():
            provider.close()

    def breaker(self, name: str) -> pybreaker.CircuitBreaker:
        """This thread's breaker object for `name` (the state behind it is fleet-wide)."""
        breakers: dict[str, pybreaker.CircuitBreaker] = self._local.__dict__.setdefault("breakers", {})
        if name not in breakers:
            breakers[name] = resilience.make_breaker(
                self._redis,
                self.settings,
                name,
                exclude=[lambda e: isinstance(e, ProviderError) and not e.retryable],
            )
        return breakers[name]

    def _cost(self, usage: Usage) -> float:
        prompt, completion = self.prices.get(usage.model or "", (0.0, 0.0))
        return round((usage.prompt_tokens * prompt + usage.completion_tokens * completion) / 1000.0, 8)

    def _attempt(
        self, provider: OpenAICompatProvider, messages: list[Message], on_chunk: Callable[[str], None] | None
    ) -> tuple[str, Usage]:
        """One HTTP call to the provider: a client span (ragfleet.tracing) whose `traceparent` the
        provider's request carries."""
        attrs = {tracing.PROVIDER: provider.name, tracing.MODEL: provider.model, "url.full": provider.url}
        with tracing.span(f"chat {provider.model}", kind=tracing.SpanKind.CLIENT, **attrs) as span:
            if on_chunk is None:
                text, usage = provider.complete(messages)
            else:
                stream = provider.stream(messages)
                pieces = []
                for piece in stream:
                    pieces.append(piece)
                    on_chunk(piece)
                text, usage = "".join(pieces), stream.usage
            if span is not None:
                span.set_attributes(
                    {
                        tracing.INPUT_TOKENS: usage.prompt_tokens,
                        tracing.OUTPUT_TOKENS: usage.completion_tokens,
                        tracing.COST: self._cost(usage),
                    }
                )
            return text, usage

    def _call(
        self, spec: ProviderSpec, messages: list[Message], on_chunk: Callable[[str], None] | None
    ) -> tuple[str, Usage]:
        provider = self._providers[spec.name]
        try:
            breaker: pybreaker.CircuitBreaker | None = self.breaker(spec.name)
        except redis.RedisError:  # creating the shared state needs Redis; calling the LLM does not
            log.warning("breaker state for %s unavailable (Redis); calling unguarded", spec.name)
            breaker = None
        last: list[BaseException] = []
        attempts = [0]
        if tracing.enabled():  # reading the fleet-wide state is a Redis round trip: only when traced
            state = breaker.current_state if breaker is not None else "unavailable"
            tracing.set_attrs(**{tracing.BREAKER_STATE: f"{spec.name}:{state}"})

        def guarded() -> tuple[str, Usage]:
            def attempt() -> tuple[str, Usage]:
                attempts[0] += 1
                tracing.set_attrs(**{f"ragfleet.llm.retries.{spec.name}": attempts[0] - 1})
                try:
                    return self._attempt(provider, messages, on_chunk)
                except ProviderError as exc:
                    last.append(exc)
                    raise

            if breaker is None:
                return attempt()
            try:
                return breaker.call(attempt)
            except resilience.CircuitBreakerError as exc:
                cause = f" after {last[-1]}" if last else ""
                raise resilience.CircuitBreakerError(f"{spec.name}: circuit open{cause}") from exc

        return resilience.call_with_retries(
            guarded,
            max_retries=spec.max_retries,
            is_retryable=lambda e: isinstance(e, ProviderError) and e.retryable,
            base_s=self.settings.llm_retry_base_s,
            retry_after=lambda e: e.retry_after if isinstance(e, ProviderError) else None,
        )

    def _extractive(
        self, question: str, sources: list[Source], sink: Callable[[str], None] | None, **fields: Any
    ) -> GenerationOutcome:
        answer, quotes = answer_from_passages(question, sources, n_sentences=self.settings.answer_sentences)
        if sink is not None:
            # The extractive answer exists whole in about a millisecond: one chunk, one Redis write.
            # A chunk per quote would cost a round trip each and reach the reader at the same moment.
            sink(answer)
        return GenerationOutcome(answer=answer, quotes=quotes, **fields)

    def generate(
        self,
        question: str,
        sources: list[Source],
        *,
        on_chunk: Callable[[str], None] | None = None,
        on_whole: Callable[[str], None] | None = None,
    ) -> GenerationOutcome:
        """Answer `question` from `sources`, citing them as [n].

        `on_chunk` receives the answer as it is produced. If a provider fails mid-stream, the pieces
        it already sent are not taken back and the next provider's (or the extractive) answer
        follows: `GenerationOutcome.answer` is the authoritative text. An answer that exists whole
        at once (extractive, or no sources) goes to `on_whole` if given, else to `on_chunk` as one
        chunk: a caller can write it with the job's finish instead of in a round trip of its own.
        """
        whole = on_whole or on_chunk
        if not self.specs:
            return self._extractive(question, sources, whole)
        if not sources:  # an LLM without sources can only make things up
            if whole is not None:
                whole(NO_SOURCES_ANSWER)
            return GenerationOutcome(answer=NO_SOURCES_ANSWER)
        messages = build_messages(question, sources)
        errors: dict[str, str] = {}
        for spec in self.specs:
            try:
                text, usage = self._call(spec, messages, on_chunk)
            except (ProviderError, resilience.CircuitBreakerError) as exc:
                errors[spec.name] = str(exc)[:500]
                log.warning("LLM provider %s failed: %s", spec.name, exc)
                continue
            usage.cost_usd = self._cost(usage)
            return GenerationOutcome(
                answer=text.strip(),
                quotes=quotes_for_answer(text, sources),
                usage=usage,
                provider=spec.name,
                errors=errors,
            )
        return self._extractive(question, sources, whole, degraded=True, errors=errors)
