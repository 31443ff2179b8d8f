"""docs/tasks.md is generated from the schemas: it must be current, and name every task."""

from __future__ import annotations

from ragfleet.docs_gen import TASKS, render
from ragfleet.names import TaskName
from tests.conftest import REPO


def test_tasks_md_is_up_to_date() -> None:
    on_disk = (REPO / "docs" / "tasks.md").read_text()
    assert on_disk.strip() == render().strip(), "run: python -m ragfleet.docs_gen > docs/tasks.md"


def test_every_public_task_is_documented() -> None:
    documented = {name for name, *_ in TASKS}
    internal_or_scheduled = {
        TaskName.FEEDBACK_AGGREGATE,
        TaskName.EVAL_GOLDEN,
        TaskName.HEARTBEAT,
        TaskName.INDEX_FLUSH,
    }
    assert set(TaskName) - internal_or_scheduled <= documented
