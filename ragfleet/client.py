"""Python client for other services: no torch, no store clients, only the JSON contract.

Two transports with the same methods: `BrokerTransport` starts jobs by task name (the job record and
its Celery task message in one MULTI, `ragfleet.submission`, as the API does) and reads job records
and event streams from Redis;
`HttpTransport` talks to api_shim. Both return plain dicts shaped like `ragfleet.schemas.JobRecord`,
events as `{"id", "type", "data"}` and batch results as one dict per question in input order.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import httpx

from ragfleet.batch import Batches, normalize_questions
from ragfleet.callback_spec import CallbackRequest
from ragfleet.callbacks import DeliveryLog, record_fields
from ragfleet.events import TERMINAL_EVENTS, JobEvents
from ragfleet.jobs import JobStore
from ragfleet.names import Priority, TaskName
from ragfleet.redis_conn import get_redis
from ragfleet.schemas import TERMINAL
from ragfleet.settings import Settings, get_settings
from ragfleet.submission import NewJob, submit_job

_TERMINAL = {s.value for s in TERMINAL}
_JOB_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


class JobFailedError(RuntimeError):
    def __init__(self, record: dict[str, Any]) -> None:
        err = record.get("error") or {}
        super().__init__(
            f"job {record.get('job_id')} {record.get('status')}: {err.get('code')}: {err.get('message')}"
        )
        self.record = record


class Transport(Protocol):
    def submit(self, task: TaskName, payload: dict[str, Any], *, kind: str, priority: Priority) -> str: ...
    def job(self, job_id: str) -> dict[str, Any] | None: ...
    def events(self, job_id: str, *, after: str, timeout: float) -> Iterator[dict[str, Any]]: ...
    def batch_submit(self, questions: Sequence[Any], defaults: dict[str, Any]) -> str: ...
    def batch_status(self, batch_id: str) -> dict[str, Any] | None: ...
    def batch_results(self, batch_id: str) -> Iterator[dict[str, Any]]: ...
    def batch_cancel(self, batch_id: str) -> dict[str, Any] | None: ...
    def deliveries(self, job_id: str) -> list[dict[str, Any]]: ...


def end_from_record(record: dict[str, Any]) -> dict[str, Any]:
    """A terminal event for a job whose stream has none (it failed before any worker wrote one)."""
    if record["status"] == "done":
        result = record.get("result") or {}
        data = {k: result.get(k) for k in ("usage", "cached", "degraded", "coalesced_with")}
        data["latency_ms"] = (record["updated_at"] - record["created_at"]) * 1000
        return {"id": None, "type": "done", "data": data}
    error = record.get("error") or {"code": record["status"], "message": record["status"]}
    return {"id": None, "type": "error", "data": error}


class BrokerTransport:
    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()
        self._jobs = JobStore(get_redis(self.settings), self.settings)

    def submit(self, task: TaskName, payload: dict[str, Any], *, kind: str, priority: Priority) -> str:
        job_id = payload.get("job_id") or uuid.uuid4().hex
        tenant = str(payload.get("tenant") or self.settings.default_tenant)
        # callbacks ride in the record, checked here (CallbackRefusedError), as the API does
        asked = {k: payload.pop(k) for k in ("callback_url", "callback_task") if k in payload}
        extra = record_fields(self.settings, job_id, tenant, CallbackRequest.model_validate(asked))
        job = NewJob(
            task, kind, {**payload, "tenant": tenant}, job_id, tenant, payload.get("request_id"), priority,
            extra or None,
        )  # fmt: skip
        return submit_job(get_redis(self.settings), self._jobs, job, self.settings)

    def job(self, job_id: str) -> dict[str, Any] | None:
        rec = self._jobs.get(job_id)
        return None if rec is None else rec.model_dump(mode="json")

    def events(self, job_id: str, *, after: str, timeout: float) -> Iterator[dict[str, Any]]:
        """XREAD on the job's stream directly: the broker client needs no API."""
        stream = JobEvents(get_redis(self.settings), self.settings)
        block_ms = max(50, int(min(1.0, self.settings.redis_socket_timeout_s / 2) * 1000))
        deadline = time.monotonic() + timeout
        last = after
        while time.monotonic() < deadline:
            batch = stream.read(job_id, last, block_ms=block_ms)
            for ev in batch:
                last = ev.id
                yield {"id": ev.id, "type": ev.type, "data": ev.data}
                if ev.type in TERMINAL_EVENTS:
                    return
            if not batch:
                rec = self.job(job_id)
                if rec is not None and rec["status"] in _TERMINAL:
                    late = stream.read(job_id, last)
                    for ev in late:
                        yield {"id": ev.id, "type": ev.type, "data": ev.data}
                        if ev.type in TERMINAL_EVENTS:
                            return
                    yield end_from_record(rec)
                    return
        raise TimeoutError(f"stream of job {job_id} not finished after {timeout} s")

    def _batches(self) -> Batches:
        return Batches(get_redis(self.settings), self.settings)

    def batch_submit(self, questions: Sequence[Any], defaults: dict[str, Any]) -> str:
        tenant = self.settings.default_tenant
        items = normalize_questions(questions, settings=self.settings, tenant=tenant, defaults=defaults)
        return self._batches().submit(items, tenant=tenant)

    def batch_status(self, batch_id: str) -> dict[str, Any] | None:
        st = self._batches().status(batch_id)
        return None if st is None else st.as_dict()

    def batch_results(self, batch_id: str) -> Iterator[dict[str, Any]]:
        return self._batches().results(batch_id)

    def batch_cancel(self, batch_id: str) -> dict[str, Any] | None:
        self._batches().cancel(batch_id)
        return self.batch_status(batch_id)

    def deliveries(self, job_id: str) -> list[dict[str, Any]]:
        book = DeliveryLog(get_redis(self.settings), self.settings)
        return [d.model_dump(mode="json") for d in book.list(job_id)]


