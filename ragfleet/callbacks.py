"""Completion callbacks, the fleet's side: what a job carries, and the delivery a `callbacks` worker runs.

How a callback travels, and why that way:
1. At submit (`record_fields`) the request is checked (`ragfleet.callback_spec`) and the job record
   gets the callback (`callback`) and the delivery task's whole message (`cb:msg`, for the Redis list
   `cb:list`). Building it then costs the submission ~0.2 ms; the answer nothing.
2. Whatever turns the job terminal (a finish, a failure, a cancel, a time limit, a parked message)
   pushes that message in the same Lua script (`ragfleet.jobs.PUSH_CALLBACK`): no ending path can
   forget it, and the answer waits for no extra round trip.
3. `deliver` runs on the `callbacks` pool (never retrieval or generation): it reads the finished
   record, sends the `callback_task` by name and POSTs the signed webhook, retrying with backoff, and
   appends every attempt to the job's delivery log (`GET /v1/jobs/{id}/deliveries`).

Delivery is at least once: the event id is derived from the job id and its `attempt` (a replay of a
dead letter is a new attempt, hence a new event), so a redelivered message posts the same event id
and receivers dedupe on it. A message redelivered after some attempts resumes their count.
"""

from __future__ import annotations

import functools
import json
import random
import socket
import ssl
import time
import uuid
from collections.abc import Callable
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import certifi
import httpx
import redis
from pydantic import BaseModel

from ragfleet.callback_spec import (
    EVENT_ID_HEADER,
    SIGNATURE_HEADER,
    CallbackRequest,
    check,
    network_allowed,
    sign,
    tenant_secrets,
)
from ragfleet.jobs import parse_record
from ragfleet.logs import get_logger
from ragfleet.names import TaskName
from ragfleet.schemas import TERMINAL, JobRecord
from ragfleet.settings import Settings

CALLBACK_SUFFIX = ":cb"  # the delivery task's id is `<job id>:cb`
_EVENTS = uuid.UUID("5b0c1f7e-3a52-4a8e-9a57-2f1d4f7a9c11")
_TERMINAL_VALUES = frozenset(s.value for s in TERMINAL)
_LOG_MAX = 200
log = get_logger("ragfleet.callbacks")

Outcome = Literal["accepted", "retrying", "failed", "sent"]
SendTask = Callable[[str, str, dict[str, Any], str], None]  # (name, queue, record, event id)


class Delivery(BaseModel):
    """One attempt to deliver one event, as `GET /v1/jobs/{id}/deliveries` lists it."""

    event_id: str
    job_attempt: int
    target: Literal["url", "task"]
    destination: str
    attempt: int
    outcome: Outcome
    status_code: int | None = None
    error: str | None = None
    at: float
    ms: float | None = None
    next_in_s: float | None = None


def record_fields(settings: Settings, job_id: str, tenant: str, request: CallbackRequest) -> dict[str, str]:
    """The record fields of a job that asked for callbacks ({} if it asked for none).
    CallbackRefusedError if the deployment does not allow them (the API's 422)."""
    if request.callback_url is None and request.callback_task is None:
        return {}
    check(settings, tenant, request)
    from ragfleet.producer import build_message  # Celery: only where a callback is asked for

    # `expires` is fixed now, and the message may be sent long after: when the job ends (within its
    # TTL), or again when a dead letter of it is replayed (within the dead letter's TTL) and it ends
    expires = settings.job_ttl_s + settings.dead_letter_ttl_s
    _, list_key, message = build_message(
        TaskName.CALLBACK_DELIVER, {}, settings=settings, job_id=job_id + CALLBACK_SUFFIX, expires=expires
    )
    envelope = json.loads(message)
    tag = uuid.uuid4().hex  # hex: PUSH_CALLBACK substitutes it with a Lua pattern
    envelope["properties"]["delivery_tag"] = tag
    spec = request.model_dump(mode="json", include={"callback_url", "callback_task"}, exclude_none=True)
    return {"callback": json.dumps(spec), "cb:msg": json.dumps(envelope), "cb:list": list_key, "cb:tag": tag}


