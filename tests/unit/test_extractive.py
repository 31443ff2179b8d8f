"""The extractive answerer: verbatim quotes, correct citations, sensible picks, and its speed."""

from __future__ import annotations

import re
import time

import pytest

from ragfleet.chunkers import DOC_CHARS
from ragfleet.chunking import chunk_text
from ragfleet.generation.extractive import (
    NO_SOURCES_ANSWER,
    answer_from_passages,
    candidate_sentences,
    passage_body,
    split_sentences,
)
from ragfleet.schemas import Source


def source(n: int, text: str, title: str | None = None, score: float = 1.0) -> Source:
    body = f"{title}\n{text}" if title else text
    return Source(
        n=n, doc_id=f"d{n}", chunk_id=f"d{n}:0", title=title, text=body, score=score, start=0, end=len(text)
    )


VACCINE = source(
    1,
    "Measles is a highly contagious viral disease. The MMR vaccine was given to 2,000 children in 2019. "
    "Two doses of the MMR vaccine are 97% effective at preventing measles. Side effects were mild.",
    title="Measles vaccination outcomes",
)
UNRELATED = source(
    2,
    "The stock market rose on Tuesday. Investors bought technology shares. Oil prices fell sharply.",
    title="Markets",
)


def test_quotes_are_exact_substrings_and_cite_their_source() -> None:
    sources = [VACCINE, UNRELATED]
    answer, quotes = answer_from_passages("How effective is the MMR vaccine against measles?", sources)

    assert len(quotes) == 3
    by_n = {s.n: s for s in sources}
    for q in quotes:
        assert q.text in passage_body(by_n[q.source])
        assert f"{q.text} [{q.source}]" in answer
    assert answer == " ".join(f"{q.text} [{q.source}]" for q in quotes)


def test_picks_the_obviously_relevant_sentence_first() -> None:
    _, quotes = answer_from_passages(
        "How effective is the MMR vaccine against measles?", [UNRELATED, VACCINE]
    )

    assert quotes[0].text == "Two doses of the MMR vaccine are 97% effective at preventing measles."
    assert quotes[0].source == 1


def test_never_quotes_the_title_line() -> None:
    _answer, quotes = answer_from_passages("measles vaccination outcomes", [VACCINE], n_sentences=10)

    assert all("Measles vaccination outcomes" not in q.text for q in quotes)
    assert len(quotes) == 4  # every sentence of the body, none of the title


def test_n_sentences_bounds_the_answer() -> None:
    _, one = answer_from_passages("measles vaccine", [VACCINE, UNRELATED], n_sentences=1)
    _, five = answer_from_passages("measles vaccine", [VACCINE, UNRELATED], n_sentences=5)

    assert len(one) == 1 and len(five) == 5
    assert five[0] == one[0]


def test_empty_sources_give_a_clear_no_sources_answer() -> None:
    answer, quotes = answer_from_passages("anything?", [])

    assert answer == NO_SOURCES_ANSWER and quotes == []
    assert "no sources" in answer.lower()


def test_unicode_text_is_quoted_verbatim() -> None:
    fr = source(
        1,
        "Le café est une boisson très populaire. Élevée en caféine, elle stimule le système nerveux. "
        "日本ではお茶が人気です。コーヒーも飲まれます。",
        title="Café",
    )
    _answer, quotes = answer_from_passages(
        "Quelle boisson stimule le système nerveux grâce à la caféine ?", [fr]
    )

    assert quotes[0].text == "Élevée en caféine, elle stimule le système nerveux."
    assert all(q.text in fr.text for q in quotes)
    assert "日本ではお茶が人気です。" in split_sentences(passage_body(fr))


def test_sentence_splitter_keeps_abbreviation_like_boundaries_and_decimals() -> None:
    text = (
        "Risk fell by 3.5 percent (95% CI 2.1 to 4.0). "
        "This was significant, p < 0.01. in lower case no split."
    )

    assert split_sentences(text) == [
        "Risk fell by 3.5 percent (95% CI 2.1 to 4.0).",
        "This was significant, p < 0.01. in lower case no split.",
    ]


def test_overlapping_chunks_do_not_repeat_a_sentence() -> None:
    doc = " ".join(f"Sentence number {i} talks about topic {i}." for i in range(40))
    chunks = chunk_text(doc, size=60, overlap=30, title="Doc")
    sources = [source(i + 1, c.text.split("\n", 1)[1], title="Doc") for i, c in enumerate(chunks[:3])]
    _, quotes = answer_from_passages("Which sentence talks about topic 7?", sources, n_sentences=5)

    texts = [q.text for q in quotes]
    assert len(texts) == len(set(texts))
    assert texts[0] == "Sentence number 7 talks about topic 7."


