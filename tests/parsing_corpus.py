"""Generators of document files for the parsing tests (and, later, the fleet's ingest tests): every file is
made here, in a tmp dir, from nothing but the installed libraries; no download, no fixture file in git.

Each generator writes one file and returns its path. Facts the tests look for are module constants, so a
test and the corpus cannot drift apart.
"""

from __future__ import annotations

import struct
import zipfile
import zlib
from pathlib import Path

PDF_PAGES = [
    ["Annual leave policy", "Employees receive twenty five days of paid leave each year."],
    ["Parental leave", "The parental leave allowance is sixteen weeks at full pay."],
    ["Expenses", "Travel expenses are reimbursed within thirty days of the claim."],
]
SCAN_FACT = "The boiler room key hangs behind the blue door"
IMAGE_FACT = "Invoice total due is 4200 euros"
PPTX_GROUPED = "The budget owner is Dana Scully."
NAV = "Home About Careers Contact"
FOOTER = "Copyright Example Corp all rights reserved"


def _pdf_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def text_pdf(
    path: Path, pages: list[list[str]] | None = None, *, invisible: bool = False, top: int = 720
) -> Path:
    """A PDF with a real text layer (Helvetica), one list of lines per page, written byte by byte.
    `invisible`: text render mode 3, extractable but not drawn (the text layer of an OCRed scan)."""
    pages = PDF_PAGES if pages is None else pages
    n = len(pages)
    objects: list[bytes] = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids ["
        + b" ".join(f"{4 + 2 * i} 0 R".encode() for i in range(n))
        + f"] /Count {n} >>".encode(),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
    ]
    for i, lines in enumerate(pages):
        ops = ["BT", "/F1 14 Tf", "16 TL", f"72 {top} Td", *(["3 Tr"] if invisible else [])]
        for line in lines:
            ops += [f"({_pdf_escape(line)}) Tj", "T*", "T*"]
        ops.append("ET")
        stream = "\n".join(ops).encode("cp1252")
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >> "
            f"/Contents {5 + 2 * i} 0 R >>".encode()
        )
        objects.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    path.write_bytes(bytes(out))
    return path


def text_image(text: str, size: tuple[int, int] = (900, 160), font_size: int = 36) -> object:
    """White image with black text (Pillow's bundled font): what a scanner would produce, minus the noise."""
    from PIL import Image, ImageDraw, ImageFont

    image = Image.new("L", size, 255)
    ImageDraw.Draw(image).text((20, 40), text, fill=0, font=ImageFont.load_default(size=font_size))
    return image


def scanned_pdf(path: Path, text: str = SCAN_FACT, pages: int = 1) -> Path:
    """An image-only PDF (no text layer at all), as a scanner writes it."""
    images = [text_image(text, size=(1100, 1400)) for _ in range(pages)]
    images[0].save(path, "PDF", resolution=150, save_all=True, append_images=images[1:])  # type: ignore[attr-defined]
    return path


def garbage_layer_scan_pdf(path: Path) -> Path:
    """A scan whose hidden text layer is `(cid:NN)` glyph garbage: what a PDF with a font lacking a
    Unicode map gives a text extractor. Only OCR of the rendered page finds `SCAN_FACT`."""
    from pypdf import PdfReader, PdfWriter

    garbage = " ".join(f"(cid:{n})(cid:{n + 7})(cid:{n + 3})" for n in range(10, 40))
    layer = text_pdf(
        path.with_suffix(".layer.pdf"), [[garbage[:90], garbage[90:180]]], invisible=True, top=500
    )
    writer = PdfWriter(clone_from=PdfReader(scanned_pdf(path.with_suffix(".scan.pdf"))))
    writer.pages[0].merge_page(PdfReader(layer).pages[0])
    with path.open("wb") as fh:
        writer.write(fh)
    return path


def image(path: Path, text: str = IMAGE_FACT, fmt: str = "PNG") -> Path:
    text_image(text).save(path, fmt)  # type: ignore[attr-defined]
    return path


def encrypted_pdf(path: Path, user_password: str) -> Path:
    """`user_password=""`: opens without a password (only editing is restricted), and must parse."""
    from pypdf import PdfReader, PdfWriter

    plain = text_pdf(path.with_suffix(".plain.pdf"))
    writer = PdfWriter(clone_from=PdfReader(plain))
    writer.encrypt(user_password=user_password, owner_password="owner-secret", algorithm="AES-128")
    with path.open("wb") as fh:
        writer.write(fh)
    plain.unlink()
    return path


