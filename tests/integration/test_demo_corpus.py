"""README command 1's path without scripts/demo.sh (which rebuilds the venv): `ragfleet ingest
demo/corpus`, then `ragfleet ask` with the demo's question, against the test fleet.

demo/corpus holds real document files, committed as they are (made once with tests/parsing_corpus.py's
generators, a few KB): reliability.pdf (two pages with a text layer; page 2 holds the answer) and
caching.html (navigation and footer around the article). The demo's printed answer must cite the
PDF's page: `reliability.pdf p. 2`.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid

import pytest

from ragfleet.settings import Settings
from tests.conftest import REPO, settings_env
from tests.fleet import Fleet

pytestmark = [pytest.mark.redis, pytest.mark.workers, pytest.mark.model]

CORPUS = REPO / "demo" / "corpus"


def demo_question() -> str:
    """The question scripts/demo.sh asks, read from the script so the two cannot drift apart."""
    found = re.search(r'^ragfleet ask "([^"]+)"', (REPO / "scripts" / "demo.sh").read_text(), re.M)
    assert found, "scripts/demo.sh asks no question"
    return found.group(1)


def test_demo_corpus_holds_a_pdf_with_a_text_layer_and_an_html_page() -> None:
    from pypdf import PdfReader

    pdf = CORPUS / "reliability.pdf"
    assert "killed" in (PdfReader(pdf).pages[1].extract_text() or "")
    assert (CORPUS / "caching.html").stat().st_size < 4096 and pdf.stat().st_size < 8192


def test_the_demo_answer_cites_the_pdf_page(fleet: Fleet, base_settings: Settings) -> None:
    env = {**settings_env(base_settings), "RAGFLEET_DEFAULT_TENANT": f"demo-{uuid.uuid4().hex[:6]}"}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ragfleet.cli", *args],
            cwd=REPO,
            env={**env, "COLUMNS": "200"},
            capture_output=True,
            text=True,
            timeout=180,
        )

    ingest = cli("ingest", str(CORPUS), "--batch-size", "16", "--json", "--timeout", "120")
    assert ingest.returncode == 0, ingest.stdout + ingest.stderr
    counts = json.loads(ingest.stdout)
    assert counts["problems"] == [] and counts["documents_indexed"] == 5, counts
    asked = cli("ask", demo_question(), "--json", "--no-cache")
    assert asked.returncode == 0, asked.stderr
    result = json.loads(asked.stdout)["result"]
    top = result["sources"][0]
    assert (top["metadata"]["source"], top["metadata"]["page"]) == ("reliability.pdf", 2), result["sources"]
    assert "delivered again to another worker" in result["answer"]
    printed = cli("ask", demo_question())  # what the demo prints
    assert printed.returncode == 0 and "reliability.pdf p. 2" in printed.stdout, printed.stdout
