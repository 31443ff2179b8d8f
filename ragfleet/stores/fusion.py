"""Hybrid fusion: one implementation for the stores and the benchmarks that replay them.

The fused score of a candidate is `w * dense' + (1 - w) * sparse'`, where each leg's scores are
min-max normalised over the candidates that leg returned (`minmax`) and a candidate missing from a
leg scores 0 there. What must stay true:
- a leg whose scores are all equal (one candidate, or a flat BM25) normalises to 1.0, not 0 or a
  division by zero: its candidates are as good as that leg can say;
- an empty leg contributes nothing, so hybrid with one leg ranks exactly as that leg alone;
- ties keep a fixed order: the dense leg's order, then the sparse-only candidates in the sparse
  leg's order (a set's order, as before, depended on the process's hash seed).

LanceDB fuses here (`LanceDBStore.search`), as do bench/eval_scifact.py (its fusion sweep) and
bench/grounding_tune.py. Weaviate fuses on the server with the same formula (`relativeScore`,
`alpha` = the dense weight), so its hybrid search needs no second round trip.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import TypeVar

K = TypeVar("K", bound=Hashable)

DEFAULT_DENSE_WEIGHT = 0.5


def minmax(scores: Mapping[K, float]) -> dict[K, float]:
    """Each score mapped onto [0, 1] over this leg's candidates; all-equal scores become 1.0."""
    if not scores:
        return {}
    lo, hi = min(scores.values()), max(scores.values())
    if hi - lo < 1e-12:
        return dict.fromkeys(scores, 1.0)
    return {k: (v - lo) / (hi - lo) for k, v in scores.items()}


def fuse_minmax(
    dense: Mapping[K, float],
    sparse: Mapping[K, float],
    *,
    dense_weight: float = DEFAULT_DENSE_WEIGHT,
) -> list[tuple[K, float]]:
    """Every candidate of either leg with its fused score, best first (ties: see the module)."""
    d, s = minmax(dense), minmax(sparse)
    order = {**dict.fromkeys(d), **dict.fromkeys(s)}  # first appearance: dense, then sparse-only
    fused = {k: dense_weight * d.get(k, 0.0) + (1.0 - dense_weight) * s.get(k, 0.0) for k in order}
    return sorted(fused.items(), key=lambda kv: kv[1], reverse=True)


__all__ = ["DEFAULT_DENSE_WEIGHT", "fuse_minmax", "minmax"]
