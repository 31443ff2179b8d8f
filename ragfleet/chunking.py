"""Split documents into overlapping word windows that keep character offsets.

Windows are counted in words, not tokens, because the tokenizer lives in the heavy model process
and chunking must be cheap and deterministic everywhere (the same text always gives the same
chunks, which is what makes re-ingestion idempotent). 200 words stay under the model's 256-token
limit for ordinary English prose.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ragfleet.parsing.model import Page

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


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def chunk_text(text: str, *, size: int, overlap: int, title: str | None = None) -> list[Chunk]:
    """Word windows of `size` with `overlap` words shared between neighbours.

    The title, when given, is prefixed to every chunk's text (not to its offsets): a chunk from the
    middle of a document loses its topic otherwise, and the title is the cheapest context there is.
    """
    if size <= 0:
        raise ValueError("chunk size must be positive")
    if not 0 <= overlap < size:
        raise ValueError("chunk overlap must be >= 0 and smaller than the chunk size")
    words = [(m.start(), m.end()) for m in _WORD.finditer(text)]
    if not words:
        return []
    prefix = f"{title.strip()}\n" if title and title.strip() else ""
    step = size - overlap
    chunks: list[Chunk] = []
    i = 0
    while True:
        window = words[i : i + size]
        start, end = window[0][0], window[-1][1]
        chunks.append(Chunk(index=len(chunks), text=prefix + text[start:end], start=start, end=end))
        if i + size >= len(words):
            break
        i += step
    return chunks


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


BLOCK_CHUNKER = "blocks-1"
"""Recorded in the metadata of every chunk `chunk_blocks` made (`chunker`): bump it when the chunk
shapes change, so an index never mixes shapes unknowingly (a reindex copies such chunks as they are)."""
_MIN_BODY_WORDS = 32


def chunk_blocks(
    pages: Sequence[Page], *, size: int, overlap: int, title: str | None = None
) -> list[BlockChunk]:
    """Chunks along a parsed file's structure: the blocks of one page and one heading path, joined in
    order up to `size` words (the heading path and title prefixed and counted), never across a page or
    a section, so every chunk has one citation. A block is never cut unless it alone is over `size`
    (then it is split in word windows like `chunk_text`); a table row carries its header inside its
    own text (`ragfleet.parsing`), so a row is never separated from it. Heading blocks are not repeated
    in the body: the heading path prefix holds them. Offsets are into the blocks' texts joined by a
    blank line, the document text a reader of the file would see; deterministic, like `chunk_text`.
    """
    if size <= 0:
        raise ValueError("chunk size must be positive")
    if not 0 <= overlap < size:
        raise ValueError("chunk overlap must be >= 0 and smaller than the chunk size")
    chunks: list[BlockChunk] = []
    offset = 0
    for page in pages:
        group: list[tuple[str, int, int]] = []  # (text, start, end) of the pending body
        section: tuple[str, ...] = ()
        used = 0
        for block in page.blocks:
            start, end = offset, offset + len(block.text)
            offset = end + 2
            if block.section != section:
                group, used = _flush(chunks, page, section, title, group), 0
                section = block.section
            if block.kind == "heading" or not block.text.strip():
                continue
            budget = max(size - len(_WORD.findall(_prefix(title, section))), _MIN_BODY_WORDS)
            words = len(_WORD.findall(block.text))
            if words > budget:
                group, used = _flush(chunks, page, section, title, group), 0
                for piece in chunk_text(block.text, size=budget, overlap=min(overlap, budget - 1)):
                    whole = [(piece.text, start + piece.start, start + piece.end)]
                    _flush(chunks, page, section, title, whole)
                continue
            if used + words > budget:
                group, used = _flush(chunks, page, section, title, group), 0
            group.append((block.text, start, end))
            used += words
        _flush(chunks, page, section, title, group)
    return chunks


def _flush(
    chunks: list[BlockChunk],
    page: Page,
    section: tuple[str, ...],
    title: str | None,
    group: list[tuple[str, int, int]],
) -> list[tuple[str, int, int]]:
    """Emit the pending blocks as one chunk; returns a fresh (empty) group."""
    if group:
        chunks.append(
            BlockChunk(
                index=len(chunks),
                text=_prefix(title, section) + "\n".join(t for t, _, _ in group),
                start=group[0][1],
                end=group[-1][2],
                page=page.number,
                page_label=page.label,
                section=section,
            )
        )
    return []


def _prefix(title: str | None, section: tuple[str, ...]) -> str:
    lines = [title.strip()] if title and title.strip() else []
    if section:
        lines.append(" > ".join(section))
    return "".join(f"{line}\n" for line in lines)