class HttpTransport:
    _PATHS = {TaskName.QUERY: "/v1/queries", TaskName.INDEX_DOCUMENTS: "/v1/documents"}

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 30.0) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout)

    def submit(self, task: TaskName, payload: dict[str, Any], *, kind: str, priority: Priority) -> str:
        body = {k: v for k, v in payload.items() if k not in ("tenant", "job_id", "request_id")}
        if task == TaskName.DELETE_DOCUMENT:
            r = self._http.delete(f"/v1/documents/{payload['doc_id']}")
        else:
            r = self._http.post(self._PATHS[task], json=body)
        r.raise_for_status()
        return str(r.json()["job_id"])

    def upload_files(self, files: Sequence[tuple[Path, dict[str, Any]]]) -> str:
        """`POST /v1/documents/files`: each file with its id/title/metadata fields, in file order."""
        data: dict[str, list[str]] = {"id": [], "title": [], "metadata": []}
        for _path, ref in files:
            data["id"].append(str(ref.get("id") or ""))
            data["title"].append(str(ref.get("title") or ""))
            data["metadata"].append(json.dumps(ref["metadata"]) if ref.get("metadata") else "")
        handles = [path.open("rb") for path, _ in files]
        try:
            parts = [("files", (p.name, fh)) for (p, _), fh in zip(files, handles, strict=True)]
            r = self._http.post("/v1/documents/files", files=parts, data=data)
        finally:
            for fh in handles:
                fh.close()
        r.raise_for_status()
        return str(r.json()["job_id"])

    def job(self, job_id: str) -> dict[str, Any] | None:
        r = self._http.get(f"/v1/jobs/{job_id}")
        if r.status_code == 404:
            return None
        r.raise_for_status()
        data: dict[str, Any] = r.json()
        return data

    def deliveries(self, job_id: str) -> list[dict[str, Any]]:
        r = self._http.get(f"/v1/jobs/{job_id}/deliveries")
        if r.status_code == 404:
            return []
        r.raise_for_status()
        data: list[dict[str, Any]] = r.json()
        return data

    def events(self, job_id: str, *, after: str, timeout: float) -> Iterator[dict[str, Any]]:
        """NDJSON from the API; a dropped connection (or the server's stream limit) resumes after the
        last event id, so the caller sees every event once."""
        deadline = time.monotonic() + timeout
        last = after
        failures = 0
        while time.monotonic() < deadline:
            try:
                with self._http.stream(
                    "GET", f"/v1/queries/{job_id}/stream", params={"after": last}, timeout=httpx.Timeout(30.0)
                ) as r:
                    r.raise_for_status()
                    for line in r.iter_lines():
                        if not line.strip():
                            continue
                        ev: dict[str, Any] = json.loads(line)
                        if ev["type"] in ("heartbeat", "timeout"):
                            continue
                        if ev.get("id"):
                            last = ev["id"]
                        yield ev
                        failures = 0
                        if ev["type"] in TERMINAL_EVENTS:
                            return
            except httpx.TransportError:
                failures += 1
                if failures > 5:
                    raise
                time.sleep(min(2.0, 0.1 * 2**failures))
        raise TimeoutError(f"stream of job {job_id} not finished after {timeout} s")

    def batch_submit(self, questions: Sequence[Any], defaults: dict[str, Any]) -> str:
        body = {"questions": list(questions), **{k: v for k, v in defaults.items() if v is not None}}
        r = self._http.post("/v1/batches", json=body)
        r.raise_for_status()
        return str(r.json()["batch_id"])

    def batch_status(self, batch_id: str) -> dict[str, Any] | None:
        r = self._http.get(f"/v1/batches/{batch_id}")
        if r.status_code == 404:
            return None
        r.raise_for_status()
        data: dict[str, Any] = r.json()
        return data

    def batch_results(self, batch_id: str) -> Iterator[dict[str, Any]]:
        with self._http.stream("GET", f"/v1/batches/{batch_id}/results") as r:
            r.raise_for_status()
            for line in r.iter_lines():
                if line.strip():
                    yield json.loads(line)

    def batch_cancel(self, batch_id: str) -> dict[str, Any] | None:
        r = self._http.delete(f"/v1/batches/{batch_id}")
        if r.status_code == 404:
            return None
        r.raise_for_status()
        data: dict[str, Any] = r.json()
        return data


