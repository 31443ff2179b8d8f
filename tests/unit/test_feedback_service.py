"""The feedback service against real databases (SQLite file and PostgreSQL) and a real Redis.

Every test runs on both backends: SQLite in a temporary file, PostgreSQL in a schema created for
this test run (and dropped afterwards), both brought to head by the packaged Alembic migrations.
"""

from __future__ import annotations

import json
import multiprocessing
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
import structlog
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import inspect, select
from sqlalchemy.orm import Session, sessionmaker

from ragfleet import metrics
from ragfleet.feedback import repository, service
from ragfleet.feedback.models import Base, Feedback
from ragfleet.jobs import JobStore
from ragfleet.schemas import Answer, ErrorCode, FeedbackPayload, Source
from ragfleet.settings import Settings
from tests.conftest import free_port, need

pytestmark = [pytest.mark.redis]

PG_HOST, PG_PORT, PG_DB = "127.0.0.1", 5432, "test"
NOW = datetime(2025, 11, 25, 12, 0, tzinfo=UTC)


def _pg_user() -> str | None:
    for user in ("postgres", "root"):
        try:
            with psycopg.connect(host=PG_HOST, port=PG_PORT, dbname=PG_DB, user=user, connect_timeout=3):
                return user
        except psycopg.Error:
            continue
    return None


@pytest.fixture(scope="module")
def pg_user() -> str | None:
    return _pg_user()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path, pg_user: str | None) -> Iterator[str]:
    """A migrated, empty feedback database of the parametrized backend."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'feedback.db'}"
        repository.upgrade_to_head(url)
        yield url
        repository.dispose_engines()
        return
    need(pg_user is not None, f"PostgreSQL at {PG_HOST}:{PG_PORT}/{PG_DB}")
    schema = f"rftest_fb_{uuid.uuid4().hex[:10]}"
    admin = dict(host=PG_HOST, port=PG_PORT, dbname=PG_DB, user=pg_user, autocommit=True)
    with psycopg.connect(**admin) as conn:  # type: ignore[arg-type]
        conn.execute(f'CREATE SCHEMA "{schema}"')
    # search_path puts both the feedback table and alembic_version into our schema
    url = f"postgresql+psycopg://{pg_user}@{PG_HOST}:{PG_PORT}/{PG_DB}?options=-csearch_path%3D{schema}"
    try:
        repository.upgrade_to_head(url)
        yield url
    finally:
        repository.dispose_engines()
        with psycopg.connect(**admin) as conn:  # type: ignore[arg-type]
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture
def sessions(db_url: str) -> sessionmaker[Session]:
    return repository.get_session_factory(db_url)


@pytest.fixture
def jobs(redis_client: redis.Redis, base_settings: Settings) -> JobStore:
    return JobStore(redis_client, base_settings)


def answered_query(
    jobs: JobStore, question: str, answer: str = "An answer [1].", *, tenant: str = "default"
) -> str:
    job_id = uuid.uuid4().hex
    jobs.create(job_id, "query", tenant=tenant)
    src = Source(n=1, doc_id="doc-1", chunk_id="doc-1:0", text="Evidence text.", score=0.9, start=0, end=14)
    jobs.finish(job_id, Answer(question=question, answer=answer, sources=[src]).model_dump(mode="json"))
    return job_id


def seed(sessions: sessionmaker[Session], ratings: list[int], at: datetime, question: str = "q") -> None:
    """Ratings straight into the table, spread over the minutes before `at`."""
    with sessions() as s:
        for i, rating in enumerate(ratings):
            s.add(
                Feedback(
                    id=uuid.uuid4().hex,
                    job_id=uuid.uuid4().hex,
                    tenant="default",
                    rating=rating,
                    comment=None,
                    question=question,
                    answer=f"answer to {question}",
                    sources=[],
                    created_at=at - timedelta(minutes=i + 1),
                )
            )
        s.commit()


def gauge(name: str) -> float:
    text = metrics.render_latest()[0].decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    raise AssertionError(f"{name} not exposed")


class Webhook:
    """A real HTTP server on loopback that records the JSON bodies POSTed to it."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        received = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                received.append(json.loads(self.rfile.read(length)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        # a short poll interval: shutdown() waits for the serve loop to look (0.5 s by default)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)

    def __enter__(self) -> Webhook:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


# --- record ------------------------------------------------------------------------------------------


def test_record_stores_rating_next_to_question_answer_and_sources(
    sessions: sessionmaker[Session], jobs: JobStore
) -> None:
    job_id = answered_query(jobs, "What is WAL?", "Write-ahead logging [1].")
    payload = FeedbackPayload(job_id=job_id, rating=2, comment="too short")
    out = service.record_feedback(sessions, jobs, payload, feedback_id="fb-1")
    assert out["feedback_id"] == "fb-1" and out["rated_job_id"] == job_id and not out["duplicate"]

    with sessions() as s:
        row = s.get(Feedback, "fb-1")
    assert row is not None
    assert (row.question, row.answer, row.rating, row.comment) == (
        "What is WAL?",
        "Write-ahead logging [1].",
        2,
        "too short",
    )
    assert row.sources[0]["doc_id"] == "doc-1" and row.sources[0]["text"] == "Evidence text."
    assert row.created_at.tzinfo is not None
    assert abs(datetime.now(UTC) - row.created_at) < timedelta(minutes=1)


