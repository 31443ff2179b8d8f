"""`ragfleet eval`'s code path through real workers on a small SciFact slice.

The slice: the documents relevant to the first 20 dev queries plus distractors from the start of
the corpus (~200 documents), in a tenant of its own so the session's other tests neither see
these documents nor disturb the ranking. The data set is read in place (never copied).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from ragfleet.client import BrokerTransport, FleetClient
from ragfleet.corpus import read_documents
from ragfleet.eval_fleet import evaluate_fleet
from ragfleet.evaluation import load_dataset
from ragfleet.settings import Settings
from tests.conftest import need, scifact_dir

pytestmark = [pytest.mark.redis, pytest.mark.workers, pytest.mark.model, pytest.mark.slow]

DATA = scifact_dir()
N_QUERIES = 20
N_DOCS = 200


def _slice(data: Path, relevant: set[str]) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    distractors: list[dict[str, Any]] = []
    for doc in read_documents(data / "corpus.jsonl"):
        if doc["id"] in relevant:
            docs.append(doc)
        elif len(distractors) < N_DOCS:
            distractors.append(doc)
    return docs + distractors[: max(0, N_DOCS - len(docs))]


def test_eval_through_the_fleet_scores_a_small_scifact_slice(fleet: Any, base_settings: Settings) -> None:
    need((DATA / "qrels" / "dev.tsv").exists(), f"SciFact not found at {DATA}")
    data = load_dataset(DATA, limit=N_QUERIES)
    relevant = set().union(*data.qrels.values())
    docs = _slice(DATA, relevant)
    assert relevant <= {d["id"] for d in docs}

    settings = base_settings.model_copy(update={"default_tenant": "scifact-eval"})
    client = FleetClient(BrokerTransport(settings))
    t0 = time.monotonic()
    for job in client.index_many(iter(docs), batch_size=100):
        rec = client.wait(job, timeout=120)
        assert not rec["result"]["errors"]

    report = evaluate_fleet(client, data, top_k=20, concurrency=4, timeout_s=60)
    elapsed = time.monotonic() - t0

    assert report.failed == 0
    assert report.queries == N_QUERIES
    assert report.evidence_rows == len(data.evidence) > 0
    for name in (
        "ndcg_at_10",
        "mrr_at_10",
        "recall_at_10",
        "recall_at_100",
        "grounding_hit_at_1",
        "grounding_hit_at_3",
    ):
        value = getattr(report, name)
        assert value is not None and 0.0 <= value <= 1.0, (name, value)
    # a random ranking of ~200 docs scores ~0.03; the real pipeline is far above that
    assert report.ndcg_at_10 > 0.5, report.markdown()
    assert report.recall_at_10 >= report.ndcg_at_10 * 0.8
    assert report.grounding_hit_at_3 is not None and report.grounding_hit_at_3 >= report.grounding_hit_at_1  # type: ignore[operator]
    assert report.latency_p50_ms is not None and report.latency_p50_ms > 0
    assert elapsed < 120, f"slice eval took {elapsed:.0f} s"
