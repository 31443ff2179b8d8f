"""Re-tune the extractive scorer's general weights on SciFact dev, honestly: 5-fold cross-validation.

    python bench/grounding_cv.py [--data SCIFACT_DIR] [--folds 5]

Why: the weights of `ScoringParams` were grid-searched (bench/grounding_tune.py) on whole-abstract
passages; the chunker changed (tokens-3) and so did the passages the answerer sees. SciFact has no
other labelled split than dev, so a re-tune on dev alone would be scored on the rows it was fit to.
Here the evidence QUERIES are split into K folds by a stable hash of query_id; for each fold the
grid's best params are chosen on the other folds (hit@3, ties by hit@1, then by L1 closeness to the
current defaults) and scored on the held-out fold. The pooled held-out hit@3 is the unbiased estimate
of what re-tuning buys.

Decision rule (fixed before running): adopt new defaults only if the pooled held-out hit@3 beats the
current defaults' hit@3 on the same retrieval; the params then adopted are those chosen on all of dev
(they are general weights, not per query), reported next to the held-out estimate. Otherwise change
nothing.

Retrieval runs once, in process, through bench/eval_scifact.py's functions: the store the fleet's
chunker builds (cached under /tmp/ragfleet-eval), `ragfleet.querying.retrieve` with the current
Settings, top-`default_top_k` sources per evidence query. The answerer's candidate sentences are then
built once per query and only `score_sentences` runs per grid point, with `answer_from_passages`'s
own ordering (checked against it for the defaults before the grid runs).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, str(Path(__file__).resolve().parent))

from eval_scifact import OUT, build_store, evidence_sources, inprocess_resources

from ragfleet.evaluation import DEFAULT_DATA_DIR, grounding_hits, load_dataset
from ragfleet.generation.extractive import (
    DEFAULT_PARAMS,
    ScoringParams,
    Sentence,
    answer_from_passages,
    candidate_sentences,
    score_sentences,
)
from ragfleet.settings import Settings

# A modest grid around the defaults; w_bm25 stays 1 (BM25 is normalised to the best candidate, so
# the other weights are relative to it).
GRID: dict[str, tuple[float, ...]] = {
    "w_coverage": (0.2, 0.3, 0.4, 0.5, 0.6),
    "w_rank": (0.4, 0.5, 0.6, 0.7, 0.8),
    "w_position": (0.3, 0.4, 0.5, 0.6, 0.7),
    "w_fragment": (0.1, 0.2, 0.3),
    "b": (0.5, 0.75),
}


def fold_of(query_id: str, k: int) -> int:
    """A stable fold: the same query lands in the same fold on every machine and run."""
    return int(hashlib.sha256(query_id.encode("utf-8")).hexdigest(), 16) % k


def top_quotes(sentences: list[Sentence], scores: list[float], n: int) -> list[str]:
    """`answer_from_passages`'s selection: best score, then better-ranked source, then earlier."""
    order = sorted(range(len(sentences)), key=lambda i: (-scores[i], sentences[i].rank, i))
    return [sentences[i].text for i in order[: max(1, n)]]


