"""What every router of one app shares: settings, Redis clients, auth, rate limit, the enqueue.

`ApiDeps` is built once per app (`create_app`) and handed to each router factory
(`api_shim.routes.*`). Routers are built per app, not at import, because their OpenAPI schema
depends on the app's settings: request limits, `wait`'s bound, and whether API keys (hence 401 and
the security schemes) exist. Nothing connects here: clients open lazily on first use.
"""

# No `from __future__ import annotations`: FastAPI resolves the dependency signatures built here
# (`Security(bearer)` in `authenticate`) at runtime.

import math
import uuid
from collections.abc import Callable, Sequence
from typing import Annotated, Any

import anyio
from fastapi import Depends, HTTPException, Request, Security
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from api_shim.auth import Caller, KeyRing, parse_admin_keys, parse_api_keys, with_admin_keys
from api_shim.errors import EnqueueFailedError
from api_shim.models import Accepted, build_request_models
from api_shim.ratelimit import AsyncRateLimiter, LimitName
from api_shim.readiness import Readiness, ReadyCheck, WorkerProbe, redis_probe
from api_shim.streaming import AsyncEventReader
from ragfleet.callback_spec import CallbackRefusedError, CallbackRequest, CallbackTask
from ragfleet.callbacks import record_fields
from ragfleet.jobs import JobStore
from ragfleet.names import Priority, Queue, TaskName
from ragfleet.producer import client_app
from ragfleet.redis_conn import get_redis
from ragfleet.schemas import JobRecord
from ragfleet.settings import Settings
from ragfleet.submission import NewJob, require_one_redis, submit_job_async


class ApiDeps:
    """The app's shared parts. `caller` and `request_id` are FastAPI dependencies."""

    def __init__(
        self, s: Settings, *, ready_checks: Sequence[ReadyCheck], required_queues: Sequence[Queue]
    ) -> None:
        require_one_redis(s)  # at start-up, not as a 500 on the first POST
        self.settings = s
        admins = parse_admin_keys(s.admin_keys)
        self.keyring = KeyRing(with_admin_keys(parse_api_keys(s.api_keys), admins), admins)
        self.models = build_request_models(s)
        # The API never reads Celery results (job records carry them). With a result backend, every
        # send_task subscribes to the task's result channel (a subscription per job, never released)
        # and, with Redis down, retries that subscription for ~20 s. "disabled" avoids both.
        self.enqueue_settings = s.model_copy(update={"result_backend_url": "disabled"})
        self.celery_app = client_app(self.enqueue_settings)
        self.rds = get_redis(s)
        self.jobs = JobStore(self.rds, s)
        self.events_reader = AsyncEventReader(s)
        self.limiter = _limiter(s, s.rate_limit, "submit")
        self.read_limiter = _limiter(s, s.read_rate_limit, "read")
        self.retry_after = str(max(1, math.ceil(s.redis_socket_timeout_s)))
        self.publish_timeout_s = max(0.5, s.redis_socket_timeout_s)
        self.readiness = Readiness(
            [
                ("redis", redis_probe(self.rds)),
                ("workers", WorkerProbe(self.celery_app, required_queues)),
                *ready_checks,
            ],
            timeout_s=max(1.5, s.redis_socket_timeout_s + 0.5),
        )
        # the statuses every /v1 route documents; 401 only where keys are configured
        self.error_codes: tuple[int, ...] = (400, 413, 429, 503, *((401,) if self.keyring else ()))
        self.authenticate = _authenticator(s, self.keyring)
        # submissions (and any other write) spend `caller`'s budget; reads of one's own jobs,
        # streams and batches spend `reader`'s, a separate and larger one (api_shim.ratelimit)
        # (and, where keys share a tenant, the tenant's budgets too)
        tenant_limiter = _limiter(s, s.tenant_rate_limit, "submit", unset=s.rate_limit)
        tenant_reader = _limiter(s, s.tenant_read_rate_limit, "read", unset=s.read_rate_limit)
        self.caller = _rate_limited(self.authenticate, self.limiter, tenant_limiter)
        self.reader = _rate_limited(self.authenticate, self.read_limiter, tenant_reader)
        self.request_id = request_id

    def callback_fields(self, job_id: str, tenant: str, body: Any) -> dict[str, str]:
        """The record fields of the callbacks `body` asks for ({} if none): a 422 naming the field
        if the deployment does not allow one (`ragfleet.callback_spec`)."""
        request = CallbackRequest(
            callback_url=getattr(body, "callback_url", None),
            callback_task=(
                CallbackTask(name=body.callback_task.name, queue=body.callback_task.queue)
                if getattr(body, "callback_task", None) is not None
                else None
            ),
        )
        try:
            return record_fields(self.enqueue_settings, job_id, tenant, request)
        except CallbackRefusedError as exc:
            detail = [{"type": "value_error", "loc": ["body", exc.field], "msg": str(exc)}]
            raise HTTPException(422, detail) from exc

    async def submit(
        self,
        task: TaskName,
        kind: str,
        payload: dict[str, Any],
        who: Caller,
        rid: str,
        priority: Priority,
        *,
        job_id: str | None = None,
        extra: dict[str, str] | None = None,
    ) -> str:
        """The job record and its message in one MULTI on redis.asyncio (`ragfleet.submission`):
        both or neither (a failure is a plain 503 that leaves nothing behind), one round trip, no
        worker thread. The one way every route starts a job. `extra`: more record fields (a
        callback's: `callback_fields`)."""
        job = NewJob(
            task, kind, payload, job_id or uuid.uuid4().hex, who.tenant, rid, priority, extra or None
        )
        try:
            with anyio.fail_after(self.publish_timeout_s):  # a frozen Redis: a 503, not a hung request
                return await submit_job_async(
                    self.events_reader.client(), self.jobs, job, self.enqueue_settings
                )
        except TimeoutError as exc:
            # the MULTI may or may not have run: the job is marked failed if it exists
            raise EnqueueFailedError(job.job_id, f"publish took over {self.publish_timeout_s:g} s") from exc


