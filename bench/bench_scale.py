"""Scale: vector query latency, index build time and process RSS at 10k, 100k and 1M chunks.

    python bench/bench_scale.py [--sizes 10000,100000,1000000] [--queries 200]

Synthetic unit vectors (384-d, Gaussian, normalised) stand in for chunks above the real corpus, as the
issue allows; queries are perturbed copies of stored vectors so the nearest neighbour is known and
recall@10 of the ANN index can be reported next to its latency. Tables are written through the same
LanceDBStore the retrieval pool uses; past `ANN_MIN_ROWS` the store builds IVF-PQ (`build_vector_index`).
Prints a table, writes bench/out/scale.json and bench/out/scale.png.

The process loads the embedding model before it queries, as a retrieval worker does, so the RSS
column is what one retrieval worker process holds (model + store handle + index caches).
`--sweep` also tries ANN settings (nprobes x refine_factor) at the largest ANN size: P50/P99 and
recall for each, to choose `RAGFLEET_ANN_NPROBES` / `RAGFLEET_ANN_REFINE_FACTOR`.
Indexes are built the way the fleet builds them: `LanceDBStore.optimize()` (scalar + FTS indexes,
and IVF-PQ past `ANN_MIN_ROWS`). Queries are vector-only (synthetic chunks have no text to match).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ragfleet.stores.lancedb_rows import table_schema
from ragfleet.stores.lancedb_store import ANN_MIN_ROWS, LanceDBStore

DIM = 384


def rss_mb() -> float:
    """Resident set size now (not the peak: index building is transient)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_queries(
    store: LanceDBStore, probes: np.ndarray, n: int, rng: np.random.Generator
) -> tuple[list[float], float]:
    lat, hits = [], 0
    for i in range(n):
        target = probes[i % len(probes)]
        q = target + 0.05 * rng.standard_normal(DIM, dtype=np.float32)
        q /= np.linalg.norm(q)
        t2 = time.perf_counter()
        res = store.search("default", vector=q.tolist(), text=None, mode="vector", top_k=10)
        lat.append((time.perf_counter() - t2) * 1000)
        hits += int(bool(res) and res[0].chunk_id == f"s{i % len(probes)}")
    lat.sort()
    return lat, hits / n


def pct(lat: list[float], q: float) -> float:
    return round(lat[min(len(lat) - 1, int(q * len(lat)))], 2)


