"""`ragfleet eval`: retrieval quality and answer grounding of the RUNNING fleet on a BEIR data set.

Mount with `app.command("eval")(eval_command)` in ragfleet/cli.py. Like the rest of the CLI it only
enqueues and polls (no torch, no store client): the corpus must already be ingested
(`ragfleet ingest ../shared/data/scifact/corpus.jsonl`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from ragfleet.eval_fleet import evaluate_fleet
from ragfleet.evaluation import DEFAULT_DATA_DIR, load_dataset, write_report

_err = Console(stderr=True)


def eval_command(
    data: Annotated[
        Path, typer.Option(help="BEIR-layout data set (corpus.jsonl, queries.jsonl, qrels/, evidence.jsonl)")
    ] = DEFAULT_DATA_DIR,
    limit: Annotated[int | None, typer.Option(help="only the first N dev queries")] = None,
    top_k: Annotated[int, typer.Option(help="sources per query for the ranking metrics")] = 100,
    concurrency: Annotated[int, typer.Option(help="query jobs in flight at once")] = 8,
    out: Annotated[Path, typer.Option(help="folder for the JSON and Markdown reports")] = Path("var/eval"),
    split: Annotated[str, typer.Option(help="qrels split")] = "dev",
    timeout: Annotated[float, typer.Option(help="seconds to wait for one job")] = 120.0,
) -> None:
    """nDCG@10, MRR@10, Recall@10/100 over document ids, grounding hit@1/hit@3, job latency P50/P99.

    Two passes, both with the answer cache off: every query with --top-k sources (ranking), then
    the queries with evidence rows with the default top-5 sources (the answer a user gets).
    """
    if not (data / "qrels" / f"{split}.tsv").exists():
        _err.print(f"[red]no {split} qrels under {data} (expected a BEIR layout)")
        raise typer.Exit(2)
    from ragfleet.client import FleetClient

    dataset = load_dataset(data, split=split, limit=limit)
    _err.print(
        f"evaluating {len(dataset.queries)} queries ({len(dataset.evidence)} evidence rows) "
        f"through the fleet, {concurrency} in flight"
    )
    report = evaluate_fleet(FleetClient(), dataset, top_k=top_k, concurrency=concurrency, timeout_s=timeout)
    report.config["data"] = str(data)
    report.config["split"] = split
    js, md = write_report(report, out)
    typer.echo(report.markdown())
    _err.print(f"wrote {js} and {md}")
    if report.failed:
        _err.print(f"[yellow]{report.failed} jobs failed or timed out (scored as empty rankings)")
        raise typer.Exit(1)


def main() -> None:
    """Standalone entry point until the command is mounted: `python -m ragfleet.eval_cli`."""
    typer.run(eval_command)


if __name__ == "__main__":
    main()
