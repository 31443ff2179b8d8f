"""The feedback loop: users rate answered queries, the fleet watches the rolling average.

Ratings live in a SQL database (SQLite by default, PostgreSQL in production), not in Redis: job
records expire after a day, while ratings, with the question, answer and sources they judged, are
the material for finding bad answers weeks later (`ragfleet feedback candidates`). The schema is
owned by the Alembic migrations shipped in this package (`repository.upgrade_to_head`).
"""

from __future__ import annotations

from ragfleet.feedback.models import Base, Feedback
from ragfleet.feedback.repository import (
    downgrade_to,
    ensure_schema,
    get_session_factory,
    upgrade_to_head,
)
from ragfleet.feedback.service import (
    FeedbackError,
    aggregate,
    candidates,
    record_feedback,
)

__all__ = [
    "Base",
    "Feedback",
    "FeedbackError",
    "aggregate",
    "candidates",
    "downgrade_to",
    "ensure_schema",
    "get_session_factory",
    "record_feedback",
    "upgrade_to_head",
]
