"""`ragfleet sync DIR`: keep an index in step with a folder.

A document's id is its path relative to DIR; every chunk of a synced document carries
`source_root` (DIR, resolved) in its metadata. New and changed files are indexed (changed = the
SHA-256 of the file's bytes differs from the last sync's), documents whose file disappeared are
deleted, a rename is a delete plus an add.

What sync knows is in the index: a Redis hash per synced root, `<prefix>:sync:<tenant>:<root hash>`,
file id -> content hash, written only when a sync's job reports that document indexed (and its
field removed when the delete job has run), plus `<prefix>:sync_roots:<tenant>`, root hash -> root
path. We chose this record over a listing in the store Protocol (ragfleet/stores/base.py) because
a listing would have to be added to four stores and their contract suite, and because the record is
exactly the scope sync may act on: sync deletes only ids in its own root's record, so a document
ingested otherwise (`ragfleet ingest`, the API) is never deleted by it unless this root's sync
indexed that same id too. Ids are relative paths, so two roots synced into one tenant can share one
(`gone.md`); the document is then the last sync's, and a root whose file of that id disappears
only forgets it ("released") when another root's record holds it. What the record cannot
see: a document of the root deleted by other means stays in the record until its file is gone (its
delete then reports `not_found`, which is fine) or changes; a root's record outlives an index wiped
by hand (`--full` resends every file; indexing embeds nothing for content it already holds).
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from ragfleet.client import FleetClient, JobFailedError
from ragfleet.corpus import plan_files, read_documents
from ragfleet.ingest_cli import _ingest_report, _job_problems
from ragfleet.redis_conn import get_redis
from ragfleet.settings import Settings, get_settings

console = Console()
err = Console(stderr=True)


def root_key(settings: Settings, tenant: str, root: Path) -> str:
    """The record of what sync indexed from `root` (resolved) for `tenant`."""
    digest = hashlib.sha256(str(root).encode("utf-8")).hexdigest()[:16]
    return settings.key("sync", tenant, digest)


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class SyncPlan:
    """What a sync of one folder does: `texts` and `files` to send (new or changed), `deleted` ids."""

    root: Path
    hashes: dict[str, str] = field(default_factory=dict)  # every file on disk now: id -> content hash
    texts: list[dict[str, Any]] = field(default_factory=list)
    files: list[tuple[Path, str]] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    unchanged: int = 0
    problems: list[dict[str, str]] = field(default_factory=list)


def plan_sync(root: Path, recorded: dict[str, str], *, full: bool = False) -> SyncPlan:
    """Compare the folder with the record of the last sync (`recorded`: id -> content hash)."""
    plan = SyncPlan(root)
    files, skipped = plan_files(root)
    plan.problems = [
        {"file": sk.file, "status": "skipped", "code": sk.code, "reason": sk.reason} for sk in skipped
    ]
    marker = {"source_root": str(root)}

    def note(doc_id: str, digest: str) -> bool:
        plan.hashes[doc_id] = digest
        old = recorded.get(doc_id)
        if old == digest and not full:
            plan.unchanged += 1
            return False
        (plan.added if old is None else plan.changed).append(doc_id)
        return True

    for doc in read_documents(root):
        if not str(doc.get("text", "")).strip():
            plan.problems.append(
                {
                    "file": doc["id"],
                    "status": "failed",
                    "code": "empty_document",
                    "reason": "the file is empty",
                }
            )
            plan.hashes[doc["id"]] = recorded.get(doc["id"], "")  # kept: an empty file is not a deletion
            continue
        if note(doc["id"], _digest(root / doc["id"])):
            plan.texts.append({**doc, "metadata": {**doc.get("metadata", {}), **marker}})
    for f in files:
        if note(f.doc_id, _digest(f.path)):
            plan.files.append((f.path, f.doc_id))
    plan.deleted = sorted(set(recorded) - set(plan.hashes))
    return plan


def sync(
    directory: Annotated[
        Path,
        typer.Argument(
            exists=True, file_okay=False, metavar="DIR", help="the folder to keep the index in step with"
        ),
    ],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="print what would be done, change nothing")
    ] = False,
    full: Annotated[
        bool, typer.Option("--full", help="resend unchanged files too (the fleet embeds nothing for them)")
    ] = False,
    batch_size: Annotated[int, typer.Option(help="text documents per indexing task")] = 64,
    timeout: Annotated[float, typer.Option(help="seconds to wait for each job")] = 3600.0,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object for scripts")] = False,
) -> None:
    """Keep the index in step with DIR: index new and changed files, delete documents whose file is gone.

    Ids are paths relative to DIR, and each chunk records `source_root` (DIR, resolved). Sync deletes
    only documents it synced from this DIR (for this tenant, `RAGFLEET_DEFAULT_TENANT`): it keeps a
    Redis record per root (`<prefix>:sync:<tenant>:<root hash>`, id -> content hash, written when the
    job reports the document indexed) instead of listing the store, see the module docstring. Exit
    status 1 when any document failed or was skipped; `--dry-run` changes nothing.
    """
    settings = get_settings()
    root = directory.resolve()
    tenant = settings.default_tenant
    r = get_redis(settings)
    key = root_key(settings, tenant, root)
    recorded: dict[str, str] = r.hgetall(key)  # type: ignore[assignment]
    plan = plan_sync(root, recorded, full=full)
    roots_key = settings.key("sync_roots", tenant)
    mine = key.rsplit(":", 1)[1]
    others = [settings.key("sync", tenant, str(h)) for h in r.hkeys(roots_key) if str(h) != mine]
    # an id another root's sync indexed since is that root's document now: ours is only forgotten
    released = [d for d in plan.deleted if any(r.hexists(o, d) for o in others)]
    plan.deleted = [d for d in plan.deleted if d not in released]
    summary: dict[str, Any] = {
        "root": str(root),
        "tenant": tenant,
        "dry_run": dry_run,
        "added": plan.added,
        "changed": plan.changed,
        "deleted": plan.deleted,
        "released": released,
        "unchanged": plan.unchanged,
    }
    if dry_run:
        _report(summary, plan.problems, as_json, [])
        return
    r.hset(roots_key, mine, str(root))
    if released:
        r.hdel(key, *released)
    client = FleetClient()
    jobs: dict[str, dict[str, str]] = {}  # job id -> {doc id: content hash to record once indexed}
    for start in range(0, len(plan.texts), batch_size):
        part = plan.texts[start : start + batch_size]
        jobs[client.index(part)] = {d["id"]: plan.hashes[d["id"]] for d in part}
    per_task = settings.files_per_task
    for start in range(0, len(plan.files), per_task):
        fpart = plan.files[start : start + per_task]
        refs = [(p, {"id": doc_id, "metadata": {"source_root": str(root)}}) for p, doc_id in fpart]
        jobs[client.index_files(refs)] = {doc_id: plan.hashes[doc_id] for _, doc_id in fpart}
    deletes = {client.delete(doc_id): doc_id for doc_id in plan.deleted}
    err.print(
        f"sync {root}: {len(plan.added)} new, {len(plan.changed)} changed, {len(plan.deleted)} to delete, "
        f"{plan.unchanged} unchanged"
    )
    problems = plan.problems
    failed_ids: set[str] = set()
    for job_id, docs in jobs.items():
        rec = _finish(client, job_id, timeout)
        found = _job_problems(rec, {d: d for d in docs})
        problems += found
        failed_ids |= {p["file"] for p in found}
        done: dict[Any, Any] = {d: h for d, h in docs.items() if d not in failed_ids}
        if rec["status"] == "done" and done:
            r.hset(key, mapping=done)
    for job_id, doc_id in deletes.items():
        rec = _finish(client, job_id, timeout)
        if rec["status"] == "done" or (rec.get("error") or {}).get("code") == "not_found":
            r.hdel(key, doc_id)  # deleted now, or already gone: either way no longer synced
        else:
            problems += _job_problems(rec, {doc_id: doc_id}) or [
                {"file": doc_id, "status": "failed", "code": str(rec["status"]), "reason": "delete failed"}
            ]
    summary["failed"] = sum(1 for p in problems if p["status"] == "failed")
    summary["skipped"] = sum(1 for p in problems if p["status"] == "skipped")
    _report(summary, problems, as_json, [*jobs, *deletes])
    if problems:
        raise typer.Exit(1)


def _finish(client: FleetClient, job_id: str, timeout: float) -> dict[str, Any]:
    """The job's final record, failed or not (a failure is reported, not raised)."""
    try:
        return client.wait(job_id, timeout=timeout, poll=0.2)
    except JobFailedError as exc:
        return exc.record
    except TimeoutError as exc:
        return {"job_id": job_id, "status": "timeout", "error": {"code": "timeout", "message": str(exc)}}


_VERBS = {
    "added": "add",
    "changed": "update",
    "deleted": "delete",
    "released": "leave (synced from another root)",
}


def _report(summary: dict[str, Any], problems: list[dict[str, str]], as_json: bool, jobs: list[str]) -> None:
    if as_json:
        sys.stdout.write(
            json.dumps({**summary, "problems": problems, "jobs": jobs}, ensure_ascii=False) + "\n"
        )
        return
    verb = "would " if summary["dry_run"] else ""
    for what in _VERBS:
        for doc_id in summary[what]:
            console.print(f"{verb}{_VERBS[what]} {doc_id}", markup=False, highlight=False)
    _ingest_report(
        {
            k: (len(v) if isinstance(v, list) else v)
            for k, v in summary.items()
            if k not in ("root", "tenant")
        },
        problems,
        False,
        jobs,
    )
