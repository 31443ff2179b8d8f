"""Scale of the search snapshot: 1M synthetic chunks built by the fleet's own `write_snapshot`
(HNSW graph past `--ann-min-rows`), queried as the retrieval pool queries it, shared by two processes.

    python bench/bench_scale_snapshot.py [--rows 1000000] [--queries 300] [--words 80]

Vectors: 384-d unit vectors with structure (a 32-d Gaussian latent projected to 384-d plus
isotropic noise), because real embeddings have neighbours: on pure Gaussian noise every point's
top-10 beyond itself is a tie of random ~0.05 cosines, so no ANN can state a meaningful recall@10.
Text: `--words` words a chunk drawn from a Zipf-Mandelbrot vocabulary (100k pseudo-words,
p ~ 1/(rank + 50): the most common term is in ~20 % of chunks, like a frequent content word once
stop words are gone), so BM25 has realistic postings. Queries: a stored vector perturbed
(0.05 x N(0, 1) a dimension, as bench/bench_scale.py) + 4 distinct words from the same chunk.

Prints the build time of each part (meta.json's build_s; `read` includes generating the synthetic
rows, printed apart), the size on disk, hybrid / vector-leg / FTS-leg P50/P99, the vector leg's
recall@10 against the exact scan (and the exact scan's own latency), the hybrid top-10 overlap with
an exact dense leg, and the PSS (/proc/PID/smaps_rollup) of two processes mapping the same snapshot:
first one alone, then both. Writes bench/out/scale_snapshot.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ragfleet.snapshot import Label, Snapshot, write_snapshot
from ragfleet.stores.base import ChunkRecord

DIM = 384
LATENT = 32
VOCAB = 100_000
SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]


def pseudo_word(i: int) -> str:
    out = []
    i += len(SYLLABLES)  # at least two syllables
    while i:
        i, r = divmod(i, len(SYLLABLES))
        out.append(SYLLABLES[r])
    return "".join(out)


class Corpus:
    """Deterministic synthetic rows, generated batch by batch (1M rows never sit in memory)."""

    def __init__(self, rows: int, words: int, seed: int = 7) -> None:
        self.rows, self.words, self.seed = rows, words, seed
        rng = np.random.default_rng(seed)
        self.proj = rng.standard_normal((LATENT, DIM), dtype=np.float32)
        ranks = np.arange(VOCAB, dtype=np.float64)
        p = 1.0 / (ranks + 50.0)
        self.cdf = np.cumsum(p / p.sum())
        self.vocab = np.asarray([pseudo_word(i) for i in range(VOCAB)], dtype=object)
        self.gen_s = 0.0

    def batch(self, b: int, size: int) -> tuple[np.ndarray, list[str]]:
        rng = np.random.default_rng((self.seed, b))
        z = rng.standard_normal((size, LATENT), dtype=np.float32)
        v = z @ self.proj + 0.5 * rng.standard_normal((size, DIM), dtype=np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        lens = rng.integers(self.words // 2, self.words * 3 // 2 + 1, size)
        ids = np.searchsorted(self.cdf, rng.random(int(lens.sum())))
        ids = np.minimum(ids, VOCAB - 1)
        words = self.vocab[ids]
        texts, at = [], 0
        for n in lens:
            texts.append(" ".join(words[at : at + n]))
            at += n
        return v, texts

    def records(self, batch_size: int = 1_000) -> Iterator[list[ChunkRecord]]:
        for b, start in enumerate(range(0, self.rows, batch_size)):
            t0 = time.perf_counter()
            size = min(batch_size, self.rows - start)
            v, texts = self.batch(b, size)
            out = []
            for i in range(size):
                cid = f"c{start + i}"
                doc, k = divmod(start + i, 4)
                out.append(
                    ChunkRecord(cid, f"d{doc}", "default", k, texts[i], None, 0, len(texts[i]), cid,
                                "synthetic", v[i].tolist())
                )  # fmt: skip
            self.gen_s += time.perf_counter() - t0
            yield out


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return round(s[min(len(s) - 1, int(q * len(s)))], 2)


def queries(snap: Snapshot, n: int, seed: int = 11) -> list[tuple[list[float], str]]:
    rng = np.random.default_rng(seed)
    out = []
    for row in rng.choice(snap.rows, n, replace=False):
        q = np.asarray(snap.vectors[row], dtype=np.float32) + 0.05 * rng.standard_normal(
            DIM, dtype=np.float32
        )
        words = list(dict.fromkeys(snap.hit(int(row), 0.0).text.split()))
        picked = rng.choice(len(words), min(4, len(words)), replace=False)
        out.append(((q / np.linalg.norm(q)).tolist(), " ".join(words[i] for i in picked)))
    return out


def timed(fn: Any, qs: list[tuple[list[float], str]], mode: str) -> tuple[list[float], list[list[str]]]:
    lat, ids = [], []
    for vec, text in qs:
        t0 = time.perf_counter()
        hits = fn("default", vector=vec, text=text, mode=mode, top_k=10)
        lat.append((time.perf_counter() - t0) * 1000)
        ids.append([h.chunk_id for h in hits])
    return lat, ids


def overlap(a: list[list[str]], b: list[list[str]]) -> float:
    return round(sum(len(set(x) & set(y)) / max(1, len(y)) for x, y in zip(a, b, strict=False)) / len(b), 4)


def smaps(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, val = line.split(":", 1)
        out[key] = int(val.split()[0]) // 1024  # MB
    return {k: out[k] for k in ("Rss", "Pss", "Shared_Clean", "Private_Clean", "Private_Dirty") if k in out}


_CHILD = """
import sys, json
sys.path.insert(0, sys.argv[2])
from bench.bench_scale_snapshot import Snapshot, queries
snap = Snapshot(__import__("pathlib").Path(sys.argv[1]))
qs = queries(snap, 200)
for vec, text in qs:
    snap.search("default", vector=vec, text=text, mode="hybrid", top_k=10)
