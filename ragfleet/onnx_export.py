"""Export the encoder to ONNX, check it against torch, and only then keep it.

Run as a subprocess (`ragfleet.onnx_encoder.ensure_exported` starts it at a worker's first start),
because it imports torch and sentence-transformers: the process that serves queries never does.
Run it by hand, or from scripts/bootstrap.sh, to fill the cache before the fleet starts:

    python -m ragfleet.onnx_export            # the configured model (Settings), into Settings.onnx_root

The check: the exported encoder (through the same code that serves, ragfleet.onnx_encoder) and
sentence-transformers encode a fixed set of sentences (short, long past the 256-token limit, mixed
in one batch); every cosine must be >= 0.9999 for fp32. The int8 variants (dynamic quantisation) are
other model ids because their vectors drift (mean cosine ~0.99 to fp32 with a scale per output
channel, `int8pc`; ~0.93 with one per matrix, `int8`): they are held to looser floors here, and their
retrieval quality is what decides their use (bench/eval_scifact.py, docs/performance.md). A failed
check exits non-zero and leaves no file behind.

The graph (revision 3): torch.onnx's trace of the eager BERT, then ONNX Runtime's own transformer
fusion (`onnxruntime.transformers.optimizer`, model type `bert`): each layer's attention becomes one
`Attention` op and each residual + LayerNorm one `SkipLayerNormalization`. The vectors are the same
(cosine 1.0000); the encoder is ~5-10 % faster on 200-word chunks and a process holds ~18 MB less
(its separate Q, K, V weights and their pre-packed copies are one). `int8pc` quantises that graph;
the older `int8` quantises the unfused trace as it always did.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ragfleet.onnx_encoder import OnnxEncoder, Variant

MIN_COSINE: dict[str, float] = {"fp32": 0.9999, "int8": 0.80, "int8pc": 0.95}
INPUT_NAMES = ["input_ids", "attention_mask", "token_type_ids"]

CHECK_SENTENCES = [
    "What causes the common cold?",
    "a",
    "",
    "Mitochondrial DNA mutations accumulate with age in human skeletal muscle.",
    "BRCA1 and BRCA2 carriers have an increased lifetime risk of breast and ovarian cancer.",
    "Ünïcödé, emoji 🚀 and CJK 漢字 in one line",
    "  leading and trailing whitespace  ",
    "The quick brown fox jumps over the lazy dog. " * 60,  # far past 256 tokens: truncated
    "IL-6 (interleukin 6) levels; p < 0.001; n = 1,024 patients; 95% CI [1.2, 3.4]",
]


def _export_fp32(model_dir: Path, out: Path) -> None:
    import torch
    from transformers import AutoModel

    # eager attention: the SDPA path traces into a graph ONNX Runtime runs ~25 % slower on 200-word chunks
    bert = AutoModel.from_pretrained(str(model_dir), attn_implementation="eager").eval()

    class Wrapper(torch.nn.Module):
        # keywords: transformers 5.x's BertModel takes `use_cache` among its positionals
        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            return self.model(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state

    ids = torch.ones((2, 8), dtype=torch.int64)
    axes = {name: {0: "batch", 1: "sequence"} for name in [*INPUT_NAMES, "last_hidden_state"]}
    with torch.no_grad():
        torch.onnx.export(
            Wrapper(bert),
            (ids, torch.ones_like(ids), torch.zeros_like(ids)),
            str(out),
            input_names=INPUT_NAMES,
            output_names=["last_hidden_state"],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )


def _fuse(src: Path, out: Path, model_dir: Path) -> None:
    """ONNX Runtime's BERT fusion (see the module docstring); the heads and width from the model's config."""
    from onnxruntime.transformers import optimizer

    config = json.loads((model_dir / "config.json").read_text())
    model = optimizer.optimize_model(
        str(src),
        model_type="bert",
        num_heads=int(config["num_attention_heads"]),
        hidden_size=int(config["hidden_size"]),
        opt_level=0,  # fusion only: the runtime applies its own (hardware-specific) passes at load
    )
    fused = model.get_fused_operator_statistics()
    if fused.get("Attention", 0) != int(config["num_hidden_layers"]):
        raise SystemExit(f"ONNX fusion of {model_dir} fused {fused.get('Attention', 0)} attention layers")
    model.save_model_to_file(str(out))


def _quantize(src: Path, out: Path, *, per_channel: bool) -> None:
    """Dynamic int8 quantisation of the weights: one scale per output channel, or per matrix."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # the fused graph's ops are in Microsoft's domain, where shape inference gives no types
    extra = {"DefaultTensorType": onnx.TensorProto.FLOAT} if per_channel else {}
    quantize_dynamic(
        str(src), str(out), weight_type=QuantType.QInt8, per_channel=per_channel, extra_options=extra
    )


