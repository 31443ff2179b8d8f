"""Split documents into overlapping word windows that keep character offsets.

Windows are counted in words, not tokens, because the tokenizer lives in the heavy model process
and chunking must be cheap and deterministic everywhere (the same text always gives the same
chunks, which is what makes re-ingestion idempotent). 200 words stay under the model's 256-token
limit for ordinary English prose.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

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
