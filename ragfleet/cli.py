"""`ragfleet` command line: talks to the running fleet over the broker and Redis, like any producer.

It never imports torch or a store client for the commands that only enqueue and poll: they run in a
client-only install (`pip install ragfleet`). The fleet-side commands (`index`, which touches the
store; `feedback`, which reads the feedback database) need `ragfleet[worker]` and say so when it is
missing (`ragfleet.extras`).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from ragfleet.checks_cli import check_app
from ragfleet.client import FleetClient, JobFailedError
from ragfleet.dead_letters_cli import dlq_app
from ragfleet.eval_cli import eval_command
from ragfleet.extras import WORKER_EXTRA, fleet_side, mount_fleet_side
from ragfleet.fleet_status import status_command
from ragfleet.ingest_cli import ingest, progress_bar
from ragfleet.status_cli import status
from ragfleet.sync_cli import sync

app = typer.Typer(add_completion=False, help="ragfleet: RAG as queued work.", no_args_is_help=True)
index_app = typer.Typer(
    help=f"Index versions: status, rollback, rebuild and copy (fleet-side: needs {escape(WORKER_EXTRA)}).",
    no_args_is_help=True,
)
app.add_typer(index_app, name="index")
mount_fleet_side(
    app, "feedback", "ragfleet.feedback.cli", "feedback_app", "User feedback: the worst-rated questions."
)
app.add_typer(dlq_app, name="dlq")
app.add_typer(check_app, name="check")
app.command("eval")(eval_command)
app.command("ingest")(ingest)
app.command("sync")(sync)
app.command("ps")(fleet_side("ps")(status_command))  # supervisord: the worker extra
app.command("status")(status)
console = Console()
err = Console(stderr=True)


def source_label(s: dict[str, Any]) -> str:
    """`handbook.pdf p. 3 § Leave > Parental` for a chunk of a parsed file; the title (or the document
    id) for a text document."""
    meta = s.get("metadata") or {}
    if not meta.get("source"):
        return str(s.get("title") or s["doc_id"])
    label = str(meta["source"])
    if meta.get("page_label"):
        label += f" sheet {meta['page_label']}"
    elif meta.get("page") is not None:
        label += f" p. {meta['page']}"
    if meta.get("section"):
        label += f" § {meta['section']}"
    return label


def _print_answer(result: dict[str, Any]) -> None:
    console.print(result["answer"])
    flags = []
    if result.get("cached"):
        flags.append(f"cached:{result['cached']}")
    if result.get("degraded"):
        flags.append("degraded")
    console.print()
    console.print("[bold]Sources" + (f" ({', '.join(flags)})" if flags else ""))
    for s in result.get("sources", []):
        console.print(
            f"  [{s['n']}] {source_label(s)}  (doc {s['doc_id']}, score {s['score']:.3f})", highlight=False
        )


@app.command()
def ask(
    question: Annotated[str, typer.Argument(help="the question")],
    top_k: Annotated[int, typer.Option(help="sources to retrieve")] = 5,
    mode: Annotated[str | None, typer.Option(help="vector | fts | hybrid")] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="bypass the answer cache")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the whole job record")] = False,
    stream: Annotated[
        bool, typer.Option("--stream", help="print sources, then the answer as it arrives")
    ] = False,
    timeout: Annotated[float, typer.Option(help="seconds to wait")] = 60.0,
) -> None:
    """Ask the fleet a question; prints the cited answer and its sources."""
    client = FleetClient()
    if stream:
        _ask_streaming(client, question, top_k=top_k, mode=mode, use_cache=not no_cache, timeout=timeout)
        return
    try:
        job_id = client.submit(question, top_k=top_k, mode=mode, use_cache=not no_cache)
        rec = client.wait(job_id, timeout=timeout)
    except JobFailedError as exc:
        err.print(f"[red]{exc}")
        raise typer.Exit(2) from exc
    except TimeoutError as exc:
        err.print(f"[red]{exc} (is the fleet running? see README)")
        raise typer.Exit(3) from exc
    if as_json:
        console.print_json(json.dumps(rec))
    else:
        _print_answer(rec["result"])


def _ask_streaming(client: FleetClient, question: str, *, timeout: float, **kwargs: Any) -> None:
    try:
        job_id = client.submit(question, **kwargs)
        for ev in client.stream(job_id, timeout=timeout):
            data = ev["data"]
            if ev["type"] == "sources":
                console.print("[bold]Sources")
                for s in data.get("sources", []):
                    label = source_label(s)
                    console.print(
                        f"  [{s['n']}] {label}  (doc {s['doc_id']}, score {s['score']:.3f})", highlight=False
                    )
                console.print()
            elif ev["type"] == "answer_chunk":
                console.out(data.get("text", ""), end="", highlight=False)
                console.file.flush()
            elif ev["type"] == "done":
                flags = [f"cached:{data['cached']}"] if data.get("cached") else []
                flags += ["degraded"] if data.get("degraded") else []
                latency = data.get("latency_ms")
                console.print()
                err.print(
                    f"done in {latency:.0f} ms" if isinstance(latency, int | float) else "done",
                    *(f"({', '.join(flags)})",) if flags else (),
                )
            elif ev["type"] == "error":
                console.print()
                err.print(f"[red]job {job_id} failed: {data.get('code')}: {data.get('message')}")
                raise typer.Exit(2)
    except TimeoutError as exc:
        err.print(f"[red]{exc} (is the fleet running? see README)")
        raise typer.Exit(3) from exc


@app.command()
def batch(
    path: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="JSONL: one question a line")],
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="answers JSONL (default: stdout)")
    ] = None,
    top_k: Annotated[int | None, typer.Option(help="sources per question (default: the fleet's)")] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="bypass the answer cache")] = False,
    timeout: Annotated[float, typer.Option(help="seconds to wait")] = 3600.0,
) -> None:
    """Answer a JSONL file of questions as one batch job; writes one result line per question, in order.

    Each input line is a JSON string or an object `{"question": ..., "top_k"?, "filters"?, "id"?}`;
    a BEIR queries.jsonl (`{"_id", "text"}`) works too.
    """
    from ragfleet.batch import BatchError, parse_jsonl

    try:
        with path.open("rb") as fh:
            items = [_batch_item(x) for x in parse_jsonl(fh)]
        client = FleetClient()
        batch_id = client.batch(items, top_k=top_k, use_cache=False if no_cache else None)
    except BatchError as exc:
        err.print(f"[red]{exc}")
        for e in exc.errors[:10]:
            err.print(f"  {e['loc']}: {e['msg']}")
        raise typer.Exit(2) from exc
    err.print(f"batch {batch_id}: {len(items)} questions")
    with progress_bar() as bar:
        task = bar.add_task("answering", total=len(items))

        def show(st: dict[str, Any]) -> None:
            p = st["progress"]
            bar.update(
                task,
                completed=p["done"] + p["failed"],
                description=f"answering (failed {p['failed']})" if p["failed"] else "answering",
            )

        try:
            final = client.wait_batch(batch_id, timeout=timeout, on_progress=show)
        except TimeoutError as exc:
            err.print(f"[red]{exc}; status: ragfleet job {batch_id}")
            raise typer.Exit(3) from exc
    out = output.open("w", encoding="utf-8") if output else sys.stdout
    try:
        for row in client.batch_results(batch_id, wait=False):
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    finally:
        if output:
            out.close()
    p = final["progress"]
    err.print(f"batch {batch_id} {final['status']}: {p['done']} done, {p['failed']} failed of {p['total']}")
    if final["status"] != "done":
        raise typer.Exit(2)


def _batch_item(item: Any) -> Any:
    """BEIR queries (`{"_id", "text"}`) are accepted as they are: the id comes back with the result."""
    if isinstance(item, dict) and "question" not in item and "text" in item:
        return {"question": item["text"], **({"id": str(item["_id"])} if "_id" in item else {})}
    return item


@app.command()
def job(job_id: Annotated[str, typer.Argument(help="job id")]) -> None:
    """Print a job record (status, stage timings, result or error) and its callback deliveries."""
    client = FleetClient()
    rec = client.job(job_id)
    if rec is None:
        err.print(f"[red]job {job_id} not found (expired, or not picked up yet)")
        raise typer.Exit(4)
    console.print_json(json.dumps(rec))
    for d in client.deliveries(job_id):
        what = f"HTTP {d['status_code']}" if d.get("status_code") else (d.get("error") or "")
        console.print(
            f"callback {d['target']} {d['destination']} attempt {d['attempt']}: {d['outcome']} {what} "
            f"(event {d['event_id']})",
            markup=False,
            highlight=False,
        )


@app.command("wait-ready")
def wait_ready(
    pools: Annotated[
        str, typer.Option(help="comma-separated pools that must be warm")
    ] = "retrieval,generation,indexing",
    timeout: Annotated[float, typer.Option(help="seconds to wait")] = 180.0,
) -> None:
    """Wait until a warmed-up worker of each pool has reported in (used by scripts/demo.sh)."""
    from ragfleet.redis_conn import get_redis
    from ragfleet.settings import get_settings

    s = get_settings()
    r = get_redis(s)
    wanted = {p.strip() for p in pools.split(",") if p.strip()}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # a node's pool is its name before "@", less a node number (retrieval0@host: supervisord's)
        warm = {pool_of_node(str(k).split(":")[-1]) for k in r.scan_iter(s.key("warm", "*"))}
        if wanted <= warm:
            err.print(f"pools ready: {', '.join(sorted(wanted))}")
            return
        time.sleep(0.5)
    err.print(f"[red]pools not ready after {timeout} s: {', '.join(sorted(wanted - warm))}")
    raise typer.Exit(6)


def pool_of_node(node: str) -> str:
    """`retrieval@host` and `retrieval1@host` are both retrieval nodes."""
    return node.split("@")[0].rstrip("0123456789")


@index_app.command("status")
@fleet_side("index status")
def index_status() -> None:
    """Active collection, previous one, version, chunk counts, and the live index's chunker and
    embedding model beside the configured ones (when they differ, writes and questions keep the live
    ones until `ragfleet index rebuild`)."""
    from ragfleet.chunkers import ChunkerSpec
    from ragfleet.resources import get_resources

    res = get_resources()
    ptr = res.index_state.read()
    out: dict[str, Any] = {"version": ptr.version, "active": ptr.active, "previous": ptr.previous}
    out["chunks"] = res.store(ptr.active).count()
    live = res.index_state.chunker_of(ptr.active)
    configured = ChunkerSpec.configured(res.settings)
    out["chunker"] = live.label if live else None  # None: recorded on the next write
    out["configured_chunker"] = configured.label
    model = res.model_of(ptr)  # recorded now if it was not (an index written before models were)
    out["model"] = model
    out["configured_model"] = res.settings.embedding_model
    out["reindex_pending"] = (
        live is not None and live != configured
    ) or model != res.settings.embedding_model
    console.print_json(json.dumps(out))


@index_app.command("rebuild")
@fleet_side("index rebuild")
def index_rebuild() -> None:
    """Run a reindex now, in this process (the nightly beat job runs the same code on the fleet)."""
    from ragfleet.reindex import ReindexBusyError, run_reindex
    from ragfleet.resources import get_resources

    try:
        report = run_reindex(get_resources())
    except ReindexBusyError as exc:
        err.print(f"[yellow]{exc}")
        raise typer.Exit(0) from exc
    console.print_json(json.dumps(report.as_dict()))


@index_app.command("copy")
@fleet_side("index copy")
def index_copy(
    source: Annotated[
        Path | None, typer.Option("--from", help="LanceDB directory (default: RAGFLEET_DATA_DIR/lancedb)")
    ] = None,
    collection: Annotated[str | None, typer.Option(help="collection (default: the active one)")] = None,
) -> None:
    """Copy a LanceDB index into PostgreSQL (RAGFLEET_STORE=postgres) as it is: nothing is re-embedded."""
    from ragfleet.index_copy import copy_lancedb_to_postgres
    from ragfleet.settings import get_settings

    with progress_bar() as bar:
        task = bar.add_task("copying chunks", total=None)
        try:
            report = copy_lancedb_to_postgres(
                get_settings(),
                lancedb_dir=source,
                collection=collection,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )
        except (ValueError, FileNotFoundError) as exc:
            err.print(f"[red]{exc}")
            raise typer.Exit(2) from exc
    console.print_json(json.dumps(report.as_dict()))


@index_app.command("rollback")
@fleet_side("index rollback")
def index_rollback() -> None:
    """Make the previous index version live again (kept by the last reindex)."""
    from ragfleet.resources import get_resources

    res = get_resources()
    try:
        ptr = res.index_state.rollback()
    except LookupError as exc:
        err.print(f"[red]{exc}")
        raise typer.Exit(5) from exc
    console.print_json(json.dumps({"version": ptr.version, "active": ptr.active, "previous": ptr.previous}))


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
