"""Which chunker an index was built with, and the chunker a write into it must use.

Chunk shapes are part of an index, like its embedding model: a query's ranking mixes documents
chunked one way with documents chunked another, and an unchanged document re-ingested with a new
chunker is not unchanged (its chunks differ, so it is embedded again). So the index records its
chunker (`ChunkerSpec`: version, word window, token budget) beside its pointer
(ragfleet/index_state.py), and:

- a write into the live index chunks with the live index's recorded chunker, whatever this process is
  configured with (a warning says so once per process); a chunker this code does not know is refused
  (`UnknownChunkerError`: the writer is older than the index);
- `ragfleet index rebuild` (and the nightly reindex) builds the new collection with the configured
  chunker and records it with the switch, in one MULTI: the rollout is the blue/green reindex;
- an index with no record is recorded on its first write: the configured chunker when it is empty,
  else `words-1`, the word-only chunker that built every index before chunkers were recorded.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from ragfleet.chunking import (
    BlockChunk,
    Chunk,
    TokenBudget,
    chunk_blocks,
    chunk_text,
    fit_prefix,
    word_count,
)
from ragfleet.settings import Settings
from ragfleet.tokens import token_counter

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ragfleet.parsing.model import Page
    from ragfleet.resources import Resources
    from ragfleet.schemas import MetadataValue
    from ragfleet.stores.base import ChunkRecord, VectorStore

log = logging.getLogger(__name__)

WORDS_V1 = "words-1"  # word windows only (parsed files: metadata chunker "blocks-1")
TOKENS_V2 = "tokens-2"  # word windows bounded by the model's tokens (parsed files: "blocks-2")
TOKENS_V3 = "tokens-3"  # tokens-2 with edges snapped to sentence boundaries (parsed files: "blocks-3")
CURRENT = TOKENS_V3
_FILE_LABELS = {WORDS_V1: "blocks-1", TOKENS_V2: "blocks-2", TOKENS_V3: "blocks-3"}
FILE_LABELS = frozenset(_FILE_LABELS.values())
"""The `chunker` metadata of a parsed file's chunks: how a reindex tells them from text documents'."""
DOC_CHARS = "doc_chars"
"""Chunk metadata (from `tokens-3`): the length of the chunk's document in characters, so that where
a sentence sits can be told relative to its document, not only to its chunk (the extractive
answerer's position prior: an abstract's findings come last, and the last sentence of a document's
first chunk is not its last). Set by the chunker over any caller's key of the same name."""


class UnknownChunkerError(RuntimeError):
    """The index was built with a chunker this code does not have: upgrade the writer."""


@dataclass(frozen=True, slots=True)
class ChunkerSpec:
    version: str
    size_words: int
    overlap_words: int
    max_tokens: int = 0  # 0: not bounded by tokens (words-1)

    @classmethod
    def configured(cls, s: Settings) -> ChunkerSpec:
        return cls(CURRENT, s.chunk_size_words, s.chunk_overlap_words, s.chunk_max_tokens)

    @classmethod
    def legacy(cls, s: Settings) -> ChunkerSpec:
        """What an index written before chunkers were recorded holds."""
        return cls(WORDS_V1, s.chunk_size_words, s.chunk_overlap_words, 0)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, raw: str | bytes) -> ChunkerSpec:
        d = json.loads(raw)
        return cls(str(d["version"]), int(d["size_words"]), int(d["overlap_words"]), int(d["max_tokens"]))

    @property
    def label(self) -> str:
        """One line for an operator: `tokens-2 (200 words, overlap 40, <= 254 tokens)`."""
        tokens = f", <= {self.max_tokens} tokens" if self.max_tokens else ""
        return f"{self.version} ({self.size_words} words, overlap {self.overlap_words}{tokens})"


