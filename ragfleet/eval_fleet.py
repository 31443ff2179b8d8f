"""Evaluation through the running fleet: questions submitted as query jobs, answers read back.

Latency is each job record's `updated_at - created_at` (enqueue to terminal write, both stamped by
the fleet's side of Redis), so the polling of this process does not inflate it; the poll loop is
one thread with pipelined status reads, because it shares the machine's cores with the workers it
measures. The metric math and the report are `ragfleet.evaluation`'s.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ragfleet.evaluation import Dataset, Report, score

if TYPE_CHECKING:
    from ragfleet.client import FleetClient

log = logging.getLogger(__name__)


@dataclass(slots=True)
class FleetRun:
    """What came back from the fleet for a list of questions: per key, the result or None."""

    results: dict[str, dict[str, Any] | None]
    latencies_ms: list[float]
    failed: int


def run_through_fleet(
    client: FleetClient,
    questions: dict[str, str],
    *,
    top_k: int,
    concurrency: int = 8,
    use_cache: bool = False,
    timeout_s: float = 120.0,
    poll_s: float = 0.005,
) -> FleetRun:
    """Keep `concurrency` query jobs in flight, one thread: submit, poll the job records, refill.

    Latency is the job record's `updated_at - created_at` (enqueue to terminal write, both stamped
    by the fleet's side of Redis), so the polling interval of this loop does not inflate it.
    """
    pending = list(questions.items())
    pending.reverse()
    inflight: dict[str, tuple[str, float]] = {}  # job id -> (key, deadline)
    results: dict[str, dict[str, Any] | None] = {}
    latencies: list[float] = []
    failed = 0
    while pending or inflight:
        while pending and len(inflight) < concurrency:
            key, question = pending.pop()
            job_id = client.submit(question, top_k=top_k, use_cache=use_cache)
            inflight[job_id] = (key, time.monotonic() + timeout_s)
        finished: list[str] = []
        statuses = job_statuses(client, list(inflight))
        for job_id, (key, deadline) in inflight.items():
            rec = client.job(job_id) if statuses.get(job_id, "done") in _TERMINAL else None
            status = rec.get("status") if rec else None
            if rec is not None and status in _TERMINAL:
                finished.append(job_id)
                if status == "done":
                    results[key] = rec.get("result")
                    latencies.append((float(rec["updated_at"]) - float(rec["created_at"])) * 1000)
                else:
                    results[key] = None
                    failed += 1
                    log.warning("job %s %s: %s", job_id, status, rec.get("error"))
            elif time.monotonic() > deadline:
                finished.append(job_id)
                results[key] = None
                failed += 1
                log.warning("job %s timed out after %.0f s", job_id, timeout_s)
        for job_id in finished:
            del inflight[job_id]
        if inflight and not finished:
            time.sleep(poll_s)
    return FleetRun(results, latencies, failed)


_TERMINAL = ("done", "failed", "cancelled")


def job_statuses(client: FleetClient, job_ids: list[str]) -> dict[str, str]:
    """Over the broker, one pipelined HGET per poll instead of a full record per job: the poll loop
    shares the machine's cores with the workers it measures. Other transports: {} (read records)."""
    from ragfleet.client import BrokerTransport
    from ragfleet.jobs import JobStore
    from ragfleet.redis_conn import get_redis

    t = client.transport
    if not isinstance(t, BrokerTransport) or not job_ids:
        return {}
    r = get_redis(t.settings)
    jobs = JobStore(r, t.settings)
    pipe = r.pipeline(transaction=False)
    for j in job_ids:
        pipe.hget(jobs.key(j), "status")
    return {j: str(st) for j, st in zip(job_ids, pipe.execute(), strict=True) if st is not None}


def doc_ranking(result: dict[str, Any] | None) -> list[str]:
    return [str(s["doc_id"]) for s in (result or {}).get("sources", [])]


def quote_texts(result: dict[str, Any] | None) -> list[str]:
    return [str(q["text"]) for q in (result or {}).get("quotes", [])]


def evaluate_fleet(
    client: FleetClient,
    data: Dataset,
    *,
    top_k: int = 100,
    answer_top_k: int = 5,
    concurrency: int = 8,
    timeout_s: float = 120.0,
) -> Report:
    """Two passes through the fleet, both with the cache off.

    1. Ranking: every query with `top_k` sources (large enough for Recall@100).
    2. Grounding: the queries that have evidence rows again, with `answer_top_k` sources (the
       fleet's default top-5): the answer a user gets is written from five sources, not a hundred.
    """
    ranking_run = run_through_fleet(
        client, data.queries, top_k=top_k, concurrency=concurrency, timeout_s=timeout_s
    )
    rankings = {k: doc_ranking(v) for k, v in ranking_run.results.items()}
    evidence_q = {r.query_id: data.queries[r.query_id] for r in data.evidence}
    answer_run = run_through_fleet(
        client, evidence_q, top_k=answer_top_k, concurrency=concurrency, timeout_s=timeout_s
    )
    quotes = {k: quote_texts(v) for k, v in answer_run.results.items()}
    return score(
        data,
        rankings,
        quotes=quotes if evidence_q else None,
        latencies_ms=ranking_run.latencies_ms,
        answer_latencies_ms=answer_run.latencies_ms,
        failed=ranking_run.failed + answer_run.failed,
        config={"top_k": top_k, "answer_top_k": answer_top_k, "concurrency": concurrency},
    )
