"""Document files through `ragfleet.indexing.index_documents` without workers: a real Redis, a real LanceDB
store, real parsing children, and a stand-in encoder that counts what it encodes.

What is checked: a file becomes chunks that carry `source`, `page` and `section` in the metadata the
store returns; a bad file is an entry of `errors` with its parse code while the rest is indexed; the
same file again embeds nothing; an indexed blob is swept after its TTL and a failed one kept; a `path` outside
the blob area is refused. The fleet path (workers, HTTP, CLI) is tests/integration/test_files_fleet.py.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from ragfleet.blobs import DirectoryBlobStore, blob_store
from ragfleet.indexing import index_documents
from ragfleet.resources import Resources
from ragfleet.settings import Settings
from ragfleet.stores.base import ChunkRecord
from tests import parsing_corpus as corpus
from tests.helpers import HashingEmbedder, isolated

pytestmark = pytest.mark.redis


@pytest.fixture
def res(base_settings: Settings, tmp_path: Path) -> Resources:
    area = tmp_path / "area"
    area.mkdir()
    r = Resources(isolated(base_settings, "files", data_dir=tmp_path / "data", blob_area=area))
    r.__dict__["embedder"] = HashingEmbedder()
    return r


def upload(res: Resources, path: Path) -> dict[str, Any]:
    return {"blob_id": blob_store(res.settings).put(path.read_bytes()), "name": path.name}


def chunks_of(res: Resources, doc_id: str) -> list[ChunkRecord]:
    store, _ = res.live_store()
    store.refresh()
    rows = [c for batch in store.iter_chunks() for c in batch if c.doc_id == doc_id]
    return sorted(rows, key=lambda c: c.chunk_index)


def test_files_are_indexed_with_page_and_section_and_bad_ones_are_named(
    res: Resources, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    pdf = upload(res, corpus.text_pdf(src / "handbook.pdf"))
    docx = upload(res, corpus.docx(src / "staff.docx"))
    broken = src / "broken.pdf"
    broken.write_bytes(b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog" + b"\x00garbage" * 50)
    bad = upload(res, broken)
    text_doc = {"id": "note", "text": "Plain text documents are chunked in word windows as before."}
    result = index_documents(
        res,
        [text_doc],
        tenant="default",
        files=[pdf, {**docx, "metadata": {"team": "hr"}}, bad, {"path": "x.pdf"}],
    )
    assert result.documents_received == 5
    assert result.documents_indexed == 3, result.errors
    errors = {e.source: (e.code.value, e.index) for e in result.errors}
    assert errors == {"broken.pdf": ("unreadable_document", 2), "x.pdf": ("not_found", 3)}

    pages = {c.metadata["page"]: c for c in chunks_of(res, "handbook.pdf")}
    assert set(pages) == {1, 2, 3}
    assert "sixteen weeks" in pages[2].text
    assert all(c.metadata["source"] == "handbook.pdf" for c in pages.values())
    staff = chunks_of(res, "staff.docx")
    parental = next(c for c in staff if "sixteen weeks" in c.text)
    assert parental.metadata["section"] == "Staff handbook > Leave > Parental"
    assert parental.metadata["team"] == "hr"  # the caller's metadata is kept beside source/page/section
    assert any("City: Lisbon" in c.text for c in staff)  # a table row keeps its header
    # text documents: no page or section; the chunker records the document's length (tokens-3)
    assert [c.metadata for c in chunks_of(res, "note")] == [{"doc_chars": len(text_doc["text"])}]

    reports = {r.source: r for r in result.parse_reports}
    assert set(reports) == {"handbook.pdf", "staff.docx"}
    assert reports["handbook.pdf"].pages == 3 and reports["handbook.pdf"].chunks == 3
    assert reports["handbook.pdf"].parser.startswith("pypdfium2")

    blobs = blob_store(res.settings)
    assert isinstance(blobs, DirectoryBlobStore)
    for indexed in (pdf["blob_id"], docx["blob_id"]):  # indexed: marked, swept after blob_indexed_ttl_s
        assert (blobs.root / "indexed" / indexed).exists()
    assert blobs.sweep_indexed(0, now=time.time() + 1) == 2
    assert not blobs.exists(pdf["blob_id"]) and not blobs.exists(docx["blob_id"])
    assert blobs.exists(bad["blob_id"])  # failed: kept for a retry, marked for the TTL sweep
    assert (blobs.root / "failed" / bad["blob_id"]).exists()

    embedded = res.embedder.calls  # type: ignore[attr-defined]
    again = index_documents(res, [], tenant="default", files=[upload(res, src / "handbook.pdf")])
    assert again.documents_unchanged == 1 and again.chunks_embedded == 0
    assert res.embedder.calls == embedded  # type: ignore[attr-defined]


def test_a_path_must_lie_under_the_blob_area(res: Resources, tmp_path: Path) -> None:
    area = res.settings.blob_area
    assert area is not None
    corpus.markdown(area / "runbook.md")
    outside = corpus.markdown(tmp_path / "secret.md")
    result = index_documents(
        res,
        [],
        tenant="default",
        files=[{"path": "runbook.md"}, {"path": str(outside)}, {"path": "../secret.md"}],
    )
    assert result.documents_indexed == 1
    refused = [e for e in result.errors if e.code.value == "invalid_document"]
    assert len(refused) == 1  # both outside paths name the same document id: the last one wins
    assert "not under the blob area" in refused[0].message
    section = {c.metadata.get("section") for c in chunks_of(res, "runbook.md")}
    assert "Runbook > Redis > Memory" in section
    assert (area / "runbook.md").exists()  # a file of the blob area is the producer's: never deleted


def test_without_a_blob_area_paths_are_refused(base_settings: Settings, tmp_path: Path) -> None:
    r = Resources(isolated(base_settings, "files", data_dir=tmp_path))
    r.__dict__["embedder"] = HashingEmbedder()
    result = index_documents(r, [], tenant="default", files=[{"path": "/etc/hostname"}])
    assert [e.code.value for e in result.errors] == ["invalid_document"]
    assert "RAGFLEET_BLOB_AREA is not set" in result.errors[0].message


def test_a_reindex_copies_parsed_files_chunks_as_they_are(res: Resources, tmp_path: Path) -> None:
    from ragfleet.reindex import run_reindex

    pdf = upload(res, corpus.text_pdf(tmp_path / "handbook.pdf"))
    text_doc = {"id": "note", "text": "Plain text documents are chunked in word windows as before."}
    first = index_documents(res, [text_doc], tenant="default", files=[pdf])
    assert first.documents_indexed == 2, first.errors
    before = [(c.chunk_id, c.text, c.metadata) for c in chunks_of(res, "handbook.pdf")]
    assert {m["chunker"] for _, _, m in before} == {"blocks-3"}  # each chunk names its chunker
    embedded = res.embedder.calls  # type: ignore[attr-defined]
    report = run_reindex(res)
    assert report.status == "switched" and report.documents == 2
    assert report.chunks_embedded == 0 and res.embedder.calls == embedded  # type: ignore[attr-defined]
    after = [(c.chunk_id, c.text, c.metadata) for c in chunks_of(res, "handbook.pdf")]
    assert after == before  # pages and sections survive: not flattened into word windows of page 1
