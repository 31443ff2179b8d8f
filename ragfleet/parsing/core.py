"""Parse one file in this process: sniff, dispatch to the format's parser, then the quality gate.

Only `ragfleet.parsing.child` calls this in production (bounded by `isolate`); tests may call it directly
for a format whose library cannot hang. It raises `ParseError` and lets anything else propagate: the child
turns an unexpected exception into `unreadable_document`.
"""

from __future__ import annotations

from pathlib import Path

from ragfleet.parsing.model import (
    IMAGE_FORMATS,
    DocFormat,
    Page,
    ParsedDocument,
    ParseError,
    ParseLimits,
    ParseReport,
)
from ragfleet.parsing.quality import measure
from ragfleet.parsing.sniff import sniff
from ragfleet.schemas import ErrorCode

PARSERS: dict[DocFormat, str] = {
    DocFormat.DOCX: "python-docx",
    DocFormat.PPTX: "python-pptx",
    DocFormat.XLSX: "openpyxl",
    DocFormat.CSV: "csv",
    DocFormat.HTML: "trafilatura",
    DocFormat.MARKDOWN: "markdown",
    DocFormat.TEXT: "text",
}


def _dispatch(fmt: DocFormat, path: Path, limits: ParseLimits, warnings: list[str]) -> tuple[list[Page], str]:
    from ragfleet.parsing import office, text

    if fmt is DocFormat.PDF:
        from ragfleet.parsing.pdf import parse_pdf

        return parse_pdf(path, limits, warnings)
    if fmt in IMAGE_FORMATS:
        from ragfleet.parsing.ocr import parse_image

        return parse_image(path, limits), "tesseract"
    pages = {
        DocFormat.DOCX: lambda: office.parse_docx(path),
        DocFormat.PPTX: lambda: office.parse_pptx(path, limits.max_pages),
        DocFormat.XLSX: lambda: office.parse_xlsx(path, limits.max_pages),
        DocFormat.CSV: lambda: text.parse_csv(path),
        DocFormat.HTML: lambda: text.parse_html(path),
        DocFormat.MARKDOWN: lambda: text.parse_markdown(path),
        DocFormat.TEXT: lambda: text.parse_text(path),
    }[fmt]()
    return pages, PARSERS[fmt]


def parse_in_process(path: Path, limits: ParseLimits, source: str | None = None) -> ParsedDocument:
    size = path.stat().st_size
    if size > limits.max_file_mb * 2**20:
        raise ParseError(ErrorCode.TOO_LARGE, f"{size // 2**20} MiB, over the {limits.max_file_mb} MiB limit")
    sniffed = sniff(path, limits)
    warnings = list(sniffed.warnings)
    pages, parser = _dispatch(sniffed.format, path, limits, warnings)
    ocred = sum(1 for p in pages if p.ocr)
    if ocred and sniffed.format is DocFormat.PDF:
        parser += "+tesseract"
    characters = 0
    for page in pages:
        quality = measure("\n".join(b.text for b in page.blocks))
        if quality.usable:
            characters += quality.characters
        elif quality.characters:
            warnings.append(f"page {page.number}: text unusable after {'OCR' if page.ocr else 'parsing'}")
    if characters < limits.min_chars:
        raise ParseError(
            ErrorCode.EMPTY_DOCUMENT,
            f"{characters} usable characters in {len(pages)} page(s), under the minimum {limits.min_chars}",
        )
    report = ParseReport(
        pages=len(pages), pages_ocred=ocred, characters=characters, warnings=tuple(warnings), parser=parser
    )
    return ParsedDocument(
        source=source or path.name, format=sniffed.format, pages=tuple(pages), report=report
    )
