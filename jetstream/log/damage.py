"""What a serving process does when a read meets a damaged log, and what a client is told.

Owns: `DamageReport`, the one place a damaged read becomes visible to operators: one
`event=log_corruption` error line per damaged file (column family, file, time_us range, what to
do), the counter `jetstream_log_corruption_reads_total{column_family}` for every read that met
it, and the `log_corruption` problem that turns `/healthz` to 503 degraded. And the close
reasons a reader sends with 1011 when it meets damage or a gap `jetstream repair` recorded
(each within the 123 bytes a close reason may take).
The damage is in the past: ingest and live serving go on; only a replay through it stops.
It must never read or change the log, and never decide to skip damaged events for a client.
"""
from __future__ import annotations

import logging

from prometheus_client import Counter

from jetstream.health import Problems

log = logging.getLogger(__name__)

LOG_CORRUPTION_READS = Counter(
    "jetstream_log_corruption_reads",
    "Log reads that met data RocksDB could not read back (checksum mismatch, damaged file), by column family",
    ["column_family"],
)

CORRUPTION_ACTION = ("stop the daemon, run `jetstream repair DATA_DIR` (drops the unreadable range and records "
                     "it as a gap), then start it again; or restore the data dir from a backup")


def _bound(time_us) -> str:
    return "?" if time_us is None else str(time_us)


def corruption_close_reason(damage: dict) -> str:
    """1011's reason for a reader that met damage: the range, and that its cursor did not complete."""
    return (f"log damaged: time_us {_bound(damage.get('from_time_us'))}..{_bound(damage.get('to_time_us'))} "
            "unreadable; replay incomplete")


def gap_close_reason(gap: dict) -> str:
    """1011's reason for a replay that reached a recorded gap: the range, and where to resume past it."""
    return (f"events lost in repair: time_us {gap['from_time_us']}..{gap['to_time_us']}; "
            f"resume past it with cursor={gap['to_time_us'] + 1}")


class DamageReport:
    """A process's account of damaged reads: one line per damaged file, a counter, the problem."""

    def __init__(self, problems: Problems) -> None:
        self.problems = problems
        self._logged: set[tuple] = set()

    def report(self, damage: dict) -> None:
        """A read met damage (`LogCorruption.describe()`, here or from a worker)."""
        column_family = str(damage.get("column_family") or "unknown")
        LOG_CORRUPTION_READS.labels(column_family).inc()
        where = (column_family, damage.get("file") or damage.get("to_time_us"))
        if where not in self._logged:
            self._logged.add(where)
            log.error("event=log_corruption column_family=%s file=%s from_time_us=%s to_time_us=%s data_dir=%s "
                      "detail=%s action=%s", column_family, damage.get("file") or "unknown",
                      _bound(damage.get("from_time_us")), _bound(damage.get("to_time_us")),
                      damage.get("path") or "?", str(damage.get("detail", ""))[:300], CORRUPTION_ACTION)
        self.problems.raise_problem("log_corruption", damage_detail(damage), CORRUPTION_ACTION)


def damage_detail(damage: dict) -> str:
    """The `log_corruption` problem's one-line detail."""
    return (f"{damage.get('column_family') or 'unknown'} unreadable at time_us "
            f"{_bound(damage.get('from_time_us'))}..{_bound(damage.get('to_time_us'))} "
            f"({damage.get('file') or 'file unknown'}); replays through it are closed with 1011")