@dataclass(frozen=True, slots=True)
class Chunker:
    """A recorded chunker made runnable: the same spec always gives the same chunks."""

    spec: ChunkerSpec
    budget: TokenBudget | None

    @property
    def file_label(self) -> str:
        return _FILE_LABELS[self.spec.version]

    @property
    def sentences(self) -> bool:
        """Whether chunk edges are snapped to sentence boundaries (`tokens-3` and later)."""
        return self.spec.version not in (WORDS_V1, TOKENS_V2)

    def document_metadata(self, length: int) -> dict[str, MetadataValue]:
        """What this chunker records on every chunk of a document of `length` characters, besides
        the document's own metadata (nothing before `tokens-3`: older indexes keep their rows)."""
        return {DOC_CHARS: length} if self.sentences else {}

    def text(self, text: str, title: str | None) -> list[Chunk]:
        s = self.spec
        return chunk_text(
            text,
            size=s.size_words,
            overlap=s.overlap_words,
            title=title,
            budget=self.budget,
            sentences=self.sentences,
        )

    def blocks(self, pages: Sequence[Page], title: str | None) -> list[BlockChunk]:
        s = self.spec
        return chunk_blocks(
            pages,
            size=s.size_words,
            overlap=s.overlap_words,
            title=title,
            budget=self.budget,
            sentences=self.sentences,
        )

    def restored(self, chunks: Sequence[ChunkRecord]) -> list[tuple[str, int, int, dict[str, MetadataValue]]]:
        """A parsed file's stored chunks (in order) reshaped for this chunker: what a reindex does, the
        file's blocks being gone (only its chunks keep its pages and sections). A chunk within this
        chunker's bounds is kept as it is; one over them is split in windows of its body under its
        own (fitted) prefix, page and section. A split piece's offsets are its body's within the
        chunk's span (approximate: a chunk joins blocks with one line break, the document with two).
        Deterministic: an unchanged chunker gives the same chunks back. Re-ingesting the file gives
        exactly the shapes this chunker makes of it."""
        out: list[tuple[str, int, int, dict[str, MetadataValue]]] = []
        s = self.spec
        length = max((c.end for c in chunks), default=0)
        for c in chunks:
            meta = {k: v for k, v in c.metadata.items() if k != DOC_CHARS}
            meta.update({"chunker": self.file_label, **self.document_metadata(length)})
            lines = [c.title.strip()] if c.title and c.title.strip() else []
            if isinstance(c.metadata.get("section"), str):
                lines.append(str(c.metadata["section"]))
            old = "".join(f"{line}\n" for line in lines)
            if not c.text.startswith(old):
                old = ""
            body = c.text[len(old) :]
            prefix = fit_prefix(old, self.budget)
            words = max(s.size_words - word_count(prefix), 32)
            budget = None
            over = word_count(body) > words
            if self.budget is not None:
                budget = TokenBudget(
                    self.budget.counter, self.budget.max_tokens - self.budget.counter.count(prefix)
                )
                over = over or self.budget.counter.count(prefix + body) > self.budget.max_tokens
            if not over:
                out.append((prefix + body, c.start, c.end, meta))
                continue
            overlap = min(s.overlap_words, words - 1)
            for p in chunk_text(body, size=words, overlap=overlap, budget=budget, sentences=self.sentences):
                a, b = min(c.start + p.start, c.end), min(c.start + p.end, c.end)
                out.append((prefix + p.text, a, b, meta))
        return out


@functools.cache
def build_chunker(spec: ChunkerSpec, model: str) -> Chunker:
    """Raises UnknownChunkerError for a version this code lacks, ValueError for a budget over what the
    model reads (the model would cut such chunks silently, which is what the budget prevents)."""
    if spec.version not in _FILE_LABELS:
        raise UnknownChunkerError(
            f"the index was built with chunker {spec.label}, which this ragfleet does not have: "
            "upgrade this worker (or reindex with it)"
        )
    if spec.version == WORDS_V1:
        return Chunker(spec, None)
    counter = token_counter(model)
    if spec.max_tokens > counter.max_content_tokens:
        raise ValueError(
            f"chunk_max_tokens={spec.max_tokens} is over what {model!r} reads: "
            f"{counter.max_content_tokens} tokens besides its {counter.special} special tokens"
        )
    return Chunker(spec, TokenBudget(counter, spec.max_tokens))


def configured_chunker(s: Settings) -> Chunker:
    return build_chunker(ChunkerSpec.configured(s), s.embedding_model)


def live_chunker(res: Resources, collection: str, store: VectorStore) -> Chunker:
    """The chunker a write into the live `collection` must use: the one recorded for it (recorded now
    if none is: the configured one on an empty index, else `words-1`). Raises UnknownChunkerError."""
    s = res.settings
    configured = ChunkerSpec.configured(s)
    spec = res.index_state.chunker_of(collection)
    if spec is None:
        found = configured if store.count() == 0 else ChunkerSpec.legacy(s)
        spec = res.index_state.record_chunker(collection, found)
    if spec != configured:
        _warn_once(spec, configured)
    return build_chunker(spec, s.embedding_model)


@functools.cache
def _warn_once(live: ChunkerSpec, configured: ChunkerSpec) -> None:
    log.warning(
        "chunker_pinned_to_index",
        extra={
            "live": live.label,
            "configured": configured.label,
            "why": "writes keep the live index's chunker; `ragfleet index rebuild` rolls out the "
            "configured one",
        },
    )
