"""Every bad input ends with its code, quickly, through the real bounded child (docs/parsing.md)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from ragfleet.parsing import ParseError, parse_file
from ragfleet.schemas import ErrorCode
from ragfleet.settings import Settings
from tests import parsing_corpus as corpus
from tests.conftest import need

SETTINGS = Settings()


def code_of(path: Path, settings: Settings = SETTINGS) -> ErrorCode:
    with pytest.raises(ParseError) as raised:
        parse_file(path, settings)
    return raised.value.code


def test_a_truncated_pdf_is_unreadable(tmp_path: Path) -> None:
    whole = corpus.text_pdf(tmp_path / "whole.pdf").read_bytes()
    path = tmp_path / "truncated.pdf"
    path.write_bytes(whole[:200])
    assert code_of(path) is ErrorCode.UNREADABLE_DOCUMENT


def test_a_corrupt_pdf_is_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.pdf"
    path.write_bytes(b"%PDF-1.7\n" + bytes(range(256)) * 40)
    assert code_of(path) is ErrorCode.UNREADABLE_DOCUMENT


def test_a_password_protected_pdf_is_encrypted(tmp_path: Path) -> None:
    assert code_of(corpus.encrypted_pdf(tmp_path / "secret.pdf", "hunter2")) is ErrorCode.ENCRYPTED_DOCUMENT


def test_a_zip_bomb_named_docx_is_too_large(tmp_path: Path) -> None:
    bomb = corpus.zip_bomb_docx(tmp_path / "bomb.docx", inflated_mb=300)
    assert bomb.stat().st_size < 2 * 2**20
    assert code_of(bomb, Settings(parse_max_memory_mb=256)) is ErrorCode.TOO_LARGE


def test_a_huge_dimension_image_is_too_large_before_decoding(tmp_path: Path) -> None:
    assert code_of(corpus.huge_png(tmp_path / "huge.png")) is ErrorCode.TOO_LARGE


def test_a_parse_over_the_memory_limit_is_too_large(tmp_path: Path) -> None:
    """37 MB of text cannot be decoded and split within 150 MiB of address space; a small file can."""
    big = tmp_path / "big.txt"
    big.write_text("The fleet parses every document in a child process of its own.\n\n" * 600_000)
    small = corpus.markdown(tmp_path / "runbook.md")
    limited = Settings(parse_max_memory_mb=150)
    assert code_of(big, limited) is ErrorCode.TOO_LARGE
    assert parse_file(small, limited).report.characters > 0


def test_a_file_over_the_size_limit_is_too_large_without_a_child(tmp_path: Path) -> None:
    path = tmp_path / "big.txt"
    path.write_text("word " * 300_000)  # 1.5 MB
    started = time.monotonic()
    assert code_of(path, Settings(parse_max_file_mb=1)) is ErrorCode.TOO_LARGE
    assert time.monotonic() - started < 0.2


def test_a_document_over_the_page_limit_is_too_large(tmp_path: Path) -> None:
    assert (
        code_of(corpus.text_pdf(tmp_path / "three.pdf"), Settings(parse_max_pages=2)) is ErrorCode.TOO_LARGE
    )


def _processes_naming(needle: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if needle in cmdline:
            found.append(int(pid))
    return found


@pytest.mark.ocr
def test_a_parse_over_the_time_limit_is_killed_as_parse_timeout(tmp_path: Path) -> None:
    need(shutil.which("tesseract") is not None, "tesseract is not installed")
    path = corpus.scanned_pdf(tmp_path / "long-scan.pdf", pages=20)  # ~20 s of OCR
    started = time.monotonic()
    assert code_of(path, Settings(parse_timeout_s=2)) is ErrorCode.PARSE_TIMEOUT
    assert time.monotonic() - started < 8
    assert _processes_naming(str(path)) == []  # the child is gone, not left running


def test_an_unknown_binary_is_unsupported(tmp_path: Path) -> None:
    path = tmp_path / "blob.pdf"
    path.write_bytes(bytes(range(256)) * 16)
    assert code_of(path) is ErrorCode.UNSUPPORTED_FORMAT


def test_an_empty_file_is_an_empty_document(tmp_path: Path) -> None:
    path = tmp_path / "empty.txt"
    path.write_bytes(b"")
    assert code_of(path) is ErrorCode.EMPTY_DOCUMENT


def test_html_that_is_only_navigation_is_an_empty_document(tmp_path: Path) -> None:
    assert code_of(corpus.html(tmp_path / "nav.html", article=False)) is ErrorCode.EMPTY_DOCUMENT


def test_a_csv_with_only_a_header_is_an_empty_document(tmp_path: Path) -> None:
    path = tmp_path / "header.csv"
    path.write_text("city,country,population\n")
    assert code_of(path) is ErrorCode.EMPTY_DOCUMENT


def test_text_under_the_minimum_is_an_empty_document(tmp_path: Path) -> None:
    path = tmp_path / "short.txt"
    path.write_text("Hello there\n")
    assert code_of(path, Settings(parse_min_chars=50)) is ErrorCode.EMPTY_DOCUMENT
    assert parse_file(path, Settings(parse_min_chars=5)).report.characters == len("Hellothere")


def test_a_missing_file_is_unreadable(tmp_path: Path) -> None:
    assert code_of(tmp_path / "gone.pdf") is ErrorCode.UNREADABLE_DOCUMENT
