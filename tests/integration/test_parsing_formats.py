"""Every supported format through the real entry point, `parse_file`: a child process per document,
real PDFium, Tesseract, python-docx, python-pptx, openpyxl and trafilatura, on files generated here."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from pypdf import PdfReader, PdfWriter

from ragfleet.parsing import ParsedDocument, parse_file
from ragfleet.parsing.model import DocFormat
from ragfleet.settings import Settings
from tests import parsing_corpus as corpus
from tests.conftest import need

SETTINGS = Settings()


@pytest.fixture
def tesseract() -> None:
    need(
        shutil.which("tesseract") is not None,
        "tesseract is not installed (scripts/ensure_services.sh --tesseract)",
    )


def texts(doc: ParsedDocument, page: int | None = None) -> list[str]:
    return [b.text for p in doc.pages if page in (None, p.number) for b in p.blocks]


def test_a_text_pdf_keeps_each_fact_on_its_page(tmp_path: Path) -> None:
    doc = parse_file(corpus.text_pdf(tmp_path / "handbook.pdf"), SETTINGS)
    assert (doc.source, doc.format, doc.report.parser) == ("handbook.pdf", DocFormat.PDF, "pypdfium2")
    assert [p.number for p in doc.pages] == [1, 2, 3]
    assert "sixteen weeks" in " ".join(texts(doc, 2))
    assert "sixteen weeks" not in " ".join(texts(doc, 1) + texts(doc, 3))
    assert doc.report.pages == 3 and doc.report.pages_ocred == 0
    assert doc.report.characters > 150


def test_a_pdf_with_an_empty_user_password_is_parsed(tmp_path: Path) -> None:
    path = corpus.encrypted_pdf(tmp_path / "restricted.pdf", user_password="")
    assert PdfReader(path).is_encrypted
    doc = parse_file(path, SETTINGS)
    assert "twenty five days" in " ".join(texts(doc, 1))


@pytest.mark.ocr
@pytest.mark.usefixtures("tesseract")
def test_a_scanned_pdf_has_no_text_layer_and_its_fact_is_found_by_ocr(tmp_path: Path) -> None:
    path = corpus.scanned_pdf(tmp_path / "scan.pdf")
    assert all(not (page.extract_text() or "").strip() for page in PdfReader(path).pages)
    doc = parse_file(path, SETTINGS)
    assert doc.report.pages_ocred >= 1
    assert doc.report.parser == "pypdfium2+tesseract"
    assert doc.pages[0].ocr
    assert "boiler room key" in " ".join(texts(doc)).lower()


@pytest.mark.ocr
@pytest.mark.usefixtures("tesseract")
def test_only_the_pages_without_a_text_layer_are_ocred(tmp_path: Path) -> None:
    writer = PdfWriter()
    writer.append(corpus.text_pdf(tmp_path / "text.pdf", [["Page one is typed text about the parser."]]))
    writer.append(corpus.scanned_pdf(tmp_path / "scan.pdf"))
    mixed = tmp_path / "mixed.pdf"
    with mixed.open("wb") as fh:
        writer.write(fh)
    doc = parse_file(mixed, SETTINGS)
    assert [p.ocr for p in doc.pages] == [False, True]
    assert doc.report.pages_ocred == 1
    assert "typed text" in " ".join(texts(doc, 1))
    assert "boiler room key" in " ".join(texts(doc, 2)).lower()


@pytest.mark.ocr
@pytest.mark.usefixtures("tesseract")
def test_a_page_whose_text_layer_is_cid_garbage_is_ocred_instead(tmp_path: Path) -> None:
    path = corpus.garbage_layer_scan_pdf(tmp_path / "garbled.pdf")
    assert "(cid:" in PdfReader(path).pages[0].extract_text()
    doc = parse_file(path, SETTINGS)
    assert doc.pages[0].ocr and doc.report.pages_ocred == 1
    assert "boiler room key" in " ".join(texts(doc)).lower()
    assert "(cid:" not in " ".join(texts(doc))
    assert any("replaced by OCR" in w for w in doc.report.warnings)


@pytest.mark.ocr
@pytest.mark.usefixtures("tesseract")
@pytest.mark.parametrize(("name", "fmt"), [("invoice.png", "PNG"), ("invoice.tiff", "TIFF")])
def test_an_image_is_ocred(tmp_path: Path, name: str, fmt: str) -> None:
    doc = parse_file(corpus.image(tmp_path / name, fmt=fmt), SETTINGS)
    assert doc.report.pages_ocred == 1 and doc.pages[0].ocr
    assert "4200 euros" in " ".join(texts(doc))


@pytest.mark.ocr
@pytest.mark.usefixtures("tesseract")
def test_a_png_named_pdf_is_sniffed_parsed_and_warned_about(tmp_path: Path) -> None:
    doc = parse_file(corpus.image(tmp_path / "invoice.pdf"), SETTINGS)
    assert doc.format is DocFormat.PNG
    assert "4200 euros" in " ".join(texts(doc))
    assert any("'.pdf'" in w for w in doc.report.warnings)


def test_docx_headings_become_sections_and_table_rows_keep_their_header(tmp_path: Path) -> None:
    doc = parse_file(corpus.docx(tmp_path / "handbook.docx"), SETTINGS)
    blocks = {b.text: b for b in doc.pages[0].blocks}
    assert blocks["Parental leave is sixteen weeks at full pay."].section == (
        "Staff handbook",
        "Leave",
        "Parental",
    )
    assert blocks["Holiday requests go to your manager two weeks ahead."].section == (
        "Staff handbook",
        "Leave",
    )
    rows = [b for b in doc.pages[0].blocks if b.kind == "table_row"]
    assert [r.text for r in rows] == ["City: Lisbon; Floor: 4", "City: Oslo; Floor: 7"]
    assert {r.header for r in rows} == {("City", "Floor")}
    assert {r.section for r in rows} == {("Staff handbook", "Offices")}


def test_pptx_is_one_page_per_slide_with_its_speaker_notes(tmp_path: Path) -> None:
    doc = parse_file(corpus.pptx(tmp_path / "deck.pptx"), SETTINGS)
    assert [(p.number, p.label) for p in doc.pages] == [(1, "Quarterly results"), (2, "Roadmap")]
    assert "Mention the new Lisbon office." in texts(doc, 1)
    assert "Search launches in March." in texts(doc, 2)
    assert "The launch date is still tentative." in texts(doc, 2)
    assert "The launch date is still tentative." not in texts(doc, 1)
    assert corpus.PPTX_GROUPED in texts(doc, 2)


def test_xlsx_is_one_page_per_sheet_named_by_the_sheet(tmp_path: Path) -> None:
    doc = parse_file(corpus.xlsx(tmp_path / "data.xlsx"), SETTINGS)
    assert [(p.number, p.label) for p in doc.pages] == [(1, "People"), (2, "Budget")]
    assert texts(doc, 2) == ["Item: Servers; Cost: 12000", "Item: Licences; Cost: 3500"]
    assert {b.header for b in doc.pages[0].blocks} == {("Name", "Team")}


def test_csv_rows_keep_their_header(tmp_path: Path) -> None:
    doc = parse_file(corpus.csv_file(tmp_path / "cities.csv"), SETTINGS)
    assert texts(doc) == [
        "city: Lisbon; country: Portugal; population: 545000",
        "city: Oslo; country: Norway; population: 709000",
    ]


def test_html_keeps_main_content_and_headings_without_navigation_or_footer(tmp_path: Path) -> None:
    doc = parse_file(corpus.html(tmp_path / "notes.html"), SETTINGS)
    blocks = doc.pages[0].blocks
    joined = " ".join(b.text for b in blocks)
    assert "page level citations" in joined
    for boilerplate in [*corpus.NAV.split(), corpus.FOOTER]:
        assert all(boilerplate not in b.text for b in blocks), boilerplate
    cited = next(b for b in blocks if "page level citations" in b.text)
    assert cited.section == ("Release notes", "Version 2")


def test_markdown_headings_become_sections(tmp_path: Path) -> None:
    doc = parse_file(corpus.markdown(tmp_path / "runbook.md"), SETTINGS)
    blocks = {b.text: b for b in doc.pages[0].blocks}
    assert blocks["Eviction must stay off."].section == ("Runbook", "Redis", "Memory")
    assert blocks["pool: indexing; queue: indexing"].header == ("pool", "queue")


def test_plain_text_is_split_into_paragraphs(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("First paragraph about\nthe fleet.\n\nSecond paragraph about parsing.\n")
    doc = parse_file(path, SETTINGS)
    assert texts(doc) == ["First paragraph about the fleet.", "Second paragraph about parsing."]


def test_the_parse_survives_its_json_round_trip_intact(tmp_path: Path) -> None:
    doc = parse_file(corpus.docx(tmp_path / "handbook.docx"), SETTINGS, source="hr/handbook.docx")
    assert doc.source == "hr/handbook.docx"
    assert ParsedDocument.model_validate_json(doc.model_dump_json()) == doc
