"""The encoder on ONNX Runtime: the bundled weights exported once, run without torch.

Why: a retrieval process that imports torch holds ~0.7 GB of it to encode one short query, and
sentence-transformers on torch takes ~14 ms a query on one thread where ONNX Runtime takes ~6 ms on
the same weights (NOTES.md, 2026-12-05). The vectors are the same (cosine >= 0.9999, checked at
export), so the embedding model id, the embedding cache and the index do not change.

How it stays torch-free: the export (torch.onnx) runs in a subprocess (`python -m
ragfleet.onnx_export`), never in the process that serves; this module only needs onnxruntime,
numpy and the Rust `tokenizers`. Tokenisation is the model's own `tokenizer.json`, truncated at the
model's `max_seq_length` (256) like sentence-transformers; mean pooling over the attention mask and
L2 normalisation are done here in numpy.

The exported file is cached under `Settings.onnx_root`, keyed by the sha256 of the weight files, the
onnxruntime version (a new runtime re-checks the export against torch) and the exporter's revision.
Two nodes starting at once take a file lock; the exporter writes a temporary file and renames it into
place, so a reader never sees a partial file.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    from numpy.typing import NDArray

log = logging.getLogger("ragfleet.embedding")

Variant = Literal["fp32", "int8", "int8pc"]
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
EXPORT_TIMEOUT_S = 900.0
# part of the cache key: a change to how ragfleet/onnx_export.py builds the graph is another file
EXPORT_REVISION = 3


def weight_files(model_dir: Path) -> list[Path]:
    found = [model_dir / name for name in WEIGHT_FILES if (model_dir / name).is_file()]
    if not found:
        raise ValueError(f"no weight file ({', '.join(WEIGHT_FILES)}) in {model_dir}")
    return found


def weights_digest(model_dir: Path) -> str:
    """sha256 over the model's weight files (name and bytes): what the export was made from."""
    h = hashlib.sha256()
    for path in weight_files(model_dir):
        h.update(path.name.encode())
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()


def runtime_version() -> str:
    import onnxruntime

    return str(onnxruntime.__version__)


def cache_path(root: Path, digest: str, ort_version: str, variant: Variant) -> Path:
    """The cached encoder for these weights, this runtime and this variant: any change of the three
    is another file, never a stale one."""
    name = f"encoder-{digest[:16]}-ort{ort_version}-{variant}-x{EXPORT_REVISION}.onnx"
    return root / name


def max_seq_length(model_dir: Path) -> int:
    config = model_dir / "sentence_bert_config.json"
    if config.is_file():
        return int(json.loads(config.read_text()).get("max_seq_length", 512))
    return 512


def ensure_exported(root: Path, model_dir: Path, variant: Variant = "fp32") -> Path:
    """The cached ONNX encoder, exported (in a subprocess, checked against torch) if missing.
    Raises RuntimeError when the export or its check fails: nothing is kept then."""
    path = cache_path(root, weights_digest(model_dir), runtime_version(), variant)
    if path.is_file():
        return path
    root.mkdir(parents=True, exist_ok=True)
    with (root / (path.name + ".lock")).open("a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second node waits here, then finds the file
        try:
            if path.is_file():
                return path
            log.info("exporting the encoder to ONNX (once per weights and runtime): %s", path)
            argv = [sys.executable, "-m", "ragfleet.onnx_export", "--model-dir", str(model_dir)]
            argv += ["--out", str(path), "--variant", variant]
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=EXPORT_TIMEOUT_S)
            if proc.returncode != 0 or not path.is_file():
                tail = (proc.stderr or proc.stdout)[-2000:]
                raise RuntimeError(f"ONNX export of {model_dir} failed (exit {proc.returncode}):\n{tail}")
            return path
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class OnnxEncoder:
    """Tokenise, run the exported transformer, mean-pool, normalise: sentence-transformers' pipeline for a
    mean-pooling model, without torch. Thread-safe (an InferenceSession runs concurrent calls)."""

    def __init__(self, onnx_file: Path, model_dir: Path, *, threads: int) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, threads)
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads > 1:  # idle pool threads sleep instead of spinning: the other core serves queries
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session: Any = ort.InferenceSession(
            str(onnx_file), sess_options=opts, providers=["CPUExecutionProvider"]
        )
        self._input_names = {i.name for i in self._session.get_inputs()}
        tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        tokenizer.no_padding()  # padded per batch below, to the batch's longest input
        tokenizer.enable_truncation(max_length=max_seq_length(model_dir))  # special tokens included
        self._tokenizer = tokenizer
        self.dim = int(json.loads((model_dir / "config.json").read_text())["hidden_size"])
        self.threads = threads

    def encode(self, texts: list[str], *, batch_size: int) -> NDArray[np.float32]:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        encodings = self._tokenizer.encode_batch(texts)
        # longest first, like sentence-transformers: batches of similar lengths pad little
        order = np.argsort([-len(e.ids) for e in encodings], kind="stable")
        for start in range(0, len(texts), max(1, batch_size)):
            rows = order[start : start + batch_size]
            width = max(len(encodings[i].ids) for i in rows)
            ids = np.zeros((len(rows), width), dtype=np.int64)
            mask = np.zeros((len(rows), width), dtype=np.int64)
            types = np.zeros((len(rows), width), dtype=np.int64)
            for r, i in enumerate(rows):
                e = encodings[i]
                n = len(e.ids)
                ids[r, :n] = e.ids
                mask[r, :n] = e.attention_mask
                types[r, :n] = e.type_ids
            feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
            hidden = self._session.run(None, {k: v for k, v in feeds.items() if k in self._input_names})[0]
            out[rows] = _mean_pool_normalise(np.asarray(hidden, dtype=np.float32), mask)
        return out


def _mean_pool_normalise(hidden: NDArray[np.float32], mask: NDArray[np.int64]) -> NDArray[np.float32]:
    m = mask[..., None].astype(np.float32)
    pooled = (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
    norms = np.linalg.norm(pooled, axis=1, keepdims=True)
    out: NDArray[np.float32] = (pooled / np.maximum(norms, 1e-12)).astype(np.float32)
    return out
