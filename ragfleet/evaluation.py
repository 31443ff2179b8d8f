"""Retrieval quality and answer grounding on a BEIR-layout data set (SciFact by default).

The metric math is plain Python over document ids so it can be unit-tested against hand-computed
values and shared by three callers: `ragfleet eval` (through the running fleet,
`ragfleet.eval_fleet`), the benchmarks (in-process) and `run_golden` (the beat-scheduled quality
gauge).

Conventions, fixed here so every number in the project means the same thing:
- Relevance is binary (every SciFact qrel is 1). nDCG@k uses gain 1/log2(rank+1) and the ideal
  ranking of min(k, |relevant|) hits; MRR@k is 1/rank of the first relevant doc within k, else 0;
  Recall@k is |relevant in top k| / |relevant|. Per-query values are averaged over queries.
- The fleet returns chunks; a ranking over documents keeps each doc_id at its first (best)
  occurrence (`collapse_to_documents`), so a document with three matching chunks counts once.
- Grounding hit@k over evidence rows: one of the answer's first k quotes equals, after whitespace
  normalisation, one of the row's rationale sentences.

The data set is read in place at run time (SciFact is CC BY-NC; it is never copied into the repo).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ragfleet.resources import Resources

log = logging.getLogger(__name__)

DEFAULT_DATA_DIR = Path("../shared/data/scifact")
RANK_KS = (10, 100)


# --- metric math --------------------------------------------------------------------------------
def collapse_to_documents(doc_ids: Iterable[str]) -> list[str]:
    """Chunk-level ranking -> document ranking, keeping each document at its best rank."""
    return list(dict.fromkeys(doc_ids))


def ndcg_at_k(ranking: Sequence[str], relevant: set[str], k: int) -> float:
    if not relevant:
        return 0.0
    dcg = sum(1.0 / math.log2(i + 2) for i, d in enumerate(ranking[:k]) if d in relevant)
    ideal = sum(1.0 / math.log2(i + 2) for i in range(min(k, len(relevant))))
    return dcg / ideal


def mrr_at_k(ranking: Sequence[str], relevant: set[str], k: int) -> float:
    for i, d in enumerate(ranking[:k]):
        if d in relevant:
            return 1.0 / (i + 1)
    return 0.0


def recall_at_k(ranking: Sequence[str], relevant: set[str], k: int) -> float:
    if not relevant:
        return 0.0
    return len(relevant.intersection(ranking[:k])) / len(relevant)


def normalise_ws(text: str) -> str:
    return " ".join(text.split())


def grounding_hits(quotes: Sequence[str], evidence: Iterable[str]) -> tuple[bool, bool]:
    """(hit@1, hit@3) of one evidence row: quotes are the answer's, best first."""
    gold = {normalise_ws(s) for s in evidence}
    got = [normalise_ws(q) for q in quotes[:3]]
    return bool(got and got[0] in gold), any(q in gold for q in got)


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), q in [0, 100]."""
    if not values:
        return float("nan")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


# --- data set -----------------------------------------------------------------------------------
@dataclass(slots=True)
class EvidenceRow:
    query_id: str
    doc_id: str
    sentences: list[str]


@dataclass(slots=True)
class Dataset:
    """The queries with qrels (in file order), their qrels, and the evidence rows of those queries."""

    root: Path
    queries: dict[str, str]
    qrels: dict[str, set[str]]
    evidence: list[EvidenceRow]

    @property
    def corpus_path(self) -> Path:
        return self.root / "corpus.jsonl"


def load_dataset(root: Path, *, split: str = "dev", limit: int | None = None) -> Dataset:
    qrels: dict[str, set[str]] = {}
    with (root / "qrels" / f"{split}.tsv").open(encoding="utf-8") as fh:
        for line in fh:
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 3 or parts[0] == "query-id":
                continue
            if float(parts[2]) > 0:
                qrels.setdefault(parts[0], set()).add(parts[1])
    queries: dict[str, str] = {}
    with (root / "queries.jsonl").open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                row = json.loads(line)
                qid = str(row["_id"])
                if qid in qrels:
                    queries[qid] = str(row["text"])
    if limit is not None:
        queries = dict(list(queries.items())[:limit])
    qrels = {q: qrels[q] for q in queries}
    evidence: list[EvidenceRow] = []
    ev_path = root / "evidence.jsonl"
    if ev_path.exists():
        with ev_path.open(encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    row = json.loads(line)
                    if str(row["query_id"]) in queries:
                        evidence.append(
                            EvidenceRow(str(row["query_id"]), str(row["doc_id"]), list(row["evidence"]))
                        )
    return Dataset(root, queries, qrels, evidence)


# --- a whole run --------------------------------------------------------------------------------
@dataclass(slots=True)
class Report:
    queries: int
    ndcg_at_10: float
    mrr_at_10: float
    recall_at_10: float
    recall_at_100: float
    evidence_rows: int = 0
    grounding_hit_at_1: float | None = None
    grounding_hit_at_3: float | None = None
    latency_p50_ms: float | None = None  # ranking pass (top_k sources), enqueue -> answer written
    latency_p99_ms: float | None = None
    answer_latency_p50_ms: float | None = None
    answer_latency_p99_ms: float | None = None
    failed: int = 0
    config: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def markdown(self) -> str:
        def fmt(v: float | None, digits: int = 3) -> str:
            return "n/a" if v is None else f"{v:.{digits}f}"

        rows = [
            ("queries", str(self.queries)),
            ("nDCG@10", fmt(self.ndcg_at_10)),
            ("MRR@10", fmt(self.mrr_at_10)),
            ("Recall@10", fmt(self.recall_at_10)),
            ("Recall@100", fmt(self.recall_at_100)),
            ("evidence rows", str(self.evidence_rows)),
            ("grounding hit@1", fmt(self.grounding_hit_at_1)),
            ("grounding hit@3", fmt(self.grounding_hit_at_3)),
            ("query job latency P50 (ms), ranking pass", fmt(self.latency_p50_ms, 1)),
            ("query job latency P99 (ms), ranking pass", fmt(self.latency_p99_ms, 1)),
            ("query job latency P50 (ms), top-5 answer pass", fmt(self.answer_latency_p50_ms, 1)),
            ("query job latency P99 (ms), top-5 answer pass", fmt(self.answer_latency_p99_ms, 1)),
            ("failed jobs", str(self.failed)),
        ]
        lines = ["| metric | value |", "| --- | --- |"] + [f"| {k} | {v} |" for k, v in rows]
        return "\n".join(lines) + "\n"


def score(
    data: Dataset,
    rankings: dict[str, list[str]],
    *,
    quotes: dict[str, list[str]] | None = None,
    latencies_ms: Sequence[float] = (),
    answer_latencies_ms: Sequence[float] = (),
    failed: int = 0,
    config: dict[str, Any] | None = None,
) -> Report:
    """Average the per-query metrics over every query of `data` (a missing ranking scores 0).

    `rankings` may be chunk-level: they are collapsed to documents here. Grounding is computed only
    when `quotes` is given, over the evidence rows of the evaluated queries.
    """
    n = len(data.queries)
    sums = {"ndcg": 0.0, "mrr": 0.0, "r10": 0.0, "r100": 0.0}
    for qid in data.queries:
        ranking = collapse_to_documents(rankings.get(qid, []))
        rel = data.qrels.get(qid, set())
        sums["ndcg"] += ndcg_at_k(ranking, rel, 10)
        sums["mrr"] += mrr_at_k(ranking, rel, 10)
        sums["r10"] += recall_at_k(ranking, rel, 10)
        sums["r100"] += recall_at_k(ranking, rel, 100)
    avg = {k: (v / n if n else 0.0) for k, v in sums.items()}
    report = Report(
        queries=n,
        ndcg_at_10=avg["ndcg"],
        mrr_at_10=avg["mrr"],
        recall_at_10=avg["r10"],
        recall_at_100=avg["r100"],
        failed=failed,
        config=dict(config or {}),
    )
    if quotes is not None and data.evidence:
        h1 = h3 = 0
        for row in data.evidence:
            a, b = grounding_hits(quotes.get(row.query_id, []), row.sentences)
            h1 += a
            h3 += b
        report.evidence_rows = len(data.evidence)
        report.grounding_hit_at_1 = h1 / len(data.evidence)
        report.grounding_hit_at_3 = h3 / len(data.evidence)
    if latencies_ms:
        report.latency_p50_ms = percentile(latencies_ms, 50)
        report.latency_p99_ms = percentile(latencies_ms, 99)
    if answer_latencies_ms:
        report.answer_latency_p50_ms = percentile(answer_latencies_ms, 50)
        report.answer_latency_p99_ms = percentile(answer_latencies_ms, 99)
    return report


def write_report(report: Report, out_dir: Path, *, name: str = "eval") -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    js = out_dir / f"{name}-{stamp}.json"
    md = out_dir / f"{name}-{stamp}.md"
    js.write_text(json.dumps(report.as_dict(), indent=2) + "\n", encoding="utf-8")
    md.write_text(report.markdown(), encoding="utf-8")
    return js, md


# --- in-process golden set (beat) ---------------------------------------------------------------
def evaluate_inprocess(res: Resources, data: Dataset, *, top_k: int = 100) -> Report:
    """Retrieval metrics through `ragfleet.querying.retrieve` in this process (no answer, no cache)."""
    from ragfleet.querying import retrieve
    from ragfleet.schemas import QueryPayload

    rankings: dict[str, list[str]] = {}
    latencies: list[float] = []
    k = min(top_k, res.settings.max_top_k)
    for qid, question in data.queries.items():
        t0 = time.perf_counter()
        r = retrieve(res, QueryPayload(question=question, top_k=k, use_cache=False))
        latencies.append((time.perf_counter() - t0) * 1000)
        rankings[qid] = [s.doc_id for s in r.sources]
    return score(data, rankings, latencies_ms=latencies, config={"top_k": k, "inprocess": True})


def run_golden(res: Resources, n: int = 50, *, data_dir: Path | None = None) -> Report | None:
    """Evaluate the first `n` dev queries against the live index and publish nDCG@10 as a gauge.

    Meant for a periodic beat task: it returns None (and sets nothing) when the data set is not
    on this machine, so a deployment without it keeps running. The index must hold the data set's
    corpus for the number to mean anything (a drop of the gauge is the alert, not its level).
    """
    from ragfleet import metrics

    root = data_dir or DEFAULT_DATA_DIR
    if not (root / "qrels" / "dev.tsv").exists() or not (root / "queries.jsonl").exists():
        log.info("golden set skipped: no data set at %s", root)
        return None
    report = evaluate_inprocess(res, load_dataset(root, limit=n))
    metrics.set_retrieval_quality(report.ndcg_at_10, dataset="golden")
    return report
