"""The real type of a file, from its bytes; the extension only breaks ties between text formats.

An extension that lies (a PNG named `.pdf`) is not an error: the content wins and a warning says so.
Only content that is none of the supported types is `unsupported_format`.
"""

from __future__ import annotations

import codecs
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from ragfleet.parsing.model import DocFormat, ParseError, ParseLimits
from ragfleet.schemas import ErrorCode

EXTENSIONS: dict[str, DocFormat] = {
    ".pdf": DocFormat.PDF,
    ".png": DocFormat.PNG,
    ".jpg": DocFormat.JPEG,
    ".jpeg": DocFormat.JPEG,
    ".tif": DocFormat.TIFF,
    ".tiff": DocFormat.TIFF,
    ".docx": DocFormat.DOCX,
    ".pptx": DocFormat.PPTX,
    ".xlsx": DocFormat.XLSX,
    ".csv": DocFormat.CSV,
    ".tsv": DocFormat.CSV,
    ".html": DocFormat.HTML,
    ".htm": DocFormat.HTML,
    ".md": DocFormat.MARKDOWN,
    ".markdown": DocFormat.MARKDOWN,
    ".txt": DocFormat.TEXT,
    ".text": DocFormat.TEXT,
}
TEXT_FORMATS = frozenset({DocFormat.CSV, DocFormat.HTML, DocFormat.MARKDOWN, DocFormat.TEXT})
_ZIP_MARKERS = (
    ("word/document.xml", DocFormat.DOCX),
    ("ppt/presentation.xml", DocFormat.PPTX),
    ("xl/workbook.xml", DocFormat.XLSX),
)
_CFB = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # OLE compound file: legacy Office, or encrypted OOXML
_HTML = re.compile(rb"<!doctype\s+html|<html[\s>]|<head[\s>]|<body[\s>]", re.IGNORECASE)
_MD_HEADING = re.compile(r"^#{1,6}\s+\S", re.MULTILINE)
_HEAD = 8192


@dataclass(frozen=True)
class Sniffed:
    format: DocFormat
    warnings: list[str] = field(default_factory=list)


def decode_text(data: bytes, *, final: bool = True) -> str | None:
    """Text as a human would read it, or None for binary content (a NUL byte, or neither UTF-8, UTF-16 nor
    mostly-printable cp1252). `final=False`: `data` is a file's head, cut maybe inside a UTF-8 character."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError:
            return None
    if b"\x00" in data:
        return None
    try:
        return codecs.getincrementaldecoder("utf-8-sig")().decode(data, final=final)
    except UnicodeDecodeError:
        pass
    text = data.decode("cp1252", errors="replace")
    controls = sum(1 for c in text if ord(c) < 32 and c not in "\t\n\r\f")
    return None if controls > len(text) // 100 or "\ufffd" in text else text


def _zip_format(path: Path, limits: ParseLimits) -> DocFormat:
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise ParseError(ErrorCode.UNREADABLE_DOCUMENT, f"broken zip container: {exc}") from exc
    names = {i.filename for i in infos}
    found = next((fmt for member, fmt in _ZIP_MARKERS if member in names), None)
    if found is None:
        raise ParseError(ErrorCode.UNSUPPORTED_FORMAT, "a zip archive that is not DOCX, PPTX or XLSX")
    inflated = sum(i.file_size for i in infos)
    if inflated > limits.max_uncompressed_bytes:
        raise ParseError(
            ErrorCode.TOO_LARGE,
            f"{found.value} inflates to {inflated // 2**20} MiB, over the {limits.max_memory_mb} MiB limit",
        )
    return found


def _binary_format(path: Path, head: bytes, limits: ParseLimits) -> DocFormat | None:
    if b"%PDF-" in head[:1024]:
        return DocFormat.PDF
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return DocFormat.PNG
    if head.startswith(b"\xff\xd8\xff"):
        return DocFormat.JPEG
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return DocFormat.TIFF
    if head.startswith(b"PK\x03\x04"):
        return _zip_format(path, limits)
    if head.startswith(_CFB):
        if "EncryptedPackage".encode("utf-16-le") in path.read_bytes():
            raise ParseError(ErrorCode.ENCRYPTED_DOCUMENT, "a password-protected Office file")
        raise ParseError(
            ErrorCode.UNSUPPORTED_FORMAT, "a legacy Office file (.doc/.xls/.ppt): save it as OOXML"
        )
    return None


def _text_format(text: str, by_ext: DocFormat | None) -> DocFormat:
    if by_ext in TEXT_FORMATS:
        return by_ext
    if _HTML.search(text[:_HEAD].encode("utf-8", errors="ignore")):
        return DocFormat.HTML
    if _MD_HEADING.search(text[:_HEAD]):
        return DocFormat.MARKDOWN
    if _looks_tabular(text[:_HEAD]):
        return DocFormat.CSV
    return DocFormat.TEXT


def _looks_tabular(text: str) -> bool:
    """At least two lines, and one delimiter appearing the same (non-zero) number of times on each of the
    first lines: a table, not prose that happens to hold commas."""
    lines = [line for line in text.splitlines()[:20] if line.strip()]
    if len(lines) > 1 and not text.endswith("\n"):
        lines = lines[:-1]  # the head may end mid-line
    if len(lines) < 2:
        return False
    return any(len({line.count(d) for line in lines}) == 1 and lines[0].count(d) > 0 for d in ",;\t|")


def sniff(path: Path, limits: ParseLimits) -> Sniffed:
    """Raises `ParseError`: `empty_document` (nothing but whitespace), `unsupported_format`, and for a zip
    container `too_large` (a bomb) or `unreadable_document`."""
    with path.open("rb") as fh:
        head = fh.read(_HEAD)
    if not head.strip():
        raise ParseError(ErrorCode.EMPTY_DOCUMENT, "the file is empty")
    by_ext = EXTENSIONS.get(path.suffix.lower())
    found = _binary_format(path, head, limits)
    if found is None:
        text = decode_text(head, final=len(head) < _HEAD)
        if text is None:
            raise ParseError(
                ErrorCode.UNSUPPORTED_FORMAT, f"unknown binary content (starts {head[:8].hex()})"
            )
        found = _text_format(text, by_ext)
    warnings = []
    if by_ext is not None and by_ext != found and not {by_ext, found} <= TEXT_FORMATS:
        warnings.append(f"named {path.suffix!r} but the content is {found.value}: parsed as {found.value}")
    return Sniffed(found, warnings)
