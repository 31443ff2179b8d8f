"""A/B of two running fleets on the same questions: which one answers faster, and by how much.

    python bench/run_fleet.py start --prefix a --data-dir /tmp/ab/a               # fleet A (this checkout)
    python bench/bench_ab.py --a /tmp/ragfleet-bench/fleet.json --share-index b:/tmp/ab/b   # before B starts
    python bench/run_fleet.py --state /tmp/ab/b.json start --prefix b --data-dir /tmp/ab/b \\
        [--env RAGFLEET_X=...]              # fleet B: other settings (or another worktree's run_fleet.py)
    python bench/bench_ab.py --a /tmp/ragfleet-bench/fleet.json --b /tmp/ab/b.json --n 300

Why paired and interleaved: on these shared 2-core machines the same pipeline drifts by 10-30 % within an
hour, far more than the ~0.3-1 ms a change to the fleet's plumbing moves it; consecutive runs cannot tell
such a change from noise. Here every question goes through both fleets' APIs back to back, alternating
which goes first, and the effect is the median of the per-question differences (B - A), with a bootstrap
95 % interval. Both fleets are idle while the other answers, so each sees the same machine.

`--share-index PREFIX:DATA_DIR` points a fleet that is yet to start at fleet A's index (A's LanceDB
directory, symlinked into DATA_DIR, and A's index pointer keys copied under PREFIX), so B needs no ingest
of its own; start B's workers afterwards (they open the index when they start). Each fleet keeps its own
prefix: own queues, job records and caches. Questions carry a token unique to the run and go with
`use_cache` off, so neither fleet answers from a cache.
Writes bench/out/ab-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_latency import SEGMENTS, HttpCaller, ask, segments_of
from bench.run_fleet import BenchFleet

OUT = Path(__file__).resolve().parent / "out"
INDEX_KEYS = ("index:version", "index:generation", "index:optimized_version")


def share_index(a: BenchFleet, prefix: str, data_dir: Path) -> None:
    """The fleet to start with `prefix` and `data_dir` reads fleet A's LanceDB directory and index
    pointer (see the module docstring)."""
    import redis

    data_dir.mkdir(parents=True, exist_ok=True)
    link = data_dir / "lancedb"
    if not link.is_symlink():
        if link.exists():
            raise SystemExit(f"{link} exists and is not a link: refusing to replace that fleet's own index")
        link.symlink_to(a.data_dir / "lancedb")
    r = redis.Redis.from_url(a.redis_url)
    for k in INDEX_KEYS:
        value = r.get(f"{a.prefix}:{k}")
        if value is not None:
            r.set(f"{prefix}:{k}", value)


def median_ci(diffs: list[float], rounds: int = 2000, seed: int = 7) -> tuple[float, float]:
    """Bootstrap 95 % interval of the median."""
    rng = random.Random(seed)
    meds = sorted(statistics.median(rng.choices(diffs, k=len(diffs))) for _ in range(rounds))
    return meds[int(0.025 * rounds)], meds[int(0.975 * rounds) - 1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a", type=Path, required=True, help="fleet A's state file (bench/run_fleet.py --state)")
    ap.add_argument("--b", type=Path, help="fleet B's state file")
    ap.add_argument("--data", type=Path, default=Path("../shared/data/scifact"))
    ap.add_argument("--n", type=int, default=300, help="questions (each goes through both fleets)")
    ap.add_argument(
        "--share-index", metavar="PREFIX:DATA_DIR", help="point a fleet yet to start at A's index, then exit"
    )
    ap.add_argument("--ports", default="8771,8772", help="ports for the APIs started in front of A and B")
    ap.add_argument("--b-api-env", action="append", default=[], help="KEY=VALUE for B's API only")
    ap.add_argument("--warm", type=int, default=60, help="questions through both first, not counted")
    args = ap.parse_args()

    a = BenchFleet.load(args.a)
    if args.share_index:
        prefix, _, data_dir = args.share_index.partition(":")
        share_index(a, prefix, Path(data_dir))
        print(f"a fleet started with --prefix {prefix} --data-dir {data_dir} reads {a.prefix}'s index")
        return
    if args.b is None:
        ap.error("--b is required (or --share-index)")
    fleets = {"A": a, "B": BenchFleet.load(args.b)}

    from ragfleet.evaluation import load_dataset, percentile

    nonce = uuid.uuid4().hex[:8]
    questions = [f"{q} [{nonce}]" for q in load_dataset(args.data).queries.values()]
    if len(questions) < args.n + args.warm:
        raise SystemExit(f"only {len(questions)} questions")
    ports = [int(p) for p in args.ports.split(",")]
    b_env = dict(kv.split("=", 1) for kv in args.b_api_env)
    urls: dict[str, str] = {}
    try:
        for (name, fleet), port in zip(fleets.items(), ports, strict=True):
            env = {"RAGFLEET_RATE_LIMIT": "1000000/minute", **(b_env if name == "B" else {})}
            urls[name] = fleet.start_api(port, env=env)
        callers = {name: HttpCaller(url) for name, url in urls.items()}
        ms: dict[str, list[float]] = {"A": [], "B": []}
        segs: dict[str, dict[str, list[float]]] = {n: {k: [] for k in SEGMENTS} for n in ms}

        def one(name: str, q: str) -> float:
            sent = time.time()
            t0 = time.perf_counter()
            status, raw = ask(callers[name], q, use_cache=False)
            took = (time.perf_counter() - t0) * 1000
            rec = json.loads(raw) if raw else {}
            if status != 200 or rec.get("status") != "done":
                raise RuntimeError(f"fleet {name}: {status} {str(rec)[:300]}")
            for k, v in segments_of(rec, sent, time.time()).items():
                segs[name][k].append(v)
            return took

        # warm: connections, the API workers' first requests, a fresh worker's first searches
        for q in questions[: args.warm]:
            one("A", q)
            one("B", q)
        for k in segs:
            ms[k].clear()
            for v in segs[k].values():
                v.clear()
        for i, q in enumerate(questions[args.warm : args.warm + args.n]):
            for name in ("A", "B") if i % 2 == 0 else ("B", "A"):
                ms[name].append(one(name, q))
    finally:
        for fleet in fleets.values():
            api = fleet.pids.pop("api", None)
            if api:
                os.killpg(api, signal.SIGTERM)

    diffs = [b - a for a, b in zip(ms["A"], ms["B"], strict=True)]
    lo, hi = median_ci(diffs)
    # Everything but the retrieval stage (embedding + search, ~45 ms that varies by +-10 ms from one
    # call to the next): the plumbing a fleet change moves, without the noise it does not.
    rest = {n: [w - r for w, r in zip(ms[n], segs[n]["retrieval_stage"], strict=True)] for n in ms}
    rest_diffs = [b - a for a, b in zip(rest["A"], rest["B"], strict=True)]
    rlo, rhi = median_ci(rest_diffs)
    stage_diffs = [
        b - a for a, b in zip(segs["A"]["retrieval_stage"], segs["B"]["retrieval_stage"], strict=True)
    ]
    slo, shi = median_ci(stage_diffs)
    result: dict[str, Any] = {
        "n": len(diffs),
        "fleets": {
            n: {"prefix": f.prefix, "repo": str(f.repo), "env": f.extra_env} for n, f in fleets.items()
        },
        "b_api_env": b_env,
        "p50_ms": {n: percentile(v, 50) for n, v in ms.items()},
        "p99_ms": {n: percentile(v, 99) for n, v in ms.items()},
        "median_b_minus_a_ms": statistics.median(diffs),
        "ci95_ms": [lo, hi],
        "b_faster_share": sum(1 for d in diffs if d < 0) / len(diffs),
        "without_retrieval_stage_p50_ms": {n: percentile(v, 50) for n, v in rest.items()},
        "without_retrieval_stage_median_b_minus_a_ms": statistics.median(rest_diffs),
        "without_retrieval_stage_ci95_ms": [rlo, rhi],
        "retrieval_stage_median_b_minus_a_ms": statistics.median(stage_diffs),
        "retrieval_stage_ci95_ms": [slo, shi],
        "per_question_ms": ms,
        "segments_p50_ms": {n: {k: percentile(v, 50) for k, v in s.items()} for n, s in segs.items()},
    }
    print(f"| fleet | P50 ms | P99 ms | P50 without the retrieval stage | {' | '.join(SEGMENTS)} |")
    print("| --- | --- | --- | --- |" + " --- |" * len(SEGMENTS))
    for n in ms:
        seg = " | ".join(f"{result['segments_p50_ms'][n][k]:.2f}" for k in SEGMENTS)
        print(
            f"| {n} | {result['p50_ms'][n]:.1f} | {result['p99_ms'][n]:.1f} | "
            f"{result['without_retrieval_stage_p50_ms'][n]:.2f} | {seg} |"
        )
    print(
        f"B - A, median of {len(diffs)} paired questions: {result['median_b_minus_a_ms']:+.2f} ms "
        f"(95 % CI {lo:+.2f} .. {hi:+.2f}); B faster on {100 * result['b_faster_share']:.0f} %"
    )
    print(
        f"without the retrieval stage: {result['without_retrieval_stage_median_b_minus_a_ms']:+.2f} ms "
        f"(95 % CI {rlo:+.2f} .. {rhi:+.2f}); the retrieval stage alone: "
        f"{result['retrieval_stage_median_b_minus_a_ms']:+.2f} ms (95 % CI {slo:+.2f} .. {shi:+.2f})"
    )
    OUT.mkdir(exist_ok=True)
    path = OUT / f"ab-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
