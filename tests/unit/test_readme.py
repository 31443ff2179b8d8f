"""The README is a product page: short, no dated session notes, a pointer to every docs page, and
headline numbers that each say when, on which commit and with which command they were measured.

The rule for every change (issue 20): details go to docs/ (performance, reliability, deployment,
scaling, operations, ...), measurements to bench/RESULTS.md; the README keeps a one-line pointer and
the headline numbers.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MAX_LINES = 150
DATE = re.compile(r"\b20\d\d-\d\d-\d\d\b")
COMMIT = re.compile(r"\b[0-9a-f]{7,40}\b")


def readme() -> str:
    return (REPO / "README.md").read_text()


def section(text: str, heading_start: str) -> list[str]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"## {heading_start}"))
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return lines[start + 1 : end]


def test_readme_is_at_most_150_lines() -> None:
    n = len(readme().splitlines())
    assert n <= MAX_LINES, f"README.md has {n} lines: move details to docs/ and keep a one-line pointer"


def test_dates_appear_only_in_the_headline_table() -> None:
    """A date outside a table row is a session note: it belongs in bench/RESULTS.md or docs/."""
    notes = [line for line in readme().splitlines() if DATE.search(line) and not line.startswith("|")]
    assert not notes, f"dated notes in README.md: {notes}"


def test_every_docs_page_has_a_pointer_in_the_readme() -> None:
    text = readme()
    pages = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "docs").glob("*.md"))
    assert pages
    missing = [p for p in pages if f"]({p})" not in text]
    assert not missing, f"add a one-line pointer to README.md's Documentation section: {missing}"


def test_every_headline_number_has_its_date_commit_and_command() -> None:
    rows = [line for line in section(readme(), "Performance") if line.startswith("|")]
    header, _, *body = rows
    assert [c.strip() for c in header.strip("|").split("|")][-2:] == ["date, commit", "command"]
    assert body, "no headline numbers"
    for row in body:
        *_, when, command = (c.strip() for c in row.strip("|").split("|"))
        assert DATE.search(when) and COMMIT.search(when.split(",")[-1]), row
        assert command == "same" or command.startswith("`"), row
