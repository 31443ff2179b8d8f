"""Indexing pool: batches of documents and deletions; progress is written to the job record."""

from __future__ import annotations

from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from redis.exceptions import RedisError

from ragfleet import callbacks, indexing, metrics
from ragfleet.chunkers import UnknownChunkerError
from ragfleet.names import Queue, TaskName
from ragfleet.producer import client_app, enqueue
from ragfleet.resources import get_resources
from ragfleet.schemas import (
    TERMINAL,
    DeleteDocumentPayload,
    ErrorCode,
    IndexDocumentPayload,
    IndexDocumentsPayload,
    JobStatus,
)
from ragfleet.stages import error_result, stage
from ragfleet.stores.base import StoreUnavailableError
from ragfleet.update_buffer import UpdateBuffer
from tasks._common import InvalidPayloadError, parse, retry_or_fail, retry_while_store_down
from workers.base import RagfleetTask, task


@task(TaskName.INDEX_DOCUMENTS)
def index_documents(self: RagfleetTask, *, payload: dict[str, Any]) -> dict[str, Any]:
    try:
        p = parse(self, IndexDocumentsPayload, payload, kind="index")
    except InvalidPayloadError as exc:
        return exc.result
    res = get_resources()
    job_id = str(p.job_id)
    extra = callbacks.record_fields(res.settings, job_id, p.tenant, p)  # checked by parse
    status = res.jobs.create(job_id, "index", tenant=p.tenant, request_id=p.request_id, extra=extra)
    if p.files and status in TERMINAL:
        # a redelivery after the job finished: its blobs may be gone, and rerunning would overwrite
        # the record's result with `not_found` errors (a text-only job reruns harmlessly)
        return {"job_id": job_id, "status": status.value}
    s = res.settings
    # each file may take parse_timeout_s, and together they must end before the soft time limit
    cap = min(s.files_per_task, max(1, int((s.index_time_limit_s - 30) * 0.9 // s.parse_timeout_s)))
    if len(p.files) > cap:
        message = (
            f"invalid payload: {len(p.files)} files in one task, over the limit of {cap} "
            f"(RAGFLEET_FILES_PER_TASK, and {cap} x RAGFLEET_PARSE_TIMEOUT_S must fit the task's "
            "time limit); split them across tasks"
        )
        res.jobs.fail(job_id, ErrorCode.INVALID_PAYLOAD, message)
        return error_result(job_id, ErrorCode.INVALID_PAYLOAD, message)
    total = len(p.documents) + len(p.files)
    res.jobs.set_progress(job_id, done=0, total=total)

    def progress(done: int, valid: int) -> None:
        # documents that failed validation count as done: they will not be processed further
        res.jobs.set_progress(job_id, done=done + (total - valid), total=total)

    try:
        with stage(res, job_id, "indexing", Queue.INDEXING.value, JobStatus.INDEXING):
            result = indexing.index_documents(
                res, p.documents, tenant=p.tenant, files=p.files, progress=progress
            )
    except SoftTimeLimitExceeded:
        message = "indexing exceeded its time limit; split the batch"
        res.jobs.fail(job_id, ErrorCode.TIMEOUT, message)
        return error_result(job_id, ErrorCode.TIMEOUT, message)
    except StoreUnavailableError as exc:
        return retry_while_store_down(self, res, job_id, "indexing", exc)
    except UnknownChunkerError as exc:  # the index is newer than this worker: a retry cannot help
        res.jobs.fail(job_id, ErrorCode.INTERNAL, str(exc))
        return error_result(job_id, ErrorCode.INTERNAL, str(exc))
    except (RedisError, OSError, RuntimeError) as exc:
        return retry_or_fail(self, res, job_id, "indexing", exc, code=ErrorCode.INTERNAL)
    out = result.model_dump(mode="json")
    res.jobs.finish(job_id, out)
    if result.chunks_written:
        indexing.maybe_optimize(res)
    metrics.set_index_info(result.index_version, res.live_store()[0].count())
    return {"job_id": job_id, **out}


@task(TaskName.DELETE_DOCUMENT)
def delete_document(self: RagfleetTask, *, payload: dict[str, Any]) -> dict[str, Any]:
    try:
        p = parse(self, DeleteDocumentPayload, payload, kind="delete")
    except InvalidPayloadError as exc:
        return exc.result
    res = get_resources()
    job_id = str(p.job_id)
    res.jobs.create(job_id, "delete", tenant=p.tenant, request_id=p.request_id)
    try:
        with stage(res, job_id, "indexing", Queue.INDEXING.value, JobStatus.INDEXING):
            result = indexing.delete_document(res, tenant=p.tenant, doc_id=p.doc_id)
    except StoreUnavailableError as exc:
        return retry_while_store_down(self, res, job_id, "delete", exc)
    except (RedisError, OSError, RuntimeError) as exc:
        return retry_or_fail(self, res, job_id, "delete", exc, code=ErrorCode.INTERNAL)
    out = result.model_dump(mode="json")
    if result.documents_deleted == 0:
        res.jobs.fail(job_id, ErrorCode.NOT_FOUND, f"document {p.doc_id!r} not found")
        return {"job_id": job_id, **out}
    res.jobs.finish(job_id, out)
    return {"job_id": job_id, **out}


@task(TaskName.INDEX_DOCUMENT_SINGLE)
def index_document(self: RagfleetTask, *, payload: dict[str, Any]) -> dict[str, Any]:
    """Buffer one document; a flush embeds it together with the others (ragfleet.update_buffer)."""
    try:
        p = parse(self, IndexDocumentPayload, payload, kind="index")
    except InvalidPayloadError as exc:
        return exc.result
    res = get_resources()
    job_id = str(p.job_id)
    status = res.jobs.create(job_id, "index", tenant=p.tenant, request_id=p.request_id)
    if status in TERMINAL:
        return {"job_id": job_id, "status": status.value}
    buf = UpdateBuffer(res)
    waiting = buf.add({"job_id": job_id, "tenant": p.tenant, "document": p.document})
    res.jobs.set_status(job_id, JobStatus.INDEXING)
    if waiting >= res.settings.update_batch_size:
        enqueue(TaskName.INDEX_FLUSH, {}, settings=res.settings, job_id=f"flush-{job_id}")
    elif buf.claim_schedule():
        flush_later = res.settings.update_max_wait_s
        client_app(res.settings).send_task(
            TaskName.INDEX_FLUSH.value,
            kwargs={"payload": {}},
            queue=Queue.INDEXING.value,
            countdown=flush_later,
            expires=flush_later + res.settings.index_expires_s,
        )
    return {"job_id": job_id, "status": "buffered", "waiting": waiting}


@task(TaskName.INDEX_FLUSH)
def index_flush(self: RagfleetTask, *, payload: dict[str, Any] | None = None) -> dict[str, Any]:
    res = get_resources()
    try:
        report = UpdateBuffer(res).flush()
    except StoreUnavailableError as exc:  # the batch stays in the buffer's list for the retry
        return retry_while_store_down(self, res, None, "flush", exc)
    if report is None:
        return {"status": "busy"}  # the running flusher drains the list, including our updates
    if report.documents:
        indexing.maybe_optimize(res)
    return {
        "status": "flushed",
        "batches": report.batches,
        "documents": report.documents,
        "failed": report.failed,
    }
