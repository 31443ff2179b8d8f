"""The parts of ragfleet.parsing that need no child process: the text-quality gate, the type sniffer,
the Markdown structure and the child's crash classification."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from ragfleet.parsing.isolate import classify, limits_from, run_child
from ragfleet.parsing.model import DocFormat, ParseError, ParseLimits
from ragfleet.parsing.quality import measure
from ragfleet.parsing.sniff import sniff
from ragfleet.parsing.text import markdown_blocks
from ragfleet.schemas import ErrorCode
from ragfleet.settings import Settings
from tests import parsing_corpus as corpus

LIMITS = ParseLimits()


def test_a_real_sentence_is_a_usable_text_layer() -> None:
    assert measure("Employees receive twenty five days of paid leave each year.").usable


@pytest.mark.parametrize(
    "garbage",
    [
        "(cid:12)(cid:34)(cid:56) (cid:7)(cid:8)(cid:9)(cid:10) (cid:11)(cid:12)",
        "\ufffd\ufffd\ufffd \ufffd\ufffd\ufffd\ufffd \ufffd\ufffd \ufffd\ufffd\ufffd\ufffd\ufffd",
        "xkcdq brrrtz pfffkl mnbvcx qwrtzp lkjhgf",
        "   \n\n  ",
        "Page 3",
    ],
)
def test_glyph_garbage_and_empty_pages_are_not_usable(garbage: str) -> None:
    assert not measure(garbage).usable


def test_a_table_of_figures_stays_usable() -> None:
    assert measure("Revenue 2024 12,000 13,500 14,250 15,100 Costs 9,000 9,300").usable


def test_cid_runs_count_as_garbage_characters() -> None:
    quality = measure("Leave policy (cid:12)(cid:13)")
    assert quality.garbage_share == pytest.approx(
        len("(cid:12)(cid:13)") / len("Leavepolicy(cid:12)(cid:13)")
    )


@pytest.mark.parametrize(
    ("name", "make", "expected"),
    [
        ("a.pdf", corpus.text_pdf, DocFormat.PDF),
        ("a.docx", corpus.docx, DocFormat.DOCX),
        ("a.pptx", corpus.pptx, DocFormat.PPTX),
        ("a.xlsx", corpus.xlsx, DocFormat.XLSX),
        ("a.html", corpus.html, DocFormat.HTML),
        ("a.md", corpus.markdown, DocFormat.MARKDOWN),
        ("a.csv", corpus.csv_file, DocFormat.CSV),
        ("a.png", corpus.image, DocFormat.PNG),
        ("a.tiff", lambda p: corpus.image(p, fmt="TIFF"), DocFormat.TIFF),
        ("a.jpg", lambda p: corpus.image(p, fmt="JPEG"), DocFormat.JPEG),
    ],
)
def test_sniff_finds_each_format_from_its_bytes(tmp_path: Path, name: str, make, expected: DocFormat) -> None:  # type: ignore[no-untyped-def]
    path = make(tmp_path / name)
    renamed = path.rename(tmp_path / "no_extension")
    assert sniff(renamed, LIMITS).format is expected


def test_sniff_trusts_content_over_a_lying_extension_and_says_so(tmp_path: Path) -> None:
    path = corpus.image(tmp_path / "report.pdf")
    sniffed = sniff(path, LIMITS)
    assert sniffed.format is DocFormat.PNG
    assert any("'.pdf'" in w and "png" in w for w in sniffed.warnings)


def test_sniff_tells_html_and_markdown_apart_without_an_extension(tmp_path: Path) -> None:
    (tmp_path / "page").write_text("<!doctype html><html><body><p>hi</p></body></html>")
    (tmp_path / "notes").write_text("# Title\n\nSome text.\n")
    (tmp_path / "plain").write_text("Just a line of text.\n")
    assert sniff(tmp_path / "page", LIMITS).format is DocFormat.HTML
    assert sniff(tmp_path / "notes", LIMITS).format is DocFormat.MARKDOWN
    assert sniff(tmp_path / "plain", LIMITS).format is DocFormat.TEXT


@pytest.mark.parametrize(
    ("content", "code"),
    [
        (bytes(range(256)) * 16, ErrorCode.UNSUPPORTED_FORMAT),
        (b"", ErrorCode.EMPTY_DOCUMENT),
        (b" \n\t\n", ErrorCode.EMPTY_DOCUMENT),
        (
            b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\0" * 504 + "EncryptedPackage".encode("utf-16-le"),
            ErrorCode.ENCRYPTED_DOCUMENT,
        ),
        (
            b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\0" * 504 + "WordDocument".encode("utf-16-le"),
            ErrorCode.UNSUPPORTED_FORMAT,
        ),
        (b"PK\x03\x04 not really a zip", ErrorCode.UNREADABLE_DOCUMENT),
    ],
)
def test_sniff_refuses_what_it_cannot_parse_with_a_code(
    tmp_path: Path, content: bytes, code: ErrorCode
) -> None:
    path = tmp_path / "input.docx"
    path.write_bytes(content)
    with pytest.raises(ParseError) as raised:
        sniff(path, LIMITS)
    assert raised.value.code is code


def test_sniff_reads_a_utf8_head_cut_inside_a_character(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("x" + "é" * 10_000)  # the 8 KiB head ends inside a two-byte character
    assert sniff(path, LIMITS).format is DocFormat.TEXT


def test_markdown_headings_become_the_section_path_and_rows_keep_their_header() -> None:
    blocks = markdown_blocks(
        "# A\n\nintro\n\n## B\n\n### C\n\ndeep\n\n## D\n\n| k | v |\n|---|---|\n| x | 1 |\n\n- item\n"
    )
    by_text = {b.text: b for b in blocks}
    assert by_text["intro"].section == ("A",)
    assert by_text["deep"].section == ("A", "B", "C")
    row = by_text["k: x; v: 1"]
    assert (row.kind, row.section, row.header) == ("table_row", ("A", "D"), ("k", "v"))
    assert by_text["item"].kind == "list_item"
    assert not any("---" in b.text for b in blocks)


def test_limits_come_from_settings() -> None:
    settings = Settings(
        parse_timeout_s=7, parse_max_memory_mb=300, parse_max_file_mb=3, parse_max_pages=9, parse_min_chars=5
    )
    assert limits_from(settings) == ParseLimits(
        timeout_s=7, max_memory_mb=300, max_file_mb=3, max_pages=9, min_chars=5
    )


def test_a_crashing_child_is_an_unreadable_document() -> None:
    with pytest.raises(ParseError) as raised:
        run_child([sys.executable, "-c", "import os; os.abort()"], timeout_s=30)
    assert raised.value.code is ErrorCode.UNREADABLE_DOCUMENT
    assert "signal 6" in raised.value.message


def test_a_child_out_of_memory_is_too_large() -> None:
    with pytest.raises(ParseError) as raised:
        run_child([sys.executable, "-c", "raise MemoryError"], timeout_s=30)
    assert raised.value.code is ErrorCode.TOO_LARGE


def test_garbage_on_stdout_is_not_mistaken_for_a_result() -> None:
    with pytest.raises(ParseError) as raised:
        classify(0, b"hello\n", b"")
    assert raised.value.code is ErrorCode.UNREADABLE_DOCUMENT
