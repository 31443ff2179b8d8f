"""`ragfleet ingest`: text and document files onto the indexing pool, then an honest account of what
did not get in.

What must stay true: every file under PATH is indexed, or named in the closing table with an error
code and a reason (skipped before sending, or failed on the fleet); the exit status is non-zero when
any is named; `--json` carries the same rows for scripts. Text (.jsonl, .txt, .md) is sent as text,
chunked in windows within the model's token limit; document files are uploaded to the blob store
and parsed on the fleet.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from ragfleet.client import FleetClient
from ragfleet.corpus import read_documents

console = Console()
err = Console(stderr=True)


def progress_bar() -> Progress:
    """The CLI's progress bar (ingest, batch), on stderr so `--json` output stays clean."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=False,
    )


def ingest(
    path: Annotated[
        Path,
        typer.Argument(
            exists=True,
            help="BEIR corpus.jsonl, one file, or a folder (recursively) of .txt/.md and document files "
            "(PDF, DOCX, PPTX, XLSX, CSV, HTML, images)",
        ),
    ],
    batch_size: Annotated[int, typer.Option(help="text documents per indexing task")] = 64,
    wait: Annotated[bool, typer.Option(help="wait for the fleet and show progress")] = True,
    timeout: Annotated[float, typer.Option(help="seconds to wait")] = 3600.0,
    as_json: Annotated[
        bool, typer.Option("--json", help="one JSON object: the counts and every failed or skipped document")
    ] = False,
) -> None:
    """Enqueue documents in batches onto the indexing pool, then follow the jobs' progress.

    Text (.jsonl, .txt, .md) is sent as text; other supported files are uploaded (to the blob store the
    indexing pool shares) and parsed on the fleet, `RAGFLEET_FILES_PER_TASK` per task. The run ends
    with the counts and a table of every document that failed or was skipped (file, error code,
    reason); the exit status is 1 when any document failed or was skipped.
    """
    from ragfleet.corpus import plan_files
    from ragfleet.settings import get_settings

    client = FleetClient()
    files, skipped = plan_files(path)
    problems: list[dict[str, str]] = [
        {"file": sk.file, "status": "skipped", "code": sk.code, "reason": sk.reason} for sk in skipped
    ]
    t0 = time.perf_counter()
    jobs: list[str] = []
    job_docs: dict[str, dict[str, str]] = {}  # job id -> {doc id: file shown in the table}
    batch: list[dict[str, Any]] = []

    def send_text() -> None:
        job_id = client.index(batch)
        jobs.append(job_id)
        job_docs[job_id] = {d["id"]: d["id"] for d in batch}

    sent = 0
    for doc in read_documents(path):
        from_files = path.is_dir() or path.suffix.lower() in (".txt", ".md")
        if from_files and not str(doc.get("text", "")).strip():
            problems.append(
                {
                    "file": doc["id"],
                    "status": "failed",
                    "code": "empty_document",
                    "reason": "the file is empty",
                }
            )
            continue
        batch.append(doc)
        sent += 1
        if len(batch) >= batch_size:
            send_text()
            batch = []
    if batch:
        send_text()
    per_task = get_settings().files_per_task
    for start in range(0, len(files), per_task):
        part = files[start : start + per_task]
        job_id = client.index_files([(f.path, {"id": f.doc_id}) for f in part])
        jobs.append(job_id)
        job_docs[job_id] = {f.doc_id: f.doc_id for f in part}
        sent += len(part)
    err.print(
        f"enqueued {sent} documents ({len(files)} files to parse) in {len(jobs)} indexing jobs"
        + (f"; {len(problems)} not sent" if problems else "")
    )
    if not wait:
        if not as_json:  # `--json` carries the job ids in its one object
            for j in jobs:
                console.print(j)
        _ingest_report({"skipped": len(skipped)}, problems, as_json, jobs)
        if problems:
            raise typer.Exit(1)
        return
    totals: dict[str, int] = {}
    pending = set(jobs)
    with progress_bar() as bar:
        task = bar.add_task("indexing", total=sent)
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            done = 0
            for j in jobs:
                rec = client.job(j)
                if rec is None:
                    continue
                done += int(rec.get("progress", {}).get("done", 0))
                if rec["status"] in ("done", "failed", "cancelled") and j in pending:
                    pending.discard(j)
                    result = rec.get("result") or {}
                    for k, v in result.items():
                        if isinstance(v, int) and k != "index_version":
                            totals[k] = totals.get(k, 0) + v
                    totals["errors"] = totals.get("errors", 0) + len(result.get("errors", []))
                    problems += _job_problems(rec, job_docs[j])
                    if rec["status"] != "done":
                        totals["failed_jobs"] = totals.get("failed_jobs", 0) + 1
            bar.update(task, completed=done)
            time.sleep(0.25)
    elapsed = time.perf_counter() - t0
    totals["failed"] = sum(1 for p in problems if p["status"] == "failed")
    totals["skipped"] = len(skipped)
    totals["seconds"] = round(elapsed, 1)  # type: ignore[assignment]
    _ingest_report(totals, problems, as_json, jobs)
    if pending:
        err.print(f"[red]{len(pending)} jobs not finished after {timeout} s")
        raise typer.Exit(1)
    if problems:
        raise typer.Exit(1)


def _job_problems(rec: dict[str, Any], docs: dict[str, str]) -> list[dict[str, str]]:
    """A finished job's failed documents: its `errors`, or every document of a job that failed whole."""
    if rec["status"] != "done":
        error = rec.get("error") or {}
        code, reason = str(error.get("code") or rec["status"]), str(error.get("message") or rec["status"])
        return [{"file": f, "status": "failed", "code": code, "reason": reason} for f in docs.values()]
    out = []
    for e in (rec.get("result") or {}).get("errors", []):
        doc_id = e.get("doc_id")
        shown = docs.get(doc_id, doc_id) if doc_id else None
        out.append(
            {
                "file": str(shown or e.get("source") or f"#{e.get('index')}"),
                "status": "failed",
                "code": str(e.get("code")),
                "reason": str(e.get("message")),
            }
        )
    return out


def _ingest_report(
    totals: dict[str, Any], problems: list[dict[str, str]], as_json: bool, jobs: list[str]
) -> None:
    """The counts, then the table of problems; `--json`: both in one object, with the job ids (each
    job's record holds its documents' parse reports: `ragfleet job ID`)."""
    if as_json:  # plain JSON (no console wrapping): scripts parse it
        sys.stdout.write(
            json.dumps({**totals, "problems": problems, "jobs": jobs}, ensure_ascii=False) + "\n"
        )
        return
    console.print_json(json.dumps(totals))
    if problems:
        from rich.table import Table

        table = Table(title="documents not indexed", title_justify="left")
        for column in ("file", "status", "code", "reason"):
            table.add_column(column, overflow="fold")
        for p in problems:
            table.add_row(p["file"], p["status"], p["code"], p["reason"])
        console.print(table)
