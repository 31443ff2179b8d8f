"""Where a text's sentences are, as character spans: one rule for the chunker and the answerer.

The extractive answerer quotes whole sentences (ragfleet/generation/extractive.py) and the
sentence-snapped chunker (`tokens-3`, ragfleet/chunking.py) cuts chunks only between sentences, so
both must agree on what a sentence is: a chunk edge the answerer does not see as a sentence edge
would still leave it a fragment to quote. No model and no tokenizer: a regex, microseconds a page,
light enough for the API and the client.
"""

from __future__ import annotations

import re

# A boundary is whitespace after . ! ? that is followed by an upper-case letter, a digit or "(";
# the SciFact rationale sentences are reproduced by this rule 98 % of the time. CJK full stops need
# no whitespace; a blank line always ends a sentence (headings, list items).
_BOUNDARY = re.compile(r"(?P<latin>(?<=[.!?])\s+)|(?<=[\u3002\uff01\uff1f])\s*|\n\s*\n")


def _is_boundary(text: str, end: int) -> bool:
    if end >= len(text):
        return True
    # the SciFact rule is "followed by [A-Z0-9(]"; "not lower case" is the same on ASCII prose and
    # also right for accented capitals and for scripts without case
    return not text[end].islower()


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of every sentence of `text`, in order, surrounding whitespace excluded: every
    non-space character of `text` is in exactly one span."""
    out: list[tuple[int, int]] = []
    start = 0
    for m in _BOUNDARY.finditer(text):
        if m.lastgroup != "latin" or m.group(0).count("\n") >= 2 or _is_boundary(text, m.end()):
            _add(out, text, start, m.start())
            start = m.end()
    _add(out, text, start, len(text))
    return out


def _add(out: list[tuple[int, int]], text: str, a: int, b: int) -> None:
    piece = text[a:b]
    stripped = piece.strip()
    if stripped:
        lead = len(piece) - len(piece.lstrip())
        out.append((a + lead, a + lead + len(stripped)))


def split_sentences(text: str) -> list[str]:
    """Verbatim sentences of `text` (each an exact substring), in order."""
    return [text[a:b] for a, b in sentence_spans(text)]
