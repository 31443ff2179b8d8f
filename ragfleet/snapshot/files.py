"""A read-only search snapshot of one collection at one index pointer: files every retrieval
process memory-maps, and the search over them.

Why: on SciFact's 7,732 chunks LanceDB's hybrid query costs ~11 ms, while an exact dense top-50
over the same vectors in numpy costs ~0.3 ms and a BM25 top-50 ~0.4 ms. The store stays the
durable source of truth; a snapshot is a derived, disposable copy labelled with the pointer
(collection, version, generation) read *before* its rows were scanned, so it is never older than
its label (ragfleet/snapshot/manager.py decides when it may answer).

Layout of `<root>/<collection>/v<version>-g<generation>/` (all .npy, loaded with mmap_mode="r",
so two processes share one copy of the pages):
- vectors (n, dim) float32 and their norms: exact cosine, as LanceDB's flat search computes it;
- tenant codes (n,) with tenants.json: a tenant is a mask, never a separate index;
- chunk_index/start/end int32 and the string columns (chunk_id, doc_id, text, title, metadata) as
  one UTF-8 byte blob plus int64 offsets each: only the final top-k rows are ever decoded;
- the BM25 postings (ragfleet/snapshot/text.py) and vocab.json;
- from `ann_min_rows` rows on, ann.usearch: an HNSW graph over the vectors (ragfleet/snapshot/ann.py),
  also mapped, whose candidates are re-scored exactly (an exact scan is O(rows): ~100 ms at 1M);
- meta.json, written last: a directory without it is never opened. A builder writes into a
  temporary directory and renames it into place, so a crash leaves no half snapshot under a label.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ragfleet.schemas import SearchMode
from ragfleet.snapshot.ann import ANN_FILE, MIN_SHARE, AnnIndex, build_ann
from ragfleet.snapshot.text import bm25_scores, build_postings
from ragfleet.stores.base import ChunkRecord, SearchHit
from ragfleet.stores.fusion import fuse_minmax

FORMAT = 1
STRING_COLUMNS = ("chunk_id", "doc_id", "text", "title", "metadata")
INT_COLUMNS = ("chunk_index", "start", "end")


@dataclass(frozen=True, slots=True)
class Label:
    """The index pointer a snapshot was built at: it may answer a query that read exactly this."""

    collection: str
    version: int
    generation: int
    epoch: str  # the pointer's (IndexPointer.epoch): versions alone repeat after its keys are lost

    @property
    def dirname(self) -> str:
        return f"{self.epoch}-v{self.version}-g{self.generation}"


def write_snapshot(
    root: Path,
    label: Label,
    batches: Iterable[list[ChunkRecord]],
    dim: int,
    *,
    ann_min_rows: int | None = None,
    ann_threads: int = 0,
) -> Path:
    """Write the rows of `batches` as the snapshot `label` under `root`; returns its directory.
    Atomic: the files go to a temporary sibling, renamed into place once complete. With at least
    `ann_min_rows` rows an ANN graph is built too (`ann_threads` 0: every core). meta.json records
    each part's build seconds."""
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    final = root / label.collection / label.dirname
    tmp = root / label.collection / f".tmp-{label.dirname}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    vectors: list[npt.NDArray[np.float32]] = []
    ints: dict[str, list[int]] = {c: [] for c in INT_COLUMNS}
    strings: dict[str, list[bytes]] = {c: [] for c in STRING_COLUMNS}
    title_null: list[bool] = []
    tenants: dict[str, int] = {}
    codes: list[int] = []
    texts: list[str] = []
    for batch in batches:
        if not batch:
            continue
        vectors.append(np.asarray([r.vector for r in batch], dtype=np.float32).reshape(len(batch), dim))
        for r in batch:
            codes.append(tenants.setdefault(r.tenant, len(tenants)))
            ints["chunk_index"].append(r.chunk_index)
            ints["start"].append(r.start)
            ints["end"].append(r.end)
            meta = json.dumps(r.metadata, sort_keys=True) if r.metadata else ""
            for col, value in zip(
                STRING_COLUMNS, (r.chunk_id, r.doc_id, r.text, r.title or "", meta), strict=True
            ):
                strings[col].append(value.encode("utf-8"))
            title_null.append(r.title is None)
            texts.append(r.text)
    vecs = np.concatenate(vectors) if vectors else np.zeros((0, dim), np.float32)
    del vectors
    timings["read"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    np.save(tmp / "vectors.npy", vecs)
    np.save(tmp / "norms.npy", np.linalg.norm(vecs, axis=1).astype(np.float32))
    np.save(tmp / "tenant_codes.npy", np.asarray(codes, dtype=np.int32))
    for col in INT_COLUMNS:
        np.save(tmp / f"{col}.npy", np.asarray(ints[col], dtype=np.int32))
    for col in STRING_COLUMNS:
        lens = np.fromiter((len(b) for b in strings[col]), np.int64, len(strings[col]))
        offsets = np.zeros(len(lens) + 1, dtype=np.int64)
        np.cumsum(lens, out=offsets[1:])
        np.save(tmp / f"{col}.off.npy", offsets)
        np.save(tmp / f"{col}.bin.npy", np.frombuffer(b"".join(strings[col]), dtype=np.uint8))
    np.save(tmp / "title_null.npy", np.asarray(title_null, dtype=np.bool_))
    timings["columns"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    words, ptr, docs, weights, idf = build_postings(texts)
    del texts
    np.save(tmp / "post_ptr.npy", ptr)
    np.save(tmp / "post_doc.npy", docs)
    np.save(tmp / "post_w.npy", weights)
    np.save(tmp / "idf.npy", idf)
    (tmp / "vocab.json").write_text(json.dumps(words), encoding="utf-8")
    (tmp / "tenants.json").write_text(json.dumps(sorted(tenants, key=tenants.__getitem__)), encoding="utf-8")
    timings["bm25"] = time.perf_counter() - t0
    ann = ann_min_rows is not None and len(codes) >= ann_min_rows
    if ann:
        t0 = time.perf_counter()
        build_ann(vecs, tmp / ANN_FILE, threads=ann_threads)
        timings["ann"] = time.perf_counter() - t0
    info = {
        "format": FORMAT,
        "collection": label.collection,
        "version": label.version,
        "generation": label.generation,
        "epoch": label.epoch,
        "rows": len(codes),
        "dim": dim,
        "ann": ann,
        "build_s": {k: round(v, 2) for k, v in timings.items()},
    }
    (tmp / "meta.json").write_text(json.dumps(info), encoding="utf-8")
    _fsync_dir(tmp)
    if final.exists():  # built meanwhile by a builder on another host sharing nothing but this dir
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        os.replace(tmp, final)
    return final


def _fsync_dir(path: Path) -> None:
    for f in path.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())


class Snapshot:
    """One snapshot directory, memory-mapped read-only."""

    def __init__(self, path: Path, *, ann_candidates: int = 400) -> None:
        meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT:
            raise ValueError(f"snapshot {path}: format {meta.get('format')!r}, expected {FORMAT}")
        self.path = path
        self.label = Label(
            str(meta["collection"]), int(meta["version"]), int(meta["generation"]), str(meta.get("epoch", ""))
        )
        self.rows = int(meta["rows"])
        self.meta: dict[str, Any] = meta

        def load(name: str) -> Any:
            return np.load(path / f"{name}.npy", mmap_mode="r")

        self.vectors = load("vectors")
        self.norms = load("norms")
        self.safe_norms = np.maximum(self.norms, 1e-12)  # (n,) float32, private: 4 bytes a row
        self.codes = load("tenant_codes")
        self.ints = {c: load(c) for c in INT_COLUMNS}
        self.strings = {c: (load(f"{c}.off"), load(f"{c}.bin")) for c in STRING_COLUMNS}
        self.title_null = load("title_null")
        self.post = (load("post_ptr"), load("post_doc"), load("post_w"), load("idf"))
        words = json.loads((path / "vocab.json").read_text(encoding="utf-8"))
        self.vocab = {w: i for i, w in enumerate(words)}
        self.tenants = {
            t: i for i, t in enumerate(json.loads((path / "tenants.json").read_text(encoding="utf-8")))
        }
        self.ann = AnnIndex(path / ANN_FILE, candidates=ann_candidates) if meta.get("ann") else None

    def _string(self, col: str, row: int) -> str:
        off, blob = self.strings[col]
        return bytes(blob[int(off[row]) : int(off[row + 1])]).decode("utf-8")

    def hit(self, row: int, score: float) -> SearchHit:
        meta = self._string("metadata", row)
        return SearchHit(
            chunk_id=self._string("chunk_id", row),
            doc_id=self._string("doc_id", row),
            chunk_index=int(self.ints["chunk_index"][row]),
            text=self._string("text", row),
            title=None if self.title_null[row] else self._string("title", row),
            start=int(self.ints["start"][row]),
            end=int(self.ints["end"][row]),
            score=float(score),
            metadata=json.loads(meta) if meta else {},
        )

    def _mask(self, tenant: str) -> npt.NDArray[np.bool_] | bool | None:
        """None: every row is the tenant's; False: none is; else the tenant's rows."""
        code = self.tenants.get(tenant)
        if code is None:
            return False
        if len(self.tenants) == 1:
            return None
        mask: npt.NDArray[np.bool_] = np.asarray(self.codes) == code
        return mask

    def dense(
        self, vector: list[float], n: int, mask: npt.NDArray[np.bool_] | None, *, exact: bool = False
    ) -> dict[int, float]:
        """Cosine top-n, best first: row -> score (1 - cosine distance, as LanceDB). With an ANN
        graph (and not `exact`) over its candidates only; every score is the exact one."""
        q = np.asarray(vector, dtype=np.float32)
        qn = float(np.linalg.norm(q)) or 1.0
        if self.ann is not None and not exact:
            got = self.ann.dense(self.vectors, self.safe_norms, q, n, mask)
            rows = np.flatnonzero(mask) if got is None and mask is not None else None
            if rows is not None and len(rows) <= MIN_SHARE * self.rows:  # a small tenant: its rows only
                got = rows, (self.vectors[rows] @ q) / self.safe_norms[rows]
            if got is not None:
                rows, sub = got
                sub /= qn
                return {int(rows[i]): s for i, s in _top(sub, n).items()}
        scores = self.vectors @ q  # a fresh array: normalised in place
        scores /= self.safe_norms
        scores /= qn
        if mask is not None:
            scores[~mask] = -np.inf
        return _top(scores, n)

    def sparse(self, text: str, n: int, mask: npt.NDArray[np.bool_] | None) -> dict[int, float]:
        """BM25 top-n, best first: row -> score."""
        rows, scores = bm25_scores(text, self.vocab, *self.post)
        if mask is not None and len(rows):
            keep = mask[rows]
            rows, scores = rows[keep], scores[keep]
        top = _top(scores, n)
        return {int(rows[i]): s for i, s in top.items()}

    def search(
        self,
        tenant: str,
        *,
        vector: list[float] | None,
        text: str | None,
        mode: SearchMode,
        top_k: int,
        dense_weight: float = 0.5,
        candidates: int = 50,
    ) -> list[SearchHit]:
        """What `VectorStore.search` returns for the same arguments (no metadata filters)."""
        if mode in ("vector", "hybrid") and vector is None:
            raise ValueError(f"{mode} search needs a query vector")
        mask = self._mask(tenant)
        if mask is False or self.rows == 0:
            return []
        m = None if mask is None or isinstance(mask, bool) else mask
        n = max(top_k, candidates) if mode == "hybrid" else top_k
        dense = self.dense(vector, n, m) if mode in ("vector", "hybrid") and vector is not None else {}
        want_fts = mode in ("fts", "hybrid") and bool(text and text.strip())
        sparse = self.sparse(text or "", n, m) if want_fts else {}
        if mode == "hybrid":
            best = fuse_minmax(dense, sparse, dense_weight=dense_weight)[:top_k]
        else:
            best = list((dense if mode == "vector" else sparse).items())[:top_k]
        return [self.hit(row, score) for row, score in best]


def _top(scores: npt.NDArray[Any], n: int) -> dict[int, float]:
    finite = np.isfinite(scores)
    k = min(n, int(finite.sum()))
    if k <= 0:
        return {}
    idx = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
    idx = idx[np.isfinite(scores[idx])]
    order = idx[np.argsort(-scores[idx], kind="stable")]
    return {int(i): float(scores[i]) for i in order}
