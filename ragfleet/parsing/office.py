"""OOXML: DOCX (python-docx), PPTX (python-pptx), XLSX (openpyxl). The container was already checked by
`sniff` (a zip that inflates past the memory limit never gets here)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ragfleet.parsing.model import Block, Page, check_pages
from ragfleet.parsing.text import table_blocks

_HEADING_STYLE = re.compile(r"^(?:heading\s*(\d)|title)$", re.IGNORECASE)


def _table_rows(table: Any) -> list[list[str]]:
    rows: list[list[str]] = []
    for row in table.rows:
        rows.append([" ".join(cell.text.split()) for cell in row.cells])
    return rows


def parse_docx(path: Path) -> list[Page]:
    """Body order is kept (paragraphs and tables interleaved); `Heading N` / `Title` styles set the path."""
    import docx
    from docx.table import Table

    document = docx.Document(str(path))
    blocks: list[Block] = []
    path_: list[tuple[int, str]] = []
    for item in document.iter_inner_content():
        section = tuple(t for _, t in path_)
        if isinstance(item, Table):
            blocks.extend(table_blocks(_table_rows(item), section))
            continue
        text = " ".join(item.text.split())
        if not text:
            continue
        style = item.style.name if item.style is not None and item.style.name else ""
        heading = _HEADING_STYLE.match(style.strip())
        if heading:
            level = int(heading.group(1) or 0)
            path_[:] = [(lv, t) for lv, t in path_ if lv < level] + [(level, text)]
            blocks.append(Block(kind="heading", text=text, section=tuple(t for _, t in path_)))
        elif "list" in style.lower():
            blocks.append(Block(kind="list_item", text=text, section=section))
        else:
            blocks.append(Block(kind="paragraph", text=text, section=section))
    return [Page(number=1, blocks=tuple(blocks))]


def _shapes(shapes: Any) -> Iterator[Any]:
    """Every shape of a slide in reading order, those inside groups included."""
    for shape in shapes:
        if hasattr(shape, "shapes"):  # a group
            yield from _shapes(shape.shapes)
        else:
            yield shape


def parse_pptx(path: Path, max_pages: int) -> list[Page]:
    """One page per slide; the title is the section; speaker notes are part of the slide's page."""
    from pptx import Presentation

    deck = Presentation(str(path))
    check_pages(len(deck.slides), max_pages, "slides")
    pages: list[Page] = []
    for number, slide in enumerate(deck.slides, start=1):
        title_shape = slide.shapes.title
        title = " ".join(title_shape.text_frame.text.split()) if title_shape is not None else ""
        section = (title,) if title else ()
        blocks = [Block(kind="heading", text=title, section=section)] if title else []
        for shape in _shapes(slide.shapes):
            if title_shape is not None and shape.shape_id == title_shape.shape_id:
                continue
            if getattr(shape, "has_table", False) and shape.has_table:
                rows = [[" ".join(c.text.split()) for c in row.cells] for row in shape.table.rows]
                blocks.extend(table_blocks(rows, section))
            elif shape.has_text_frame:
                for para in shape.text_frame.paragraphs:
                    text = " ".join("".join(r.text for r in para.runs).split())
                    if text:
                        kind = "list_item" if para.level > 0 else "paragraph"
                        blocks.append(Block(kind=kind, text=text, section=section))
        if slide.has_notes_slide and slide.notes_slide.notes_text_frame is not None:
            for line in slide.notes_slide.notes_text_frame.text.split("\n"):
                if line.strip():
                    blocks.append(
                        Block(kind="paragraph", text=" ".join(line.split()), section=(*section, "Notes"))
                    )
        pages.append(Page(number=number, blocks=tuple(blocks), label=title or None))
    return pages


def _cell_text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return " ".join(str(value).split())


def parse_xlsx(path: Path, max_pages: int) -> list[Page]:
    """One page per sheet, labelled with the sheet's name; cached values, not formulas."""
    import openpyxl

    book = openpyxl.load_workbook(str(path), read_only=True, data_only=True)
    try:
        check_pages(len(book.worksheets), max_pages, "sheets")
        pages: list[Page] = []
        for number, sheet in enumerate(book.worksheets, start=1):
            rows = [[_cell_text(v) for v in row] for row in sheet.iter_rows(values_only=True)]
            blocks = table_blocks(rows, (sheet.title,))
            pages.append(Page(number=number, blocks=tuple(blocks), label=sheet.title))
        return pages
    finally:
        book.close()
