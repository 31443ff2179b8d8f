"""Chunker `tokens-3`: chunk edges fall between sentences (ragfleet/sentences.py), the overlap is whole
sentences, and only a sentence over the bounds by itself is cut; the token budget holds as in `tokens-2`.
Real tokenizer (the bundled model's), real sentence splitter: the one the extractive answerer quotes with."""

from __future__ import annotations

import itertools

from ragfleet.chunkers import ChunkerSpec, build_chunker
from ragfleet.chunking import TokenBudget, chunk_blocks, chunk_text
from ragfleet.generation.extractive import split_sentences
from ragfleet.parsing import Block, Page
from ragfleet.sentences import sentence_spans
from ragfleet.tokens import BUNDLED_MODEL, token_counter

COUNTER = token_counter(BUNDLED_MODEL)
SENTENCES = [
    f"Study {i} measured Fc-gamma-RIIIa-dependent cytotoxicity in 17β-estradiol treated HEK293T cells "
    f"({i * 7} replicates), whereas phosphatidylinositol-3,4,5-trisphosphate signalling was unaffected."
    for i in range(40)
]
TEXT = " ".join(SENTENCES)
TITLE = "Fc receptor signalling in engineered cell lines"


def test_text_chunks_hold_whole_sentences_within_the_budget_and_overlap_by_sentences() -> None:
    budget = TokenBudget(COUNTER, 254)
    chunks = chunk_text(TEXT, size=200, overlap=40, title=TITLE, budget=budget, sentences=True)
    assert len(chunks) > 3
    assert max(COUNTER.counts([c.text for c in chunks])) <= 254
    spans = sentence_spans(TEXT)
    starts, ends = {a for a, _ in spans}, {b for _, b in spans}
    for c in chunks:
        assert c.start in starts and c.end in ends  # never mid-sentence
        assert c.text == TITLE + "\n" + TEXT[c.start : c.end]
        assert all(s in SENTENCES for s in split_sentences(TEXT[c.start : c.end]))
    # nothing lost; neighbours share whole sentences: windows of 4 sentences (68 words, the tokens
    # bind first) have a 40 * 68 / 200 = 13.6-word share, and one 17-word sentence is nearest it
    assert chunks[0].start == 0 and chunks[-1].end == len(TEXT)
    for a, b in itertools.pairwise(chunks):
        shared = split_sentences(TEXT[b.start : a.end])
        assert len(shared) == 1 and shared[0] in SENTENCES
    again = chunk_text(TEXT, size=200, overlap=40, title=TITLE, budget=budget, sentences=True)
    assert again == chunks  # deterministic: re-ingestion stays idempotent


def test_without_overlap_the_chunks_tile_the_sentences() -> None:
    budget = TokenBudget(COUNTER, 254)
    chunks = chunk_text(TEXT, size=200, overlap=0, budget=budget, sentences=True)
    got = [s for c in chunks for s in split_sentences(TEXT[c.start : c.end])]
    assert got == SENTENCES


def test_a_sentence_over_the_bounds_alone_is_cut_and_its_neighbours_stay_whole() -> None:
    long = " ".join(f"Clause{i}, and" for i in range(150)) + " end."
    text = f"{SENTENCES[0]} {long} {SENTENCES[1]}"
    budget = TokenBudget(COUNTER, 120)
    chunks = chunk_text(text, size=200, overlap=40, budget=budget, sentences=True)
    assert max(COUNTER.counts([c.text for c in chunks])) <= 120
    assert chunks[0].text == SENTENCES[0]
    assert chunks[-1].text == SENTENCES[1]
    middle = chunks[1:-1]
    assert len(middle) > 1 and all(c.text in long for c in middle)
    assert middle[0].text.startswith("Clause0,") and middle[-1].text.endswith("end.")


def test_the_word_bound_holds_without_a_budget() -> None:
    chunks = chunk_text(TEXT, size=60, overlap=20, sentences=True)
    assert all(len(c.text.split()) <= 60 for c in chunks)
    assert all(s in SENTENCES for c in chunks for s in split_sentences(c.text))


def test_a_long_paragraph_of_a_parsed_file_is_cut_between_its_sentences_and_rows_stay_whole() -> None:
    rows = tuple(
        Block(
            kind="table_row",
            text=f"Compound: CHEMBL{i}; IC50 (nM): {i * 3.7:.2f}. Target: FcR-{i}",
            section=("Potency",),
            header=("Compound", "IC50 (nM)", "Target"),
        )
        for i in range(30)
    )
    pages = [
        Page(number=1, blocks=(Block(kind="paragraph", text=TEXT, section=("Assays",)),)),
        Page(number=2, blocks=rows),
    ]
    budget = TokenBudget(COUNTER, 120)
    chunks = chunk_blocks(pages, size=200, overlap=40, title="Report", budget=budget, sentences=True)
    assert max(COUNTER.counts([c.text for c in chunks])) <= 120
    prose = [c for c in chunks if c.page == 1]
    assert len(prose) > 3
    for c in prose:
        body = c.text.removeprefix("Report\nAssays\n")
        assert all(s in SENTENCES for s in split_sentences(body))
    table = [c for c in chunks if c.page == 2]
    for row in rows:
        assert sum(row.text in c.text for c in table) == 1


def test_chunker_tokens_3_snaps_and_tokens_2_keeps_its_word_windows() -> None:
    v3 = build_chunker(ChunkerSpec("tokens-3", 200, 40, 254), BUNDLED_MODEL)
    v2 = build_chunker(ChunkerSpec("tokens-2", 200, 40, 254), BUNDLED_MODEL)
    assert v3.sentences and v3.file_label == "blocks-3" and not v2.sentences
    starts = {a for a, _ in sentence_spans(TEXT)}
    assert all(c.start in starts for c in v3.text(TEXT, TITLE))
    assert any(c.start not in starts for c in v2.text(TEXT, TITLE))  # a word window starts mid-sentence
    assert v2.text(TEXT, TITLE) == chunk_text(
        TEXT, size=200, overlap=40, title=TITLE, budget=TokenBudget(COUNTER, 254)
    )