def test_chunk_text_from_chunking_is_handled() -> None:
    doc = "Insulin regulates blood glucose. It is produced by beta cells in the pancreas."
    chunk = chunk_text(doc, size=200, overlap=40, title="Insulin")[0]
    src = Source(
        n=4, doc_id="d", chunk_id="d:0", title="Insulin", text=chunk.text, score=0.5, start=0, end=len(doc)
    )

    _, quotes = answer_from_passages("Which cells produce insulin?", [src], n_sentences=1)

    assert quotes[0].text == "It is produced by beta cells in the pancreas." and quotes[0].source == 4


def test_citations_use_source_n_not_position() -> None:
    a = source(7, "Zinc deficiency impairs wound healing in older adults.")
    b = source(3, "Vitamin D supports bone density.")
    answer, quotes = answer_from_passages("Does zinc deficiency impair wound healing?", [b, a], n_sentences=1)

    assert quotes[0].source == 7 and answer.endswith("[7]")
    assert re.findall(r"\[(\d+)\]", answer) == ["7"]


def test_fast_enough_for_five_sources_of_250_words() -> None:
    words = [
        "patients",
        "treated",
        "with",
        "the",
        "experimental",
        "drug",
        "showed",
        "reduced",
        "inflammation",
        "and",
        "improved",
        "survival",
        "compared",
        "with",
        "placebo",
        "in",
        "a",
        "randomized",
        "trial",
        "of",
        "adults",
        "with",
        "chronic",
        "disease",
    ]
    sentences = [" ".join(words[(i % 7) :] + words[: (i % 7)]).capitalize() + "." for i in range(10)]
    sources = [source(n, " ".join(sentences), title=f"Study {n}") for n in range(1, 6)]
    assert all(len(s.text.split()) >= 240 for s in sources)
    answer_from_passages("Does the drug reduce inflammation?", sources)  # warm the stemmer

    timings = []
    for _ in range(50):
        t0 = time.perf_counter()
        answer_from_passages("Does the experimental drug improve survival in chronic disease?", sources)
        timings.append(time.perf_counter() - t0)
    timings.sort()
    assert timings[len(timings) // 2] < 0.005, timings[len(timings) // 2]


@pytest.mark.parametrize("question", ["", "   ", "???", "the of and"])
def test_degenerate_questions_still_answer_from_sources(question: str) -> None:
    _answer, quotes = answer_from_passages(question, [VACCINE, UNRELATED])

    assert quotes and all(q.text in passage_body(VACCINE if q.source == 1 else UNRELATED) for q in quotes)


def test_positions_are_relative_to_the_document_when_the_chunk_records_its_length() -> None:
    """Chunker `tokens-3` records `doc_chars`: the last sentence of a document's first chunk is not
    its last. Without it (an older index) positions stay relative to the chunk."""
    first = "Background one. Background two. Methods were used."
    second = "Results were found. The conclusion follows."
    doc = f"{first} {second}"
    head = Source(n=1, doc_id="d", chunk_id="d#0", text=first, score=1.0, start=0, end=len(first))
    tail = Source(n=2, doc_id="d", chunk_id="d#1", text=second, score=0.9, start=len(first) + 1, end=len(doc))
    old = [s.position for s in candidate_sentences([head, tail])]
    assert old == [0.0, 0.5, 1.0, 0.0, 1.0]
    recorded = [s.model_copy(update={"metadata": {DOC_CHARS: len(doc)}}) for s in (head, tail)]
    new = [s.position for s in candidate_sentences(recorded)]
    assert new == sorted(new) and new[-1] == 1.0 and new[0] == 0.0
    assert new[2] == pytest.approx(len(first) / len(doc))  # the first chunk's last sentence: mid-document
    # a one-chunk document keeps its positions; a length that cannot be right is ignored
    whole = Source(n=1, doc_id="e", chunk_id="e#0", text=doc, score=1.0, start=0, end=len(doc))
    alone = whole.model_copy(update={"metadata": {DOC_CHARS: len(doc)}})
    assert [s.position for s in candidate_sentences([alone])] == [
        s.position for s in candidate_sentences([whole])
    ]
    wrong = whole.model_copy(update={"metadata": {DOC_CHARS: 3}})
    assert [s.position for s in candidate_sentences([wrong])] == [
        s.position for s in candidate_sentences([whole])
    ]
