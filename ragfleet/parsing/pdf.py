"""PDF: the text layer through pypdfium2 (PDFium, Chrome's PDF engine: fast, and the best text order of the
permissive-licence options), pypdf as the fallback for files PDFium refuses, and Tesseract for each page
whose text layer fails the quality gate (rendered by PDFium).

PDFium can hang or abort on a malformed file: this module only ever runs in the bounded child process.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ragfleet.parsing.model import Block, Page, ParseError, ParseLimits, check_pages
from ragfleet.parsing.ocr import ocr_image
from ragfleet.parsing.quality import measure
from ragfleet.schemas import ErrorCode

OCR_DPI = 200
_MAX_RENDER_PIXELS = 25_000_000  # a poster-sized page is rendered at a lower resolution, not at 200 DPI
_FPDF_ERR_PASSWORD = 4


def text_blocks(text: str) -> list[Block]:
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")
    return [
        Block(kind="paragraph", text=" ".join(p.split())) for p in re.split(r"\n\s*\n", text) if p.strip()
    ]


def _render_scale(page: Any) -> float:
    width, height = page.get_size()
    scale = OCR_DPI / 72
    pixels = width * height * scale * scale
    if pixels > _MAX_RENDER_PIXELS:
        scale *= (_MAX_RENDER_PIXELS / pixels) ** 0.5
    return scale


def _open_pdfium(path: Path) -> Any:
    import pypdfium2 as pdfium

    try:
        return pdfium.PdfDocument(str(path))
    except pdfium.PdfiumError as exc:
        if exc.err_code == _FPDF_ERR_PASSWORD:
            raise ParseError(ErrorCode.ENCRYPTED_DOCUMENT, "the PDF needs a password to open") from exc
        raise


def _pdfium_pages(document: Any, limits: ParseLimits, warnings: list[str]) -> list[Page]:
    try:
        check_pages(len(document), limits.max_pages)
        pages: list[Page] = []
        for index in range(len(document)):
            page = document[index]
            textpage = page.get_textpage()
            text = textpage.get_text_bounded()
            textpage.close()
            if measure(text).usable:
                pages.append(Page(number=index + 1, blocks=tuple(text_blocks(text))))
            else:
                pages.append(_ocr_page(page, index + 1, text, warnings))
            page.close()
        return pages
    finally:
        document.close()


def _ocr_page(page: Any, number: int, text: str, warnings: list[str]) -> Page:
    """A page without a usable text layer: OCR it, and keep whichever text is better."""
    image = page.render(scale=_render_scale(page)).to_pil()
    blocks = ocr_image(image)
    ocr_text = "\n\n".join(b.text for b in blocks)
    before, after = measure(text), measure(ocr_text)
    if after.usable or after.characters > before.characters:
        if before.characters:
            warnings.append(f"page {number}: text layer unusable, replaced by OCR")
        return Page(number=number, blocks=tuple(blocks), ocr=True)
    return Page(number=number, blocks=tuple(text_blocks(text)))


def _pypdf_pages(path: Path, limits: ParseLimits) -> list[Page]:
    from pypdf import PdfReader
    from pypdf.errors import FileNotDecryptedError, PdfReadError

    try:
        reader = PdfReader(str(path))
        if reader.is_encrypted and not reader.decrypt(""):
            raise ParseError(ErrorCode.ENCRYPTED_DOCUMENT, "the PDF needs a password to open")
        check_pages(len(reader.pages), limits.max_pages)
        return [
            Page(number=i + 1, blocks=tuple(text_blocks(p.extract_text() or "")))
            for i, p in enumerate(reader.pages)
        ]
    except FileNotDecryptedError as exc:
        raise ParseError(ErrorCode.ENCRYPTED_DOCUMENT, "the PDF needs a password to open") from exc
    except (PdfReadError, ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
        raise ParseError(ErrorCode.UNREADABLE_DOCUMENT, f"PDF unreadable by PDFium and pypdf: {exc}") from exc


def parse_pdf(path: Path, limits: ParseLimits, warnings: list[str]) -> tuple[list[Page], str]:
    """(pages, parser used). pypdf is tried only when PDFium refuses the file; its pages are not OCRed
    (rendering needs PDFium), so they go through the document gate as they are."""
    import pypdfium2 as pdfium

    try:
        document = _open_pdfium(path)
    except pdfium.PdfiumError as exc:
        warnings.append(f"PDFium could not open the file ({exc}); fell back to pypdf")
        return _pypdf_pages(path, limits), "pypdf"
    return _pdfium_pages(document, limits, warnings), "pypdfium2"
