"""The answer-cache key (ragfleet/cache.py), pure logic: what makes two questions share an answer.

A key that ignores something the answer depends on serves a wrong answer; a key that depends on
something the answer does not depend on only costs hit rate. Both directions are checked here.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from ragfleet.cache import answer_key, answer_key_for, normalize_question
from ragfleet.settings import Settings

BASE: dict[str, Any] = {
    "question": "What is Redis?",
    "tenant": "t1",
    "top_k": 5,
    "mode": "hybrid",
    "filters": {"lang": "en", "kind": "doc"},
    "index_version": 7,
    "generator": "extractive:",
}


@pytest.mark.parametrize(
    "variant",
    ["what is redis?", "  What   is\tRedis?\n", "WHAT IS REDIS?", "What is \uff32\uff45\uff44\uff49\uff53?"],
    ids=["case", "whitespace", "upper", "full-width (NFKC)"],
)
def test_case_unicode_form_and_whitespace_do_not_change_the_key(variant: str) -> None:
    assert normalize_question(variant) == normalize_question(BASE["question"])
    assert answer_key(**{**BASE, "question": variant}) == answer_key(**BASE)


def test_punctuation_changes_the_key_because_it_can_change_the_answer() -> None:
    assert answer_key(**{**BASE, "question": "What is Redis!"}) != answer_key(**BASE)
    assert answer_key(**{**BASE, "question": "What is Redis"}) != answer_key(**BASE)


@pytest.mark.parametrize(
    ("field", "other"),
    [
        ("tenant", "t2"),
        ("top_k", 6),
        ("mode", "fts"),
        ("filters", {"lang": "de", "kind": "doc"}),
        ("filters", {}),
        ("index_version", 8),
        ("generator", "openai:primary"),
    ],
)
def test_everything_the_answer_depends_on_is_in_the_key(field: str, other: Any) -> None:
    assert answer_key(**{**BASE, field: other}) != answer_key(**BASE)


def test_filter_order_does_not_change_the_key() -> None:
    assert answer_key(**{**BASE, "filters": {"kind": "doc", "lang": "en"}}) == answer_key(**BASE)


def test_the_key_of_a_query_uses_the_default_mode_and_the_generator_with_its_providers() -> None:
    s = Settings(search_mode="fts", generator="openai", llm_providers="a,b")
    payload = SimpleNamespace(question="What is Redis?", tenant="t1", top_k=5, mode=None, filters={})
    expected = answer_key(
        question="What is Redis?",
        tenant="t1",
        top_k=5,
        mode="fts",
        filters={},
        index_version=3,
        generator="openai:a,b",
    )
    assert answer_key_for(s, payload, 3) == expected
    # a provider list change is a different generator: its answers are not shared
    assert answer_key_for(s.model_copy(update={"llm_providers": "b"}), payload, 3) != expected
