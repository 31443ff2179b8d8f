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
import signal
import statistics
import subprocess
import sys
import time
import uuid
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
    from ragfleet.eval_fleet import run_through_fleet

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


class HttpCaller:
    """One keep-alive connection, stdlib `http.client`: the benchmark's HTTP caller.

    Not httpx: its own per-request cost (request and response objects, transports, hooks) is
    ~0.4 ms on these cores (`client_floor` prints both on GET /healthz), and that is the caller's
    cost, not the fleet's. Every service that calls the API picks its own client; the overhead
    line is about what the API and the workers add."""

    def __init__(self, url: str) -> None:
        import http.client
        from urllib.parse import urlsplit

        u = urlsplit(url)
        self._conn = http.client.HTTPConnection(u.hostname or "127.0.0.1", u.port or 80, timeout=60)

    def post_json(self, path: str, body: dict[str, Any]) -> tuple[int, bytes]:
        """Status and body as read (the caller parses it after taking its time)."""
        self._conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        resp = self._conn.getresponse()
        return resp.status, resp.read()

    def get(self, path: str) -> int:
        self._conn.request("GET", path)
        resp = self._conn.getresponse()
        resp.read()
        return resp.status


def ask(caller: HttpCaller, q: str, *, use_cache: bool) -> tuple[int, bytes]:
    return caller.post_json("/v1/queries?wait=30", {"question": q, "top_k": 5, "use_cache": use_cache})


def client_floor(url: str, n: int = 300) -> dict[str, float]:
    """P50 of GET /healthz (a route that does nothing) with each client: what HTTP itself costs."""
    import httpx

    caller = HttpCaller(url)
    hx = httpx.Client(base_url=url, timeout=60)

    def stdlib() -> int:
        return caller.get("/healthz")

    def with_httpx() -> int:
        return hx.get("/healthz").status_code

    out: dict[str, float] = {}
    for name, call in (("http.client", stdlib), ("httpx", with_httpx)):
        for _ in range(20):
            call()
        lat = []
        for _ in range(n):
            t0 = time.perf_counter()
            call()
            lat.append((time.perf_counter() - t0) * 1000)
        out[name] = _pct(lat, 50)
    hx.close()
    return out


def http_level(
    url: str, questions: list[str], concurrency: int, *, use_cache: bool = False
) -> dict[str, Any]:
    """What a caller of the API sees: POST /v1/queries?wait=30 (the long poll returns the finished
    job record), timed on the client from send to the answer, `concurrency` callers at once."""
    import threading

    local = threading.local()

    def one(q: str) -> tuple[float, bool]:
        if not hasattr(local, "caller"):
            local.caller = HttpCaller(url)
        t0 = time.perf_counter()
        status, raw = ask(local.caller, q, use_cache=use_cache)
        ms = (time.perf_counter() - t0) * 1000
        return ms, status == 200 and json.loads(raw).get("status") == "done"

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as ex:
        out = list(ex.map(one, questions))
    wall = time.perf_counter() - t0
    lat = [ms for ms, ok in out if ok]
    return {
        "concurrency": concurrency,
        "n": len(lat),
        "failed": sum(1 for _, ok in out if not ok),
        "p50_ms": _pct(lat, 50),
        "p99_ms": _pct(lat, 99),
        "mean_ms": statistics.fmean(lat) if lat else float("nan"),
        "throughput_qps": len(lat) / wall,
    }


# Where one answer's time goes, from the client's clock and the job record's timestamps (one
# machine, one clock): the API before the record exists, queue hop to retrieval (publish, broker,
# the pool's dispatch), the retrieval stage, the hand-off hop, the generation stage, and the
# finish until the client has the answer (wake, read, respond).
SEGMENTS = ("api_in", "hop_retrieval", "retrieval_stage", "hop_generation", "generation_stage", "api_out")


def segments_of(rec: dict[str, Any], t_sent: float, t_answered: float) -> dict[str, float]:
    r, g = rec["stages"]["retrieval"], rec["stages"]["generation"]
    r_end = r["started_at"] + r["ms"] / 1000
    return {
        "api_in": (rec["created_at"] - t_sent) * 1000,
        "hop_retrieval": (r["started_at"] - rec["created_at"]) * 1000,
        "retrieval_stage": r["ms"],
        "hop_generation": (g["started_at"] - r_end) * 1000,
        "generation_stage": g["ms"],
        "api_out": (t_answered - rec["updated_at"]) * 1000,
    }


