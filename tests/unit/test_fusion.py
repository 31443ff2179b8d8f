"""`ragfleet.stores.fusion`: the one min-max hybrid fusion of the stores and the benchmarks.

Hand-computed cases, the edge cases the store meets (an empty leg, a single candidate, a flat
BM25 leg, ties), and the scores of the code it replaced (LanceDB's and eval_scifact's copies).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import pytest

from ragfleet.stores.fusion import fuse_minmax, minmax

DENSE = {"a": 0.9, "b": 0.5, "c": 0.1}
SPARSE = {"b": 10.0, "d": 4.0, "a": 1.0}


def test_minmax_maps_a_leg_onto_zero_one() -> None:
    assert minmax({"x": 3.0, "y": 1.0, "z": 2.0}) == {"x": 1.0, "y": 0.0, "z": 0.5}


def test_minmax_of_a_flat_leg_is_one_not_a_division_by_zero() -> None:
    assert minmax({"only": 0.42}) == {"only": 1.0}
    assert minmax({"x": 2.0, "y": 2.0}) == {"x": 1.0, "y": 1.0}
    assert minmax({}) == {}


def test_equal_weights_by_hand() -> None:
    # dense' a=1 b=0.5 c=0; sparse' (lo 1, hi 10) b=1 d=1/3 a=0
    fused = fuse_minmax(DENSE, SPARSE)
    assert [k for k, _ in fused] == ["b", "a", "d", "c"]
    assert dict(fused) == pytest.approx({"b": 0.75, "a": 0.5, "d": 1 / 6, "c": 0.0})


def test_dense_weight_by_hand() -> None:
    fused = dict(fuse_minmax(DENSE, SPARSE, dense_weight=0.3))
    assert fused == pytest.approx({"a": 0.3, "b": 0.3 * 0.5 + 0.7, "c": 0.0, "d": 0.7 / 3})


def test_weight_one_ranks_by_the_dense_leg_alone() -> None:
    fused = fuse_minmax(DENSE, SPARSE, dense_weight=1.0)
    # c (dense' 0) and d (absent from dense) tie at 0: the dense leg's candidate first
    assert fused == [("a", 1.0), ("b", 0.5), ("c", 0.0), ("d", 0.0)]


def test_an_empty_leg_leaves_the_other_legs_order() -> None:
    sparse_only = fuse_minmax({}, {"x": 3.0, "y": 1.0, "z": 2.0})
    assert sparse_only == [("x", 0.5), ("z", 0.25), ("y", 0.0)]
    dense_only = fuse_minmax({"p": 0.2, "q": 0.8}, {})
    assert dense_only == [("q", 0.5), ("p", 0.0)]
    assert fuse_minmax({}, {}) == []


def test_a_single_candidate_in_one_leg_scores_its_full_weight() -> None:
    assert fuse_minmax({"a": 0.7}, {}) == [("a", 0.5)]
    assert fuse_minmax({"a": 0.7}, {"a": 12.0}) == [("a", 1.0)]


def test_ties_keep_dense_order_then_sparse_only_order() -> None:
    assert fuse_minmax({"a": 1.0, "b": 0.0}, {"b": 1.0, "a": 0.0}) == [("a", 0.5), ("b", 0.5)]
    # c and b are sparse-only and tie (a flat sparse leg): the sparse leg's order
    fused = fuse_minmax({"a": 1.0}, {"c": 5.0, "b": 5.0})
    assert fused == [("a", 0.5), ("c", 0.5), ("b", 0.5)]


def test_tie_order_does_not_depend_on_the_hash_seed() -> None:
    """The code this replaced fused over `d.keys() | s.keys()`: ties came out in a set's order."""
    script = (
        "import json\nfrom ragfleet.stores.fusion import fuse_minmax\n"
        "d = {f'd{i}': 1.0 for i in range(20)}\ns = {f's{i}': 1.0 for i in range(20)}\n"
        "print(json.dumps([k for k, _ in fuse_minmax(d, s)]))"
    )
    orders = set()
    for seed in ("1", "2", "3"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
        )
        orders.add(out.stdout)
    assert len(orders) == 1
    assert json.loads(orders.pop()) == [f"d{i}" for i in range(20)] + [f"s{i}" for i in range(20)]


def _old_lancedb_fusion(dense: dict[str, float], sparse: dict[str, float], w: float) -> dict[str, float]:
    """The fusion `LanceDBStore.search` ran before this module (and eval_scifact's copy of it)."""

    def _minmax(scores: dict[str, float]) -> dict[str, float]:
        if not scores:
            return {}
        lo, hi = min(scores.values()), max(scores.values())
        if hi - lo < 1e-12:
            return {k: 1.0 for k in scores}
        return {k: (v - lo) / (hi - lo) for k, v in scores.items()}

    d, s = _minmax(dense), _minmax(sparse)
    return {k: w * d.get(k, 0.0) + (1.0 - w) * s.get(k, 0.0) for k in d.keys() | s.keys()}


@pytest.mark.parametrize("seed", range(25))
def test_scores_are_bit_identical_to_the_code_it_replaced(seed: int) -> None:
    rng = random.Random(seed)
    ids = [f"c{i}" for i in range(60)]
    dense = {k: 1.0 - rng.random() * 0.8 for k in rng.sample(ids, rng.randint(0, 50))}
    sparse = {k: rng.random() * 20 for k in rng.sample(ids, rng.randint(0, 50))}
    w = rng.choice([0.0, 0.3, 0.5, 0.6, 1.0])
    fused = fuse_minmax(dense, sparse, dense_weight=w)
    old = _old_lancedb_fusion(dense, sparse, w)
    assert dict(fused) == old  # exact floats, same candidates
    scores = [score for _, score in fused]
    assert scores == sorted(old.values(), reverse=True)
