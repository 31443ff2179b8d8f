"""Every relative link in the README and the documentation pages points at a file that exists.

The README keeps one-line pointers into docs/ and bench/; a page renamed or moved without its links
would leave a reader at a 404. Links inside code (fenced blocks, inline code spans) are not links;
web links (http:, https:, mailto:) and links to an anchor of the same page are not checked here.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PAGES = ["README.md", "docs/*.md", "bench/*.md", "infra/*.md"]
FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.S | re.M)
INLINE_CODE = re.compile(r"`+[^`\n]*`+")
INLINE_LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]\n]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.M)
HTML_LINK = re.compile(r"<(?:a|img)\b[^>]*?\b(?:href|src)=\"([^\"]+)\"", re.I)
EXTERNAL = re.compile(r"^(?:[a-z][a-z0-9+.-]*:|//|#)", re.I)


def pages() -> list[Path]:
    return sorted({p for pattern in PAGES for p in REPO.glob(pattern)})


def relative_links(markdown: str) -> list[str]:
    """The relative link targets of a Markdown text, without their #fragment or ?query."""
    text = INLINE_CODE.sub("", FENCE.sub("", markdown))
    targets = [m.group(1) for rx in (INLINE_LINK, REFERENCE_LINK, HTML_LINK) for m in rx.finditer(text)]
    return [re.split(r"[#?]", t, maxsplit=1)[0] for t in targets if not EXTERNAL.match(t)]


def broken_links(page: Path) -> list[str]:
    return [t for t in relative_links(page.read_text()) if not (page.parent / t).exists()]


def test_the_readme_and_every_docs_page_are_checked() -> None:
    checked = {p.relative_to(REPO).as_posix() for p in pages()}
    assert {"README.md", "docs/config.md", "docs/tasks.md", "bench/README.md"} <= checked


def test_every_relative_link_resolves() -> None:
    broken = {p.relative_to(REPO).as_posix(): b for p in pages() if (b := broken_links(p))}
    assert not broken, f"relative links to files that do not exist: {broken}"


def test_the_checker_finds_a_broken_link_and_ignores_code_and_web_links(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "there.md").write_text("# there\n")
    page = tmp_path / "README.md"
    page.write_text(
        "See [there](docs/there.md#a-section), ![img](docs/missing.png) and [gone][ref].\n"
        "[web](https://example.com/x.md), [anchor](#top), `[code](nowhere.md)`\n"
        "```\n[fenced](nowhere-either.md)\n```\n"
        '<img src="docs/there.md"> <a href="docs/absent.md">a</a>\n'
        "[ref]: docs/gone.md\n"
    )
    assert sorted(broken_links(page)) == ["docs/absent.md", "docs/gone.md", "docs/missing.png"]
