"""Snapshot search vs store search on SciFact: the same chunks, the same query vectors, one run.

    python bench/bench_search.py --data /work/shared/data/scifact [--lancedb ROOT] [--limit N]

Uses bench/eval_scifact.py's LanceDB store of the whole corpus (built once under /tmp with the
current chunker, vectors cached there; or `--lancedb ROOT` with a table `chunks`), writes a search
snapshot of it (ragfleet/snapshot/) and, for every dev query, runs the LanceDB store's `search` and
the snapshot's `search` with the retrieval pool's settings. Prints:
- P50/P99 per leg (vector, fts) and fused (hybrid), top_k = 10, store vs snapshot;
- the mean top-10 overlap of chunk ids with the store (per leg and fused);
- nDCG@10 of both (documents ranked by their best chunk in a top-100 search, as `ragfleet eval`);
- the snapshot's build time and size, and the PSS (/proc/PID/smaps_rollup) of two processes that
  map it and search.
Timings on a shared machine are indicative.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.eval_scifact import build_store, embed_cached
from ragfleet.evaluation import collapse_to_documents, load_dataset, ndcg_at_k
from ragfleet.settings import Settings
from ragfleet.snapshot import Label, Snapshot, write_snapshot

TENANT = "default"
MODES = ("vector", "fts", "hybrid")


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def timed(fn: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, (time.perf_counter() - t0) * 1000


def pss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return -1


_CHILD = """
import sys, time, numpy as np
from pathlib import Path
from ragfleet.snapshot import Snapshot
snap = Snapshot(Path(sys.argv[1]))
qs = np.load(sys.argv[2])
texts = Path(sys.argv[3]).read_text().splitlines()
for v, t in zip(qs, texts):
    snap.search("default", vector=v.tolist(), text=t, mode="hybrid", top_k=10)
print("ready", flush=True)
sys.stdin.readline()
"""


def shared_pss(path: Path, qvecs: np.ndarray, texts: list[str]) -> tuple[list[int], int]:
    """PSS (kB) of two processes that mapped the snapshot and searched it; and one's baseline."""
    with tempfile.TemporaryDirectory() as tmp:
        qfile = Path(tmp) / "q.npy"
        tfile = Path(tmp) / "t.txt"
        np.save(qfile, qvecs)
        tfile.write_text("\n".join(t.replace("\n", " ") for t in texts))
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
        base = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sys, numpy, ragfleet.snapshot; print('ready', flush=True); sys.stdin.readline()",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", _CHILD, str(path), str(qfile), str(tfile)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env=env,
            )
            for _ in range(2)
        ]
        for p in [base, *procs]:
            assert p.stdout is not None
            p.stdout.readline()
        out = [pss_kb(p.pid) for p in procs]
        baseline = pss_kb(base.pid)
        for p in [base, *procs]:
            assert p.stdin is not None
            p.stdin.write("\n")
            p.stdin.flush()
            p.wait()
    return out, baseline


def unit(x: np.ndarray) -> np.ndarray:
    out: np.ndarray = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    return out


def _first_docs(corpus: Path, n: int, skip: set[str]) -> list[str]:
    from ragfleet.corpus import read_documents

    out: list[str] = []
    for doc in read_documents(corpus):
        if len(out) >= n:
            break
        if doc["id"] not in skip:
            out.append(doc["id"])
    return out