def event_id(job_id: str, attempt: int) -> str:
    """Stable for one run of a job (a redelivered delivery posts the same id), new for a replay."""
    return "evt_" + uuid.uuid5(_EVENTS, f"{job_id}/{attempt}").hex


def event_body(record: JobRecord, eid: str) -> dict[str, Any]:
    return {
        "event_id": eid,
        "type": "job.finished",
        "job_id": record.job_id,
        "kind": record.kind,
        "status": record.status.value,
        "tenant": record.tenant,
        "attempt": record.attempt,
        "result": record.result,
        "error": record.error.model_dump(mode="json") if record.error else None,
        "finished_at": record.updated_at,
    }


class DeliveryLog:
    """`<prefix>:callback_log:<job id>`: a Redis list of `Delivery` entries, expiring with the job. Not
    `deliveries:<id>`: that is the redelivery counter, which a dead-letter replay resets."""

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self._r = client
        self._s = settings

    def key(self, job_id: str) -> str:
        return self._s.key("callback_log", job_id)

    def append(self, job_id: str, entry: Delivery) -> None:
        pipe = self._r.pipeline(transaction=False)
        pipe.rpush(self.key(job_id), entry.model_dump_json())
        pipe.ltrim(self.key(job_id), -_LOG_MAX, -1)
        pipe.expire(self.key(job_id), self._s.job_ttl_s)
        pipe.execute()

    def list(self, job_id: str) -> list[Delivery]:
        raw: list[str] = self._r.lrange(self.key(job_id), 0, -1)  # type: ignore[assignment]
        return [Delivery.model_validate_json(x) for x in raw]


def deliver(client: redis.Redis, settings: Settings, task_id: str, send_task: SendTask) -> list[Delivery]:
    """Deliver the callbacks of the job whose delivery task is `task_id`; returns this run's log
    entries. A job that is gone, or open again (replayed meanwhile: its next end pushes a new
    delivery), gets none."""
    job_id = task_id.removesuffix(CALLBACK_SUFFIX)
    raw: dict[str, str] = client.hgetall(settings.key("job", job_id))  # type: ignore[assignment]
    if not raw or raw.get("status") not in _TERMINAL_VALUES or "callback" not in raw:
        log.info("callback skipped: job not terminal or gone", job_id=job_id)
        return []
    from ragfleet import metrics  # the callbacks pool only: the client imports this module, not Prometheus

    spec = CallbackRequest.model_validate_json(raw["callback"])
    record = parse_record(raw)
    eid = event_id(job_id, record.attempt)
    book = DeliveryLog(client, settings)
    before = [d for d in book.list(job_id) if d.event_id == eid]
    out: list[Delivery] = []

    def note(entry: Delivery) -> None:
        book.append(job_id, entry)
        out.append(entry)
        metrics.callback_delivery(entry.target, entry.outcome)
        if entry.outcome == "accepted":
            metrics.observe_callback_lag(time.time() - record.updated_at)

    if spec.callback_task is not None and not any(d.target == "task" for d in before):
        t = spec.callback_task
        entry = Delivery(
            event_id=eid, job_attempt=record.attempt, target="task", destination=f"{t.name}@{t.queue}",
            attempt=1, outcome="sent", at=time.time(),
        )  # fmt: skip
        try:
            send_task(t.name, t.queue, record.model_dump(mode="json"), eid)
        except Exception as exc:  # the broker is the fleet's own Redis: rare, and recorded
            entry.outcome, entry.error = "failed", f"{type(exc).__name__}: {exc}"[:500]
        note(entry)
    url = spec.callback_url
    url_done = [d for d in before if d.target == "url"]
    if url is not None and not any(d.outcome in ("accepted", "failed") for d in url_done):
        body = json.dumps(event_body(record, eid), separators=(",", ":")).encode()
        for n in range(len(url_done) + 1, settings.callback_max_attempts + 1):
            entry = post_once(settings, url, body, eid, record.tenant)
            entry.job_attempt, entry.attempt = record.attempt, n
            if entry.outcome != "accepted" and n == settings.callback_max_attempts:
                entry.outcome = "failed"
            elif entry.outcome != "accepted":
                entry.next_in_s = backoff_s(settings, n)
            note(entry)
            log.info("webhook attempt", job_id=job_id, event_id=eid, n=n, outcome=entry.outcome,
                     status_code=entry.status_code, error=entry.error)  # fmt: skip
            if entry.next_in_s is None:
                break
            time.sleep(entry.next_in_s)
    return out


