"""Finding damaged ranges in an event log, and `jetstream repair DATA_DIR` (offline).

Owns: the damage scan (every block of `events`, `events_zstd`, `events_v2` and `events_index` read with
checksum verification; where an iterator stops on an error, a binary search over seek targets
finds where the damage ends, and the scan goes on from there), used by `jetstream inspect`; and
the repair, which drops each unreadable range explicitly:

1. The damaged column family is rewritten without its damaged blocks: every readable row goes
   into new table files (SstFileWriter) under DATA_DIR/repair-work/, then the column family is
   dropped, created again and the files ingested. A damaged block cannot be deleted in place: a
   range tombstone hides its keys but compaction still reads (and fails on) the block, and
   RocksDB's own RepairDB discards the whole table file, every readable row of it included.
2. The events of each unreadable range (the union over `events`, `events_zstd` and `events_v2`,
   which hold the same events) are deleted from the others too, so all read the same.
3. A damaged index is rebuilt from the rows (it holds no events of its own: nothing is lost).
4. Each dropped range is recorded in `meta` as a gap (`from_time_us`, `to_time_us`,
   `events_lost` when the other column family could count them, `repaired_at`, `file`), which
   a replay reaching it reports (jetstream/log/store.py `LogGap`) and `/healthz` lists.

The plan (gaps and the table files of each column family) is written to
repair-work/PLAN.json before anything is dropped; a repair interrupted after that finishes the
same plan when run again. It must never run beside the daemon (the log's LOCK refuses it), drop
a row it could read outside an unreadable range, or finish without recording what it dropped.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from rocksdict import IngestExternalFileOptions, Options, Rdict, SstFileWriter, WriteBatch, WriteOptions

from jetstream.log.rows import (
    INDEX_TAG_COLLECTION,
    INDEX_TAG_DID,
    KEY_SIZE,
    MAX_TIME_US,
    decode_key,
    decode_row,
    encode_index_key,
    encode_key,
    name_hash,
)
from jetstream.log.store import (
    CF_EVENTS,
    CF_EVENTS_INDEX,
    CF_EVENTS_V2,
    CF_EVENTS_ZSTD,
    EventLog,
    LogError,
    _column_family_options,
    damaged_file_of,
    verifying_read_options,
)

WORK_DIR = "repair-work"
PLAN_FILE = "PLAN.json"
SST_ROWS_PER_FILE = 1_000_000
INDEX_KEY_BYTES = 25
_KEY_SIZES = {CF_EVENTS: KEY_SIZE, CF_EVENTS_ZSTD: KEY_SIZE, CF_EVENTS_V2: KEY_SIZE, CF_EVENTS_INDEX: INDEX_KEY_BYTES}
# The column families holding one row per event under the time_us key (events_v2: since it exists).
EVENT_ROW_FAMILIES = (CF_EVENTS, CF_EVENTS_ZSTD, CF_EVENTS_V2)


class RepairError(Exception):
    """The repair cannot run (the daemon holds the log, or the directory is not an event log)."""


@dataclass
class Damage:
    """One unreadable stretch of a column family: between two readable keys (None: the log's edge)."""

    column_family: str
    file: str | None
    after_key: bytes | None  # the last key read before the damage
    next_key: bytes | None  # the first key readable after it
    detail: str

    def time_range(self, hwm: int) -> tuple[int, int]:
        """The time_us range (inclusive) whose events may be in the damaged blocks (event column families)."""
        first = 0 if self.after_key is None else decode_key(self.after_key) + 1
        last = hwm if self.next_key is None else decode_key(self.next_key) - 1
        return first, last

    def describe(self, hwm: int) -> str:
        if self.column_family == CF_EVENTS_INDEX:
            return f"{self.column_family}: index blocks unreadable ({self.file or 'file unknown'}); no events lost"
        first, last = self.time_range(hwm)
        return f"{self.column_family}: time_us {first}..{last} unreadable ({self.file or 'file unknown'})"


def _first_readable_at_or_after(iterator, key_int: int, key_size: int) -> tuple[bool, bytes | None]:
    """(seek to this key ran without error, the key it found or None at the end)."""
    iterator.seek(key_int.to_bytes(key_size, "big"))
    if iterator.valid():
        return True, iterator.key()
    try:
        iterator.status()
    except Exception:  # noqa: BLE001 - rocksdict raises bare Exception
        return False, None
    return True, None


def _skip_damage(column_family, read_options, after_key: bytes | None, key_size: int) -> tuple[bool, bytes | None]:
    """Where reading can go on after damage met past `after_key`: (anything readable after?, its key)."""
    iterator = column_family.iter(read_options)
    low = 0 if after_key is None else int.from_bytes(after_key, "big") + 1
    high = (1 << (8 * key_size)) - 1
    ok, found = _first_readable_at_or_after(iterator, high, key_size)
    if not ok:
        return False, None
    while high - low > 1:
        middle = (low + high) // 2
        ok, first = _first_readable_at_or_after(iterator, middle, key_size)
        if ok:
            high, found = middle, first
        else:
            low = middle
    return True, found


def scan_column_family(column_family, name: str, damages: list[Damage], on_row=None) -> int:
    """Read every readable row of `column_family` (to `on_row(key, value)`), noting each damaged stretch.

    Returns the rows read. Every block is read with checksum verification.
    """
    read_options = verifying_read_options()
    key_size = _KEY_SIZES[name]
    rows = 0
    iterator = column_family.iter(read_options)
    iterator.seek_to_first()
    last_key: bytes | None = None
    while True:
        valid, key, value, step = iterator.valid, iterator.key, iterator.value, iterator.next
        while valid():
            last_key = key()
            if on_row is not None:
                on_row(last_key, value())
            rows += 1
            step()
        try:
            iterator.status()
            return rows
        except Exception as exc:  # noqa: BLE001 - rocksdict raises bare Exception
            detail = str(exc)
        readable, next_key = _skip_damage(column_family, read_options, last_key, key_size)
        damages.append(Damage(name, damaged_file_of(detail), last_key, next_key, detail))
        if not readable or next_key is None:
            return rows
        iterator = column_family.iter(read_options)
        iterator.seek(next_key)


def find_damage(column_families: dict) -> tuple[list[Damage], dict[str, int]]:
    """(every damaged stretch, rows read per column family) of the event column families."""
    damages: list[Damage] = []
    counts = {name: scan_column_family(column_families[name], name, damages)
              for name in (*EVENT_ROW_FAMILIES, CF_EVENTS_INDEX) if name in column_families}
    return damages, counts


def gaps_of(damages: list[Damage], hwm: int) -> list[dict]:
    """The time ranges to drop: every event column family's damage, overlapping ranges merged."""
    ranges = sorted(damage.time_range(hwm) + (damage,) for damage in damages if damage.column_family != CF_EVENTS_INDEX)
    merged: list[dict] = []
    for first, last, damage in ranges:
        if merged and first <= merged[-1]["to_time_us"] + 1:
            gap = merged[-1]
            gap["to_time_us"] = max(gap["to_time_us"], last)
            gap["column_families"] = sorted(set(gap["column_families"]) | {damage.column_family})
            gap["files"] = sorted(set(gap["files"]) | {damage.file or "unknown"})
            continue
        merged.append({"from_time_us": first, "to_time_us": last, "events_lost": None,
                       "column_families": [damage.column_family], "files": [damage.file or "unknown"]})
    return merged


def _count_events_lost(column_families: dict, gap: dict) -> int | None:
    """Events in the gap, counted in an event column family that is readable there; None if neither is."""
    for name in (CF_EVENTS, CF_EVENTS_ZSTD):
        if name in gap["column_families"]:
            continue
        iterator = column_families[name].iter(verifying_read_options())
        iterator.seek(encode_key(gap["from_time_us"]))
        count, end = 0, gap["to_time_us"]
        while iterator.valid() and decode_key(iterator.key()) <= end:
            count += 1
            iterator.next()
        try:
            iterator.status()
        except Exception:  # noqa: BLE001 - damaged here too: unknown
            return None
        return count
    return None


# -- the repair ---------------------------------------------------------------------------------

def _in_a_gap(time_us: int, gaps: list[dict]) -> bool:
    return any(gap["from_time_us"] <= time_us <= gap["to_time_us"] for gap in gaps)


def _salvage(column_family, name: str, gaps: list[dict], work: Path) -> list[str]:
    """Every readable row outside the gaps into table files under `work`; their paths."""
    files: list[str] = []
    state = {"writer": None, "rows": 0}

    def next_writer():
        if state["writer"] is not None:
            state["writer"].finish()
        path = str(work / f"{name}-{len(files):04d}.sst")
        writer = SstFileWriter(Options(raw_mode=True))
        writer.open(path)
        files.append(path)
        state["writer"], state["rows"] = writer, 0

    def keep(key: bytes, value: bytes) -> None:
        if _in_a_gap(decode_key(key), gaps):
            return
        if state["writer"] is None or state["rows"] >= SST_ROWS_PER_FILE:
            next_writer()
        state["writer"][key] = value
        state["rows"] += 1

    scan_column_family(column_family, name, [], keep)
    if state["writer"] is not None:
        state["writer"].finish()
    return files


def _open_raw(data_dir: str) -> Rdict:
    present = set(Rdict.list_cf(data_dir, Options(raw_mode=True))) - {"default"}
    return Rdict(data_dir, Options(raw_mode=True),
                 column_families={name: _column_family_options(name) for name in sorted(present)})


def _rebuild_index(db: Rdict) -> int:
    """A new `events_index` from the JSON rows (the index holds nothing the rows do not)."""
    db.drop_column_family(CF_EVENTS_INDEX)
    index = db.create_column_family(CF_EVENTS_INDEX, _column_family_options(CF_EVENTS_INDEX))
    handle = db.get_column_family_handle(CF_EVENTS_INDEX)
    events = db.get_column_family(CF_EVENTS)
    written, batch = 0, WriteBatch(raw_mode=True)
    for key, value in events.items():
        row = decode_row(key, value)
        batch.put(encode_index_key(INDEX_TAG_COLLECTION, name_hash(row.collection), row.time_us), b"", handle)
        batch.put(encode_index_key(INDEX_TAG_DID, name_hash(row.did), row.time_us), b"", handle)
        written += 1
        if written % 10_000 == 0:
            db.write(batch)
            batch = WriteBatch(raw_mode=True)
    db.write(batch)
    index.flush()
    for view in (index, events):
        view.close()
    return written


def _carry_out(data_dir: str, plan: dict) -> None:
    """Drop, re-create and refill each damaged column family; drop the gaps from the others."""
    db = _open_raw(data_dir)
    try:
        for name, files in plan["rebuilt"].items():
            if name in Rdict.list_cf(data_dir, Options(raw_mode=True)):
                db.drop_column_family(name)
            column_family = db.create_column_family(name, _column_family_options(name))
            if files:
                ingest = IngestExternalFileOptions()
                ingest.set_move_files(False)  # the files stay until the plan is done: a re-run can redo it
                column_family.ingest_external_file(files, ingest)
            column_family.close()
        present = set(Rdict.list_cf(data_dir, Options(raw_mode=True)))
        for name in EVENT_ROW_FAMILIES:
            if name in plan["rebuilt"] or name not in present:
                continue
            handle = db.get_column_family_handle(name)
            batch = WriteBatch(raw_mode=True)
            for gap in plan["gaps"]:
                batch.delete_range(encode_key(gap["from_time_us"]), encode_key(min(gap["to_time_us"] + 1, MAX_TIME_US)),
                                   handle)
            sync = WriteOptions()
            sync.sync = True
            db.write(batch, sync)
        if plan["rebuild_index"]:
            _rebuild_index(db)
        db.flush()
    finally:
        db.close()


@dataclass
class RepairOutcome:
    damages: list[str]
    gaps: list[dict]
    index_rebuilt: bool


def _open_log(data_dir: str) -> EventLog:
    if not (Path(data_dir) / "CURRENT").exists():
        raise RepairError(f"{data_dir} holds no event log")
    try:
        return EventLog(data_dir, create=False)
    except LogError as exc:
        if "lock" in str(exc).lower():
            raise RepairError(f"the event log at {data_dir} is in use (its LOCK is held, most likely by a running "
                              "daemon): stop the daemon first; repair runs offline") from None
        raise RepairError(str(exc)) from None


def _plan(data_dir: str, work: Path) -> dict | None:
    """Scan the log, salvage the damaged column families into `work`; the plan, or None if nothing is damaged."""
    event_log = _open_log(data_dir)
    try:
        families = event_log.column_families()
        damages, _ = find_damage(families)
        if not damages:
            return None
        hwm = event_log.hwm()
        gaps = gaps_of(damages, hwm)
        repaired_at = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        for gap in gaps:
            gap["events_lost"] = _count_events_lost(families, gap)
            gap["repaired_at"] = repaired_at
        damaged = {damage.column_family for damage in damages}
        work.mkdir(exist_ok=True)
        rebuilt = {name: _salvage(families[name], name, gaps, work)
                   for name in EVENT_ROW_FAMILIES if name in damaged}
        return {"damages": [damage.describe(hwm) for damage in damages], "gaps": gaps, "rebuilt": rebuilt,
                "rebuild_index": CF_EVENTS_INDEX in damaged}
    finally:
        event_log.close()


def repair_data_dir(data_dir: str | os.PathLike) -> RepairOutcome:
    """Drop every unreadable range of the log at `data_dir` and record it; offline only."""
    data_dir = str(data_dir)
    work = Path(data_dir) / WORK_DIR
    plan_path = work / PLAN_FILE
    if plan_path.exists():  # an interrupted repair: finish its plan (the table files are still there)
        _open_log(data_dir).close()  # refuses while the daemon runs
        plan = json.loads(plan_path.read_text())
    else:
        shutil.rmtree(work, ignore_errors=True)  # a scan interrupted before its plan was written
        plan = _plan(data_dir, work)
        if plan is None:
            shutil.rmtree(work, ignore_errors=True)
            return RepairOutcome([], [], False)
        temporary = plan_path.with_suffix(".tmp")
        temporary.write_text(json.dumps(plan))
        os.replace(temporary, plan_path)
    _carry_out(data_dir, plan)
    event_log = _open_log(data_dir)
    try:
        known = {(gap["from_time_us"], gap["to_time_us"]) for gap in event_log.gaps()}
        event_log.record_gaps([gap for gap in plan["gaps"] if (gap["from_time_us"], gap["to_time_us"]) not in known])
        remaining, _ = find_damage(event_log.column_families())
    finally:
        event_log.close()
    if remaining:
        raise RepairError("damage remains after the repair: " + "; ".join(d.describe(0) for d in remaining))
    shutil.rmtree(work, ignore_errors=True)
    return RepairOutcome(plan["damages"], plan["gaps"], plan["rebuild_index"])


def add_repair_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data_dir", help="the daemon's --data-dir (the daemon must be stopped)")
    parser.add_argument("--log-level", default="warning", help="debug | info | warning | error")


def run_repair(args, out=None) -> int:
    """0: repaired, or nothing to repair; 1: the repair could not run (the line says why)."""
    out = out if out is not None else sys.stdout
    started = time.monotonic()
    try:
        outcome = repair_data_dir(args.data_dir)
    except RepairError as exc:
        sys.stderr.write(f"jetstream repair: error: {exc}\n")
        return 1
    if not outcome.damages:
        out.write(f"no damage found in {args.data_dir}: nothing to repair\n")
        return 0
    for damage in outcome.damages:
        out.write(f"damaged: {damage}\n")
    for gap in outcome.gaps:
        lost = "unknown" if gap["events_lost"] is None else str(gap["events_lost"])
        out.write(f"dropped: time_us {gap['from_time_us']}..{gap['to_time_us']} ({lost} events lost), "
                  f"recorded as a gap\n")
    if outcome.index_rebuilt:
        out.write("rebuilt: events_index, from the rows (no events lost)\n")
    out.write(f"repaired {args.data_dir} in {time.monotonic() - started:.1f}s; clients replaying across a gap "
              "are closed with 1011 naming it, and /healthz lists the gaps\n")
    return 0
