"""Background tasks that cannot die unseen.

Owns: `TaskSupervisor`, one per process (the daemon, the --workers main process, each worker),
through which every long-lived asyncio task of that process is started. A task that ends with
an exception is logged once at error level with its name and the exception
(`event=task_failed task=... error=...`, traceback attached), counted in
`jetstream_task_failures_total{task}`, and degrades `/healthz` (problem `task_failed`) until the
process restarts: whatever the task did (joining the cluster, trimming, reading the relay) is no
longer being done. A task that is cancelled (shutdown, a step-down) or returns is not a failure.
It must never restart a task (what to do after a failure is the owner's decision, made where the
failure is understood) and never swallow cancellation.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Awaitable

from prometheus_client import Counter

from jetstream.health import Problems

log = logging.getLogger(__name__)

TASK_FAILURES = Counter(
    "jetstream_task_failures", "Background tasks that ended with an exception, by task name", ["task"])


class TaskSupervisor:
    """Starts named tasks and watches each one end; see the module docstring."""

    def __init__(self, problems: Problems | None = None) -> None:
        self.problems = problems if problems is not None else Problems()
        self.failures = 0

    def spawn(self, awaitable: Awaitable, name: str) -> asyncio.Future:
        """Run `awaitable` as a task named `name` (a stable label: no ids or counters in it)."""
        task = asyncio.ensure_future(awaitable)
        if isinstance(task, asyncio.Task):
            task.set_name(name)
        task.add_done_callback(lambda done: self._on_done(name, done))
        return task

    def _on_done(self, name: str, task: asyncio.Future) -> None:
        if task.cancelled():
            return
        error = task.exception()  # retrieved here, so asyncio's "never retrieved" warning never fires
        if error is None:
            return
        self.failures += 1
        TASK_FAILURES.labels(name).inc()
        log.error("event=task_failed task=%s error=%r", name, error, exc_info=error)
        self.problems.raise_problem(
            "task_failed", f"background task {name} ended with {type(error).__name__}: {str(error)[:200]}",
            "restart the daemon (what the task did has stopped); report the event=task_failed line with its "
            "traceback as a bug")
