"""Grounding of the extractive answerer on SciFact dev: does a quote equal a rationale sentence?

    python bench/grounding_tune.py [SCIFACT_DIR] [--sweep]

Retrieval is a small in-process hybrid (bm25s with Snowball stemming + all-MiniLM-L6-v2 dense,
min-max fused 0.5/0.5 over the whole corpus by `ragfleet.stores.fusion`, as the store fuses), so
that the answerer is measured on realistic top-5 passages rather than on the gold abstract. Corpus
embeddings are cached under /tmp (never in the repo; the data set is CC BY-NC and is read in place).
`--sweep` grid-searches the general weights of `ScoringParams`; the chosen defaults live in
ragfleet/generation/extractive.py.

Prints hit@1 / hit@3 over evidence.jsonl rows (hit@k: one of the first k quotes equals, after
whitespace normalisation, one of the row's rationale sentences) and the answerer's p50 latency;
writes the same as JSON to bench/out/.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import bm25s
import numpy as np
import Stemmer

from ragfleet.embedding import Embedder
from ragfleet.generation.extractive import DEFAULT_PARAMS, ScoringParams, answer_from_passages
from ragfleet.schemas import Source
from ragfleet.settings import Settings
from ragfleet.stores.fusion import fuse_minmax

TOP_K = 5
OUT = Path(__file__).resolve().parent / "out"


def _norm(text: str) -> str:
    return " ".join(text.split())


def load(data: Path) -> tuple[list[dict[str, str]], dict[str, str], list[dict[str, object]]]:
    corpus = [json.loads(line) for line in (data / "corpus.jsonl").open()]
    queries = {q["_id"]: q["text"] for q in map(json.loads, (data / "queries.jsonl").open())}
    evidence = [json.loads(line) for line in (data / "evidence.jsonl").open()]
    return corpus, queries, evidence


def _digest(corpus: list[dict[str, str]]) -> str:
    return hashlib.sha256("\x1e".join(d["_id"] for d in corpus).encode()).hexdigest()[:16]


def corpus_vectors(corpus: list[dict[str, str]], texts: list[str], embedder: Embedder) -> np.ndarray:
    cache = Path("/tmp") / f"ragfleet-scifact-minilm-{_digest(corpus)}.npy"
    if cache.exists():
        cached: np.ndarray = np.load(cache)
        return cached
    vecs = embedder.encode(texts)
    np.save(cache, vecs)
    return vecs


def retrieve(data: Path) -> tuple[dict[str, list[Source]], list[dict[str, object]], dict[str, str]]:
    corpus, queries, evidence = load(data)
    cache = Path("/tmp") / f"ragfleet-scifact-top{TOP_K}-{_digest(corpus)}.json"
    if cache.exists():  # the retrieval is fixed; only the answerer is being tuned
        cached = json.loads(cache.read_text())
        return {q: [Source(**s) for s in v] for q, v in cached.items()}, evidence, queries
    texts = [f"{d['title']} {d['text']}" for d in corpus]
    stemmer = Stemmer.Stemmer("english")
    bm25 = bm25s.BM25()
    bm25.index(bm25s.tokenize(texts, stemmer=stemmer, show_progress=False), show_progress=False)
    embedder = Embedder(Settings())
    vecs = corpus_vectors(corpus, texts, embedder)
    qids = sorted({str(r["query_id"]) for r in evidence})
    qvecs = embedder.encode([queries[q] for q in qids])
    out: dict[str, list[Source]] = {}
    for qid, qv in zip(qids, qvecs, strict=True):
        tokens = bm25s.tokenize([queries[qid]], stemmer=stemmer, return_ids=False, show_progress=False)[0]
        sparse = bm25.get_scores([t for t in tokens if t in bm25.vocab_dict])
        dense = dict(enumerate((vecs @ qv).tolist()))
        ranked = fuse_minmax(dense, dict(enumerate(np.asarray(sparse, dtype=np.float32).tolist())))
        fused = dict(ranked[:TOP_K])
        top = list(fused)
        out[qid] = [
            Source(
                n=i + 1,
                doc_id=corpus[j]["_id"],
                chunk_id=f"{corpus[j]['_id']}:0",
                title=corpus[j]["title"],
                text=f"{corpus[j]['title'].strip()}\n{corpus[j]['text']}",
                score=float(fused[j]),
                start=0,
                end=len(corpus[j]["text"]),
            )
            for i, j in enumerate(top)
        ]
    cache.write_text(json.dumps({q: [s.model_dump() for s in v] for q, v in out.items()}))
    return out, evidence, queries


def evaluate(
    retrieved: dict[str, list[Source]],
    evidence: list[dict[str, object]],
    queries: dict[str, str],
    params: ScoringParams,
    *,
    n_sentences: int = 3,
    timing: bool = False,
) -> dict[str, float]:
    answers: dict[str, list[str]] = {}
    lat: list[float] = []
    for qid, sources in retrieved.items():
        t0 = time.perf_counter()
        _, quotes = answer_from_passages(queries[qid], sources, n_sentences=n_sentences, params=params)
        lat.append((time.perf_counter() - t0) * 1000)
        answers[qid] = [_norm(q.text) for q in quotes]
    if timing:  # a second pass with warm caches: the steady state of a worker
        lat = []
        for qid, sources in retrieved.items():
            t0 = time.perf_counter()
            answer_from_passages(queries[qid], sources, n_sentences=n_sentences, params=params)
            lat.append((time.perf_counter() - t0) * 1000)
    h1 = h3 = 0
    for row in evidence:
        gold = {_norm(str(s)) for s in row["evidence"]}  # type: ignore[attr-defined]
        got = answers[str(row["query_id"])]
        h1 += bool(got[:1] and got[0] in gold)
        h3 += any(q in gold for q in got[:3])
    n = len(evidence)
    lat.sort()
    return {
        "hit@1": round(h1 / n, 4),
        "hit@3": round(h3 / n, 4),
        "p50_ms": round(statistics.median(lat), 3),
        "p99_ms": round(lat[int(0.99 * (len(lat) - 1))], 3),
        "rows": n,
    }


def sweep(
    retrieved: dict[str, list[Source]], evidence: list[dict[str, object]], queries: dict[str, str]
) -> list[tuple[dict[str, float], ScoringParams]]:
    grid: dict[str, list[float]] = {
        "w_coverage": [0.0, 0.2, 0.4, 0.6],
        "w_rank": [0.0, 0.4, 0.6, 0.8, 1.0],
        "w_position": [0.0, 0.2, 0.3, 0.4, 0.5],
        "w_fragment": [0.2],
        "b": [0.5, 0.75],
    }
    results = []
    for values in itertools.product(*grid.values()):
        params = replace(DEFAULT_PARAMS, **dict(zip(grid, values, strict=True)))  # type: ignore[arg-type]
        results.append((evaluate(retrieved, evidence, queries, params), params))
    results.sort(key=lambda r: (-r[0]["hit@3"], -r[0]["hit@1"]))
    return results


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    data = Path(args[0] if args else "/work/shared/data/scifact")
    t0 = time.perf_counter()
    retrieved, evidence, queries = retrieve(data)
    print(f"retrieved top-{TOP_K} for {len(retrieved)} queries in {time.perf_counter() - t0:.1f} s")
    gold_docs = [str(r["doc_id"]) in {s.doc_id for s in retrieved[str(r["query_id"])]} for r in evidence]
    recall = sum(gold_docs) / len(gold_docs)
    print(f"evidence abstract in top-{TOP_K}: {recall:.3f}")
    report: dict[str, object] = {"data": str(data), "top_k": TOP_K, "gold_in_top_k": round(recall, 4)}
    if "--sweep" in sys.argv:
        results = sweep(retrieved, evidence, queries)
        for metrics, params in results[:10]:
            print(metrics, asdict(params))
        report["sweep_top10"] = [{"metrics": m, "params": asdict(p)} for m, p in results[:10]]
    metrics = evaluate(retrieved, evidence, queries, DEFAULT_PARAMS, timing=True)
    print(f"default params {asdict(DEFAULT_PARAMS)}")
    print(
        f"grounding hit@1={metrics['hit@1']:.3f} hit@3={metrics['hit@3']:.3f} "
        f"answerer p50={metrics['p50_ms']:.2f} ms p99={metrics['p99_ms']:.2f} ms over {metrics['rows']} rows"
    )
    report.update(metrics=metrics, params=asdict(DEFAULT_PARAMS))
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"grounding-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
