"""Text formats: plain text, Markdown, CSV and HTML (main content through trafilatura, as Markdown).

Each is one page: these formats have no page a reader could cite, the heading path says where a block sits.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

from ragfleet.parsing.model import Block, Page, ParseError
from ragfleet.parsing.sniff import decode_text
from ragfleet.schemas import ErrorCode

_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_LIST = re.compile(r"^\s*(?:[-*+]|\d{1,3}[.)])\s+(.*)$")
_TABLE_RULE = re.compile(r"^\|?\s*:?-{2,}:?\s*(\|\s*:?-{2,}:?\s*)*\|?$")
_FENCE = re.compile(r"^\s*(```|~~~)")
_EMPHASIS = re.compile(r"(\*\*|\*)(?=\S)(.+?)(?<=\S)\1")  # trafilatura marks bold/italic


def read_text(path: Path) -> str:
    text = decode_text(path.read_bytes())
    if text is None:
        raise ParseError(ErrorCode.UNREADABLE_DOCUMENT, "text that is neither UTF-8, UTF-16 nor cp1252")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _cells(line: str) -> tuple[str, ...]:
    return tuple(c.strip() for c in line.strip().strip("|").split("|"))


def markdown_blocks(text: str) -> list[Block]:
    """Headings set the section path; paragraphs are runs of lines; a pipe table keeps its header with
    every row; fenced code stays one paragraph."""
    blocks: list[Block] = []
    path: list[tuple[int, str]] = []
    para: list[str] = []
    header: tuple[str, ...] | None = None
    in_fence = False

    def section() -> tuple[str, ...]:
        return tuple(title for _, title in path)

    def flush() -> None:
        if para:
            joined = " ".join(line.strip() for line in para).strip()
            if joined:
                blocks.append(Block(kind="paragraph", text=joined, section=section()))
            para.clear()

    lines = text.split("\n")
    for i, line in enumerate(lines):
        if _FENCE.match(line):
            in_fence = not in_fence
            continue
        if in_fence:
            para.append(line)
            continue
        heading = _HEADING.match(line)
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if heading and heading.group(2):
            flush()
            level = len(heading.group(1))
            path[:] = [(lv, t) for lv, t in path if lv < level] + [(level, heading.group(2))]
            blocks.append(Block(kind="heading", text=heading.group(2), section=section()))
        elif header is not None and _TABLE_RULE.match(line.strip()):
            continue
        elif line.lstrip().startswith("|") and (header is not None or _TABLE_RULE.match(nxt.strip())):
            flush()
            if header is None:
                header = _cells(line)
            else:
                blocks.append(_row(_cells(line), header, section()))
        elif item := _LIST.match(line):
            flush()
            header = None
            blocks.append(Block(kind="list_item", text=item.group(1).strip(), section=section()))
        elif not line.strip():
            flush()
            header = None
        else:
            header = None
            para.append(line)
    flush()
    return [b for b in blocks if b.text.strip()]


def _row(row: tuple[str, ...], header: tuple[str, ...] | None, section: tuple[str, ...]) -> Block:
    if header:
        text = "; ".join(f"{h}: {v}" if h else v for h, v in zip(header, row, strict=False) if v)
    else:
        text = " | ".join(v for v in row if v)
    return Block(kind="table_row", text=text, section=section, header=header)


def table_blocks(rows: list[list[str]], section: tuple[str, ...]) -> list[Block]:
    """The first non-empty row is the header; every later row carries it."""
    rows = [[c.strip() for c in r] for r in rows if any(c.strip() for c in r)]
    if not rows:
        return []
    header = tuple(rows[0])
    return [_row(tuple(r), header, section) for r in rows[1:]]


def parse_markdown(path: Path) -> list[Page]:
    return [Page(number=1, blocks=tuple(markdown_blocks(read_text(path))))]


def parse_text(path: Path) -> list[Page]:
    paragraphs = re.split(r"\n\s*\n", read_text(path))
    blocks = [Block(kind="paragraph", text=" ".join(p.split())) for p in paragraphs if p.strip()]
    return [Page(number=1, blocks=tuple(blocks))]


def parse_csv(path: Path) -> list[Page]:
    text = read_text(path)
    try:
        dialect: type[csv.Dialect] | csv.Dialect = csv.Sniffer().sniff(text[:8192], delimiters=",;\t|")
    except csv.Error:
        dialect = csv.excel_tab if path.suffix.lower() == ".tsv" else csv.excel
    try:
        rows = list(csv.reader(io.StringIO(text), dialect))
    except csv.Error as exc:
        raise ParseError(ErrorCode.UNREADABLE_DOCUMENT, f"malformed CSV: {exc}") from exc
    return [Page(number=1, blocks=tuple(table_blocks(rows, ())))]


def parse_html(path: Path) -> list[Page]:
    """trafilatura keeps the main content and drops navigation, headers, footers and other boilerplate;
    its Markdown output keeps headings, which become the section path. No main content: no blocks."""
    import trafilatura

    extracted = trafilatura.extract(
        read_text(path),
        output_format="markdown",
        include_tables=True,
        include_comments=False,
        include_links=False,
        include_images=False,
        include_formatting=True,  # without it the Markdown output carries no `#` headings
        favor_precision=True,
    )
    extracted = _EMPHASIS.sub(r"\2", extracted or "")
    return [Page(number=1, blocks=tuple(markdown_blocks(extracted)))]