snap.dense(qs[0][0], 10, None, exact=True)  # one exact scan: every vector page resident
print("ready", flush=True)
sys.stdin.readline()
"""


def two_processes(path: Path) -> dict[str, Any]:
    """PSS of one reader alone, then of two readers of the same snapshot."""
    root = str(Path(__file__).resolve().parent.parent)
    procs: list[subprocess.Popen[str]] = []
    out: dict[str, Any] = {}
    try:
        for name in ("one_alone", "two_together"):
            p = subprocess.Popen([sys.executable, "-c", _CHILD, str(path), root],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
            procs.append(p)
            assert p.stdout is not None
            assert p.stdout.readline().strip() == "ready"
            out[name] = [smaps(q.pid) for q in procs]
    finally:
        for p in procs:
            if p.stdin:
                p.stdin.close()
            p.wait(timeout=60)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--words", type=int, default=80, help="mean words a chunk (uniform 0.5x-1.5x)")
    ap.add_argument("--ann-min-rows", type=int, default=100_000)
    ap.add_argument("--candidates", type=int, default=400, help="snapshot_ann_candidates (its default)")
    ap.add_argument("--sweep", default="", help="also try these snapshot_ann_candidates, e.g. 100,200,400")
    ap.add_argument("--dir", type=Path, default=None, help="keep the snapshot here (default: a temp dir)")
    args = ap.parse_args()
    t_all = time.perf_counter()
    root = args.dir or Path(tempfile.mkdtemp(prefix="rf-snapscale-"))
    res: dict[str, Any] = {"rows": args.rows, "words": args.words}
    try:
        corpus = Corpus(args.rows, args.words)
        t0 = time.perf_counter()
        path = write_snapshot(
            root, Label("chunks", 1, 0, "bench"), corpus.records(), DIM, ann_min_rows=args.ann_min_rows
        )
        res["build_total_s"] = round(time.perf_counter() - t0, 1)
        snap = Snapshot(path, ann_candidates=args.candidates)
        res["build_s"] = snap.meta["build_s"]
        res["synthetic_generation_s"] = round(corpus.gen_s, 1)
        sizes: dict[str, float] = {}
        for f in path.iterdir():
            part = "vectors" if f.name.startswith(("vectors", "norms")) else (
                "ann" if f.suffix == ".usearch" else "bm25" if f.name.startswith(("post_", "idf", "vocab"))
                else "columns")  # fmt: skip
            sizes[part] = sizes.get(part, 0.0) + f.stat().st_size / 2**20
        res["disk_mb"] = {k: round(v) for k, v in sorted(sizes.items())} | {
            "total": round(sum(sizes.values()))
        }
        ptr = np.asarray(snap.post[0])
        res["largest_posting"] = int(np.diff(ptr).max())
        print(json.dumps(res), flush=True)

        qs = queries(snap, args.queries)
        timed(snap.search, qs[:20], "hybrid")  # warm: pages in, as a serving process has them
        lat_h, ids_h = timed(snap.search, qs, "hybrid")
        lat_v, ids_v = timed(snap.search, qs, "vector")
        lat_f, _ = timed(snap.search, qs, "fts")
        ann, snap.ann = snap.ann, None  # the same snapshot, exact dense leg
        n_exact = min(len(qs), 100)
        lat_ve, ids_ve = timed(snap.search, qs[:n_exact], "vector")
        _, ids_he = timed(snap.search, qs[:n_exact], "hybrid")
        snap.ann = ann
        if ann is not None and args.sweep:
            res["sweep"] = []
            for c in (int(x) for x in args.sweep.split(",")):
                ann.candidates, ann.index.expansion_search = c, max(128, c)
                lat_c, ids_c = timed(snap.search, qs, "vector")
                res["sweep"].append({"candidates": c, "p50": pct(lat_c, 0.5), "p99": pct(lat_c, 0.99),
                                     "recall_at_10": overlap(ids_c[:n_exact], ids_ve)})  # fmt: skip
            ann.candidates, ann.index.expansion_search = args.candidates, max(128, args.candidates)
        res["hybrid_ms"] = {"p50": pct(lat_h, 0.5), "p99": pct(lat_h, 0.99)}
        res["vector_ms"] = {"p50": pct(lat_v, 0.5), "p99": pct(lat_v, 0.99), "ann": snap.ann is not None}
        res["fts_ms"] = {"p50": pct(lat_f, 0.5), "p99": pct(lat_f, 0.99)}
        res["exact_vector_ms"] = {"p50": pct(lat_ve, 0.5), "p99": pct(lat_ve, 0.99), "queries": n_exact}
        res["vector_recall_at_10"] = overlap(ids_v[:n_exact], ids_ve)
        res["hybrid_overlap_at_10_vs_exact_dense"] = overlap(ids_h[:n_exact], ids_he)
        print(json.dumps(res), flush=True)
        del snap, ann
        res["pss_mb"] = two_processes(path)
        res["bench_wall_s"] = round(time.perf_counter() - t_all, 1)
        print(json.dumps(res, indent=1), flush=True)
        out = Path("bench/out")
        out.mkdir(parents=True, exist_ok=True)
        (out / "scale_snapshot.json").write_text(json.dumps(res, indent=2))
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
