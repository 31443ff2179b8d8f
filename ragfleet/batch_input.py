"""What a batch is made of: questions from a JSON body, a JSONL upload or a by-name producer,
validated whole before anything is stored.

What must stay true: a batch is accepted whole or rejected with the reason of each bad question
(at most 50 listed), checked with the worker's own schema (`QueryPayload`) and the API's limits, so
that an accepted batch holds no question the fleet would fail as invalid. Light: the API and the
client import it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import ValidationError

from ragfleet.schemas import QueryPayload
from ragfleet.settings import Settings


class BatchError(ValueError):
    """A batch request that cannot be accepted; `errors` are pydantic-style entries per question."""

    def __init__(self, message: str, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or []


def normalize_questions(
    items: Sequence[Any],
    *,
    settings: Settings,
    tenant: str,
    defaults: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Validate every question with the worker's own schema and the API's limits, before anything
    is stored: a batch is accepted whole or rejected with the reason of each bad question."""
    if not items:
        raise BatchError("a batch needs at least one question")
    if len(items) > settings.max_batch_questions:
        raise BatchError(f"{len(items)} questions; at most {settings.max_batch_questions} per batch")
    base = {k: v for k, v in (defaults or {}).items() if v is not None}
    allowed = {"question", "top_k", "filters", "mode", "use_cache", "id"}
    out: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        raw: dict[str, Any] = {"question": item} if isinstance(item, str) else item
        if not isinstance(raw, dict):
            errors.append({"loc": [i], "msg": "a question is a string or an object", "type": "type_error"})
            continue
        unknown = sorted(set(raw) - allowed)
        if unknown:
            errors.append({"loc": [i], "msg": f"unknown fields {unknown}", "type": "extra_forbidden"})
            continue
        fields = {**base, **{k: v for k, v in raw.items() if k != "id"}}
        try:
            p = QueryPayload.model_validate({**fields, "tenant": tenant})
        except ValidationError as exc:
            for e in exc.errors(include_url=False, include_input=False):
                errors.append({"loc": [i, *e["loc"]], "msg": e["msg"], "type": e["type"]})
            continue
        if len(p.question) > settings.max_question_chars:
            errors.append({"loc": [i, "question"], "msg": "question too long", "type": "string_too_long"})
            continue
        if p.top_k > settings.max_top_k:
            errors.append({"loc": [i, "top_k"], "msg": f"top_k above {settings.max_top_k}", "type": "le"})
            continue
        entry = p.model_dump(
            mode="json", exclude_none=True, exclude={"job_id", "batch_id", "stream", "tenant"}
        )
        if "id" in raw:
            entry["id"] = raw["id"]
        out.append(entry)
        if len(errors) >= 50:
            break
    if errors:
        raise BatchError(f"{len(errors)} invalid questions (first 50 listed)", errors[:50])
    return out


def parse_jsonl(lines: Iterable[str | bytes]) -> list[Any]:
    """JSONL upload: one question per line, a JSON string or object; blank lines are skipped."""
    items: list[Any] = []
    for n, line in enumerate(lines, start=1):
        text = line.decode("utf-8") if isinstance(line, bytes) else line
        if not text.strip():
            continue
        try:
            items.append(json.loads(text))
        except json.JSONDecodeError as exc:
            raise BatchError(
                f"line {n}: not JSON ({exc.msg})", [{"loc": ["line", n], "msg": exc.msg, "type": "json"}]
            ) from exc
    return items
