"""Structure-aware chunking of parsed files: one page and one heading path per chunk, blocks whole."""

from __future__ import annotations

from ragfleet.chunking import chunk_blocks, chunk_text
from ragfleet.parsing import Block, Page


def para(text: str, *section: str) -> Block:
    return Block(kind="paragraph", text=text, section=section)


def test_blocks_join_within_a_page_and_section_only() -> None:
    pages = [
        Page(
            number=1,
            blocks=(
                Block(kind="heading", text="Leave", section=("Leave",)),
                para("Holiday requests go to your manager.", "Leave"),
                para("Requests are answered within a week.", "Leave"),
                Block(kind="heading", text="Parental", section=("Leave", "Parental")),
                para("Parental leave is sixteen weeks.", "Leave", "Parental"),
            ),
        ),
        Page(number=2, blocks=(para("Expenses are paid monthly.", "Leave", "Parental"),)),
    ]
    chunks = chunk_blocks(pages, size=200, overlap=40, title="Handbook")
    assert [(c.page, c.section) for c in chunks] == [
        (1, ("Leave",)),
        (1, ("Leave", "Parental")),
        (2, ("Leave", "Parental")),
    ]
    assert chunks[0].text == (
        "Handbook\nLeave\nHoliday requests go to your manager.\nRequests are answered within a week."
    )
    assert chunks[1].text == "Handbook\nLeave > Parental\nParental leave is sixteen weeks."
    assert [c.index for c in chunks] == [0, 1, 2]
    # offsets index the blocks' texts joined by blank lines (headings included)
    joined = "\n\n".join(b.text for p in pages for b in p.blocks)
    assert joined[chunks[1].start : chunks[1].end] == "Parental leave is sixteen weeks."
    assert chunk_blocks(pages, size=200, overlap=40, title="Handbook") == chunks  # deterministic


def test_the_size_limit_splits_between_blocks_and_never_cuts_a_table_row() -> None:
    rows = tuple(
        Block(
            kind="table_row",
            text=f"City: Town{i}; Floor: {i}",
            section=("Offices",),
            header=("City", "Floor"),
        )
        for i in range(30)
    )
    chunks = chunk_blocks([Page(number=1, label="Sheet1", blocks=rows)], size=40, overlap=8)
    assert len(chunks) > 1
    assert all(c.page_label == "Sheet1" for c in chunks)
    bodies = [line for c in chunks for line in c.text.splitlines()[1:]]
    assert bodies == [r.text for r in rows]  # every row whole, in order, exactly once
    assert all(len(c.text.split()) <= 40 for c in chunks)


def test_a_block_over_the_size_is_split_in_windows() -> None:
    long = " ".join(f"w{i}" for i in range(500))
    chunks = chunk_blocks([Page(number=3, blocks=(para(long),))], size=100, overlap=20)
    windows = chunk_text(long, size=100, overlap=20)
    assert [c.text for c in chunks] == [w.text for w in windows]
    assert all(c.page == 3 and c.section == () for c in chunks)


def test_an_empty_or_heading_only_document_has_no_chunks() -> None:
    heading = Block(kind="heading", text="Title", section=("Title",))
    assert chunk_blocks([Page(number=1, blocks=(heading,)), Page(number=2)], size=50, overlap=5) == []
