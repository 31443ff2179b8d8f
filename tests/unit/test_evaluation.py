"""Metric math of ragfleet.evaluation against values computed by hand (no services)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from ragfleet.evaluation import (
    Dataset,
    EvidenceRow,
    collapse_to_documents,
    grounding_hits,
    load_dataset,
    mrr_at_k,
    ndcg_at_k,
    percentile,
    recall_at_k,
    run_golden,
    score,
)
from ragfleet.resources import Resources
from ragfleet.settings import Settings


def test_ndcg_two_relevant_at_ranks_1_and_3() -> None:
    # DCG = 1/log2(2) + 1/log2(4) = 1.5; IDCG = 1 + 1/log2(3) = 1.6309298
    assert ndcg_at_k(["a", "x", "b", "y"], {"a", "b"}, 10) == pytest.approx(1.5 / (1 + 1 / math.log2(3)))


def test_ndcg_ideal_is_capped_at_k() -> None:
    # 3 relevant, k=2, both slots relevant: perfect
    assert ndcg_at_k(["a", "b", "c"], {"a", "b", "c"}, 2) == pytest.approx(1.0)
    # relevant doc just past the cut-off counts nothing
    assert ndcg_at_k(["x", "y", "a"], {"a"}, 2) == 0.0


def test_ndcg_single_relevant_at_rank_2() -> None:
    assert ndcg_at_k(["x", "a"], {"a"}, 10) == pytest.approx(1 / math.log2(3))  # 0.6309


def test_mrr_is_reciprocal_rank_of_first_relevant_within_k() -> None:
    assert mrr_at_k(["x", "y", "a", "b"], {"a", "b"}, 10) == pytest.approx(1 / 3)
    assert mrr_at_k(["x", "y", "a"], {"a"}, 2) == 0.0
    assert mrr_at_k([], {"a"}, 10) == 0.0


def test_recall_counts_relevant_in_top_k_over_all_relevant() -> None:
    assert recall_at_k(["a", "x", "b"], {"a", "b", "c"}, 2) == pytest.approx(1 / 3)
    assert recall_at_k(["a", "x", "b"], {"a", "b", "c"}, 3) == pytest.approx(2 / 3)
    assert recall_at_k(["a"], set(), 10) == 0.0


def test_collapse_keeps_each_document_at_its_first_rank() -> None:
    assert collapse_to_documents(["d1", "d2", "d1", "d3", "d2"]) == ["d1", "d2", "d3"]


def test_percentile_interpolates_like_numpy() -> None:
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == pytest.approx(2.5)
    assert percentile([1.0, 2.0, 3.0, 4.0], 99) == pytest.approx(3.97)
    assert percentile([7.0], 99) == 7.0
    assert math.isnan(percentile([], 50))


def test_grounding_normalises_whitespace_and_looks_at_first_three_quotes() -> None:
    ev = ["Foo bar baz."]
    assert grounding_hits(["Foo  bar\nbaz.", "x"], ev) == (True, True)
    assert grounding_hits(["x", "y", "Foo bar baz."], ev) == (False, True)
    assert grounding_hits(["x", "y", "z", "Foo bar baz."], ev) == (False, False)
    assert grounding_hits([], ev) == (False, False)
    # equality, not containment
    assert grounding_hits(["Foo bar baz. And more."], ev) == (False, False)


def test_score_averages_over_queries_collapses_chunks_and_scores_missing_as_zero() -> None:
    data = Dataset(
        root=Path("."),
        queries={"q1": "one", "q2": "two"},
        qrels={"q1": {"a"}, "q2": {"b", "c"}},
        evidence=[
            EvidenceRow("q1", "a", ["S1."]),
            EvidenceRow("q1", "a", ["S2."]),
            EvidenceRow("q2", "b", ["S3."]),
        ],
    )
    # q1: chunk-level ranking a,a,x -> docs a,x: nDCG 1, MRR 1, R@10 1. q2 missing: all 0.
    rep = score(
        data,
        {"q1": ["a", "a", "x"]},
        quotes={"q1": ["S2.", "S1."], "q2": ["nope"]},
        latencies_ms=[10.0, 20.0, 30.0],
    )
    assert rep.queries == 2
    assert rep.ndcg_at_10 == pytest.approx(0.5)
    assert rep.mrr_at_10 == pytest.approx(0.5)
    assert rep.recall_at_10 == pytest.approx(0.5)
    assert rep.recall_at_100 == pytest.approx(0.5)
    # rows: (q1,S1): hit@1 no, hit@3 yes; (q1,S2): yes, yes; (q2,S3): no, no
    assert rep.evidence_rows == 3
    assert rep.grounding_hit_at_1 == pytest.approx(1 / 3)
    assert rep.grounding_hit_at_3 == pytest.approx(2 / 3)
    assert rep.latency_p50_ms == pytest.approx(20.0)
    md = rep.markdown()
    assert "| nDCG@10 | 0.500 |" in md
    assert "| grounding hit@3 | 0.667 |" in md


def test_score_without_quotes_leaves_grounding_unset() -> None:
    data = Dataset(Path("."), {"q": "x"}, {"q": {"a"}}, [EvidenceRow("q", "a", ["S."])])
    rep = score(data, {"q": ["b", "a"]})
    assert rep.grounding_hit_at_1 is None
    assert rep.ndcg_at_10 == pytest.approx(1 / math.log2(3))


def _write_beir(root: Path) -> None:
    (root / "qrels").mkdir(parents=True)
    (root / "qrels" / "dev.tsv").write_text(
        "query-id\tcorpus-id\tscore\n1\tA\t1\n1\tB\t1\n3\tC\t1\n2\tD\t0\n"
    )
    (root / "queries.jsonl").write_text(
        "\n".join(json.dumps({"_id": q, "text": f"claim {q}"}) for q in ("3", "9", "1", "2")) + "\n"
    )
    (root / "evidence.jsonl").write_text(
        json.dumps({"query_id": "1", "doc_id": "A", "evidence": ["E1."]})
        + "\n"
        + json.dumps({"query_id": "3", "doc_id": "C", "evidence": ["E3."]})
        + "\n"
    )


def test_load_dataset_keeps_queries_with_positive_qrels_in_file_order(tmp_path: Path) -> None:
    _write_beir(tmp_path)
    data = load_dataset(tmp_path)
    assert list(data.queries) == ["3", "1"]  # 9 has no qrels, 2 only a zero score
    assert data.qrels == {"3": {"C"}, "1": {"A", "B"}}
    assert [r.query_id for r in data.evidence] == ["1", "3"]
    first = load_dataset(tmp_path, limit=1)
    assert list(first.queries) == ["3"]
    assert [r.query_id for r in first.evidence] == ["3"]


def test_run_golden_without_the_data_set_does_nothing(tmp_path: Path) -> None:
    res = Resources(Settings(redis_url="redis://127.0.0.1:1/0"))  # never contacted
    assert run_golden(res, n=5, data_dir=tmp_path / "missing") is None
