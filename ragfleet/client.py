"""Python client for other services: no torch, no store clients, only the JSON contract.

Two transports with the same methods: `BrokerTransport` sends tasks by name with `send_task` and
reads job records from Redis (what a Celery-speaking service would do); `HttpTransport` talks to
api_shim. Both return plain dicts shaped like `ragfleet.schemas.JobRecord`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any, Protocol

import httpx

from ragfleet.jobs import JobStore
from ragfleet.names import Priority, TaskName
from ragfleet.producer import enqueue
from ragfleet.redis_conn import get_redis
from ragfleet.schemas import TERMINAL
from ragfleet.settings import Settings, get_settings

_TERMINAL = {s.value for s in TERMINAL}


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


class BrokerTransport:
    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()
        self._jobs = JobStore(get_redis(self.settings), self.settings)

    def submit(self, task: TaskName, payload: dict[str, Any], *, kind: str, priority: Priority) -> str:
        job_id = payload.get("job_id") or uuid.uuid4().hex
        tenant = str(payload.get("tenant") or self.settings.default_tenant)
        self._jobs.create(job_id, kind, tenant=tenant, request_id=payload.get("request_id"))
        return enqueue(
            task, {**payload, "tenant": tenant}, settings=self.settings, job_id=job_id, priority=priority
        )

    def job(self, job_id: str) -> dict[str, Any] | None:
        rec = self._jobs.get(job_id)
        return None if rec is None else rec.model_dump(mode="json")


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

    def job(self, job_id: str) -> dict[str, Any] | None:
        r = self._http.get(f"/v1/jobs/{job_id}")
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
    ) -> str:
        payload: dict[str, Any] = {"question": question, "top_k": top_k, "use_cache": use_cache}
        if mode:
            payload["mode"] = mode
        if filters:
            payload["filters"] = filters
        return self.transport.submit(TaskName.QUERY, payload, kind="query", priority=priority)

    def job(self, job_id: str) -> dict[str, Any] | None:
        return self.transport.job(job_id)

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