def backoff_s(settings: Settings, attempt: int) -> float:
    """Exponential, from `callback_backoff_s`, capped, with +-50 % jitter (receivers that come back
    are not hit by every fleet's retries at the same instant)."""
    base = min(settings.callback_backoff_max_s, settings.callback_backoff_s * 2 ** (attempt - 1))
    return float(min(settings.callback_backoff_max_s, base * random.uniform(0.5, 1.5)))


def post_once(settings: Settings, url: str, body: bytes, eid: str, tenant: str) -> Delivery:
    """One signed POST to the address `url` resolves to now, if that address is allowed (a name
    that resolves elsewhere than at submit time is checked again: DNS rebinding). The connection goes
    to the checked address itself, so a second lookup cannot swap it. Redirects are not followed; the
    timeout covers connecting, sending and each read of the response's head."""
    entry = Delivery(
        event_id=eid,
        job_attempt=1,
        target="url",
        destination=url,
        attempt=1,
        outcome="retrying",
        at=time.time(),
    )
    start = time.perf_counter()
    try:
        target, host_header, sni = _pinned(settings, url)
    except (OSError, ValueError) as exc:
        entry.error = str(exc)[:500]
        return entry
    ts = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "Host": host_header,
        "User-Agent": "ragfleet-callbacks",
        EVENT_ID_HEADER: eid,
        SIGNATURE_HEADER: sign(tenant_secrets(settings, tenant), ts, body),
    }
    try:
        with (
            httpx.Client(
                verify=_tls_context(),
                timeout=settings.callback_timeout_s,
                follow_redirects=False,
                trust_env=False,
            ) as http,
            http.stream("POST", target, content=body, headers=headers, extensions={"sni_hostname": sni}) as r,
        ):
            entry.status_code = r.status_code
    except httpx.HTTPError as exc:
        entry.error = f"{type(exc).__name__}: {exc}"[:500] or type(exc).__name__
    entry.ms = (time.perf_counter() - start) * 1000.0
    if entry.status_code is not None:
        if 200 <= entry.status_code < 300:
            entry.outcome = "accepted"
        elif 300 <= entry.status_code < 400:
            entry.error = "redirect not followed"
    return entry


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """Built once per process: loading the CA bundle (httpx's default, certifi's) costs 0.2-0.35 s of
    CPU under the GIL, which a client per delivery would pay each time (bench/bench_callbacks.py: P50
    3.9 s, deliveries serialised behind it). A client per delivery stays: no pooled connection
    outlives the address check it was made after."""
    return ssl.create_default_context(cafile=certifi.where())


def _pinned(settings: Settings, url: str) -> tuple[str, str, str]:
    """(the URL with the checked address as its host, the Host header, the TLS server name)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses = [str(i[4][0]) for i in infos]
    if not addresses:
        raise OSError(f"{host} resolves to no address")
    refused = [a for a in addresses if not network_allowed(settings, a)]
    if refused:
        raise ValueError(
            f"{host} resolves to {refused[0]}, which is not allowed (RAGFLEET_CALLBACK_ALLOWED_NETWORKS)"
        )
    ip = addresses[0]
    netloc = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
    host_header = host if parts.port is None else f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment)), host_header, host
