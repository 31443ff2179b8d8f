"""The ONNX Runtime encoder: the same vectors as torch, an export cached once per weights and runtime,
and a retrieval node that, serving for real, has no torch in its address space.

The last one reads `/proc/<pid>/maps` of a live node after warm-up and an answered query: a module
import probe would miss a library loaded by a dependency, the maps cannot.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from ragfleet.embedding import Embedder
from ragfleet.onnx_encoder import EXPORT_REVISION, cache_path, runtime_version, weights_digest
from ragfleet.settings import Settings
from ragfleet.tokens import BUNDLED_INT8_PC, BUNDLED_MODEL, model_dir, token_counter
from tests.conftest import PYTHON, REPO, heavy_modules_loaded_by, settings_env
from tests.fleet import Fleet
from tests.helpers import ask

pytestmark = [pytest.mark.model]

LONG = (
    "Recurrent somatic mutations in the promoter of the telomerase reverse transcriptase gene are among "
    "the most frequent non-coding mutations in cancer, and they create binding motifs for ETS family "
    "transcription factors that increase expression of the enzyme in melanoma, glioblastoma and "
    "bladder carcinoma. "
) * 8

SENTENCES = [
    "What causes the common cold?",
    "x",
    "",
    "   ",
    "Does vitamin D supplementation reduce the risk of fractures in older adults?",
    "BRCA1",
    "The quick brown fox jumps over the lazy dog.",
    "Ünïcödé naïve café résumé \u2014 with dashes \u2013 and \u201cquotes\u201d",
    "漢字とひらがなの文",
    "emoji 🚀🔥 in a query",
    "IL-6 (interleukin 6) levels; p < 0.001; n = 1,024; 95% CI [1.2, 3.4]",
    "ALL CAPS SHOUTING ABOUT MITOCHONDRIA",
    "line one\nline two\ttabbed",
    "https://example.org/path?query=1&b=2",
    "0.5 mg/kg twice daily for 14 days",
    "Celery is a distributed task queue. Workers consume tasks from a broker such as Redis.",
    "a " * 300,  # 300 one-token words: truncated at 256 with its special tokens
    LONG,
    "Short again.",
    "Mitochondrial DNA mutations accumulate with age in human skeletal muscle fibres, which lose "
    "cytochrome c oxidase activity.",
]


@pytest.fixture(scope="module")
def onnx_settings(base_settings: Settings) -> Settings:
    # fp32: what torch is checked against (the fleet's default, int8pc, is tested against fp32 below)
    return base_settings.model_copy(update={"embedding_runtime": "onnx", "embedding_model": BUNDLED_MODEL})


def test_onnx_and_torch_encoders_agree(onnx_settings: Settings) -> None:
    assert token_counter(BUNDLED_MODEL).count(LONG) > 256  # the truncation case is really one
    onnx = Embedder(onnx_settings)
    torch_ = Embedder(onnx_settings.model_copy(update={"embedding_runtime": "torch"}))
    # one batch of mixed lengths (padded to its longest), small batches, and one at a time
    for batch_size in (64, 3):
        a = onnx.encode(SENTENCES, batch_size=batch_size)
        b = torch_.encode(SENTENCES, batch_size=batch_size)
        assert a.shape == b.shape == (len(SENTENCES), 384)
        cos = (a * b).sum(axis=1)
        assert cos.min() >= 0.9999, dict(zip(SENTENCES, cos.round(6).tolist(), strict=True))
    alone = np.stack([onnx.encode_one(s) for s in SENTENCES])
    assert ((alone * torch_.encode(SENTENCES)).sum(axis=1)).min() >= 0.9999
    np.testing.assert_allclose(np.linalg.norm(alone, axis=1), 1.0, rtol=1e-5)
    assert onnx.encode([]).shape == (0, 384)


def test_fp32_graph_is_fused(onnx_settings: Settings) -> None:
    """The exporter's graph has each layer's attention as one op (ONNX Runtime's BERT fusion): a
    regression to the bare trace would still pass the cosine check, not this one."""
    import onnx

    emb = Embedder(onnx_settings)
    emb.warm_up()
    assert emb.onnx_file is not None
    ops = [n.op_type for n in onnx.load(str(emb.onnx_file), load_external_data=False).graph.node]
    layers = json.loads((model_dir(BUNDLED_MODEL) / "config.json").read_text())["num_hidden_layers"]
    assert ops.count("Attention") == layers
    assert ops.count("SkipLayerNormalization") == 2 * layers


def test_int8pc_encoder_stays_near_fp32(onnx_settings: Settings) -> None:
    """The per-channel int8 model id: its own cached file, vectors within cosine ~0.99 of fp32's on
    real sentences (the per-matrix int8 drifts to ~0.93), and refused on torch (it exists only as ONNX)."""
    fp32 = Embedder(onnx_settings)
    int8_settings = onnx_settings.model_copy(update={"embedding_model": BUNDLED_INT8_PC})
    int8 = Embedder(int8_settings)
    text = [s for s in SENTENCES if s.strip()]
    a, b = fp32.encode(text), int8.encode(text)
    cos = (a * b).sum(axis=1)
    assert cos.mean() >= 0.98 and cos.min() >= 0.95, dict(zip(text, cos.round(4).tolist(), strict=True))
    assert fp32.onnx_file is not None and int8.onnx_file is not None
    assert int8.onnx_file != fp32.onnx_file and "-int8pc-" in int8.onnx_file.name
    assert int8.onnx_file.stat().st_size < fp32.onnx_file.stat().st_size / 3  # int8 weights
    torch_int8 = int8_settings.model_copy(update={"embedding_runtime": "torch"})
    with pytest.raises(ValueError, match="embedding_runtime=onnx"):
        Embedder(torch_int8)


def test_onnx_encoder_imports_no_torch(base_settings: Settings) -> None:
    """The import-level check, fast; the live node's maps below are the real one."""
    script = (
        "from pathlib import Path\n"
        "from ragfleet.embedding import Embedder\n"
        "from ragfleet.settings import Settings\n"
        f"e = Embedder(Settings(embedding_runtime='onnx', onnx_dir=Path({str(base_settings.onnx_root)!r})))\n"
        "assert e.encode_one('a query').shape == (384,)\n"
        "import workers.app, ragfleet.querying, ragfleet.chunking\n"
    )
    loaded = {m.split(".")[0] for m in heavy_modules_loaded_by(script)}
    assert not loaded & {"torch", "sentence_transformers"}, loaded


def test_export_is_cached_by_weights_and_runtime(onnx_settings: Settings, tmp_path: Path) -> None:
    """Two nodes starting at once on an empty cache: one export, one file, no partial file left;
    a later start reuses it. Another runtime version or other weights name another file."""
    settings = onnx_settings.model_copy(update={"onnx_dir": tmp_path / "onnx"})
    env = settings_env(settings)
    procs = [
        subprocess.Popen(
            [PYTHON, "-m", "ragfleet.onnx_export"], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=600)[0].strip().splitlines()[-1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert outs[0] == outs[1]
    path = Path(outs[0])
    assert sorted(p.name for p in path.parent.iterdir() if not p.name.endswith(".lock")) == [path.name]
    before = path.stat()

    emb = Embedder(settings)
    emb.warm_up()
    assert emb.onnx_file == path
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # not re-exported

    digest = weights_digest(model_dir(BUNDLED_MODEL))
    root = settings.onnx_root
    assert path == cache_path(root, digest, runtime_version(), "fp32")
    assert cache_path(root, digest, "0.0.1", "fp32") != path
    assert cache_path(root, "0" * 64, runtime_version(), "fp32") != path
    assert cache_path(root, digest, runtime_version(), "int8") != path
    assert cache_path(root, digest, runtime_version(), "int8pc") != path
    assert path.name.endswith(f"-x{EXPORT_REVISION}.onnx")  # a new exporter is a new file


@pytest.mark.redis
@pytest.mark.workers
def test_live_retrieval_node_has_no_torch_mapped(fleet: Fleet, base_settings: Settings) -> None:
    assert base_settings.embedding_runtime == "onnx"
    rec = ask(base_settings, f"Which runtime encodes this query {os.getpid()}?", use_cache=False)
    assert rec["status"] == "done", json.dumps(rec)[:2000]
    node = fleet.workers["retrieval"]
    assert node.proc is not None and node.pool == "solo"  # the node's own process serves
    pids = [node.proc.pid, *node.children()]
    for pid in pids:
        maps = Path(f"/proc/{pid}/maps").read_text()
        assert "libtorch" not in maps, f"retrieval process {pid} has libtorch mapped"
        if pid == node.proc.pid:
            assert "onnxruntime" in maps  # it encoded the query with ONNX Runtime, not with nothing
    assert os.path.exists(f"/proc/{node.proc.pid}")


@pytest.mark.redis
@pytest.mark.workers
def test_indexing_pool_encodes_on_onnx_at_lower_priority(fleet: Fleet, base_settings: Settings) -> None:
    """Bulk ingest: the indexing pool's processes run below the retrieval nodes' priority, on ONNX."""
    children = fleet.workers["indexing"].children()
    assert children
    retrieval = fleet.workers["retrieval"].proc
    assert retrieval is not None
    base = os.getpriority(os.PRIO_PROCESS, retrieval.pid)
    for pid in children:
        assert os.getpriority(os.PRIO_PROCESS, pid) == min(19, base + base_settings.indexing_nice)
        maps = Path(f"/proc/{pid}/maps").read_text()
        assert "onnxruntime" in maps and "libtorch" not in maps