def paired_c1(
    url: str, res: Any, questions: list[str]
) -> tuple[dict[str, Any], dict[str, Any], list[float], dict[str, list[float]]]:
    """One query in flight, HTTP and in-process on the SAME questions, interleaved (alternating
    which goes first), so per-question cost and machine drift cancel out of the overhead. Both
    compute the query embedding: the shared Redis embedding cache entry the first one wrote is
    deleted before the second runs (use_cache=False already bypasses the answer cache)."""
    from ragfleet.querying import run_inline
    from ragfleet.schemas import QueryPayload

    caller = HttpCaller(url)

    segments: dict[str, list[float]] = {k: [] for k in SEGMENTS}

    def via_http(q: str) -> float:
        sent = time.time()
        t0 = time.perf_counter()
        status, raw = ask(caller, q, use_cache=False)
        ms = (time.perf_counter() - t0) * 1000
        answered = time.time()
        rec = json.loads(raw) if raw else {}
        if status != 200 or rec.get("status") != "done":
            raise RuntimeError(f"HTTP query failed: {status} {str(rec)[:300]}")
        for k, v in segments_of(rec, sent, answered).items():
            segments[k].append(v)
        return ms

    def in_process(q: str) -> float:
        t0 = time.perf_counter()
        run_inline(res, QueryPayload(question=q, top_k=5, use_cache=False))
        return (time.perf_counter() - t0) * 1000

    http_ms, inproc_ms = [], []
    t_http = t_inproc = 0.0
    for i, q in enumerate(questions):
        first, second = (via_http, in_process) if i % 2 == 0 else (in_process, via_http)
        a = first(q)
        res.redis.delete(res.embedding_cache.redis_key(q))
        b = second(q)
        h, n = (a, b) if first is via_http else (b, a)
        http_ms.append(h)
        inproc_ms.append(n)
        t_http += h / 1000
        t_inproc += n / 1000

    def summary(lat: list[float], wall: float) -> dict[str, Any]:
        return {
            "concurrency": 1,
            "threads": 1,
            "n": len(lat),
            "failed": 0,
            "p50_ms": _pct(lat, 50),
            "p99_ms": _pct(lat, 99),
            "mean_ms": statistics.fmean(lat),
            "throughput_qps": len(lat) / wall,
        }

    diffs = [h - n for h, n in zip(http_ms, inproc_ms, strict=True)]
    return summary(http_ms, t_http), summary(inproc_ms, t_inproc), diffs, segments


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
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [3, 2]})
    ax.plot(cs, [lv["p50_ms"] for lv in levels], "o-", label="through HTTP, P50")
    ax.plot(cs, [lv["p99_ms"] for lv in levels], "o--", label="through HTTP, P99")
    ax.axhline(result["inprocess"][0]["p50_ms"], color="gray", label="in-process P50 (serial)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(cs, [str(c) for c in cs])
    ax.set_xlabel("jobs in flight")
    ax.set_ylabel("latency (ms)")
    ax.set_title("Query latency through the API, cache off (2 cores)")
    ax.legend()
    # one answer at 1 in flight, segment by segment, beside the in-process pipeline
    seg = result["c1_segments_p50_ms"]
    bottom = 0.0
    for name in SEGMENTS:
        bx.bar(["through HTTP"], [seg[name]], bottom=bottom, label=name.replace("_", " "))
        bottom += seg[name]
    bx.bar(["in-process"], [result["inprocess"][0]["p50_ms"]], color="gray")
    bx.set_ylabel("ms (P50 of each segment)")
    bx.set_title("Where one answer's time goes")
    bx.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data/scifact"))
    ap.add_argument("--use-running", action="store_true")
    ap.add_argument("--state", type=Path, help="with --use-running: its state file")
    ap.add_argument("--docs", type=int, default=1000)
    ap.add_argument("--per-level", type=int, default=60, help="queries a level (x2 at 4, 16)")
    ap.add_argument("--port", type=int, default=8765, help="port for the API started in front of the fleet")
    args = ap.parse_args()

    from bench.run_fleet import BenchFleet
    from ragfleet.evaluation import load_dataset

    if args.use_running:
        fleet = BenchFleet.load(args.state) if args.state else BenchFleet.load()
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
        # A token unique to this run keeps every question a true miss: query vectors stay cached
        # in the workers' memory across runs of a reused fleet. Unknown to the corpus, it changes
        # no BM25 score and barely moves the embedding; the work per query is the same.
        nonce = uuid.uuid4().hex[:8]
        qs = [f"{q} [{nonce}]" for q in load_dataset(args.data).queries.values()]
        n = args.per_level
        slices = {
            "inproc2": qs[n : 2 * n],
            "c1": qs[2 * n : 3 * n],
            "c4": qs[3 * n : 5 * n],
            "c16": qs[5 * n : 7 * n],
            "broker": qs[7 * n : 8 * n],
            "warm": qs[8 * n : 8 * n + 10],
            "cache": qs[8 * n + 10 : 8 * n + 40],
        }

        from ragfleet.resources import Resources

        # the rate limit stays on (one Redis round trip a request), high enough not to refuse the bench
        url = fleet.start_api(args.port, env={"RAGFLEET_RATE_LIMIT": "1000000/minute"})
        res = Resources(settings)
        res.warm_up()
        noop = measure_noop()
        floor = client_floor(url)
        http_level(url, slices["warm"], 2)  # connections, API workers' first requests
        inprocess_level(res, slices["warm"], 1)
        http_c1, inproc_c1, diffs, segments = paired_c1(url, res, slices["c1"])
        inproc = [inproc_c1, inprocess_level(res, slices["inproc2"], 2)]
        fleet_levels = [
            http_c1,
            http_level(url, slices["c4"], 4),
            http_level(url, slices["c16"], 16),
        ]
        broker = fleet_level(client, slices["broker"], 1)
        http_level(url, slices["cache"], 1, use_cache=True)  # fill the cache
        hits = http_level(url, slices["cache"], 1, use_cache=True)
        job_hits = cache_hits(client, slices["cache"])
    finally:
        noop_worker.terminate()
        noop_worker.wait(20)
        if own:
            fleet.stop()
            fleet.cleanup()
        else:
            api = fleet.pids.pop("api", None)
            if api:
                os.killpg(api, signal.SIGTERM)

    noop_p50 = _pct(noop, 50)
    base = inproc[0]["p50_ms"]
    for lv in [*fleet_levels, broker]:
        lv["overhead_p50_ms"] = lv["p50_ms"] - base
        lv["overhead_in_noop_round_trips"] = lv["overhead_p50_ms"] / noop_p50
    # at one in flight the overhead is the median of per-question differences (same questions)
    http_c1["overhead_p50_ms"] = _pct(diffs, 50)
    http_c1["overhead_in_noop_round_trips"] = http_c1["overhead_p50_ms"] / noop_p50
    result = {
        "settings": {"top_k": 5, "retrieval_processes": 2, "torch_threads": settings.torch_threads},
        "http_client": "http.client (keep-alive)",
        "healthz_round_trip_p50_ms": floor,
        "noop_round_trip_ms": {"p50": noop_p50, "p99": _pct(noop, 99), "n": len(noop)},
        "cache_hit_http_ms": {k: hits[k] for k in ("p50_ms", "p99_ms", "n", "failed")},
        "cache_hit_job_record_ms": {"p50": _pct(job_hits, 50), "p99": _pct(job_hits, 99), "n": len(job_hits)},
        "inprocess": inproc,
        "fleet": fleet_levels,
        "broker_job_record_c1": broker,
        "saturated_throughput_ratio": fleet_levels[-1]["throughput_qps"] / inproc[-1]["throughput_qps"],
        "c1_segments_p50_ms": {k: _pct(v, 50) for k, v in segments.items()},
    }
    print("| path | in flight | n | failed | P50 ms | P99 ms | q/s | overhead P50 ms | in no-op RTs |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for lv in inproc:
        print(f"| in-process run_inline | {lv['threads']} thr | {lv['n']} | 0 | {lv['p50_ms']:.1f} | "
              f"{lv['p99_ms']:.1f} | {lv['throughput_qps']:.1f} | | |")  # fmt: skip
    for name, lv in [*(("HTTP, client wall", lv) for lv in fleet_levels), ("broker, job record", broker)]:
        print(
            f"| {name} | {lv['concurrency']} | {lv['n']} | {lv['failed']} | {lv['p50_ms']:.1f} | "
            f"{lv['p99_ms']:.1f} | {lv['throughput_qps']:.1f} | {lv['overhead_p50_ms']:.1f} | "
            f"{lv['overhead_in_noop_round_trips']:.1f} |"
        )
    print(f"| HTTP cache hit, client wall | 1 | {hits['n']} | {hits['failed']} | {hits['p50_ms']:.1f} | "
          f"{hits['p99_ms']:.1f} | | | |")  # fmt: skip
    print(f"| broker cache hit, job record | 1 | {len(job_hits)} | 0 | {_pct(job_hits, 50):.1f} | "
          f"{_pct(job_hits, 99):.1f} | | | |")  # fmt: skip
    print(f"| Celery no-op round trip | 1 | {len(noop)} | 0 | {noop_p50:.2f} | {_pct(noop, 99):.2f} | | | |")
    print("GET /healthz round trip P50 (what HTTP itself costs, by client): "
          + ", ".join(f"{k} {v:.2f} ms" for k, v in floor.items()))  # fmt: skip
    print(
        f"\nsaturated throughput HTTP(16)/in-process(2 threads) = {result['saturated_throughput_ratio']:.2f}"
    )
    seg = result["c1_segments_p50_ms"]
    print("\none answer through HTTP at 1 in flight, P50 of each segment (ms; they need not sum to the P50):")
    print("| " + " | ".join(SEGMENTS) + " | in-process run_inline |")
    print("| " + " | ".join("---" for _ in SEGMENTS) + " | --- |")
    print("| " + " | ".join(f"{seg[k]:.2f}" for k in SEGMENTS) + f" | {inproc[0]['p50_ms']:.2f} |")
    OUT.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = OUT / f"latency-{stamp}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    plot(result, OUT / f"latency-{stamp}.png")
    print(f"wrote {path} and {path.with_suffix('.png')}", file=sys.stderr)


if __name__ == "__main__":
    main()
