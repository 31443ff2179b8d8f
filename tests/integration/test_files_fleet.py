"""Real documents through the running fleet: `ragfleet ingest` on a generated folder of mixed files, good
and bad, then questions whose answers sit on one page, slide or sheet; and an HTTP multipart upload.

Real worker processes, real Redis, the real model, real LanceDB, real parsing children (Tesseract for
the scan). Every file is generated here (tests/parsing_corpus.py). The folder is ingested once per
module, in a tenant of its own, so other modules' documents cannot compete for the top source.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from pypdf import PdfReader

from ragfleet.resources import Resources
from ragfleet.settings import Settings
from tests import parsing_corpus as corpus
from tests.conftest import REPO, need, settings_env
from tests.fleet import Fleet
from tests.helpers import api_client, ask, wait_job

pytestmark = [pytest.mark.redis, pytest.mark.workers, pytest.mark.model, pytest.mark.ocr]

TENANT = f"files-{uuid.uuid4().hex[:6]}"


def build_folder(root: Path) -> Path:
    docs = root / "docs"
    (docs / "hr").mkdir(parents=True)
    corpus.text_pdf(docs / "hr" / "handbook.pdf")
    corpus.scanned_pdf(docs / "scan.pdf")
    corpus.docx(docs / "hr" / "staff.docx")
    corpus.pptx(docs / "deck.pptx")
    corpus.xlsx(docs / "budget.xlsx")
    corpus.html(docs / "notes.html")
    corpus.markdown(docs / "runbook.md")
    (docs / "corrupt.pdf").write_bytes(b"%PDF-1.7\n" + bytes(range(256)) * 40)
    corpus.encrypted_pdf(docs / "locked.pdf", "hunter2")
    (docs / "blob.bin").write_bytes(bytes(range(256)) * 8)
    (docs / "empty.txt").write_text("")
    corpus.huge_png(docs / "poster.png")  # a decompression bomb: 10^10 pixels in a few hundred bytes
    return docs


@pytest.fixture(scope="module")
def ingested(
    fleet: Fleet, base_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    import shutil

    need(
        shutil.which("tesseract") is not None,
        "tesseract is not installed (scripts/ensure_services.sh --tesseract)",
    )
    docs = build_folder(tmp_path_factory.mktemp("ingest"))
    assert all(not (p.extract_text() or "").strip() for p in PdfReader(docs / "scan.pdf").pages)
    env = {**settings_env(base_settings), "RAGFLEET_DEFAULT_TENANT": TENANT}
    proc = subprocess.run(
        [sys.executable, "-m", "ragfleet.cli", "ingest", str(docs), "--json", "--timeout", "120"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 1, proc.stderr  # documents failed: the run says so in its status
    out: dict[str, Any] = json.loads(proc.stdout)
    out["records"] = [wait_job(base_settings, j) for j in out["jobs"]]
    return out


def test_every_bad_file_is_named_with_its_code_and_the_good_ones_are_indexed(
    ingested: dict[str, Any],
) -> None:
    problems = {p["file"]: (p["status"], p["code"]) for p in ingested["problems"]}
    assert problems == {
        "corrupt.pdf": ("failed", "unreadable_document"),
        "locked.pdf": ("failed", "encrypted_document"),
        "blob.bin": ("skipped", "unsupported_format"),
        "empty.txt": ("failed", "empty_document"),
        "poster.png": ("failed", "too_large"),
    }
    assert all(p["reason"] for p in ingested["problems"])
    assert ingested["documents_indexed"] + ingested["documents_unchanged"] == 7  # 6 files + runbook.md
    assert (ingested["failed"], ingested["skipped"]) == (4, 1)
    reports = {r["source"]: r for rec in ingested["records"] for r in rec["result"]["parse_reports"]}
    assert set(reports) == {
        "handbook.pdf",
        "scan.pdf",
        "staff.docx",
        "deck.pptx",
        "budget.xlsx",
        "notes.html",
    }
    assert reports["scan.pdf"]["pages_ocred"] >= 1
    assert reports["handbook.pdf"]["pages"] == 3 and reports["deck.pptx"]["pages"] == 2


@pytest.mark.parametrize(
    ("question", "source", "page", "quoted"),
    [
        ("How quickly are travel expenses reimbursed?", "handbook.pdf", 3, "thirty days"),
        ("Where does the boiler room key hang?", "scan.pdf", 1, "blue door"),
        ("When does search launch?", "deck.pptx", 2, "March"),
        ("How much do the licences cost?", "budget.xlsx", 2, "3500"),
    ],
)
def test_the_top_source_is_the_file_and_page_that_hold_the_answer(
    ingested: dict[str, Any], base_settings: Settings, question: str, source: str, page: int, quoted: str
) -> None:
    q = ask(base_settings, question, tenant=TENANT, use_cache=False)
    assert q["status"] == "done", q
    top = q["result"]["sources"][0]
    assert (top["metadata"]["source"], top["metadata"]["page"]) == (source, page), q["result"]["sources"]
    assert quoted in top["text"]
    assert quoted in q["result"]["answer"]  # the extractive answer quotes the cited page


def test_sources_show_file_page_and_section(ingested: dict[str, Any], base_settings: Settings) -> None:
    from ragfleet.cli import source_label

    q = ask(base_settings, "Where do holiday requests go?", tenant=TENANT, use_cache=False)
    top = q["result"]["sources"][0]
    assert source_label(top) == "staff.docx p. 1 § Staff handbook > Leave", q["result"]["sources"]
    q = ask(base_settings, "What is the budget of the servers?", tenant=TENANT, use_cache=False)
    assert source_label(q["result"]["sources"][0]).startswith("budget.xlsx sheet Budget")


def test_html_navigation_and_footer_are_in_no_chunk(
    ingested: dict[str, Any], base_settings: Settings
) -> None:
    store, _ = Resources(base_settings).live_store()
    store.refresh()
    chunks = [c for batch in store.iter_chunks() for c in batch if c.tenant == TENANT]
    html = [c for c in chunks if c.doc_id == "notes.html"]
    assert html and any("page level citations" in c.text for c in html)
    for c in chunks:
        assert corpus.NAV not in c.text and corpus.FOOTER not in c.text
        assert "Careers" not in c.text


def test_an_http_multipart_upload_is_parsed_and_answerable(
    fleet: Fleet, base_settings: Settings, tmp_path: Path
) -> None:
    tenant = f"upload-{uuid.uuid4().hex[:6]}"
    settings = base_settings.model_copy(update={"api_keys": f"k-{tenant}:{tenant}"})
    deck = corpus.pptx(tmp_path / "deck.pptx")
    with api_client(settings, headers={"X-API-Key": f"k-{tenant}"}) as api:
        resp = api.post(
            "/v1/documents/files",
            files=[("files", ("quarterly.pptx", deck.read_bytes()))],
            data={"id": "decks/q3", "metadata": '{"team": "finance"}'},
        )
        assert resp.status_code == 202, resp.text
        rec = wait_job(settings, resp.json()["job_id"], timeout=90)
    assert rec["status"] == "done" and rec["tenant"] == tenant, rec
    assert rec["result"]["documents_indexed"] == 1 and rec["result"]["errors"] == []
    q = ask(
        base_settings, "Which office should be mentioned with the results?", tenant=tenant, use_cache=False
    )
    top = q["result"]["sources"][0]
    assert top["doc_id"] == "decks/q3"
    assert (top["metadata"]["source"], top["metadata"]["page"], top["metadata"]["team"]) == (
        "quarterly.pptx",
        1,
        "finance",
    )
    assert "Lisbon" in top["text"]  # the speaker notes of slide 1 are part of slide 1


def test_more_files_than_a_task_may_parse_are_refused_whole(fleet: Fleet, base_settings: Settings) -> None:
    from ragfleet.names import TaskName
    from ragfleet.producer import enqueue

    files = [{"path": f"f{i}.pdf"} for i in range(base_settings.files_per_task + 1)]
    job_id = enqueue(TaskName.INDEX_DOCUMENTS, {"files": files, "tenant": TENANT}, settings=base_settings)
    rec = wait_job(base_settings, job_id)
    assert rec["status"] == "failed" and rec["error"]["code"] == "invalid_payload", rec
    assert f"over the limit of {base_settings.files_per_task}" in rec["error"]["message"]
