"""What keeps a process from being healthy: the `problems` of `/healthz`.

Owns: `Problems`, one per process (the daemon, the --workers main process, each worker), the
set of conditions that turn `/healthz` into `503 {"status":"degraded","problems":[...]}` so a
load balancer stops sending clients here. A problem has a stable `kind` (a metric label and the
key operators alert on), a one-line `detail` (what is wrong, with numbers) and an `action` (what
an operator does about it). Raising a problem that is already active updates its detail and
count but logs nothing more: one error line per outage, never one per attempt. Clearing it logs
one line with how long it lasted.

Metrics: `jetstream_problems_total{kind}` counts each time a problem became active,
`jetstream_problem_active{kind}` is 1 while it is.

It must never decide what is a problem: the part that meets the failure raises and clears it.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from prometheus_client import Counter, Gauge

log = logging.getLogger(__name__)

PROBLEMS_TOTAL = Counter(
    "jetstream_problems", "Times a problem that degrades /healthz became active, by kind", ["kind"])
PROBLEM_ACTIVE = Gauge(
    "jetstream_problem_active", "1 while a problem of this kind degrades /healthz", ["kind"])


@dataclass
class Problem:
    kind: str
    detail: str
    action: str
    since: float = field(default_factory=time.time)
    count: int = 1  # times raised during this outage (attempts, events met, ...)

    def describe(self) -> dict:
        return {"kind": self.kind, "detail": self.detail, "action": self.action,
                "since": round(self.since, 3), "count": self.count}


class Problems:
    """The active problems of one process; `/healthz` is degraded while any is active."""

    def __init__(self) -> None:
        self._active: dict[str, Problem] = {}
        self._remote: list[dict] = []  # another process's problems shown here (a worker shows its main's)

    def raise_problem(self, kind: str, detail: str, action: str, *, level: int = logging.ERROR) -> bool:
        """Make `kind` active (True) or update it if it already is (False, nothing logged)."""
        current = self._active.get(kind)
        if current is not None:
            current.detail = detail
            current.count += 1
            return False
        self._active[kind] = Problem(kind, detail, action)
        PROBLEMS_TOTAL.labels(kind).inc()
        PROBLEM_ACTIVE.labels(kind).set(1)
        log.log(level, "event=health_degraded problem=%s detail=%s action=%s",
                kind, detail, action)  # the formatter quotes values with spaces
        return True

    def clear(self, kind: str) -> bool:
        """The condition is over (True if it was active): one line with how long it lasted."""
        problem = self._active.pop(kind, None)
        if problem is None:
            return False
        PROBLEM_ACTIVE.labels(kind).set(0)
        log.warning("event=health_recovered problem=%s lasted_s=%.1f times=%d",
                    kind, time.time() - problem.since, problem.count)
        return True

    def is_active(self, kind: str) -> bool:
        return kind in self._active

    def show_remote(self, problems: list[dict]) -> None:
        """Problems another process reported (the --workers main process's, in a worker)."""
        self._remote = list(problems)

    def describe(self) -> list[dict]:
        """Every active problem, this process's and the ones shown from elsewhere, oldest first."""
        mine = [problem.describe() for problem in self._active.values()]
        seen = {problem["kind"] for problem in mine}
        merged = mine + [problem for problem in self._remote if problem.get("kind") not in seen]
        return sorted(merged, key=lambda problem: problem.get("since", 0))

    @property
    def degraded(self) -> bool:
        return bool(self._active) or bool(self._remote)


def apply_to_report(ready: bool, report: dict, problems: Problems) -> tuple[bool, dict]:
    """/healthz's (healthy, report): a ready process with problems is 503 with status "degraded"."""
    listed = problems.describe()
    report["problems"] = listed
    if ready and listed:
        report["status"] = "degraded"
        return False, report
    return ready, report