def distance(p: ScoringParams) -> float:
    return float(sum(abs(getattr(p, f) - getattr(DEFAULT_PARAMS, f)) for f in GRID))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA_DIR)
    ap.add_argument("--folds", type=int, default=5)
    args = ap.parse_args()
    k = args.folds

    settings = Settings(torch_threads=int(os.environ.get("BENCH_TORCH_THREADS", "2")))
    data = load_dataset(args.data)
    t0 = time.perf_counter()
    store = build_store(data, settings)
    sources = evidence_sources(inprocess_resources(store, settings), data, settings)
    took = time.perf_counter() - t0
    print(f"retrieved top-{settings.default_top_k} for {len(sources)} queries in {took:.1f} s")

    n_quotes = settings.answer_sentences
    cands = {q: candidate_sentences(s) for q, s in sources.items()}
    rows = [(r.query_id, r.sentences) for r in data.evidence]
    row_fold = [fold_of(q, k) for q, _ in rows]

    def hits(params: ScoringParams) -> list[tuple[bool, bool]]:
        quotes = {
            q: top_quotes(c, score_sentences(data.queries[q], c, params), n_quotes) for q, c in cands.items()
        }
        return [grounding_hits(quotes[q], gold) for q, gold in rows]

    # the shortcut must be the answerer: same quotes as answer_from_passages for the defaults
    for q, s in sources.items():
        _, ref = answer_from_passages(data.queries[q], s, n_sentences=n_quotes)
        got = top_quotes(cands[q], score_sentences(data.queries[q], cands[q], DEFAULT_PARAMS), n_quotes)
        assert [x.text for x in ref] == got, q

    t1 = time.perf_counter()
    grid = [
        replace(DEFAULT_PARAMS, **dict(zip(GRID, values, strict=True)))  # type: ignore[arg-type]
        for values in itertools.product(*GRID.values())
    ]
    if DEFAULT_PARAMS not in grid:
        grid.append(DEFAULT_PARAMS)
    # per grid point, per fold: (hit@1 count, hit@3 count)
    table: list[list[tuple[int, int]]] = []
    for params in grid:
        per_fold = [[0, 0] for _ in range(k)]
        for f, (hit1, hit3) in zip(row_fold, hits(params), strict=True):
            per_fold[f][0] += hit1
            per_fold[f][1] += hit3
        table.append([(a, b) for a, b in per_fold])
    print(f"scored {len(grid)} grid points in {time.perf_counter() - t1:.1f} s")

    n_rows = len(rows)
    fold_rows = [row_fold.count(f) for f in range(k)]
    fold_queries = [sum(fold_of(q, k) == f for q in cands) for f in range(k)]

    def best(folds: list[int]) -> int:
        def key(i: int) -> tuple[int, int, float]:
            h1 = sum(table[i][f][0] for f in folds)
            h3 = sum(table[i][f][1] for f in folds)
            return (-h3, -h1, distance(grid[i]))

        return min(range(len(grid)), key=key)

    def fmt(p: ScoringParams) -> str:
        return " ".join(f"{f}={getattr(p, f)}" for f in GRID)

    d = grid.index(DEFAULT_PARAMS)
    report: dict[str, Any] = {"folds": [], "grid": {f: list(v) for f, v in GRID.items()}, "rows": n_rows}
    pooled = [0, 0]
    pooled_default = [0, 0]
    print(
        "| fold | queries | rows | chosen on other folds | held-out hit@1 | held-out hit@3 | default hit@3 |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for f in range(k):
        i = best([g for g in range(k) if g != f])
        h1, h3 = table[i][f]
        pooled[0] += h1
        pooled[1] += h3
        pooled_default[0] += table[d][f][0]
        pooled_default[1] += table[d][f][1]
        nr = max(1, fold_rows[f])
        print(
            f"| {f} | {fold_queries[f]} | {fold_rows[f]} | {fmt(grid[i])} | {h1 / nr:.3f} | {h3 / nr:.3f} | "
            f"{table[d][f][1] / nr:.3f} |"
        )
        report["folds"].append(
            {"fold": f, "rows": fold_rows[f], "params": asdict(grid[i]), "hit@1": h1 / nr, "hit@3": h3 / nr}
        )
    all_i = best(list(range(k)))
    in1 = sum(h for h, _ in table[all_i]) / n_rows
    in3 = sum(h for _, h in table[all_i]) / n_rows
    def1, def3 = pooled_default[0] / n_rows, pooled_default[1] / n_rows
    cv1, cv3 = pooled[0] / n_rows, pooled[1] / n_rows
    adopt = pooled[1] > pooled_default[1]
    print(f"current defaults ({fmt(DEFAULT_PARAMS)}): hit@1 {def1:.3f} hit@3 {def3:.3f} over {n_rows} rows")
    print(f"pooled held-out ({k}-fold CV): hit@1 {cv1:.3f} hit@3 {cv3:.3f}")
    print(f"chosen on all of dev: {fmt(grid[all_i])}: in-sample hit@1 {in1:.3f} hit@3 {in3:.3f}")
    print(
        "decision: "
        + ("ADOPT the params chosen on all of dev" if adopt else "keep the defaults")
        + f" (held-out hit@3 {cv3:.3f} vs defaults {def3:.3f})"
    )
    report.update(
        defaults={"params": asdict(DEFAULT_PARAMS), "hit@1": def1, "hit@3": def3},
        pooled_held_out={"hit@1": cv1, "hit@3": cv3},
        chosen_on_all={"params": asdict(grid[all_i]), "hit@1": in1, "hit@3": in3},
        adopt=adopt,
    )
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"grounding-cv-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
