"""Record ratings and watch their rolling average: the logic behind the feedback tasks and CLI.

Everything takes a `sessionmaker` (and a `JobStore` where a job record is needed), so the same code
runs in a worker, in the CLI and in tests against SQLite or PostgreSQL.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from ragfleet import metrics
from ragfleet.feedback.models import Feedback
from ragfleet.jobs import JobStore
from ragfleet.logs import get_logger
from ragfleet.schemas import Answer, ErrorCode, FeedbackPayload, JobStatus

log = get_logger("ragfleet.feedback")

ALERT_EVENT = "feedback_quality_alert"
WEBHOOK_TIMEOUT_S = 5.0


class FeedbackError(Exception):
    """A rating that cannot be recorded; `code` is what the job record's error says."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def record_feedback(
    session_factory: sessionmaker[Session],
    jobs: JobStore,
    payload: FeedbackPayload,
    *,
    feedback_id: str | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Store `payload.rating` of the query job `payload.job_id` next to its question, answer, sources.

    The rated job must exist, belong to `payload.tenant` (another tenant's job is reported exactly
    like a missing one), be a query and be done. `feedback_id` (the feedback job's id) makes the
    write idempotent: a redelivered task finds its row and changes nothing.
    """
    record = jobs.get(payload.job_id)
    if record is None or record.tenant != payload.tenant:
        raise FeedbackError(ErrorCode.NOT_FOUND, f"job {payload.job_id!r} not found")
    if record.kind != "query":
        raise FeedbackError(
            ErrorCode.INVALID_PAYLOAD,
            f"job {payload.job_id!r} is a {record.kind} job; only queries are rated",
        )
    if record.status != JobStatus.DONE or not record.result:
        raise FeedbackError(
            ErrorCode.INVALID_PAYLOAD,
            f"job {payload.job_id!r} is {record.status.value}; only answered queries can be rated",
        )
    try:
        answer = Answer.model_validate(record.result)
    except ValidationError as exc:
        message = f"job {payload.job_id!r} has no answer: {exc}"
        raise FeedbackError(ErrorCode.INVALID_PAYLOAD, message) from exc

    row_id = feedback_id or uuid.uuid4().hex
    row = Feedback(
        id=row_id,
        job_id=payload.job_id,
        tenant=payload.tenant,
        rating=payload.rating,
        comment=payload.comment,
        question=answer.question,
        answer=answer.answer,
        sources=[s.model_dump(mode="json") for s in answer.sources],
        created_at=now or datetime.now(UTC),
    )
    duplicate = False
    with session_factory() as session:
        existing = session.get(Feedback, row_id)
        if existing is not None:
            row, duplicate = existing, True
        else:
            session.add(row)
            try:
                session.commit()
            except IntegrityError:  # a concurrent delivery of the same task won the insert
                session.rollback()
                found = session.get(Feedback, row_id)
                if found is None:
                    raise
                row, duplicate = found, True
    if not duplicate:
        metrics.observe_feedback(row.rating)
    return {
        "feedback_id": row.id,
        "rated_job_id": row.job_id,
        "tenant": row.tenant,
        "rating": row.rating,
        "created_at": row.created_at.isoformat(),
        "duplicate": duplicate,
    }


def aggregate(
    session_factory: sessionmaker[Session],
    now: datetime,
    window_s: float = 3_600,
    min_count: int = 10,
    threshold: float = 3.5,
    *,
    webhook_url: str | None = None,
) -> dict[str, Any]:
    """Rolling average over `(now - window_s, now]`, published as gauges; alert on a bad window.

    The alert needs more than `min_count` ratings: two angry users in a quiet hour are not a
    quality regression. It is raised three ways: the gauges (the `RagfleetFeedbackRatingLow` Prometheus
    rule evaluates the same condition on them), a WARNING log line with event
    `feedback_quality_alert`, and, when configured, a webhook POST. The webhook is best effort: a
    receiver that is down must not fail the aggregation, so its outcome is reported, not raised.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    since = now - timedelta(seconds=window_s)
    with session_factory() as session:
        count, avg = session.execute(
            select(func.count(Feedback.id), func.avg(Feedback.rating)).where(
                Feedback.created_at > since, Feedback.created_at <= now
            )
        ).one()
    count = int(count or 0)
    average = round(float(avg), 4) if count and avg is not None else None
    # An empty window publishes 0 ratings; the average keeps 0 too, which the alert ignores (count gate).
    metrics.set_feedback_rolling(average if average is not None else 0.0, count)
    alert = average is not None and count > min_count and average < threshold
    out: dict[str, Any] = {
        "window_s": window_s,
        "since": since.isoformat(),
        "until": now.isoformat(),
        "count": count,
        "avg": average,
        "threshold": threshold,
        "min_count": min_count,
        "alert": alert,
        "webhook": None,
    }
    if alert:
        log.warning(ALERT_EVENT, avg=average, count=count, threshold=threshold, window_s=window_s)
        if webhook_url:
            out["webhook"] = _post_alert(webhook_url, out)
    return out


def _post_alert(url: str, body: Mapping[str, Any]) -> dict[str, Any]:
    payload = {"event": ALERT_EVENT, **{k: v for k, v in body.items() if k != "webhook"}}
    try:
        response = httpx.post(url, json=payload, timeout=WEBHOOK_TIMEOUT_S)
    except httpx.HTTPError as exc:
        log.error("feedback_alert_webhook_failed", error=f"{type(exc).__name__}: {exc}")
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    ok = response.is_success
    if not ok:
        log.error("feedback_alert_webhook_failed", status=response.status_code)
    return {"ok": ok, "status": response.status_code}


def candidates(
    session_factory: sessionmaker[Session],
    limit: int = 20,
    since: datetime | None = None,
    *,
    tenant: str | None = None,
) -> list[dict[str, Any]]:
    """The worst-rated questions: lowest average first, then the most ratings (the surest case).

    One row per (tenant, question) with the most recent answer given to it, since that is the one a
    fix would replace.
    """
    if limit < 1:
        raise ValueError("limit must be >= 1")
    filters = []
    if since is not None:
        filters.append(Feedback.created_at >= since)
    if tenant is not None:
        filters.append(Feedback.tenant == tenant)
    ranked = (
        select(
            Feedback.tenant,
            Feedback.question,
            Feedback.answer,
            Feedback.job_id,
            Feedback.created_at,
            func.avg(Feedback.rating)
            .over(partition_by=(Feedback.tenant, Feedback.question))
            .label("avg_rating"),
            func.count(Feedback.id).over(partition_by=(Feedback.tenant, Feedback.question)).label("n"),
            func.row_number()
            .over(
                partition_by=(Feedback.tenant, Feedback.question),
                order_by=(Feedback.created_at.desc(), Feedback.id.desc()),
            )
            .label("rn"),
        )
        .where(*filters)
        .subquery()
    )
    stmt = (
        select(ranked)
        .where(ranked.c.rn == 1)
        .order_by(ranked.c.avg_rating.asc(), ranked.c.n.desc(), ranked.c.question.asc())
        .limit(limit)
    )
    with session_factory() as session:
        rows = session.execute(stmt).all()
    return [
        {
            "tenant": r.tenant,
            "question": r.question,
            "avg_rating": round(float(r.avg_rating), 3),
            "count": int(r.n),
            "answer": r.answer,
            "last_job_id": r.job_id,
            "last_rated_at": _utc(r.created_at).isoformat(),
        }
        for r in rows
    ]


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
