"""What a producer may ask to be called back with, and how a receiver checks that the call is ours.

Light on purpose (pydantic, Settings, the standard library): the payload models (`ragfleet.schemas`),
the API, the workers and a receiver's own code import it. The fleet's side of a delivery (sending,
retrying, the delivery log) is `ragfleet.callbacks`.

Two kinds of callback, either or both per job:
- `callback_url`: an HTTP POST of the job's outcome, signed (`sign`, `verify_signature`). The URL is
  checked here at submit time (http or https, a host on `RAGFLEET_CALLBACK_ALLOWED_HOSTS`, a tenant
  with a secret); the address it resolves to is checked again when the delivery connects
  (`ragfleet.callbacks`), so a name that later resolves to a private address is refused then.
- `callback_task`: a Celery task sent by name with the job's final record as its one argument, like
  Celery's `link`. Only pairs on `RAGFLEET_CALLBACK_ALLOWED_TASKS`, and never a `ragfleet.*` task or
  one of the fleet's own queues: a producer must not be able to make the fleet run its own tasks.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import ipaddress
import re
import time
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field

from ragfleet.settings import Settings

SIGNATURE_HEADER = "X-Ragfleet-Signature"
EVENT_ID_HEADER = "X-Ragfleet-Event-Id"
FLEET_QUEUES = frozenset({"retrieval", "generation", "indexing", "feedback", "maintenance", "callbacks"})
_TASK_NAME = re.compile(r"^[A-Za-z_][\w.:-]{0,199}$")
_QUEUE = re.compile(r"^[\w.:-]{1,200}$")


class CallbackTask(BaseModel):
    """A Celery task to send by name when the job ends: `name(record)` on `queue`."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(min_length=1, max_length=200, description="The task's registered name.")]
    queue: Annotated[str, Field(min_length=1, max_length=200, description="The queue its workers consume.")]


class CallbackRequest(BaseModel):
    """The callback fields a query, an indexing job or a batch may carry (payload and HTTP body)."""

    callback_url: Annotated[
        str | None,
        Field(
            default=None,
            max_length=2_048,
            description="POST the job's outcome here when it ends (signed; docs/http.md#callbacks).",
        ),
    ] = None
    callback_task: CallbackTask | None = Field(
        default=None, description="Send this Celery task by name with the job's final record when it ends."
    )


class DeliverPayload(BaseModel):
    """Payload of `ragfleet.callbacks.deliver` (internal): the delivery's own task id, `<job id>:cb`."""

    model_config = ConfigDict(extra="forbid")

    job_id: str = Field(min_length=4, max_length=200)


class CallbackRefusedError(ValueError):
    """A callback the deployment does not allow; the API answers 422, a task fails `invalid_payload`."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def tenant_secrets(settings: Settings, tenant: str) -> list[str]:
    """The tenant's active signing secrets, newest first as configured (at most two are expected)."""
    raw = settings.callback_secrets.get_secret_value() if settings.callback_secrets else ""
    for entry in raw.split(","):
        name, sep, secrets = entry.strip().partition(":")
        if sep and name == tenant:
            return [s for s in secrets.split("|") if s]
    return []


def _host_allowed(host: str, patterns: str) -> bool:
    for p in (x.strip().lower() for x in patterns.split(",")):
        if p and (host == p or (p.startswith("*.") and host.endswith(p[1:]))):
            return True
    return False


def check_url(settings: Settings, tenant: str, url: str) -> str:
    """The URL if this tenant may be called back there; CallbackRefusedError with the reason if not."""
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise CallbackRefusedError("callback_url", f"not a valid URL: {exc}") from exc
    if parts.scheme not in ("http", "https"):
        raise CallbackRefusedError("callback_url", "must be an http or https URL")
    if not host or parts.username is not None or parts.password is not None:
        raise CallbackRefusedError("callback_url", "must name a host and carry no credentials")
    if not _host_allowed(host, settings.callback_allowed_hosts):
        raise CallbackRefusedError(
            "callback_url", f"host {host!r} is not on the allow-list (RAGFLEET_CALLBACK_ALLOWED_HOSTS)"
        )
    if not tenant_secrets(settings, tenant):
        raise CallbackRefusedError(
            "callback_url", f"tenant {tenant!r} has no signing secret (RAGFLEET_CALLBACK_SECRETS)"
        )
    return url


def check_task(settings: Settings, task: CallbackTask) -> CallbackTask:
    """The task if it may be sent; CallbackRefusedError if it names the fleet's own tasks or queues,
    or is not on the allow-list."""
    if not _TASK_NAME.fullmatch(task.name) or not _QUEUE.fullmatch(task.queue):
        raise CallbackRefusedError("callback_task", "name or queue has characters a task name cannot have")
    if task.name.startswith("ragfleet.") or task.name == "ragfleet":
        raise CallbackRefusedError("callback_task", "a ragfleet.* task cannot be a callback")
    if task.queue in FLEET_QUEUES:
        raise CallbackRefusedError("callback_task", f"queue {task.queue!r} is one of the fleet's own")
    for pair in (p.strip() for p in settings.callback_allowed_tasks.split(",")):
        name, sep, queue = pair.rpartition("@")
        if sep and queue == task.queue and fnmatch.fnmatchcase(task.name, name):
            return task
    raise CallbackRefusedError(
        "callback_task",
        f"{task.name}@{task.queue} is not on the allow-list (RAGFLEET_CALLBACK_ALLOWED_TASKS)",
    )


def check(settings: Settings, tenant: str, request: CallbackRequest) -> None:
    """Both checks a submission runs (the API before it answers 202, a task before it starts)."""
    if request.callback_url is not None:
        check_url(settings, tenant, request.callback_url)
    if request.callback_task is not None:
        check_task(settings, request.callback_task)


def network_allowed(settings: Settings, address: str) -> bool:
    """Whether a webhook may connect to `address`: any public address, and non-public ones (loopback,
    private, link-local, reserved, multicast) only inside `RAGFLEET_CALLBACK_ALLOWED_NETWORKS`."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    for cidr in (c.strip() for c in settings.callback_allowed_networks.split(",")):
        if cidr and ip in ipaddress.ip_network(cidr, strict=False):
            return True
    return bool(ip.is_global) and not ip.is_multicast


def sign(secrets: list[str], timestamp: int, body: bytes) -> str:
    """The signature header's value: `t=<unix seconds>,v1=<hex>` with one `v1` per active secret
    (a receiver that knows either secret of a rotation verifies). HMAC-SHA256 over `<t>.<body>`."""
    signed = str(timestamp).encode() + b"." + body
    macs = [hmac.new(s.encode(), signed, hashlib.sha256).hexdigest() for s in secrets]
    return ",".join([f"t={timestamp}", *(f"v1={m}" for m in macs)])


def verify_signature(
    secret: str, body: bytes, header: str, *, window_s: float = 300, now: float | None = None
) -> bool:
    """A receiver's check: one of the header's `v1` MACs is HMAC-SHA256(secret, `<t>.<body>`) and `t`
    is within `window_s` of now (older: a replayed request). Dedupe on the event id as well: delivery
    is at least once."""
    fields = [f.partition("=") for f in header.split(",")]
    stamps = [v for k, _, v in fields if k.strip() == "t"]
    if len(stamps) != 1 or not stamps[0].isdigit():
        return False
    ts = int(stamps[0])
    if abs((time.time() if now is None else now) - ts) > window_s:
        return False
    expected = sign([secret], ts, body).split(",v1=", 1)[1]
    return any(hmac.compare_digest(expected, v.strip()) for k, _, v in fields if k.strip() == "v1")