def test_redelivered_record_inserts_nothing(sessions: sessionmaker[Session], jobs: JobStore) -> None:
    job_id = answered_query(jobs, "twice?")
    payload = FeedbackPayload(job_id=job_id, rating=4)
    service.record_feedback(sessions, jobs, payload, feedback_id="fb-same")
    again = service.record_feedback(sessions, jobs, payload, feedback_id="fb-same")
    assert again["duplicate"] is True
    with sessions() as s:
        assert len(s.scalars(select(Feedback).where(Feedback.job_id == job_id)).all()) == 1


@pytest.mark.parametrize(
    ("setup", "code"),
    [
        ("missing", ErrorCode.NOT_FOUND),
        ("other_tenant", ErrorCode.NOT_FOUND),
        ("index_job", ErrorCode.INVALID_PAYLOAD),
        ("unfinished", ErrorCode.INVALID_PAYLOAD),
        ("failed", ErrorCode.INVALID_PAYLOAD),
    ],
)
def test_record_refuses_what_is_not_an_answered_query_of_the_tenant(
    sessions: sessionmaker[Session], jobs: JobStore, setup: str, code: ErrorCode
) -> None:
    job_id = uuid.uuid4().hex
    if setup == "other_tenant":
        job_id = answered_query(jobs, "tenant b's question", tenant="b")
    elif setup == "index_job":
        jobs.create(job_id, "index")
        jobs.finish(job_id, {"documents_indexed": 1})
    elif setup == "unfinished":
        jobs.create(job_id, "query")
    elif setup == "failed":
        jobs.create(job_id, "query")
        jobs.fail(job_id, ErrorCode.RETRIEVAL_FAILED, "boom")
    with pytest.raises(service.FeedbackError) as info:
        service.record_feedback(sessions, jobs, FeedbackPayload(job_id=job_id, rating=1))
    assert info.value.code == code
    with sessions() as s:
        assert s.scalars(select(Feedback)).all() == []


# --- aggregate -----------------------------------------------------------------------------------------


def test_bad_hour_raises_alert_log_and_webhook(sessions: sessionmaker[Session]) -> None:
    seed(sessions, [2, 3] * 6, NOW)  # 12 ratings, average 2.5
    seed(sessions, [5] * 20, NOW - timedelta(hours=2))  # outside the window: must not lift the average
    with Webhook() as hook, structlog.testing.capture_logs() as logs:
        out = service.aggregate(sessions, NOW, webhook_url=hook.url)
    assert out["alert"] is True and out["count"] == 12 and out["avg"] == pytest.approx(2.5)
    assert gauge("ragfleet_feedback_rating_avg") == pytest.approx(2.5)
    assert gauge("ragfleet_feedback_rating_count") == 12
    alerts = [e for e in logs if e["event"] == "feedback_quality_alert"]
    assert len(alerts) == 1 and alerts[0]["log_level"] == "warning"
    assert alerts[0]["avg"] == pytest.approx(2.5) and alerts[0]["count"] == 12
    assert len(hook.bodies) == 1
    body = hook.bodies[0]
    assert body["event"] == "feedback_quality_alert" and body["count"] == 12
    assert body["avg"] == pytest.approx(2.5) and body["threshold"] == 3.5
    assert out["webhook"] == {"ok": True, "status": 204}


@pytest.mark.parametrize(
    ("ratings", "why"), [([4, 5] * 6, "good hour: 12 ratings averaging 4.5"), ([1] * 5, "only 5 ratings")]
)
def test_no_alert_on_good_hour_or_small_sample(
    sessions: sessionmaker[Session], ratings: list[int], why: str
) -> None:
    seed(sessions, ratings, NOW)
    with Webhook() as hook, structlog.testing.capture_logs() as logs:
        out = service.aggregate(sessions, NOW, webhook_url=hook.url)
    assert out["alert"] is False, why
    assert out["count"] == len(ratings)
    assert out["avg"] == pytest.approx(sum(ratings) / len(ratings))
    assert gauge("ragfleet_feedback_rating_count") == len(ratings)
    assert not [e for e in logs if e["event"] == "feedback_quality_alert"]
    assert hook.bodies == []


def test_exactly_min_count_does_not_alert_one_more_does(sessions: sessionmaker[Session]) -> None:
    seed(sessions, [1] * 10, NOW)
    assert service.aggregate(sessions, NOW)["alert"] is False  # count > min_count, not >=
    seed(sessions, [1], NOW - timedelta(seconds=1))
    assert service.aggregate(sessions, NOW)["alert"] is True


def test_webhook_down_does_not_fail_aggregation(sessions: sessionmaker[Session]) -> None:
    seed(sessions, [1] * 12, NOW)
    dead = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there
    out = service.aggregate(sessions, NOW, webhook_url=dead)
    assert out["alert"] is True
    assert out["webhook"]["ok"] is False and "ConnectError" in out["webhook"]["error"]


