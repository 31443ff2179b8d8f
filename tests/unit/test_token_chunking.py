"""Chunks fit the model: every chunk, title and heading path included, counted with the bundled model's
own tokenizer (ragfleet/tokens.py), is within the token budget; the word-only chunker is unchanged."""

from __future__ import annotations

import itertools
import re

import pytest

from ragfleet.chunkers import (
    DOC_CHARS,
    ChunkerSpec,
    UnknownChunkerError,
    build_chunker,
    configured_chunker,
)
from ragfleet.chunking import TokenBudget, chunk_blocks, chunk_text
from ragfleet.parsing import Block, Page
from ragfleet.settings import Settings
from ragfleet.stores.base import ChunkRecord
from ragfleet.tokens import BUNDLED_MODEL, token_counter

COUNTER = token_counter(BUNDLED_MODEL)
# prose that WordPiece splits hard: ~2 tokens a word, so 200 words are far past 254 tokens
PROSE = (
    "Glycosylation of immunoglobulin G modulates Fc-gamma-RIIIa-dependent cytotoxicity in 17β-estradiol "
    "treated HEK293T cells, whereas phosphatidylinositol-3,4,5-trisphosphate signalling (p<0.001) "
    "was unaffected. "
)


def words_of(text: str) -> list[str]:
    return re.findall(r"\S+", text)


def test_every_text_chunk_fits_the_budget_with_its_title_and_covers_the_text() -> None:
    text = PROSE * 40
    title = "Fc receptor signalling in engineered cell lines"
    budget = TokenBudget(COUNTER, 254)
    chunks = chunk_text(text, size=200, overlap=40, title=title, budget=budget)
    assert len(chunks) > 1
    counts = COUNTER.counts([c.text for c in chunks])
    assert max(counts) <= 254
    assert min(counts[:-1]) > 254 - 40  # windows are filled, not minced (the last is the rest)
    assert all(c.text.startswith(title + "\n") for c in chunks)
    # nothing is lost: the chunks' spans cover every word, and neighbours overlap
    covered = sorted((c.start, c.end) for c in chunks)
    assert covered[0][0] == 0 and covered[-1][1] == len(text.rstrip())
    assert all(b[0] < a[1] for a, b in itertools.pairwise(covered))
    # the old word-only windows of the same text were over what the model reads: cut silently
    old = chunk_text(text, size=200, overlap=40, title=title)
    assert max(COUNTER.counts([c.text for c in old])) > 254
    assert chunk_text(text, size=200, overlap=40, title=title, budget=budget) == chunks  # deterministic


def test_without_a_budget_the_word_windows_are_the_old_ones() -> None:
    text = " ".join(f"w{i}" for i in range(450))
    chunks = chunk_text(text, size=200, overlap=40)
    assert [(words_of(c.text)[0], len(words_of(c.text))) for c in chunks] == [
        ("w0", 200),
        ("w160", 200),
        ("w320", 130),
    ]


def test_a_word_longer_than_the_budget_is_cut_at_token_boundaries() -> None:
    run = ",".join(str(i) for i in range(600))  # one whitespace-free "word" of ~1,200 tokens
    text = f"Values follow. {run} End of the table."
    chunks = chunk_text(text, size=200, overlap=40, title="Table", budget=TokenBudget(COUNTER, 64))
    assert max(COUNTER.counts([c.text for c in chunks])) <= 64
    pieces = [c for c in chunks if c.start >= text.index(run) and c.end <= text.index(run) + len(run)]
    assert len(pieces) > 10
    # the pieces tile the run: nothing is dropped, nothing repeated
    assert "".join(text[c.start : c.end] for c in pieces) == run
    assert words_of(chunks[-1].text)[-1] == "table."


def test_a_title_longer_than_half_the_budget_is_cut_to_half() -> None:
    title = "A very long title about receptor tyrosine kinases " * 20
    chunks = chunk_text(PROSE * 5, size=200, overlap=40, title=title, budget=TokenBudget(COUNTER, 100))
    prefix = chunks[0].text.split("\n")[0]
    assert title.startswith(prefix) and COUNTER.count(prefix + "\n") <= 50
    assert max(COUNTER.counts([c.text for c in chunks])) <= 100