def docx(path: Path) -> Path:
    import docx as python_docx

    document = python_docx.Document()
    document.add_heading("Staff handbook", level=1)
    document.add_heading("Leave", level=2)
    document.add_paragraph("Holiday requests go to your manager two weeks ahead.")
    document.add_heading("Parental", level=3)
    document.add_paragraph("Parental leave is sixteen weeks at full pay.")
    document.add_heading("Offices", level=2)
    table = document.add_table(rows=3, cols=2)
    for row, values in zip(table.rows, [("City", "Floor"), ("Lisbon", "4"), ("Oslo", "7")], strict=True):
        for cell, value in zip(row.cells, values, strict=True):
            cell.text = value
    document.save(str(path))
    return path


def pptx(path: Path) -> Path:
    from pptx import Presentation
    from pptx.util import Inches

    deck = Presentation()
    for title, body, notes in [
        ("Quarterly results", "Revenue grew nine percent.", "Mention the new Lisbon office."),
        ("Roadmap", "Search launches in March.", "The launch date is still tentative."),
    ]:
        slide = deck.slides.add_slide(deck.slide_layouts[1])
        slide.shapes.title.text = title
        slide.placeholders[1].text = body
        slide.notes_slide.notes_text_frame.text = notes
    group = deck.slides[1].shapes.add_group_shape()  # text inside a group shape is text too
    box = group.shapes.add_textbox(Inches(1), Inches(5), Inches(6), Inches(1))
    box.text_frame.text = PPTX_GROUPED
    deck.save(str(path))
    return path


def xlsx(path: Path) -> Path:
    import openpyxl

    book = openpyxl.Workbook()
    people = book.active
    people.title = "People"
    for row in [("Name", "Team"), ("Ada", "Compilers"), ("Grace", "Databases")]:
        people.append(row)
    budget = book.create_sheet("Budget")
    for row in [("Item", "Cost"), ("Servers", 12000), ("Licences", 3500)]:
        budget.append(row)
    book.save(str(path))
    return path


def csv_file(path: Path) -> Path:
    path.write_text("city,country,population\nLisbon,Portugal,545000\nOslo,Norway,709000\n")
    return path


def html(path: Path, article: bool = True) -> Path:
    body = (
        "<article><h1>Release notes</h1><h2>Version 2</h2>"
        "<p>Version two adds page level citations to every answer the fleet gives, so that readers "
        "can check each claim against the page it came from.</p>"
        "<p>The parser now reads scanned documents through optical character recognition and reports "
        "how many pages needed it.</p></article>"
        if article
        else ""
    )
    path.write_text(
        "<!DOCTYPE html><html><head><title>Example</title></head><body>"
        f"<nav><ul>{''.join(f'<li><a href=/{w}>{w}</a></li>' for w in NAV.split())}</ul></nav>"
        f"<main>{body}</main>"
        f"<footer><p>{FOOTER}</p></footer></body></html>"
    )
    return path


def markdown(path: Path) -> Path:
    path.write_text(
        "# Runbook\n\nStart here.\n\n## Redis\n\nRestart Redis with the supervisor.\n\n"
        "### Memory\n\nEviction must stay off.\n\n- check maxmemory\n- check the policy\n\n"
        "## Workers\n\n| pool | queue |\n| --- | --- |\n| retrieval | retrieval |\n| indexing | indexing |\n"
    )
    return path


def zip_bomb_docx(path: Path, inflated_mb: int) -> Path:
    """A DOCX-shaped zip whose document part inflates to `inflated_mb` MiB of zeros (~1 MiB a GiB on disk)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        zf.writestr("[Content_Types].xml", "<Types/>")
        with zf.open("word/document.xml", "w", force_zip64=True) as member:
            chunk = b"\0" * 2**20
            for _ in range(inflated_mb):
                member.write(chunk)
    return path


def huge_png(path: Path, width: int = 100_000, height: int = 100_000) -> Path:
    """A valid PNG header claiming `width` x `height` pixels, with a few bytes of data: opening it must be
    refused from the header, before any decoding."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )
    return path