def _authenticator(s: Settings, keyring: KeyRing) -> Callable[..., Any]:
    """The key decides the tenant, never the body; with no keys configured the API is open."""
    if keyring:
        bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer <key>`")
        api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False)

        async def authenticate(
            creds: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
            api_key: Annotated[str | None, Security(api_key_header)],
        ) -> Caller:
            presented = creds.credentials if creds is not None else api_key
            challenge = {"WWW-Authenticate": "Bearer"}
            if not presented:
                raise HTTPException(401, "missing API key", headers=challenge)
            tenant = keyring.tenant_for(presented)
            if tenant is None:
                raise HTTPException(401, "invalid API key", headers=challenge)
            return keyring.caller(presented, tenant)

        return authenticate

    async def open_caller(request: Request) -> Caller:
        host = request.client.host if request.client else "unknown"
        return Caller(tenant=s.default_tenant, identity=f"ip:{host}", admin=True)

    return open_caller


def _limiter(s: Settings, rate: str | None, name: LimitName, *, unset: str = "") -> AsyncRateLimiter | None:
    """A budget (`unset`'s rate where its setting is None), or None where the rate is empty (unlimited)."""
    rate = unset if rate is None else rate
    return AsyncRateLimiter(s, rate, name) if rate.strip() else None


def _rate_limited(
    authenticate: Callable[..., Any],
    limiter: AsyncRateLimiter | None,
    tenant_limiter: AsyncRateLimiter | None,
) -> Callable[..., Any]:
    async def caller(who: Annotated[Caller, Depends(authenticate)]) -> Caller:
        # RateLimitedError: a 429 naming the budget and whose it was (api_shim.errors). The key's own
        # first: a key over its budget must not spend what its tenant's other keys share.
        if limiter is not None:
            await limiter.check(who.identity)
        if tenant_limiter is not None and who.tenant_bucket is not None:
            await tenant_limiter.check(who.tenant_bucket)
        return who

    return caller


async def request_id(request: Request) -> str:
    """The id `RequestContextMiddleware` bound to this request (a fresh one outside it)."""
    rid: str | None = getattr(request.state, "request_id", None)
    return rid or uuid.uuid4().hex


def accepted(job_id: str) -> JSONResponse:
    """202 with `{job_id, status}` and where to poll."""
    body = Accepted(job_id=job_id).model_dump(mode="json")
    return JSONResponse(body, status_code=202, headers={"Location": f"/v1/jobs/{job_id}"})


def record_response(record: JobRecord) -> Response:
    """200 with the record, serialised by pydantic in one pass (no dict, then json.dumps)."""
    return Response(record.model_dump_json(), status_code=200, media_type="application/json")


__all__ = ["ApiDeps", "accepted", "record_response", "request_id"]
