"""The snapshot's ANN index for large collections: an HNSW graph (usearch) saved with the snapshot
and memory-mapped, so every retrieval process on a host shares one copy of its pages.

Why: an exact cosine scan costs ~O(rows): past ~100k chunks it is slower than LanceDB's IVF-PQ
(1M chunks: IVF-PQ vector query P50/P99 ~22/33 ms, bench/RESULTS.md). usearch was chosen over
hnswlib (whose load copies the graph into private memory: N processes, N copies) and faiss (whose
mmap flag covers only some index types): `Index.restore(path, view=True)` maps the file read-only,
like the snapshot's .npy columns.

The graph stores int8-quantised vectors (a quarter of float32; cosine on unit vectors survives the
quantisation well) and finds candidates only: the `candidates` best are re-scored exactly against
the snapshot's float32 vectors, so every score it returns is the exact leg's score for that row
(hybrid fusion and the exact path stay comparable). Keys are row numbers.

A tenant filter: usearch's Python search has no predicate, so the ANN is asked for enough
candidates that the tenant's share of them likely covers `n`; a tenant too small for that
(under `MIN_SHARE` of the rows), or an ANN answer with too few of its rows, falls back to an exact
scan of the tenant's rows only (cheap, because there are few).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt

ANN_FILE = "ann.usearch"
CONNECTIVITY = 16  # graph degree (usearch's default): memory ~ rows * 2 * 16 * 4 bytes
EXPANSION_ADD = 64  # build-time beam: 1M x 384 in minutes on 2 cores; recall@10 measured in bench
MIN_SHARE = 0.05  # below this share of the rows a tenant is scanned exactly
MAX_OVERSAMPLE = 20_000  # most candidates asked of the graph for a tenant


def build_ann(vectors: npt.NDArray[np.float32], path: Path, *, threads: int = 0) -> None:
    """Build the graph of `vectors` (row i = key i) and save it to `path` (threads 0: all cores)."""
    from usearch.index import Index

    index = Index(
        ndim=int(vectors.shape[1]),
        metric="cos",
        dtype="i8",
        connectivity=CONNECTIVITY,
        expansion_add=EXPANSION_ADD,
    )
    if len(vectors):
        index.add(np.arange(len(vectors), dtype=np.uint64), vectors, threads=threads)
    index.save(str(path))


class AnnIndex:
    """The saved graph, mapped read-only (pages shared between processes)."""

    def __init__(self, path: Path, *, candidates: int = 400) -> None:
        from usearch.index import Index

        index = Index.restore(str(path), view=True)
        if index is None:
            raise ValueError(f"{path}: not a usearch index")
        self.index: Any = cast(Any, index)
        self.index.expansion_search = max(128, candidates)  # set once: usearch widens it to `count`
        self.candidates = candidates

    def search(self, q: npt.NDArray[np.float32], count: int) -> npt.NDArray[np.int64]:
        """Up to `count` candidate rows, nearest first by the graph's (quantised) distance."""
        size = len(self.index)
        matches = self.index.search(q, max(1, min(count, size)), threads=1)
        keys: npt.NDArray[np.int64] = np.asarray(matches.keys, dtype=np.int64)
        return keys[(keys >= 0) & (keys < size)]

    def dense(
        self,
        vectors: npt.NDArray[np.float32],
        safe_norms: npt.NDArray[np.float32],
        q: npt.NDArray[np.float32],
        n: int,
        mask: npt.NDArray[np.bool_] | None,
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]] | None:
        """(rows, exact cosine scores) of the candidates for the top `n`, or None where the tenant
        is too small for the graph (the caller scans its rows exactly)."""
        count = max(n, self.candidates)
        if mask is not None:
            share = float(np.count_nonzero(mask)) / max(1, len(mask))
            if share < MIN_SHARE:
                return None
            count = min(MAX_OVERSAMPLE, math.ceil(count / share * 1.5))
        rows = self.search(q, count)
        if mask is not None:
            rows = rows[mask[rows]]
            if len(rows) < min(n, int(np.count_nonzero(mask))):
                return None
        rows = np.sort(rows)  # ascending: the mapped pages are read in file order
        scores = (vectors[rows] @ q) / safe_norms[rows]
        return rows, scores.astype(np.float32)
