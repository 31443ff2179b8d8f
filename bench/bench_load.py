"""Load test at 2x the expected traffic (bench/locustfile.py states it) through the HTTP API.

    python bench/bench_load.py [--use-running] [--docs 1000] [--users 32] [--rate 0.5] [--time 60]

Starts the API (2 uvicorn workers, as the Procfile does) in front of a fleet - the one left by
`bench_indexing.py --keep` with `--use-running`, else a fresh one with `--docs` SciFact documents -
gives each of `--users` locust users its own API key, runs locust headless for `--time` seconds at
`--users x --rate` questions/s, and prints requests, error rate, P50/P99 and achieved rate per
request kind. Locust's CSVs and a JSON summary go to bench/out/.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
OUT = REPO / "bench" / "out"


def read_stats(prefix: Path) -> list[dict[str, Any]]:
    rows = []
    with Path(f"{prefix}_stats.csv").open() as f:
        for row in csv.DictReader(f):
            n = int(row["Request Count"])
            rows.append(
                {
                    "name": row["Name"],
                    "requests": n,
                    "failures": int(row["Failure Count"]),
                    "error_rate": int(row["Failure Count"]) / n if n else 0.0,
                    "p50_ms": float(row["50%"] or "nan"),
                    "p99_ms": float(row["99%"] or "nan"),
                    "max_ms": float(row["Max Response Time"] or "nan"),
                    "rps": float(row["Requests/s"]),
                }
            )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data/scifact"))
    ap.add_argument("--use-running", action="store_true")
    ap.add_argument("--docs", type=int, default=1000)
    ap.add_argument("--users", type=int, default=32)
    ap.add_argument("--rate", type=float, default=0.5, help="questions/s per user")
    ap.add_argument("--time", type=int, default=60, help="seconds")
    ap.add_argument("--port", type=int, default=8766)
    args = ap.parse_args()

    from bench.run_fleet import BenchFleet

    if args.use_running:
        fleet = BenchFleet.load()
    else:
        fleet = BenchFleet.create()
        fleet.start("retrieval", "generation", "indexing")
    keys = ",".join(f"loadkey{i}:default" for i in range(args.users))
    OUT.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    prefix = OUT / f"load-{stamp}"
    try:
        if not args.use_running:
            from ragfleet.client import BrokerTransport, FleetClient
            from ragfleet.corpus import read_documents

            client = FleetClient(BrokerTransport(fleet.settings()))
            docs = list(read_documents(args.data / "corpus.jsonl"))[: args.docs]
            for j in client.index_many(iter(docs), batch_size=128):
                client.wait(j, timeout=900)
        url = fleet.start_api(args.port, env={"RAGFLEET_API_KEYS": keys})
        env = {
            **os.environ,
            **fleet.settings_env(),
            "RAGFLEET_API_KEYS": keys,
            "RAGFLEET_BENCH_DATA": str(args.data.resolve()),
            "RAGFLEET_BENCH_USER_RATE": str(args.rate),
        }
        cmd = [
            sys.executable, "-m", "locust", "-f", str(REPO / "bench" / "locustfile.py"), "--headless",
            "-u", str(args.users), "-r", str(args.users), "-t", f"{args.time}s", "--host", url,
            "--csv", str(prefix), "--only-summary", "--loglevel", "WARNING", "--stop-timeout", "35",
        ]  # fmt: skip
        print(f"locust: {args.users} users x {args.rate}/s = {args.users * args.rate:g} questions/s "
              f"for {args.time} s against {url}", file=sys.stderr)  # fmt: skip
        subprocess.run(cmd, cwd=REPO, env=env, check=False)
    finally:
        api = fleet.pids.pop("api", None)
        if api:
            os.killpg(api, signal.SIGTERM)
        if not args.use_running:
            fleet.stop()
            fleet.cleanup()

    rows = read_stats(prefix)
    result = {
        "target_qps": args.users * args.rate,
        "expected_qps": args.users * args.rate / 2,
        "seconds": args.time,
        "rows": rows,
    }
    print("| request | n | errors | error rate | P50 ms | P99 ms | max ms | achieved q/s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['name']} | {r['requests']} | {r['failures']} | {r['error_rate']:.2%} | "
              f"{r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {r['max_ms']:.0f} | {r['rps']:.2f} |")  # fmt: skip
    path = Path(f"{prefix}.json")
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