def random_vector_store(root: Path, corpus: Path, settings: Settings, keep: set[str] | None = None) -> Any:
    """The corpus chunked with the configured chunker into a LanceDB store at `root`: random vectors,
    or with `keep` only those documents, with the model's vectors (cached under /tmp)."""
    from ragfleet.chunkers import configured_chunker
    from ragfleet.corpus import read_documents
    from ragfleet.stores.base import ChunkRecord, chunk_id_for
    from ragfleet.stores.lancedb_store import LanceDBStore

    store = LanceDBStore(root, "chunks", dim=384)
    if (root / "READY").exists():
        return store
    store.drop()
    store.ensure()
    chunker = configured_chunker(settings)
    rng = np.random.default_rng(0)
    batch: dict[str, list[ChunkRecord]] = {}
    docs = [d for d in read_documents(corpus) if keep is None or d["id"] in keep]
    real: np.ndarray | None = None
    if keep is not None:
        all_texts = [c.text for d in docs for c in chunker.text(d["text"], d.get("title"))]
        real = embed_cached(all_texts, settings, "chunks-subset")
    at = 0
    for doc in docs:
        chunks = list(chunker.text(doc["text"], doc.get("title")))
        if real is None:
            vecs = unit(rng.standard_normal((len(chunks), 384)))
        else:
            vecs, at = real[at : at + len(chunks)], at + len(chunks)
        batch[doc["id"]] = [
            ChunkRecord(
                chunk_id=chunk_id_for(TENANT, doc["id"], c.index),
                doc_id=doc["id"],
                tenant=TENANT,
                chunk_index=c.index,
                text=c.text,
                title=doc.get("title"),
                start=c.start,
                end=c.end,
                content_hash=f"{doc['id']}#{c.index}",
                embedding_model="random",
                vector=v.tolist(),
            )
            for c, v in zip(chunks, vecs, strict=True)
        ]
        if len(batch) >= 1000:
            store.replace_documents(TENANT, batch)
            batch = {}
    store.replace_documents(TENANT, batch)
    store.optimize()
    (root / "READY").write_text("ready\n")
    return store


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("/work/shared/data/scifact"))
    ap.add_argument("--lancedb", type=Path)
    ap.add_argument("--limit", type=int)
    ap.add_argument(
        "--random-vectors",
        type=Path,
        metavar="ROOT",
        help="build the store at ROOT with random unit vectors (no model: checks the full-text leg "
        "and the mechanics; nDCG then means nothing)",
    )
    ap.add_argument(
        "--subset",
        type=int,
        metavar="N",
        help="with --random-vectors ROOT: real model vectors, corpus cut to the dev questions' relevant "
        "documents plus N others (when encoding the whole corpus takes too long on a busy machine)",
    )
    args = ap.parse_args()
    settings = Settings()
    data = load_dataset(args.data, limit=args.limit)
    qids = list(data.queries)
    texts = [data.queries[q] for q in qids]
    if args.random_vectors:
        keep = None
        if args.subset is not None:
            relevant = set().union(*data.qrels.values())
            keep = relevant | set(_first_docs(data.corpus_path, args.subset, relevant))
        store: Any = random_vector_store(args.random_vectors, data.corpus_path, settings, keep)
        if keep is None:
            qvecs = unit(np.random.default_rng(1).standard_normal((len(texts), 384)))
        else:
            qvecs = embed_cached(texts, settings, "queries")
    else:
        if args.lancedb:
            from ragfleet.stores.lancedb_store import LanceDBStore

            store = LanceDBStore(args.lancedb, "chunks", dim=384)
        else:
            store = build_store(load_dataset(args.data), settings)
        qvecs = embed_cached(texts, settings, "queries")
    with tempfile.TemporaryDirectory(prefix="snap-") as tmp:
        path, build_ms = timed(
            lambda: write_snapshot(Path(tmp), Label("chunks", 0, 0, "bench"), store.iter_chunks(), 384)
        )
        size = sum(f.stat().st_size for f in path.iterdir())
        snap, open_ms = timed(lambda: Snapshot(path))
        print(
            f"snapshot: {snap.rows} chunks, {size / 1e6:.1f} MB, built in {build_ms / 1000:.2f} s, "
            f"opened in {open_ms:.1f} ms"
        )
        tune = {"dense_weight": settings.hybrid_dense_weight, "candidates": settings.hybrid_candidates}
        lat: dict[tuple[str, str], list[float]] = {}
        overlap: dict[str, list[float]] = {m: [] for m in MODES}
        ndcg: dict[str, list[float]] = {"store": [], "snapshot": []}
        for _ in range(2):  # the first pass warms both up; the second is timed
            lat.clear()
            for m in overlap.values():
                m.clear()
            for v, t in zip(qvecs, texts, strict=True):
                vec = v.tolist()
                for mode in MODES:
                    kw = {"vector": vec, "text": t, "mode": mode, "top_k": 10, **tune}
                    a, ta = timed(lambda kw=kw: store.search(TENANT, **kw))
                    b, tb = timed(lambda kw=kw: snap.search(TENANT, **kw))
                    lat.setdefault(("store", mode), []).append(ta)
                    lat.setdefault(("snapshot", mode), []).append(tb)
                    ids_a = {h.chunk_id for h in a}
                    overlap[mode].append(len(ids_a & {h.chunk_id for h in b}) / max(1, len(ids_a)))
        for qid, v, t in zip(qids, qvecs, texts, strict=True):
            kw = {"vector": v.tolist(), "text": t, "mode": "hybrid", "top_k": 100, **tune}
            for name, engine in (("store", store), ("snapshot", snap)):
                hits = engine.search(TENANT, **kw)
                ranking = collapse_to_documents(h.doc_id for h in hits)
                ndcg[name].append(ndcg_at_k(ranking, data.qrels[qid], 10))
        w, c = settings.hybrid_dense_weight, settings.hybrid_candidates
        print(f"{len(qids)} dev queries, top_k 10, candidates {c}, dense weight {w}")
        print("| leg | store P50 ms | store P99 ms | snapshot P50 ms | snapshot P99 ms | top-10 overlap |")
        print("| --- | --- | --- | --- | --- | --- |")
        for mode in MODES:
            s, n = lat[("store", mode)], lat[("snapshot", mode)]
            row = [pct(s, 50), pct(s, 99), pct(n, 50), pct(n, 99)]
            cells = " | ".join(f"{x:.2f}" for x in row)
            print(f"| {mode} | {cells} | {np.mean(overlap[mode]):.4f} |")
        a, b = float(np.mean(ndcg["store"])), float(np.mean(ndcg["snapshot"]))
        print(f"nDCG@10 (hybrid, top-100 collapsed): store {a:.4f}, snapshot {b:.4f}, delta {b - a:+.4f}")
        pss, baseline = shared_pss(path, qvecs, texts)
        print(
            f"PSS of two processes mapping the snapshot: {pss[0] / 1024:.1f} MB, {pss[1] / 1024:.1f} MB "
            f"(a bare python + numpy + ragfleet.snapshot: {baseline / 1024:.1f} MB)"
        )


if __name__ == "__main__":
    main()
