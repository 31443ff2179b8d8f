"""pgvector HNSW at scale: build time, vector query P50/P99 and recall@10 against exact search.

    python bench/bench_pg_hnsw.py [--sizes 100000,1000000] [--queries 300] [--mwm 4GB] [--workers 2]

Synthetic data (no model in the loop): 384-dim unit vectors from `Synthetic` (topic clusters in a
32-dim latent space, see its docstring), plus synthetic text of 12 words from a 5,000-word
vocabulary. Uniform random vectors would be the worst case for any graph index and nothing like a
corpus.

Per size, on a private PostgreSQL 18 + pgvector 0.8 (tests/pg.py's `PgServer`):
1. rows are COPYed into the store's own table (`pg_schema.create_collection_table`, the DDL the
   fleet uses), with its HNSW, GIN and tags indexes dropped for the load; a size reuses the rows of
   the smaller one before it and adds the rest;
2. `CREATE INDEX ... USING hnsw (vector vector_cosine_ops)` exactly as the store declares it (m=16,
   ef_construction=64), timed, with `maintenance_work_mem` = --mwm and
   `max_parallel_maintenance_workers` = --workers; progress from pg_stat_progress_create_index is
   logged every 30 s (so a build that cannot finish still says how far it got);
3. --queries new vectors from the same distribution go one at a time through
   `PostgresStore.search(mode="vector", top_k=10)`, the retrieval pool's code path (ef_search 40);
   P50/P99 of the call's wall time;
4. recall@10 of those results against exact top-10 (numpy dot products over every row), and the
   same for ef_search 100 through direct SQL, for the trade-off.
A bulk load builds the index once after the load; the fleet's indexing pool instead inserts into a
table whose index exists (slower per row, the same graph). Writes bench/out/hnsw-<time>.json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import psycopg
from psycopg import sql

from ragfleet.stores import pg_schema
from ragfleet.stores.postgres_store import PostgresStore

DIM = 384
OUT = Path(__file__).resolve().parent / "out"
COLLECTION = "bench_hnsw"
TENANT = "default"


BLOCK = 10_000  # rows are generated in aligned blocks: row i is the same in every run and size


class Synthetic:
    """A seeded corpus-like vector set: 2,000 topic centres in a 32-dim latent space, mapped to 384
    dims by a fixed random matrix, each row its centre plus latent noise plus a little isotropic
    noise, normalised. Real sentence embeddings have a low intrinsic dimension; isotropic noise in
    all 384 dims would make every neighbour list a coin toss (recall near chance for any index)."""

    def __init__(self, clusters: int = 2_000, latent: int = 32, seed: int = 7) -> None:
        rng = np.random.default_rng(seed)
        self.centres = rng.standard_normal((clusters, latent)).astype(np.float32)
        self.lift = (rng.standard_normal((latent, DIM)) / np.sqrt(latent)).astype(np.float32)
        self.vocab = [f"w{i}" for i in range(5_000)]
        self.seed = seed

    def block(self, start: int, n: int = BLOCK) -> tuple[np.ndarray, list[str]]:
        rng = np.random.default_rng([self.seed, start])
        which = rng.integers(0, len(self.centres), n)
        z = self.centres[which] + 0.6 * rng.standard_normal((n, self.centres.shape[1])).astype(np.float32)
        v = z @ self.lift + 0.15 * rng.standard_normal((n, DIM)).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        words = rng.integers(0, len(self.vocab), (n, 12))
        texts = [" ".join(self.vocab[w] for w in row) for row in words]
        return v.astype(np.float32), texts


def start_server(mwm: str, workers: int) -> Any:
    from tests.pg import PgServer

    server = PgServer(Path(tempfile.mkdtemp(prefix="rf-bench-hnsw-"))).init()
    with (server.pgdata / "postgresql.conf").open("a") as fh:
        fh.write(
            f"shared_buffers = 2GB\nmaintenance_work_mem = {mwm}\n"
            f"max_parallel_maintenance_workers = {workers}\nmax_worker_processes = 16\n"
            "checkpoint_timeout = 30min\nmax_wal_size = 8GB\n"
        )
    server.start()
    server.wait_ready()
    return server


def load_rows(url: str, table: str, data: Synthetic, start: int, stop: int) -> float:
    t0 = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        cols = "(chunk_id, tenant, doc_id, chunk_index, text, vector)"
        with conn.cursor() as cur:
            for lo in range(start, stop, BLOCK):
                n = BLOCK
                vecs, texts = data.block(lo)
                buf = io.StringIO()
                for i in range(n):
                    vec = ",".join(f"{x:.6f}" for x in vecs[i].tolist())
                    buf.write(f"c{lo + i}\t{TENANT}\td{(lo + i) // 4}\t{(lo + i) % 4}\t{texts[i]}\t[{vec}]\n")
                with cur.copy(sql.SQL("COPY {} " + cols + " FROM STDIN").format(sql.Identifier(table))) as cp:
                    cp.write(buf.getvalue())
                if (lo // BLOCK) % 10 == 0:
                    took = time.perf_counter() - t0
                    print(f"  loaded {lo + n:,} rows ({took:.0f} s)", file=sys.stderr, flush=True)
    return time.perf_counter() - t0


def build_index(url: str, table: str, mwm: str, workers: int) -> float:
    stop = threading.Event()

    def progress() -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            while not stop.wait(30):
                row = conn.execute(
                    "SELECT phase, tuples_done, tuples_total, blocks_done, blocks_total "
                    "FROM pg_stat_progress_create_index"
                ).fetchone()
                print(f"  build progress {row}", file=sys.stderr, flush=True)

    watcher = threading.Thread(target=progress, daemon=True)
    watcher.start()
    t0 = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"SET maintenance_work_mem = '{mwm}'")
        conn.execute(f"SET max_parallel_maintenance_workers = {workers}")
        conn.execute(
            sql.SQL("CREATE INDEX {i} ON {t} USING hnsw (vector vector_cosine_ops)").format(
                i=sql.Identifier(f"{table}_hnsw"), t=sql.Identifier(table)
            )
        )
        conn.execute(sql.SQL("ANALYZE {t}").format(t=sql.Identifier(table)))
    stop.set()
    return time.perf_counter() - t0


def exact_top10(base: np.ndarray, queries: np.ndarray) -> list[set[str]]:
    out = []
    for q in queries:
        scores = base @ q
        top = np.argpartition(-scores, 10)[:10]
        out.append({f"c{i}" for i in top})
    return out


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


def measure(url: str, table: str, base: np.ndarray, queries: np.ndarray) -> dict[str, Any]:
    store = PostgresStore(url, COLLECTION, dim=DIM, statement_timeout_ms=10_000)
    truth = exact_top10(base, queries)
    for q in queries[:20]:  # warm the pool and the index pages
        store.search(TENANT, vector=q.tolist(), text=None, mode="vector", top_k=10)
    lat: list[float] = []
    hits = 0
    for q, want in zip(queries, truth, strict=True):
        t0 = time.perf_counter()
        res = store.search(TENANT, vector=q.tolist(), text=None, mode="vector", top_k=10)
        lat.append((time.perf_counter() - t0) * 1000)
        hits += len(want & {h.chunk_id for h in res})
    store.close()
    out: dict[str, Any] = {
        "store_search": {"ef_search": 40, "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99),
                         "recall_at_10": hits / (10 * len(queries))},
    }  # fmt: skip
    knn = sql.SQL("SELECT chunk_id FROM {t} WHERE tenant = %s ORDER BY vector <=> %s::vector LIMIT 10")
    knn = knn.format(t=sql.Identifier(table))
    with psycopg.connect(url, autocommit=True) as conn:
        for ef in (100,):
            conn.execute(f"SET hnsw.ef_search = {ef}")
            lat, hits = [], 0
            for q, want in zip(queries, truth, strict=True):
                lit = "[" + ",".join(f"{x:.6f}" for x in q.tolist()) + "]"
                t0 = time.perf_counter()
                rows = conn.execute(knn, (TENANT, lit)).fetchall()
                lat.append((time.perf_counter() - t0) * 1000)
                hits += len(want & {r[0] for r in rows})
            out[f"sql_ef{ef}"] = {"ef_search": ef, "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99),
                                  "recall_at_10": hits / (10 * len(queries))}  # fmt: skip
        out["table_bytes"] = conn.execute("SELECT pg_table_size(%s)", (table,)).fetchone()[0]  # type: ignore[index]
        out["hnsw_bytes"] = conn.execute("SELECT pg_relation_size(%s)", (f"{table}_hnsw",)).fetchone()[0]  # type: ignore[index]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--mwm", default="4GB", help="maintenance_work_mem for the build")
    ap.add_argument("--workers", type=int, default=2, help="max_parallel_maintenance_workers")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if any(s % BLOCK for s in sizes):
        ap.error(f"sizes must be multiples of {BLOCK}")
    data = Synthetic()
    qv = data.block(10**9)[0][: args.queries]  # never a stored row
    server = start_server(args.mwm, args.workers)
    url = server.url
    results: list[dict[str, Any]] = []
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    try:
        pg_schema.migrate(url)
        with psycopg.connect(url, autocommit=True) as conn, conn.transaction():
            table = pg_schema.create_collection_table(conn, COLLECTION, DIM)
        with psycopg.connect(url, autocommit=True) as conn:
            for suffix in ("hnsw", "tsv", "tags", "hash"):
                conn.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier(f"{table}_{suffix}")))
        loaded = 0
        for size in sizes:
            print(f"size {size:,}: loading", file=sys.stderr, flush=True)
            with psycopg.connect(url, autocommit=True) as conn:  # the smaller size's index
                conn.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier(f"{table}_hnsw")))
            load_s = load_rows(url, table, data, loaded, size)
            loaded = size
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(sql.Identifier(table)))
            print(f"size {size:,}: loaded in {load_s:.0f} s; building HNSW", file=sys.stderr, flush=True)
            build_s = build_index(url, table, args.mwm, args.workers)
            print(f"size {size:,}: HNSW built in {build_s:.0f} s; querying", file=sys.stderr, flush=True)
            base = np.concatenate([data.block(lo)[0] for lo in range(0, size, BLOCK)])
            res = {"rows": size, "load_s": load_s, "build_s": build_s, **measure(url, table, base, qv)}
            del base
            results.append(res)
            print(json.dumps(res), flush=True)
            OUT.mkdir(parents=True, exist_ok=True)
            (OUT / f"hnsw-{started[:10]}.json").write_text(
                json.dumps({"started": started, "args": vars(args), "results": results}, indent=2) + "\n"
            )
    finally:
        server.stop()
        server.remove()
    print(f"\npgvector HNSW (m=16, ef_construction=64), started {started}, load average {os.getloadavg()}")
    print(
        "| rows | load s | HNSW build s | store search P50 / P99 ms (ef 40) | recall@10 | "
        "ef 100 P50 / P99 ms | recall@10 | index MB |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        s, e = r["store_search"], r["sql_ef100"]
        print(
            f"| {r['rows']:,} | {r['load_s']:.0f} | {r['build_s']:.0f} | "
            f"{s['p50_ms']:.1f} / {s['p99_ms']:.1f} | "
            f"{s['recall_at_10']:.3f} | {e['p50_ms']:.1f} / {e['p99_ms']:.1f} | {e['recall_at_10']:.3f} | "
            f"{r['hnsw_bytes'] / 2**20:.0f} |"
        )


if __name__ == "__main__":
    main()
