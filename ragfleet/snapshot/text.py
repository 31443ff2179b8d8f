"""The snapshot's full-text leg: LanceDB's native FTS reproduced in memory.

The store's FTS index is `FTS(stem=True, language="English", remove_stop_words=True)` (Lance's
inverted index, ragfleet/stores/lancedb_store.py). To rank the same chunks the same way, this module
copies its analysis chain and its BM25:
- tokens: runs of letters and digits (tantivy's `simple` tokenizer splits on anything else), tokens
  of 40 bytes or more dropped, lower-cased, Snowball-English stemmed (PyStemmer; rust-stemmers is
  the same algorithm), stop words dropped *after* stemming (measured against LanceDB 0.40:
  "themselves" survives as "themselv", "having" goes as "have"), then ASCII-folded;
- BM25 with k1 = 1.2, b = 0.75 and idf = ln(1 + (N - n + 0.5) / (n + 0.5)), over every row of the
  index (a tenant prefilter does not change the statistics); a term repeated in the query counts
  as often as it occurs (LanceDB sums it per occurrence: "stress ... stress" weighs twice).
Scores may differ from LanceDB's by a constant factor ((k1 + 1)); the hybrid fusion min-max
normalises each leg, so only the order matters. bench/bench_search.py measures the agreement.

The postings are a term-major sparse matrix of precomputed BM25 term weights (float32), saved as
three .npy arrays that every retrieval process memory-maps.
"""

from __future__ import annotations

import array
import itertools
import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable
from functools import cache
from typing import Any

import numpy as np
import numpy.typing as npt

K1 = 1.2
B = 0.75
MAX_TOKEN_BYTES = 40

# Stems LanceDB 0.40's English FTS drops (found by querying it with the sklearn and NLTK lists,
# each word stemmed: the filter runs after the stemmer).
STOP_STEMS = frozenset(
    [
        "a",
        "about",
        "after",
        "again",
        "against",
        "all",
        "am",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "been",
        "below",
        "between",
        "both",
        "but",
        "by",
        "can",
        "did",
        "do",
        "don",
        "down",
        "each",
        "few",
        "for",
        "from",
        "further",
        "had",
        "has",
        "have",
        "he",
        "her",
        "here",
        "herself",
        "him",
        "himself",
        "his",
        "how",
        "i",
        "if",
        "in",
        "into",
        "is",
        "it",
        "itself",
        "just",
        "me",
        "more",
        "most",
        "my",
        "myself",
        "no",
        "nor",
        "not",
        "now",
        "of",
        "off",
        "on",
        "or",
        "other",
        "our",
        "out",
        "over",
        "own",
        "re",
        "s",
        "same",
        "she",
        "should",
        "so",
        "some",
        "such",
        "t",
        "than",
        "that",
        "the",
        "their",
        "them",
        "then",
        "there",
        "these",
        "they",
        "this",
        "those",
        "through",
        "to",
        "too",
        "under",
        "until",
        "up",
        "was",
        "we",
        "were",
        "what",
        "when",
        "where",
        "which",
        "while",
        "who",
        "whom",
        "will",
        "with",
        "you",
        "your",
        "yourself",
    ]
)

_TOKEN = re.compile(r"[^\W_]+")


@cache
def _stemmer() -> Any:
    import Stemmer

    # no cache: PyStemmer's (10,000 words by default) thrashes on a real vocabulary and made
    # stemming ~4x slower than none at all (1M chunks: ~2 of the BM25 build's ~3.5 minutes)
    return Stemmer.Stemmer("english", 0)


def _fold(token: str) -> str:
    if token.isascii():
        return token
    decomposed = unicodedata.normalize("NFKD", token)
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def tokenize(text: str) -> list[str]:
    """The analysed terms of `text`, in order (repeats kept)."""
    words = [w for w in _TOKEN.findall(text.lower()) if len(w.encode("utf-8")) < MAX_TOKEN_BYTES]
    stems: list[str] = _stemmer().stemWords(words)
    return [_fold(s) for s in stems if s not in STOP_STEMS]


IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float32]


def build_postings(
    texts: Iterable[str],
) -> tuple[list[str], IntArray, npt.NDArray[np.int32], FloatArray, FloatArray]:
    """(vocabulary, term pointers, doc ids, term weights, idf) for `texts` (row i = doc i).

    Weight of term t in doc d: tf / (tf + k1 * (1 - b + b * len(d) / avgdl)); a query's score for d
    is the sum over its terms (repeats included) of idf(t) * weight(t, d)."""
    # term ids handed out in first-seen order by a C-level map (no Python call per token), into one
    # flat int64 array: at 1M chunks a per-token generator and a small array per chunk cost minutes
    vocab: defaultdict[str, int] = defaultdict(itertools.count().__next__)
    ids = array.array("q")
    lengths = array.array("q")
    for text in texts:
        terms = tokenize(text)
        lengths.append(len(terms))
        ids.extend(map(vocab.__getitem__, terms))
    n_docs, n_terms = len(lengths), len(vocab)
    doc_len = np.asarray(lengths, dtype=np.float64)
    all_terms = np.frombuffer(ids, dtype=np.int64) if ids else np.zeros(0, np.int64)
    all_docs = np.repeat(np.arange(n_docs, dtype=np.int64), doc_len.astype(np.int64))
    keys, tf = np.unique(all_terms * max(n_docs, 1) + all_docs, return_counts=True)  # term-major
    terms, docs = np.divmod(keys, max(n_docs, 1))
    avgdl = float(doc_len.mean()) if n_docs and doc_len.sum() > 0 else 1.0
    norm = K1 * (1.0 - B + B * doc_len[docs] / avgdl)
    weights = (tf / (tf + norm)).astype(np.float32)
    ptr = np.zeros(n_terms + 1, dtype=np.int64)
    np.cumsum(np.bincount(terms, minlength=n_terms), out=ptr[1:])
    df = np.diff(ptr).astype(np.float64)
    idf = np.log(1.0 + (n_docs - df + 0.5) / (df + 0.5)).astype(np.float32)
    words = [""] * n_terms
    for w, i in vocab.items():
        words[i] = w
    return words, ptr, docs.astype(np.int32), weights, idf


def bm25_scores(
    query: str,
    vocab: dict[str, int],
    ptr: npt.NDArray[np.int64],
    docs: npt.NDArray[np.int32],
    weights: npt.NDArray[np.float32],
    idf: npt.NDArray[np.float32],
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """(doc rows, scores) of every row matching at least one query term (unordered)."""
    counts = Counter(vocab[t] for t in tokenize(query) if t in vocab)
    if not counts:
        return np.zeros(0, np.int64), np.zeros(0, np.float64)
    ids = sorted(counts)
    rows = np.concatenate([docs[ptr[t] : ptr[t + 1]] for t in ids])
    contrib = np.concatenate([weights[ptr[t] : ptr[t + 1]] * (idf[t] * counts[t]) for t in ids])
    uniq, inverse = np.unique(rows, return_inverse=True)
    scores = np.bincount(inverse, weights=contrib, minlength=len(uniq)).astype(np.float64)
    return uniq.astype(np.int64), scores