def _check_pooling(model_dir: Path) -> None:
    config = model_dir / "1_Pooling" / "config.json"
    if config.is_file() and not json.loads(config.read_text()).get("pooling_mode_mean_tokens"):
        raise SystemExit(f"{model_dir}: the ONNX encoder implements mean pooling only")


def check(onnx_file: Path, model_dir: Path, variant: Variant) -> float:
    """The smallest cosine between the ONNX encoder's vectors and sentence-transformers' (one batch of
    mixed lengths, and each sentence alone)."""
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(model_dir), device="cpu")
    want = np.asarray(
        st.encode(CHECK_SENTENCES, normalize_embeddings=True, convert_to_numpy=True, batch_size=64),
        dtype=np.float32,
    )
    enc = OnnxEncoder(onnx_file, model_dir, threads=1)
    batch = enc.encode(CHECK_SENTENCES, batch_size=64)
    alone = np.stack([enc.encode([s], batch_size=1)[0] for s in CHECK_SENTENCES])
    return float(min((batch * want).sum(axis=1).min(), (alone * want).sum(axis=1).min()))


def export(model_dir: Path, out: Path, variant: Variant) -> float:
    """Export, check, rename into place (atomic: a reader sees the whole file or none)."""
    _check_pooling(model_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    traced, fused = tmp.with_name(tmp.name + ".traced"), tmp.with_name(tmp.name + ".fused")
    try:
        _export_fp32(model_dir, traced)
        if variant == "fp32":
            _fuse(traced, tmp, model_dir)
        elif variant == "int8":
            _quantize(traced, tmp, per_channel=False)
        else:
            _fuse(traced, fused, model_dir)
            _quantize(fused, tmp, per_channel=True)
        worst = check(tmp, model_dir, variant)
        if worst < MIN_COSINE[variant]:
            raise SystemExit(
                f"ONNX export of {model_dir} ({variant}) disagrees with torch: min cosine {worst:.6f}"
                f" < {MIN_COSINE[variant]}; nothing kept"
            )
        os.replace(tmp, out)
        return worst
    finally:
        for leftover in (tmp, traced, fused):
            leftover.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ragfleet.onnx_export", description=__doc__)
    parser.add_argument("--model-dir", type=Path, help="export this model directory to --out")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--variant", choices=["fp32", "int8", "int8pc"], default=None)
    args = parser.parse_args(argv)
    if args.model_dir is not None:
        if args.out is None:
            parser.error("--model-dir needs --out")
        worst = export(args.model_dir, args.out, args.variant or "fp32")
        print(f"exported {args.out} (min cosine to torch {worst:.6f})")
        return 0
    # the configured encoder, through the cache (lock, subprocess, atomic rename)
    from ragfleet.embedding import onnx_variant
    from ragfleet.onnx_encoder import ensure_exported
    from ragfleet.settings import get_settings
    from ragfleet.tokens import model_dir

    settings = get_settings()
    variant = args.variant or onnx_variant(settings.embedding_model)
    path = ensure_exported(settings.onnx_root, model_dir(settings.embedding_model), variant)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