def build(store: LanceDBStore, n: int, rng: np.random.Generator) -> np.ndarray:
    store.ensure()
    tbl = store._tbl()
    keep = []
    for start in range(0, n, 100_000):
        m = min(100_000, n - start)
        vecs = rng.standard_normal((m, DIM), dtype=np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        if start == 0:
            keep.append(vecs[:500].copy())
        ids = [f"s{start + i}" for i in range(m)]
        table = pa.table(
            {
                "chunk_id": ids,
                "doc_id": ids,
                "tenant": ["default"] * m,
                "chunk_index": pa.array([0] * m, pa.int32()),
                "text": ["synthetic"] * m,
                "title": [None] * m,
                "start": pa.array([0] * m, pa.int32()),
                "end": pa.array([0] * m, pa.int32()),
                "content_hash": ids,
                "embedding_model": ["synthetic"] * m,
                "tags": [[] for _ in range(m)],
                "metadata": ["{}"] * m,
                "vector": pa.FixedSizeListArray.from_arrays(pa.array(vecs.reshape(-1)), DIM),
            },
            schema=table_schema(DIM),
        )
        tbl.add(table)
    return np.concatenate(keep)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """P50/P99 against size, with the 1M target line (`--plot-only` redraws it from scale.json)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    xs = [r["chunks"] for r in rows]
    ax.plot(xs, [r["p50_ms"] for r in rows], "o-", label="P50")
    ax.plot(xs, [r["p99_ms"] for r in rows], "o--", label="P99")
    ax.axhline(50, ls=":", color="gray", label="P99 target at 1M (50 ms)")
    ax.set_xscale("log")
    ax.set_ylim(bottom=0)
    ax.set_xlabel("chunks (IVF-PQ from 100k)")
    ax.set_ylabel("vector query latency (ms)")
    ax.set_title("LanceDB store: query latency vs size (2 cores)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument(
        "--sweep", action="store_true", help="try nprobes x refine_factor at the largest ANN size"
    )
    ap.add_argument("--plot-only", action="store_true", help="redraw bench/out/scale.png from scale.json")
    args = ap.parse_args()
    out = Path("bench/out")
    if args.plot_only:
        plot(json.loads((out / "scale.json").read_text())["rows"], out / "scale.png")
        return
    from ragfleet.embedding import Embedder, pin_threads
    from ragfleet.settings import Settings

    settings = Settings()
    pin_threads(settings.torch_threads)
    Embedder(settings).warm_up()  # what a retrieval worker holds besides the store
    model_rss = rss_mb()
    print(f"RSS with the embedding model loaded: {model_rss:.0f} MB", flush=True)
    rng = np.random.default_rng(7)
    rows, sweep = [], []
    sizes = [int(x) for x in args.sizes.split(",")]
    for n in sizes:
        root = Path(tempfile.mkdtemp(prefix="rf-scale-"))
        try:
            store = LanceDBStore(
                root,
                "chunks",
                dim=DIM,
                nprobes=settings.ann_nprobes,
                refine_factor=settings.ann_refine_factor,
                storage_version=settings.lancedb_storage_version,
            )
            t0 = time.perf_counter()
            probes = build(store, n, rng)
            write_s = time.perf_counter() - t0
            t1 = time.perf_counter()
            store.optimize()  # as the fleet does: scalar + FTS indexes, IVF-PQ past ANN_MIN_ROWS
            index_s = time.perf_counter() - t1
            store.refresh()
            run_queries(store, probes, 20, rng)  # warm the index caches, as a serving worker has them
            lat, recall = run_queries(store, probes, args.queries, rng)
            ann = n >= ANN_MIN_ROWS
            row = {
                "chunks": n,
                "index": f"IVF-PQ nprobes={store.nprobes} refine={store.refine_factor}" if ann else "exact",
                "write_s": round(write_s, 1),
                "index_build_s": round(index_s, 1),
                "p50_ms": pct(lat, 0.50),
                "p99_ms": pct(lat, 0.99),
                "top1_recall": round(recall, 3),
                "rss_mb": round(rss_mb(), 0),
                "peak_rss_mb": round(peak_rss_mb(), 0),
            }
            rows.append(row)
            print(row, flush=True)
            if args.sweep and ann and n == max(x for x in sizes if x >= ANN_MIN_ROWS):
                for nprobes in (10, 20, 40):
                    for refine in (0, 10):
                        store.nprobes, store.refine_factor = nprobes, refine
                        lat, recall = run_queries(store, probes, args.queries, rng)
                        sweep.append({"chunks": n, "nprobes": nprobes, "refine_factor": refine,
                                      "p50_ms": pct(lat, 0.5), "p99_ms": pct(lat, 0.99),
                                      "top1_recall": round(recall, 3)})  # fmt: skip
                        print(sweep[-1], flush=True)
        finally:
            shutil.rmtree(root, ignore_errors=True)
    print(
        "| chunks | index | write s | index build s | P50 ms | P99 ms | top-1 recall | worker RSS MB | peak |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['chunks']:,} | {r['index']} | {r['write_s']} | {r['index_build_s']} | {r['p50_ms']} | "
            f"{r['p99_ms']} | {r['top1_recall']} | {r['rss_mb']:.0f} | {r['peak_rss_mb']:.0f} |"
        )
    if sweep:
        print("\n| chunks | nprobes | refine_factor | P50 ms | P99 ms | top-1 recall |")
        print("| --- | --- | --- | --- | --- | --- |")
        for r in sweep:
            print(f"| {r['chunks']:,} | {r['nprobes']} | {r['refine_factor']} | {r['p50_ms']} | "
                  f"{r['p99_ms']} | {r['top1_recall']} |")  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    (out / "scale.json").write_text(
        json.dumps({"model_rss_mb": model_rss, "rows": rows, "sweep": sweep}, indent=2)
    )
    plot(rows, out / "scale.png")
    print(f"wrote {out / 'scale.json'} and {out / 'scale.png'}")


if __name__ == "__main__":
    main()
