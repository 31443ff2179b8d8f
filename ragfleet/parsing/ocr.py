"""OCR through Tesseract (pytesseract): images, and PDF pages without a usable text layer.

Tesseract runs as a grandchild of the parsing child, inside its process group: the parent's timeout kill
reaches it too. `OMP_THREAD_LIMIT=1` (set by `isolate`) keeps one OCR to one core.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

from ragfleet.parsing.model import Block, Page, ParseError, ParseLimits, check_pages
from ragfleet.schemas import ErrorCode

OCR_LANG = "eng"
_MIN_SIDE = 1000  # Tesseract reads text of ~20 px x-height or more; small images are upscaled first


def _paragraphs(text: str) -> list[str]:
    return [" ".join(p.split()) for p in re.split(r"\n\s*\n", text) if p.strip()]


def ocr_image(image: Any) -> list[Block]:
    """Paragraph blocks of one image's text (Tesseract separates paragraphs by blank lines)."""
    import pytesseract

    if image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    if max(image.size) < _MIN_SIDE:
        scale = _MIN_SIDE / max(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)))
    try:
        text = pytesseract.image_to_string(image, lang=OCR_LANG)
    except pytesseract.TesseractNotFoundError as exc:
        raise ParseError(ErrorCode.UNREADABLE_DOCUMENT, "OCR needed but tesseract is not installed") from exc
    except pytesseract.TesseractError as exc:  # Tesseract inherits the child's RLIMIT_AS
        memory = "alloc" in str(exc).lower() or "memory" in str(exc).lower()
        code = ErrorCode.TOO_LARGE if memory else ErrorCode.UNREADABLE_DOCUMENT
        raise ParseError(code, f"OCR failed: {exc}"[:300]) from exc
    return [Block(kind="paragraph", text=p) for p in _paragraphs(text)]


def open_image(path: Path, limits: ParseLimits) -> Any:
    """Pillow opens lazily (header only); its pixel limit turns a huge-dimension image into `too_large`
    before a byte of pixels is decoded."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = limits.max_image_pixels
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(path)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ParseError(ErrorCode.TOO_LARGE, f"image too large: {exc}") from exc
        except (OSError, SyntaxError, ValueError) as exc:
            raise ParseError(ErrorCode.UNREADABLE_DOCUMENT, f"broken image: {exc}") from exc
    pixels = image.width * image.height
    if pixels > limits.max_image_pixels:
        raise ParseError(
            ErrorCode.TOO_LARGE, f"image of {image.width}x{image.height} pixels is over the limit"
        )
    return image


def parse_image(path: Path, limits: ParseLimits) -> list[Page]:
    """One page per frame (a multi-page TIFF is a scanned document)."""
    image = open_image(path, limits)
    frames = getattr(image, "n_frames", 1)
    check_pages(frames, limits.max_pages, "image frames")
    pages: list[Page] = []
    try:
        for number in range(1, frames + 1):
            image.seek(number - 1)
            pages.append(Page(number=number, blocks=tuple(ocr_image(image)), ocr=True))
    except (OSError, SyntaxError, ValueError) as exc:
        raise ParseError(ErrorCode.UNREADABLE_DOCUMENT, f"broken image: {exc}") from exc
    return pages