def test_empty_window_publishes_zero_count(sessions: sessionmaker[Session]) -> None:
    out = service.aggregate(sessions, NOW)
    assert (out["count"], out["avg"], out["alert"]) == (0, None, False)
    assert gauge("ragfleet_feedback_rating_count") == 0


# --- candidates ----------------------------------------------------------------------------------------


def test_candidates_worst_average_first_then_most_ratings(sessions: sessionmaker[Session]) -> None:
    seed(sessions, [1, 2], NOW, question="few bad")  # avg 1.5, 2 ratings
    seed(sessions, [1, 2, 1, 2], NOW, question="many bad")  # avg 1.5, 4 ratings
    seed(sessions, [1], NOW, question="worst")  # avg 1.0
    seed(sessions, [5, 4], NOW, question="fine")  # avg 4.5
    rows = service.candidates(sessions, limit=10)
    assert [r["question"] for r in rows] == ["worst", "many bad", "few bad", "fine"]
    assert [r["count"] for r in rows] == [1, 4, 2, 2]
    assert rows[1]["avg_rating"] == pytest.approx(1.5)
    assert rows[1]["answer"] == "answer to many bad"
    assert [r["question"] for r in service.candidates(sessions, limit=2)] == ["worst", "many bad"]


def test_candidates_show_latest_answer_and_respect_since(sessions: sessionmaker[Session]) -> None:
    with sessions() as s:
        for i, (answer, rating, age_h) in enumerate([("old answer", 1, 30), ("new answer", 2, 1)]):
            s.add(
                Feedback(
                    id=f"c{i}",
                    job_id=f"j{i}",
                    tenant="default",
                    rating=rating,
                    comment=None,
                    question="same question",
                    answer=answer,
                    sources=[],
                    created_at=NOW - timedelta(hours=age_h),
                )
            )
        s.commit()
    [row] = service.candidates(sessions)
    assert row["answer"] == "new answer" and row["count"] == 2 and row["avg_rating"] == pytest.approx(1.5)
    [recent] = service.candidates(sessions, since=NOW - timedelta(hours=2))
    assert recent["count"] == 1 and recent["avg_rating"] == 2.0


# --- schema --------------------------------------------------------------------------------------------


def test_alembic_round_trip_matches_the_models(db_url: str) -> None:
    engine = repository.build_engine(db_url)
    try:
        with engine.connect() as conn:
            # autogenerate finds nothing to do: the migration creates exactly what the models declare
            assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
        assert repository.current_revision(db_url) == "0001"

        assert repository.downgrade_to(db_url, "base") is None
        with engine.connect() as conn:
            assert "feedback" not in inspect(conn).get_table_names()

        assert repository.upgrade_to_head(db_url) == "0001"
        assert repository.upgrade_to_head(db_url) == "0001"  # idempotent
        with engine.connect() as conn:
            assert "feedback" in inspect(conn).get_table_names()
            names = {ix["name"] for ix in inspect(conn).get_indexes("feedback")}
        assert {"ix_feedback_created_at", "ix_feedback_job_id", "ix_feedback_tenant_created_at"} <= names
    finally:
        engine.dispose()


def _writer(url: str, n: int, start: multiprocessing.synchronize.Event) -> None:
    sessions = repository.get_session_factory(url)
    start.wait(10)
    for _ in range(n):
        seed(sessions, [3], NOW)


@pytest.mark.slow
def test_concurrent_writer_processes_lose_nothing(db_url: str) -> None:
    """Four processes inserting at once: no 'database is locked' on SQLite, no lost rows anywhere.

    Fresh interpreters, not forks of this one (which holds engines and sockets): a fork server that
    imported this module once forks them, so the four do not each pay a second of imports."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    start = ctx.Event()
    procs = [ctx.Process(target=_writer, args=(db_url, 25, start)) for _ in range(4)]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    assert service.aggregate(repository.get_session_factory(db_url), NOW)["count"] == 100


# --- CLI ------------------------------------------------------------------------------------------------


def test_cli_candidates_table_and_json(sessions: sessionmaker[Session], db_url: str) -> None:
    from typer.testing import CliRunner

    from ragfleet.feedback.cli import feedback_app

    seed(sessions, [1, 2], NOW, question="Why is the sky green?")
    seed(sessions, [5], NOW, question="What is Redis?")
    runner = CliRunner()
    out = runner.invoke(feedback_app, ["candidates", "--json", "--limit", "1", "--db-url", db_url])
    assert out.exit_code == 0, out.output
    [row] = json.loads(out.stdout)
    assert row["question"] == "Why is the sky green?" and row["count"] == 2 and row["avg_rating"] == 1.5

    table = runner.invoke(feedback_app, ["candidates", "--db-url", db_url], env={"COLUMNS": "200"})
    assert table.exit_code == 0, table.output
    assert table.stdout.index("Why is the sky green?") < table.stdout.index("What is Redis?")
    assert "1.50" in table.stdout and "answer to Why is the sky green?" in table.stdout
