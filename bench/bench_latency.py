"""Query latency through the fleet vs the same pipeline in-process, measured in the same run.

    python bench/bench_latency.py [--use-running] [--docs 1000] [--per-level 60]

- fleet: P50/P99 of query jobs (cache off: use_cache False, distinct questions per level so the
  embedding cache cannot help either) at 1, 4 and 16 jobs in flight; latency is the job record's
  `updated_at - created_at` (enqueue to the terminal write of the answer); throughput at 16 in
  flight is the saturated rate.
- in-process: `ragfleet.querying.run_inline` (retrieve + answer) in this process on the same store,
  one at a time and with two threads (the fleet's retrieval pool has two processes).
- the unit of overhead: a Celery no-op round trip on the same broker and prefix, through a tiny app
  defined here (`noop_app`, queue `<prefix>:bench-noop`, its own worker process), and the latency
  of a cache hit (the same question again, use_cache True) through the fleet.

`--use-running` uses the fleet left by `bench_indexing.py --keep` (SciFact indexed); otherwise a
fresh fleet is started and `--docs` SciFact documents are indexed first.
Writes bench/out/latency-*.json and a PNG of latency vs concurrency.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from celery import Celery

from ragfleet.settings import Settings

OUT = Path(__file__).resolve().parent / "out"
REPO = Path(__file__).resolve().parent.parent


def _make_noop_app() -> Celery:
    """A separate, minimal Celery app on the fleet's broker and key prefix: no ragfleet tasks, no
    job records - only what Celery itself costs for one send -> worker -> result round trip."""
    s = Settings()
    app = Celery("ragfleet-bench-noop", broker=s.broker, backend=s.backend, set_as_current=False)
    opts = {"global_keyprefix": s.broker_key_prefix} if s.broker_key_prefix else {}
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        broker_transport_options=opts,
        result_backend_transport_options=opts,
        result_expires=600,
        worker_prefetch_multiplier=1,
        task_default_queue=f"{s.key_prefix}:bench-noop",
    )

    @app.task(name="bench.noop")  # type: ignore[untyped-decorator]
    def noop() -> int:
        return 1

    return app


noop_app = _make_noop_app()


def _pct(xs: list[float], q: float) -> float:
    from ragfleet.evaluation import percentile

    return percentile(xs, q)


def measure_noop(n: int = 200) -> list[float]:
    task = noop_app.tasks["bench.noop"]
    for _ in range(10):
        task.delay().get(timeout=30)
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        task.delay().get(timeout=30)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def fleet_level(client: Any, questions: list[str], concurrency: int) -> dict[str, Any]:
    from ragfleet.evaluation import run_through_fleet

    t0 = time.perf_counter()
    batch = {str(i): q for i, q in enumerate(questions)}
    run = run_through_fleet(client, batch, top_k=5, concurrency=concurrency, use_cache=False)
    wall = time.perf_counter() - t0
    lat = run.latencies_ms
    return {
        "concurrency": concurrency,
        "n": len(lat),
        "failed": run.failed,
        "p50_ms": _pct(lat, 50),
        "p99_ms": _pct(lat, 99),
        "mean_ms": statistics.fmean(lat) if lat else float("nan"),
        "throughput_qps": len(lat) / wall,
    }


def inprocess_level(res: Any, questions: list[str], threads: int) -> dict[str, Any]:
    from ragfleet.querying import run_inline
    from ragfleet.schemas import QueryPayload

    def one(q: str) -> float:
        t0 = time.perf_counter()
        run_inline(res, QueryPayload(question=q, top_k=5, use_cache=False))
        return (time.perf_counter() - t0) * 1000

    t0 = time.perf_counter()
    if threads == 1:
        lat = [one(q) for q in questions]
    else:
        with ThreadPoolExecutor(threads) as ex:
            lat = list(ex.map(one, questions))
    wall = time.perf_counter() - t0
    return {
        "threads": threads,
        "n": len(lat),
        "p50_ms": _pct(lat, 50),
        "p99_ms": _pct(lat, 99),
        "mean_ms": statistics.fmean(lat),
        "throughput_qps": len(lat) / wall,
    }


def cache_hits(client: Any, questions: list[str]) -> list[float]:
    for q in questions:  # fill the cache
        client.wait(client.submit(q, use_cache=True))
    out = []
    for q in questions:
        rec = client.wait(client.submit(q, use_cache=True))
        assert rec["result"].get("cached"), "expected a cache hit"
        out.append((float(rec["updated_at"]) - float(rec["created_at"])) * 1000)
    return out


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = result["fleet"]
    cs = [lv["concurrency"] for lv in levels]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(cs, [lv["p50_ms"] for lv in levels], "o-", label="fleet P50")
    ax.plot(cs, [lv["p99_ms"] for lv in levels], "o--", label="fleet P99")
    ax.axhline(result["inprocess"][0]["p50_ms"], color="gray", label="in-process P50 (serial)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(cs, [str(c) for c in cs])
    ax.set_xlabel("jobs in flight")
    ax.set_ylabel("latency (ms)")
    ax.set_title("Query latency, cache off (2 cores)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data/scifact"))
    ap.add_argument("--use-running", action="store_true")
    ap.add_argument("--docs", type=int, default=1000)
    ap.add_argument("--per-level", type=int, default=60, help="queries per concurrency level (x2 at 16)")
    args = ap.parse_args()

    from bench.run_fleet import BenchFleet
    from ragfleet.evaluation import load_dataset

    if args.use_running:
        fleet = BenchFleet.load()
        own = False
    else:
        fleet = BenchFleet.create()
        fleet.start("retrieval", "generation", "indexing")
        own = True
    for k, v in fleet.settings_env().items():
        os.environ[k] = v  # the noop app and Settings() below read them
    global noop_app
    noop_app = _make_noop_app()
    settings = Settings()
    noop_worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "bench.bench_latency:noop_app", "worker", "--pool", "solo",
         "-l", "WARNING", "-n", f"noop-{os.getpid()}@bench", "--without-mingle", "--without-gossip"],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        from ragfleet.client import BrokerTransport, FleetClient

        client = FleetClient(BrokerTransport(settings))
        if own:
            from ragfleet.corpus import read_documents

            docs = list(read_documents(args.data / "corpus.jsonl"))[: args.docs]
            for j in client.index_many(iter(docs), batch_size=128):
                client.wait(j, timeout=900)
        qs = list(load_dataset(args.data).queries.values())
        n = args.per_level
        slices = {
            "inproc1": qs[0:n],
            "inproc2": qs[n : 2 * n],
            "c1": qs[2 * n : 3 * n],
            "c4": qs[3 * n : 5 * n],
            "c16": qs[5 * n : 7 * n],
            "cache": qs[7 * n : 7 * n + 30],
        }

        from ragfleet.resources import Resources

        res = Resources(settings)
        res.warm_up()
        inproc = [inprocess_level(res, slices["inproc1"], 1), inprocess_level(res, slices["inproc2"], 2)]
        noop = measure_noop()
        fleet_levels = [
            fleet_level(client, slices["c1"], 1),
            fleet_level(client, slices["c4"], 4),
            fleet_level(client, slices["c16"], 16),
        ]
        hits = cache_hits(client, slices["cache"])
    finally:
        noop_worker.terminate()
        noop_worker.wait(20)
        if own:
            fleet.stop()
            fleet.cleanup()

    noop_p50 = _pct(noop, 50)
    base = inproc[0]["p50_ms"]
    for lv in fleet_levels:
        lv["overhead_p50_ms"] = lv["p50_ms"] - base
        lv["overhead_in_noop_round_trips"] = lv["overhead_p50_ms"] / noop_p50
    result = {
        "settings": {"top_k": 5, "retrieval_processes": 2, "torch_threads": settings.torch_threads},
        "noop_round_trip_ms": {"p50": noop_p50, "p99": _pct(noop, 99), "n": len(noop)},
        "cache_hit_ms": {"p50": _pct(hits, 50), "p99": _pct(hits, 99), "n": len(hits)},
        "inprocess": inproc,
        "fleet": fleet_levels,
        "saturated_throughput_ratio": fleet_levels[-1]["throughput_qps"] / inproc[-1]["throughput_qps"],
    }
    print("| path | in flight | n | P50 ms | P99 ms | q/s | overhead P50 ms | overhead in no-op RTs |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for lv in inproc:
        print(f"| in-process run_inline | {lv['threads']} thr | {lv['n']} | {lv['p50_ms']:.1f} | "
              f"{lv['p99_ms']:.1f} | {lv['throughput_qps']:.1f} | | |")  # fmt: skip
    for lv in fleet_levels:
        print(
            f"| fleet | {lv['concurrency']} | {lv['n']} | {lv['p50_ms']:.1f} | {lv['p99_ms']:.1f} | "
            f"{lv['throughput_qps']:.1f} | {lv['overhead_p50_ms']:.1f} | "
            f"{lv['overhead_in_noop_round_trips']:.1f} |"
        )
    print(f"| fleet cache hit | 1 | {len(hits)} | {_pct(hits, 50):.1f} | {_pct(hits, 99):.1f} | | | |")
    print(f"| Celery no-op round trip | 1 | {len(noop)} | {noop_p50:.2f} | {_pct(noop, 99):.2f} | | | |")
    print(
        f"\nsaturated throughput fleet(16)/in-process(2 threads) = {result['saturated_throughput_ratio']:.2f}"
    )
    OUT.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = OUT / f"latency-{stamp}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    plot(result, OUT / f"latency-{stamp}.png")
    print(f"wrote {path} and {path.with_suffix('.png')}", file=sys.stderr)


if __name__ == "__main__":
    main()
