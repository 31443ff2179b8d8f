"""Is a page's text layer worth indexing? The gate between "parsed" and "searchable".

The failure it exists for: a PDF whose text layer is empty (a scan), or glyph garbage (`(cid:12)(cid:34)`,
U+FFFD from a font without a Unicode map). Such a page is OCRed instead, page by page; a document with
too little usable text after that fails `empty_document` rather than indexing nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_CID = re.compile(r"\(cid:\d+\)")
_TOKEN = re.compile(r"\S+")
_WORD = re.compile(r"[^\W\d_]+(?:['\u2019-][^\W\d_]+)*", re.UNICODE)
_LATIN = re.compile(r"[A-Za-z]")
_VOWEL = re.compile(r"[aeiouyAEIOUYà-ÿÀ-ß]")

MIN_PAGE_CHARS = 8
"""Fewer non-whitespace characters than this on a page: no text layer to speak of (OCR it)."""
MAX_GARBAGE_SHARE = 0.10
"""Above this share of replacement characters and `(cid:NN)` runs the text layer is garbage."""
MIN_WORD_SHARE = 0.40
"""Below this share of plausible words among the tokens the text layer is garbage."""


@dataclass(frozen=True)
class TextQuality:
    characters: int
    """Non-whitespace characters."""
    garbage_share: float
    """Share of the characters that are U+FFFD or inside `(cid:NN)` runs."""
    word_share: float
    """Share of whitespace-separated tokens that look like words of a language."""

    @property
    def usable(self) -> bool:
        return (
            self.characters >= MIN_PAGE_CHARS
            and self.garbage_share <= MAX_GARBAGE_SHARE
            and self.word_share >= MIN_WORD_SHARE
        )


def _plausible(token: str) -> bool:
    """A token holding a word: letters (any script), and for Latin letters of 4 or more, a vowel.
    Numbers and punctuation are neither words nor garbage: tables of figures stay usable."""
    match = _WORD.search(token)
    if match is None:
        return False
    word = match.group()
    if _LATIN.search(word) and len(word) >= 4:
        return bool(_VOWEL.search(word))
    return True


def measure(text: str) -> TextQuality:
    chars = sum(1 for c in text if not c.isspace())
    if chars == 0:
        return TextQuality(0, 0.0, 0.0)
    cid = sum(len(m.group()) for m in _CID.finditer(text))
    garbage = (cid + text.count("\ufffd")) / chars
    tokens = [t for t in _TOKEN.findall(_CID.sub(" ", text)) if not _is_numeric(t)]
    words = sum(1 for t in tokens if _plausible(t))
    word_share = words / len(tokens) if tokens else 1.0
    return TextQuality(chars, garbage, word_share)


def _is_numeric(token: str) -> bool:
    return not any(c.isalpha() or c == "\ufffd" for c in token)
