"""Everything that says what a task is reads its spec (ragfleet.names.TASKS): the registered Celery
tasks, the app's routes, the producer's default expiry, the beat schedule."""

from __future__ import annotations

from typing import Any

import pytest
from celery import Celery

from ragfleet.names import TASK_QUEUES, TASKS, Priority, TaskName
from ragfleet.producer import default_expires
from ragfleet.settings import Settings
from workers.beat import beat_schedule


@pytest.fixture(scope="module")
def worker_app() -> Celery:
    from workers.app import app

    app.loader.import_default_modules()  # what a worker does at start: the task modules
    return app


def test_every_task_name_has_a_spec_and_the_queue_map_is_derived() -> None:
    assert set(TASKS) == set(TaskName)
    assert all(spec.name is name for name, spec in TASKS.items())
    assert {name: spec.queue for name, spec in TASKS.items()} == TASK_QUEUES


def test_the_registered_tasks_carry_their_specs(worker_app: Celery) -> None:
    s = Settings()
    for name, spec in TASKS.items():
        task = worker_app.tasks[name.value]
        hard, soft = spec.time_limits(s)
        if soft is None:  # Celery falls back to the app's default, which is past the hard limit
            soft = worker_app.conf.task_soft_time_limit
            assert soft > hard, name
        assert (task.time_limit, task.soft_time_limit) == (hard, soft), name
        assert task.max_retries == spec.max_retries, name
        assert bool(task.ignore_result) == spec.ignore_result, name
        route: dict[str, Any] = worker_app.conf.task_routes[name.value]
        assert route == {"queue": spec.queue.value}, name


def test_limits_and_expiry_follow_the_settings() -> None:
    s = Settings(query_time_limit_s=12, query_expires_s=40, index_expires_s=99, feedback_expires_s=77)
    assert TASKS[TaskName.QUERY].time_limits(s) == (12, 7)
    assert TASKS[TaskName.BATCH_DISPATCH].time_limits(s) == (120, None)
    assert default_expires(TaskName.QUERY, s) == default_expires(TaskName.GENERATE, s) == 40
    assert default_expires(TaskName.FEEDBACK_RECORD, s) == 77
    assert default_expires(TaskName.INDEX_DOCUMENTS, s) == default_expires(TaskName.REINDEX, s) == 99


def test_every_beat_entry_expires_before_its_next_tick_and_goes_where_its_spec_says() -> None:
    for key, entry in beat_schedule(Settings()).items():
        spec = TASKS[TaskName(entry["task"])]
        options = entry["options"]
        assert options["expires"] > 0, key
        assert options["queue"] == spec.queue.value, key
        assert options["priority"] == int(spec.priority) == int(Priority.BACKGROUND), key
        schedule = entry["schedule"]
        if isinstance(schedule, float):  # an interval: a tick late by a whole interval is stale
            assert options["expires"] < schedule, key


def test_the_worker_installs_every_hook_module_once() -> None:
    from pathlib import Path

    from workers import app as app_module

    hooks_dir = Path(app_module.__file__).parent / "hooks"
    modules = {p.stem for p in hooks_dir.glob("*.py") if p.stem != "__init__"}
    installed = [install.__module__.rpartition(".")[2] for install in app_module.HOOKS]
    assert sorted(installed) == sorted(modules)
    assert installed[0] == "node"  # the others read what it records
    assert installed.index("inflight") < installed.index("warmup")  # requeue before a slow warm-up
