"""Split documents into chunks that fit the embedding model, keeping character offsets.

Two chunkers: `chunk_text` (word windows over a plain-text document, with overlap) and
`chunk_blocks` (a parsed file, along its pages, headings and blocks). Both are bounded twice: by
`size` words, and, given a `TokenBudget`, by the tokens the model's own tokenizer counts
(ragfleet/tokens.py), the title and heading path included: a chunk sized in words alone was cut
silently by the model past 256 tokens. Both are deterministic (the same text always gives the same
chunks), which is what makes re-ingestion idempotent. Without a budget they give exactly the chunks
of the word-only chunker that came before (`words-1`), which an index built with it keeps until it
is reindexed (ragfleet/chunkers.py).
"""

from __future__ import annotations

import bisect
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ragfleet.sentences import sentence_spans

if TYPE_CHECKING:
    from ragfleet.parsing.model import Page
    from ragfleet.tokens import TokenCounter

_WORD = re.compile(r"\S+")


@dataclass(frozen=True, slots=True)
class Chunk:
    index: int
    text: str
    start: int
    end: int

    @property
    def content_hash(self) -> str:
        return content_hash(self.text)


@dataclass(frozen=True, slots=True)
class TokenBudget:
    """At most `max_tokens` tokens per chunk (special tokens not counted), counted by `counter`."""

    counter: TokenCounter
    max_tokens: int


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def _check(size: int, overlap: int) -> None:
    if size <= 0:
        raise ValueError("chunk size must be positive")
    if not 0 <= overlap < size:
        raise ValueError("chunk overlap must be >= 0 and smaller than the chunk size")


def chunk_text(
    text: str,
    *,
    size: int,
    overlap: int,
    title: str | None = None,
    budget: TokenBudget | None = None,
    sentences: bool = False,
) -> list[Chunk]:
    """Word windows of at most `size` words, `overlap` words shared between neighbours.

    With `sentences` (chunker `tokens-3`), a window holds whole sentences (ragfleet/sentences.py)
    and its overlap is the whole sentences that fit in `overlap` words; only a sentence over the
    bounds by itself is cut in word windows. A window cut mid-sentence split an answer's evidence
    in two fragments, neither of which the extractive answerer quotes whole.

    The title, when given, is prefixed to every chunk's text (not to its offsets): a chunk from the
    middle of a document loses its topic otherwise, and the title is the cheapest context there is.
    With a `budget`, a window also stops before the word that would take it, title included, past
    the budget (its overlap shrinks in proportion, so a window always moves on); a single word
    longer than the budget (a URL, a base64 run) is cut at token boundaries; a title longer than
    half the budget is cut to half of it.
    """
    _check(size, overlap)
    words = [(m.start(), m.end()) for m in _WORD.finditer(text)]
    if not words:
        return []
    prefix = fit_prefix(f"{title.strip()}\n" if title and title.strip() else "", budget)
    if sentences:
        spans = _sentence_windows(text, words, size, overlap, budget, prefix)
    elif budget is None:
        spans = [(a, b) for _, _, a, b in _windows(words, size, overlap, None)]
    else:
        spans = _token_windows(text, words, size, overlap, budget, prefix)
    return [Chunk(index=i, text=prefix + text[a:b], start=a, end=b) for i, (a, b) in enumerate(spans)]


