"""What a parse produces: pages of structured blocks, a report, or a `ParseError` with a stable code.

Everything here is JSON-serialisable (pydantic): the child process (`ragfleet.parsing.child`) writes a
`ParsedDocument` to stdout and the parent reads it back, so a field added here must survive that round trip.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ragfleet.schemas import ErrorCode

BlockKind = Literal["heading", "paragraph", "table_row", "list_item"]


class DocFormat(StrEnum):
    PDF = "pdf"
    PNG = "png"
    JPEG = "jpeg"
    TIFF = "tiff"
    DOCX = "docx"
    PPTX = "pptx"
    XLSX = "xlsx"
    CSV = "csv"
    HTML = "html"
    MARKDOWN = "markdown"
    TEXT = "text"


IMAGE_FORMATS = frozenset({DocFormat.PNG, DocFormat.JPEG, DocFormat.TIFF})


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Block(_Frozen):
    """One unit of structure. A chunker may join blocks but must never split a `table_row` from its
    `header` (the row alone is meaningless), which is why the header travels with every row."""

    kind: BlockKind
    text: str
    section: tuple[str, ...] = ()
    """Heading path above the block (a heading's own path includes itself)."""
    header: tuple[str, ...] | None = None
    """Column names of a `table_row` (None for every other kind, and for a table without a header row)."""


class Page(_Frozen):
    """A citable unit: a PDF page, a PPTX slide, an XLSX sheet (named by `label`), or the whole document
    for formats without pages (DOCX, HTML, Markdown, text, CSV: one page, number 1)."""

    number: int = Field(ge=1)
    blocks: tuple[Block, ...] = ()
    ocr: bool = False
    """True when the page's text came from OCR (no usable text layer, or an image)."""
    label: str | None = None
    """How a reader cites the page when a number is not enough (the XLSX sheet name)."""


class ParseReport(_Frozen):
    pages: int
    pages_ocred: int
    characters: int
    """Non-whitespace characters of usable text in the whole document."""
    warnings: tuple[str, ...] = ()
    parser: str
    """Library (and fallback) that produced the text, e.g. `pypdfium2`, `pypdf`, `pypdfium2+tesseract`."""


class ParsedDocument(_Frozen):
    source: str
    """The file name (no directory): what a citation shows."""
    format: DocFormat
    pages: tuple[Page, ...]
    report: ParseReport


class ParseError(Exception):
    """A document that cannot be parsed, with a code the job result and the CLI show as is."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{code.value}: {message}")
        self.code = code
        self.message = message

    def to_json(self) -> dict[str, str]:
        return {"code": self.code.value, "message": self.message}


class ParseLimits(_Frozen):
    """The per-document bounds the parent hands the child (from `Settings.parse_*`)."""

    timeout_s: float = 60.0
    max_memory_mb: int = 1024
    max_file_mb: int = 100
    max_pages: int = 500
    min_chars: int = 16

    @property
    def max_uncompressed_bytes(self) -> int:
        """A zip-based file (DOCX/PPTX/XLSX) may not inflate past the memory limit: a decompression bomb."""
        return self.max_memory_mb * 2**20

    @property
    def max_image_pixels(self) -> int:
        """Pillow refuses bigger images up front; 3 bytes a pixel must fit well inside the memory limit."""
        return self.max_memory_mb * 2**20 // 8


def check_pages(count: int, max_pages: int, what: str = "pages") -> None:
    if count > max_pages:
        raise ParseError(ErrorCode.TOO_LARGE, f"{count} {what}, over the limit of {max_pages}")