def para(text: str, *section: str) -> Block:
    return Block(kind="paragraph", text=text, section=section)


def test_blocks_fit_the_budget_with_title_and_heading_path_and_keep_their_page() -> None:
    rows = tuple(
        para(f"Compound: CHEMBL{i}; IC50 (nM): {i * 3.7:.2f}; Target: FcR-{i}", "Assays", "Potency")
        for i in range(60)
    )
    pages = [
        Page(number=1, blocks=(para(PROSE * 12, "Assays"),)),  # one block over the budget alone
        Page(number=2, label="Sheet1", blocks=rows),
    ]
    budget = TokenBudget(COUNTER, 120)
    chunks = chunk_blocks(pages, size=200, overlap=40, title="Screening report", budget=budget)
    assert max(COUNTER.counts([c.text for c in chunks])) <= 120
    assert {c.page for c in chunks} == {1, 2}
    first = [c for c in chunks if c.page == 1]
    assert len(first) > 1 and all(c.text.startswith("Screening report\nAssays\n") for c in first)
    table = [c for c in chunks if c.page == 2]
    assert all(c.text.startswith("Screening report\nAssays > Potency\n") for c in table)
    # a row is never split: every row's text is whole inside exactly one chunk
    for row in rows:
        assert sum(row.text in c.text for c in table) == 1
    assert chunk_blocks(pages, size=200, overlap=40, title="Screening report", budget=budget) == chunks


def test_the_configured_chunker_counts_with_the_model_and_refuses_what_it_cannot_honour() -> None:
    s = Settings()
    chunker = configured_chunker(s)
    assert chunker.spec == ChunkerSpec("tokens-3", 200, 40, 254) and chunker.file_label == "blocks-3"
    assert chunker.budget is not None and chunker.budget.counter.max_content_tokens == 254
    assert max(COUNTER.counts([c.text for c in chunker.text(PROSE * 30, "T")])) <= 254
    with pytest.raises(ValueError, match="over what"):
        build_chunker(ChunkerSpec("tokens-2", 200, 40, 300), s.embedding_model)
    with pytest.raises(UnknownChunkerError, match="tokens-9"):
        build_chunker(ChunkerSpec("tokens-9", 200, 40, 254), s.embedding_model)
    legacy = build_chunker(ChunkerSpec.legacy(s), s.embedding_model)
    assert legacy.budget is None and legacy.file_label == "blocks-1"
    assert ChunkerSpec.from_json(chunker.spec.to_json()) == chunker.spec


def record(index: int, text: str, start: int, end: int) -> ChunkRecord:
    return ChunkRecord(
        chunk_id=f"c{index}",
        doc_id="report.pdf",
        tenant="t",
        chunk_index=index,
        text=text,
        title="Report",
        start=start,
        end=end,
        content_hash="h",
        embedding_model="m",
        vector=[],
        metadata={"source": "report.pdf", "page": 3, "section": "Results", "chunker": "blocks-1"},
    )


def test_a_reindex_reshapes_a_parsed_files_chunks_for_the_new_chunker() -> None:
    """The file's blocks are gone: a stored chunk within the new bounds is kept, one over them split."""
    small = record(0, "Report\nResults\nThe assay was repeated twice.", 0, 29)
    body = PROSE * 4
    big = record(1, "Report\nResults\n" + body, 31, 31 + len(body))
    chunker = configured_chunker(Settings())
    out = chunker.restored([small, big])
    # blocks-3 also records the document's extent (its last chunk's end)
    meta = {**small.metadata, "chunker": "blocks-3", DOC_CHARS: 31 + len(body)}
    assert out[0] == (small.text, 0, 29, meta)
    assert len(out) > 2
    assert max(COUNTER.counts([t for t, _, _, _ in out])) <= 254
    assert all(t.startswith("Report\nResults\n") and m["page"] == 3 for t, _, _, m in out)
    assert all(31 <= a < b <= 31 + len(body) for _, a, b, _ in out[1:])
    again = chunker.restored([record(i, t, a, b) for i, (t, a, b, _) in enumerate(out)])
    assert [t for t, _, _, _ in again] == [t for t, _, _, _ in out]  # an unchanged chunker: unchanged