def _windows(
    words: list[tuple[int, int]], size: int, overlap: int, tokens: list[int] | None, limit: int = 0
) -> list[tuple[int, int, int, int]]:
    """(first word, end word) windows: `size` words, or fewer when `tokens` (per word) would pass
    `limit`. A window that cannot take even its first word is (i, i): the caller cuts that word."""
    out: list[tuple[int, int, int, int]] = []
    n = len(words)
    i = 0
    last_end = 0
    while i < n:
        j, used = i, 0
        while j < n and j - i < size and (tokens is None or used + tokens[j] <= limit):
            used += tokens[j] if tokens is not None else 0
            j += 1
        if out and j <= last_end and i < last_end:
            i = last_end  # the overlap alone was all that fitted: move on without it
            continue
        out.append((i, j, words[i][0], words[j - 1][1] if j > i else words[i][1]))
        if j == i:
            i += 1
            last_end = i
            continue
        last_end = j
        if j >= n:
            break
        i = max(i + 1, j - overlap * (j - i) // size)
    return out


def _token_windows(
    text: str, words: list[tuple[int, int]], size: int, overlap: int, budget: TokenBudget, prefix: str
) -> list[tuple[int, int]]:
    """Windows bounded by words and tokens. Tokens are counted once over the whole text and given to
    the word they start in; every window is then counted again as it will be embedded, prefix
    included, and shrunk while over (exact for WordPiece, which splits on whitespace first; a guard
    for any other tokenizer)."""
    counter, limit = budget.counter, budget.max_tokens
    offsets = counter.offsets(text)
    starts = [a for a, _ in words]
    per_word = [0] * len(words)
    for a, _ in offsets:
        per_word[max(bisect.bisect_right(starts, a) - 1, 0)] += 1
    spans: list[tuple[int, int]] = []
    for i, j, a, b in _windows(words, size, overlap, per_word, limit - counter.count(prefix)):
        if j == i:
            spans += _cut(text, a, b, offsets, budget, prefix)
            continue
        tokens = counter.count(prefix + text[a:b])
        while j - i > 1 and tokens > limit:
            j -= 1
            b = words[j - 1][1]
            tokens = counter.count(prefix + text[a:b])
        if tokens > limit:
            spans += _cut(text, a, b, offsets, budget, prefix)
        else:
            spans.append((a, b))
    return spans


def _sentence_windows(
    text: str,
    words: list[tuple[int, int]],
    size: int,
    overlap: int,
    budget: TokenBudget | None,
    prefix: str,
) -> list[tuple[int, int]]:
    """Windows of whole sentences, packed greedily up to `size` words and the budget (prefix
    included); the next window starts on the last sentences of this one whose words come nearest
    its share of `overlap` words (the share shrinks with a window cut short by tokens, as in
    `_windows`; none when the last sentence alone is over twice the share), always at least one
    sentence further on. A sentence over the bounds by itself is cut in word windows (`_token_windows`) and
    shares no overlap with its neighbours."""
    sents = sentence_spans(text)
    starts = [a for a, _ in sents]
    n_words = [0] * len(sents)
    for a, _ in words:
        n_words[max(bisect.bisect_right(starts, a) - 1, 0)] += 1
    n_tokens = [0] * len(sents)
    limit = 0
    if budget is not None:
        for a, _ in budget.counter.offsets(text):
            n_tokens[max(bisect.bisect_right(starts, a) - 1, 0)] += 1
        limit = budget.max_tokens - budget.counter.count(prefix)

    def fits(i: int, j: int) -> bool:
        if sum(n_words[i:j]) > size or (budget is not None and sum(n_tokens[i:j]) > limit):
            return False
        return budget is None or budget.counter.count(prefix + text[sents[i][0] : sents[j - 1][1]]) <= (
            budget.max_tokens
        )

    spans: list[tuple[int, int]] = []
    n, i, last_end = len(sents), 0, 0
    while i < n:
        if not fits(i, i + 1):  # one sentence over the bounds: word windows of it alone
            a, b = sents[i]
            inner = [(x - a, y - a) for x, y in words if a <= x < b]
            piece = text[a:b]
            if budget is None:
                cut = [(x, y) for _, _, x, y in _windows(inner, size, overlap, None)]
            else:
                cut = _token_windows(piece, inner, size, overlap, budget, prefix)
            spans += [(a + x, a + y) for x, y in cut]
            i = last_end = i + 1
            continue
        j = i + 1
        while j < n and fits(i, j + 1):
            j += 1
        if spans and j <= last_end:  # the overlap alone was all that fitted: move on without it
            i = last_end
            continue
        spans.append((sents[i][0], sents[j - 1][1]))
        last_end = j
        if j >= n:
            break
        # the overlap: the trailing whole sentences whose words come nearest this window's share
        share = overlap * sum(n_words[i:j]) / size
        k = j
        while k - 1 > i and sum(n_words[k - 1 : j]) + sum(n_words[k:j]) <= 2 * share:
            k -= 1
        i = k
    return spans


def _cut(
    text: str, a: int, b: int, offsets: list[tuple[int, int]], budget: TokenBudget, prefix: str
) -> list[tuple[int, int]]:
    """Cut text[a:b] at token boundaries into pieces within the budget (a piece re-tokenized on its
    own may count more than in context: it is shortened until it fits)."""
    bounds = [(x, y) for x, y in offsets if a <= x < b]
    pieces: list[tuple[int, int]] = []
    k = 0
    room = budget.max_tokens - budget.counter.count(prefix)
    while k < len(bounds):
        take = min(room, len(bounds) - k)
        while (
            take > 1
            and budget.counter.count(prefix + text[bounds[k][0] : bounds[k + take - 1][1]])
            > budget.max_tokens
        ):
            take -= 1
        pieces.append((bounds[k][0], bounds[k + take - 1][1]))
        k += take
    return pieces


def word_count(text: str) -> int:
    return len(_WORD.findall(text))


def fit_prefix(prefix: str, budget: TokenBudget | None) -> str:
    """A title (and heading path) prefix, cut to half the budget at a token boundary: the body keeps
    the other half, whatever the title."""
    if budget is None or not prefix:
        return prefix
    half = budget.max_tokens // 2
    if budget.counter.count(prefix) <= half:
        return prefix
    offsets = budget.counter.offsets(prefix)
    take = half
    while take > 1 and budget.counter.count(prefix[: offsets[take - 1][1]].rstrip() + "\n") > half:
        take -= 1
    return prefix[: offsets[take - 1][1]].rstrip() + "\n"


@dataclass(frozen=True, slots=True)
class BlockChunk:
    """A chunk of a parsed file: where it sits (page, its label, heading path) travels with it."""

    index: int
    text: str
    start: int
    end: int
    page: int
    page_label: str | None
    section: tuple[str, ...]


_MIN_BODY_WORDS = 32


def chunk_blocks(
    pages: Sequence[Page],
    *,
    size: int,
    overlap: int,
    title: str | None = None,
    budget: TokenBudget | None = None,
    sentences: bool = False,
) -> list[BlockChunk]:
    """Chunks along a parsed file's structure: the blocks of one page and one heading path, joined in
    order up to `size` words and the `budget`'s tokens (the heading path and title prefixed and
    counted), never across a page or a section, so every chunk has one citation. A block is never cut
    unless it alone is over the bounds (then it is split in windows like `chunk_text`, of whole
    sentences with `sentences`); a table row
    carries its header inside its own text (`ragfleet.parsing`), so a row is never separated from it.
    Heading blocks are not repeated in the body: the heading path prefix holds them. Offsets are into
    the blocks' texts joined by a blank line, the document text a reader of the file would see;
    deterministic, like `chunk_text`.
    """
    _check(size, overlap)
    chunks: list[BlockChunk] = []
    offset = 0
    for page in pages:
        group: list[tuple[str, int, int]] = []  # (text, start, end) of the pending body
        section: tuple[str, ...] = ()
        prefix = fit_prefix(_prefix(title, section), budget)
        used = used_tokens = 0
        for block in page.blocks:
            start, end = offset, offset + len(block.text)
            offset = end + 2
            if block.section != section:
                _flush(chunks, page, section, prefix, group, budget)
                group, used, used_tokens = [], 0, 0
                section = block.section
                prefix = fit_prefix(_prefix(title, section), budget)
            if block.kind == "heading" or not block.text.strip():
                continue
            words_left = max(size - word_count(prefix), _MIN_BODY_WORDS)
            words = word_count(block.text)
            tokens = tokens_left = 0
            if budget is not None:
                tokens_left = budget.max_tokens - budget.counter.count(prefix)
                tokens = budget.counter.count(block.text)
            if words > words_left or tokens > tokens_left:
                _flush(chunks, page, section, prefix, group, budget)
                group, used, used_tokens = [], 0, 0
                inner = None if budget is None else TokenBudget(budget.counter, tokens_left)
                pieces = chunk_text(
                    block.text,
                    size=words_left,
                    overlap=min(overlap, words_left - 1),
                    budget=inner,
                    sentences=sentences,
                )
                for piece in pieces:
                    whole = [(piece.text, start + piece.start, start + piece.end)]
                    _flush(chunks, page, section, prefix, whole, budget)
                continue
            if used + words > words_left or used_tokens + tokens > tokens_left:
                _flush(chunks, page, section, prefix, group, budget)
                group, used, used_tokens = [], 0, 0
            group.append((block.text, start, end))
            used += words
            used_tokens += tokens
        _flush(chunks, page, section, prefix, group, budget)
    return chunks


def _flush(
    chunks: list[BlockChunk],
    page: Page,
    section: tuple[str, ...],
    prefix: str,
    group: list[tuple[str, int, int]],
    budget: TokenBudget | None,
) -> None:
    """Emit the pending blocks as one chunk. Blocks joined by a line break count the sum of their
    tokens under WordPiece; for a tokenizer where they count more, the group is halved until each
    part fits."""
    if not group:
        return
    text = prefix + "\n".join(t for t, _, _ in group)
    if budget is not None and len(group) > 1 and budget.counter.count(text) > budget.max_tokens:
        half = len(group) // 2
        _flush(chunks, page, section, prefix, group[:half], budget)
        _flush(chunks, page, section, prefix, group[half:], budget)
        return
    chunks.append(
        BlockChunk(
            index=len(chunks),
            text=text,
            start=group[0][1],
            end=group[-1][2],
            page=page.number,
            page_label=page.label,
            section=section,
        )
    )


def _prefix(title: str | None, section: tuple[str, ...]) -> str:
    lines = [title.strip()] if title and title.strip() else []
    if section:
        lines.append(" > ".join(section))
    return "".join(f"{line}\n" for line in lines)