class FleetClient:
    def __init__(self, transport: Transport | None = None) -> None:
        self.transport: Transport = transport or BrokerTransport()

    @classmethod
    def over_http(cls, base_url: str, api_key: str | None = None) -> FleetClient:
        return cls(HttpTransport(base_url, api_key))

    def submit(
        self,
        question: str,
        *,
        top_k: int = 5,
        mode: str | None = None,
        filters: dict[str, Any] | None = None,
        use_cache: bool = True,
        priority: Priority = Priority.INTERACTIVE,
        callback_url: str | None = None,
        callback_task: dict[str, str] | None = None,
    ) -> str:
        """`callback_url` / `callback_task` ({name, queue}): called back when the job ends
        (docs/http.md#callbacks; refused unless the deployment allows them)."""
        payload: dict[str, Any] = {"question": question, "top_k": top_k, "use_cache": use_cache}
        if mode:
            payload["mode"] = mode
        if filters:
            payload["filters"] = filters
        if callback_url:
            payload["callback_url"] = callback_url
        if callback_task:
            payload["callback_task"] = callback_task
        return self.transport.submit(TaskName.QUERY, payload, kind="query", priority=priority)

    def job(self, job_id: str) -> dict[str, Any] | None:
        return self.transport.job(job_id)

    def deliveries(self, job_id: str) -> list[dict[str, Any]]:
        """The job's callback delivery log (`GET /v1/jobs/{id}/deliveries`): every attempt, oldest first."""
        return self.transport.deliveries(job_id)

    def wait(self, job_id: str, *, timeout: float = 60.0, poll: float = 0.01) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        delay = poll
        while True:
            rec = self.transport.job(job_id)
            if rec is not None and rec.get("status") in _TERMINAL:
                if rec["status"] != "done":
                    raise JobFailedError(rec)
                return rec
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} not finished after {timeout} s")
            time.sleep(delay)
            delay = min(delay * 1.5, 0.2)

    def ask(self, question: str, *, timeout: float = 60.0, **kwargs: Any) -> dict[str, Any]:
        result: dict[str, Any] = self.wait(self.submit(question, **kwargs), timeout=timeout)["result"]
        return result

    def index(self, documents: list[dict[str, Any]], *, priority: Priority = Priority.DEFAULT) -> str:
        return self.transport.submit(
            TaskName.INDEX_DOCUMENTS, {"documents": documents}, kind="index", priority=priority
        )

    def index_files(
        self, files: Sequence[tuple[Path, dict[str, Any]]], *, priority: Priority = Priority.DEFAULT
    ) -> str:
        """Index document files (parsed on the fleet, docs/parsing.md), each `(path, {id?, title?,
        metadata?})`. Over the broker the bytes go to the blob store (`RAGFLEET_BLOB_DIR`, which this
        host must share with the indexing pool) and the message carries blob ids; over HTTP they are
        uploaded to `POST /v1/documents/files`. At most `RAGFLEET_FILES_PER_TASK` files per call."""
        t = self.transport
        if isinstance(t, HttpTransport):
            return t.upload_files(files)
        if not isinstance(t, BrokerTransport):
            raise TypeError(f"{type(t).__name__} cannot upload files")
        from ragfleet.blobs import blob_store

        blobs = blob_store(t.settings)
        refs = []
        for path, ref in files:
            with path.open("rb") as fh:
                refs.append({**ref, "name": path.name, "blob_id": blobs.put(fh)})
        return t.submit(
            TaskName.INDEX_DOCUMENTS, {"documents": [], "files": refs}, kind="index", priority=priority
        )

    def delete(self, doc_id: str) -> str:
        return self.transport.submit(
            TaskName.DELETE_DOCUMENT, {"doc_id": doc_id}, kind="delete", priority=Priority.DEFAULT
        )

    def index_many(self, documents: Iterator[dict[str, Any]], *, batch_size: int = 64) -> list[str]:
        jobs, batch = [], []
        for doc in documents:
            batch.append(doc)
            if len(batch) >= batch_size:
                jobs.append(self.index(batch))
                batch = []
        if batch:
            jobs.append(self.index(batch))
        return jobs

    # --- streaming ------------------------------------------------------------------------------
    def stream(
        self, job_id_or_question: str, *, after: str = "0-0", timeout: float = 60.0, **submit_kwargs: Any
    ) -> Iterator[dict[str, Any]]:
        """Events of a query as they happen: `sources`, `answer_chunk`..., then `done` (or `error`).

        Given the id of an existing job, follows it (from `after`); anything else is asked as a new
        question first. Each event is `{"id", "type", "data"}`; pass the last `id` as `after` to
        resume elsewhere.
        """
        job_id = job_id_or_question
        if not (_JOB_ID.fullmatch(job_id_or_question) and self.job(job_id_or_question) is not None):
            job_id = self.submit(job_id_or_question, **submit_kwargs)
        yield from self.transport.events(job_id, after=after, timeout=timeout)

    # --- batches --------------------------------------------------------------------------------
    def batch(
        self,
        questions: Sequence[str | dict[str, Any]],
        *,
        top_k: int | None = None,
        mode: str | None = None,
        use_cache: bool | None = None,
    ) -> str:
        """Submit questions (strings or `{question, top_k?, filters?, mode?, id?}`); returns the batch id."""
        defaults = {"top_k": top_k, "mode": mode, "use_cache": use_cache}
        return self.transport.batch_submit(questions, defaults)

    def batch_status(self, batch_id: str) -> dict[str, Any]:
        st = self.transport.batch_status(batch_id)
        if st is None:
            raise KeyError(f"batch {batch_id} not found")
        return st

    def wait_batch(
        self,
        batch_id: str,
        *,
        timeout: float = 3600.0,
        poll: float = 0.25,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Poll until the batch is done, failed or cancelled; `on_progress` sees every status read."""
        deadline = time.monotonic() + timeout
        while True:
            st = self.batch_status(batch_id)
            if on_progress is not None:
                on_progress(st)
            if st["status"] in _TERMINAL:
                return st
            if time.monotonic() > deadline:
                raise TimeoutError(f"batch {batch_id} not finished after {timeout} s")
            time.sleep(poll)

    def batch_results(
        self, batch_id: str, *, wait: bool = True, timeout: float = 3600.0
    ) -> Iterator[dict[str, Any]]:
        """One dict per question, in input order: `{index, job_id, question, status, result, error}`."""
        if wait:
            self.wait_batch(batch_id, timeout=timeout)
        yield from self.transport.batch_results(batch_id)

    def cancel_batch(self, batch_id: str) -> dict[str, Any]:
        st = self.transport.batch_cancel(batch_id)
        if st is None:
            raise KeyError(f"batch {batch_id} not found")
        return st
