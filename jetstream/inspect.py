"""`jetstream inspect DATA_DIR`: what an event log holds, without changing it.

Owns: a read-only open of the RocksDB event log (safe beside a running daemon: RocksDB's
read-only mode takes no LOCK and replays the WAL into its own memory, so it sees every
batch written before it opened) and the summary an operator asks for: events held,
oldest/newest time_us (also as UTC dates), size on disk, relay cursor, high-water mark,
log format (1: rows without seq, not yet upgraded by a daemon's open; 2: rows with seq), the
oldest and newest seq, the zstd dictionary id the stored frames carry, the gaps `jetstream repair`
recorded, and damage: unless --skip-verify, every block of the event column families is
read with checksum verification (jetstream/log/repair.py's scan), and a damaged log exits 3.
A log of another format is refused (exit 1) rather than summarised.
It must never write to the log, and never open it read-write (jetstream.log.store owns
that, and would fight a running daemon for the LOCK). Even a read-only open writes:
rocksdict rewrites its rocksdict-config.json, and RocksDB may start an info LOG. So the
database is opened through a private view (a temporary directory of symlinks to the data
files): whatever an open writes lands there, and the data dir may sit on a read-only
filesystem or a read-only copy.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from rocksdict import AccessType, Options, Rdict

from jetstream.log.rows import decode_key, decode_row, decode_seq

# The meta value layouts are the store's (signed relay cursor, unsigned hwm); importing them
# keeps one definition, and tests check our numbers against EventLog's own accessors.
from jetstream.log.store import (
    _SIGNED,
    _UNSIGNED,
    CF_EVENTS,
    CF_EVENTS_INDEX,
    CF_EVENTS_V2,
    CF_EVENTS_ZSTD,
    CF_META,
    FORMAT_NAME,
    META_FORMAT_NAME,
    META_FORMAT_VERSION,
    META_GAPS,
    META_HWM,
    META_RELAY,
    META_RELAY_CURSOR,
    META_SEQ,
    META_SEQ_UPGRADE,
    OUR_COLUMN_FAMILIES,
    READABLE_FORMAT_VERSIONS,
)

DAMAGED_EXIT_STATUS = 3  # the summary was printed, but some of the log cannot be read back


class InspectError(Exception):
    """DATA_DIR is not an event log that can be read."""


@dataclass
class LogSummary:
    data_dir: str
    format: str
    events_estimate: int  # RocksDB's estimate: instant, approximate after trims
    events_exact: int | None  # counted by iterating keys (only when asked: O(events))
    oldest_time_us: int | None
    newest_time_us: int | None
    size_bytes: int
    relay_cursor: int | None
    hwm_time_us: int
    zstd_dictionary_id: int | None  # of the newest stored zstd frame; 0 = no dictionary
    relay: str | None = None  # the relay host the cursor belongs to (None: not recorded yet)
    verified: bool = False  # every block was read with checksum verification
    damage: list[str] | None = None  # what the verification found unreadable (empty: nothing)
    gaps: list[dict] | None = None  # ranges jetstream repair dropped
    oldest_seq: int | None = None  # None: no events, or a format 1 log (rows without seq)
    newest_seq: int | None = None
    seq_upgrade_through_time_us: int | None = None  # an interrupted upgrade to format 2: rows below are done

    @property
    def damaged(self) -> bool:
        return bool(self.damage)

    def as_text(self) -> str:
        events = (f"{self.events_exact}" if self.events_exact is not None
                  else f"~{self.events_estimate} (estimate; --exact counts)")
        rows = [
            ("data dir", self.data_dir),
            ("format", self.format),
            ("events", events),
            ("oldest time_us", _with_date(self.oldest_time_us)),
            ("newest time_us", _with_date(self.newest_time_us)),
            ("span", _span(self.oldest_time_us, self.newest_time_us)),
            ("oldest seq", _seq_text(self.oldest_seq)),
            ("newest seq", _seq_text(self.newest_seq)),
            ("size on disk", f"{self.size_bytes} bytes ({_human_bytes(self.size_bytes)})"),
            ("relay cursor", "none" if self.relay_cursor is None else str(self.relay_cursor)),
            ("relay", self.relay or "not recorded"),
            ("hwm time_us", _with_date(self.hwm_time_us or None)),
            ("zstd dictionary id", "unknown (no events)" if self.zstd_dictionary_id is None
             else str(self.zstd_dictionary_id) + (" (none)" if self.zstd_dictionary_id == 0 else "")),
            ("gaps", _gaps_text(self.gaps)),
            ("damage", _damage_text(self.verified, self.damage)),
        ]
        if self.seq_upgrade_through_time_us is not None:
            rows.insert(2, ("seq upgrade", f"interrupted: rows below time_us {self.seq_upgrade_through_time_us} "
                                           "have seqs; the daemon's next open finishes it"))
        return "".join(f"{name + ':':<20}{value}\n" for name, value in rows)


def _seq_text(seq: int | None) -> str:
    return "none" if seq is None else str(seq)


def _gaps_text(gaps: list[dict] | None) -> str:
    if not gaps:
        return "none"
    return "; ".join(f"time_us {gap['from_time_us']}..{gap['to_time_us']} "
                     f"({'unknown' if gap.get('events_lost') is None else gap['events_lost']} events lost, "
                     f"repaired {gap.get('repaired_at', '?')})" for gap in gaps)


def _damage_text(verified: bool, damage: list[str] | None) -> str:
    if not verified:
        return "not checked (--skip-verify)"
    if not damage:
        return "none (every block read, checksums verified)"
    return "; ".join(damage) + " -- stop the daemon and run `jetstream repair DATA_DIR`"


def iso_date(time_us: int) -> str:
    return datetime.fromtimestamp(time_us / 1_000_000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _with_date(time_us: int | None) -> str:
    return "none" if time_us is None else f"{time_us} ({iso_date(time_us)})"


def _span(oldest: int | None, newest: int | None) -> str:
    if oldest is None or newest is None:
        return "none"
    return f"{(newest - oldest) / 1_000_000 / 3600:.2f} h"


def _human_bytes(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def directory_size(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except FileNotFoundError:  # a running daemon compacted it away meanwhile
                pass
    return total


# Files an open may write or take: never linked into the view (rocksdict's config is copied).
_NOT_LINKED_PREFIXES = ("LOG", "LOCK", "rocksdict-config.json")


@contextmanager
def read_only_view(path: Path):
    """A temporary directory that reads as the database at `path` and absorbs every write an open makes."""
    with tempfile.TemporaryDirectory(prefix="jetstream-inspect-") as view:
        for entry in os.scandir(path):
            if entry.name == "rocksdict-config.json":
                shutil.copyfile(entry.path, os.path.join(view, entry.name))
            elif not entry.name.startswith(_NOT_LINKED_PREFIXES):
                os.symlink(os.path.abspath(entry.path), os.path.join(view, entry.name))
        yield Path(view)


def open_read_only(path: Path) -> Rdict:
    """Open the database at `path` (normally a read_only_view) read-only, without its LOCK."""
    if not (path / "CURRENT").exists():
        raise InspectError(f"{path} holds no RocksDB database")
    try:
        present = Rdict.list_cf(str(path), Options(raw_mode=True))
    except Exception as exc:  # noqa: BLE001 - rocksdict raises bare Exception
        raise InspectError(f"{path}: unreadable RocksDB database: {exc}") from exc
    missing = [name for name in OUR_COLUMN_FAMILIES if name not in present]
    if missing:
        raise InspectError(f"{path} is not a jetstream event log (missing column families {', '.join(missing)})")
    families = {name: Options(raw_mode=True) for name in present if name != "default"}
    return Rdict(str(path), Options(raw_mode=True), column_families=families,
                 access_type=AccessType.read_only(False))


def _edge_key(column_family, last: bool) -> tuple[bytes, bytes] | None:
    iterator = column_family.iter()
    iterator.seek_to_last() if last else iterator.seek_to_first()
    if iterator.valid():
        return iterator.key(), iterator.value()
    try:
        iterator.status()
    except Exception as exc:  # noqa: BLE001 - rocksdict raises bare Exception: a damaged block, not "no events"
        raise InspectError(f"the {'newest' if last else 'oldest'} events are unreadable: {exc}") from exc
    return None


def _readable_edge(column_family, last: bool) -> tuple[bytes, bytes] | None:
    """The first (or last) row; None where it cannot be read (only once the damage is reported)."""
    try:
        return _edge_key(column_family, last)
    except InspectError:
        return None


def _count_keys(column_family) -> int:
    """Rows, counted with checksum verification; InspectError where the count cannot go on."""
    from jetstream.log.repair import scan_column_family

    damages: list = []
    count = scan_column_family(column_family, CF_EVENTS, damages)
    if damages:
        raise InspectError(f"cannot count events: {damages[0].describe(0)}; run `jetstream repair DATA_DIR`")
    return count


def _newest_dictionary_id(zstd_family) -> int | None:
    import zstandard

    newest = _edge_key(zstd_family, last=True)
    if newest is None:
        return None
    return zstandard.get_frame_parameters(decode_row(*newest).payload).dict_id


def inspect_data_dir(data_dir: str | os.PathLike, exact: bool = False, verify: bool = False) -> LogSummary:
    """The summary of the event log at data_dir, read without taking its LOCK (`verify`: every block)."""
    path = Path(data_dir)
    if not (path / "CURRENT").exists():
        raise InspectError(f"{path} holds no RocksDB database")
    try:
        with read_only_view(path) as view:
            return _summarise(path, open_read_only(view), exact, verify)
    except OSError as exc:
        raise InspectError(f"{path}: {exc.strerror or exc}") from exc


def _check_format(path: Path, format_name: bytes | None, format_version: bytes | None) -> None:
    """Refuse a log this build cannot read rather than summarise it as if it could."""
    if format_name != FORMAT_NAME:
        raise InspectError(f"{path} is not a jetstream event log (format name {format_name!r})")
    if format_version not in [b"%d" % version for version in READABLE_FORMAT_VERSIONS]:
        shown = (format_version or b"?").decode("ascii", "replace")
        readable = ", ".join(map(str, READABLE_FORMAT_VERSIONS))
        raise InspectError(f"{path} is a jetstream event log of format version {shown}; this build reads "
                           f"versions {readable} only and cannot read it (use the jetstream that wrote it)")


def _verify(db: Rdict, hwm: int, counts: dict) -> list[str]:
    """Read every block of the event column families with checksum verification; what is damaged."""
    from jetstream.log.repair import scan_column_family

    damages: list = []
    for name in (CF_EVENTS, CF_EVENTS_ZSTD, CF_EVENTS_V2, CF_EVENTS_INDEX):
        try:
            family = db.get_column_family(name)
        except Exception:  # noqa: BLE001 - a log written before the index (or the v2 records) existed
            continue
        try:
            counts[name] = scan_column_family(family, name, damages)
        finally:
            family.close()
    return [damage.describe(hwm) for damage in damages]


def _summarise(path: Path, db: Rdict, exact: bool, verify: bool = False) -> LogSummary:
    families = [db.get_column_family(name) for name in (CF_EVENTS, CF_EVENTS_ZSTD, CF_META)]
    try:
        events, zstd_rows, meta = families
        format_name, format_version = meta.get(META_FORMAT_NAME), meta.get(META_FORMAT_VERSION)
        _check_format(path, format_name, format_version)
        relay_cursor, hwm = meta.get(META_RELAY_CURSOR), meta.get(META_HWM)
        relay = meta.get(META_RELAY)
        gaps = json.loads(bytes(meta.get(META_GAPS) or b"[]"))
        hwm_value = _UNSIGNED.unpack(hwm)[0] if hwm is not None else 0
        counts: dict = {}
        damage = _verify(db, hwm_value, counts) if verify else None
        # With damage found (and reported), an unreadable edge is shown as none rather than refused.
        edge = _readable_edge if damage else _edge_key
        oldest, newest = edge(events, last=False), edge(events, last=True)
        upgrade = meta.get(META_SEQ_UPGRADE)
        stored_seq = meta.get(META_SEQ)
        return LogSummary(
            data_dir=str(path),
            format=f"{(format_name or b'?').decode()} v{(format_version or b'?').decode()}",
            events_estimate=events.property_int_value("rocksdb.estimate-num-keys") or 0,
            events_exact=(counts[CF_EVENTS] if CF_EVENTS in counts else _count_keys(events)) if exact else None,
            oldest_time_us=decode_key(oldest[0]) if oldest else None,
            newest_time_us=decode_key(newest[0]) if newest else None,
            size_bytes=directory_size(path),
            relay_cursor=_SIGNED.unpack(relay_cursor)[0] if relay_cursor is not None else None,
            hwm_time_us=_UNSIGNED.unpack(hwm)[0] if hwm is not None else 0,
            zstd_dictionary_id=_newest_dictionary_id(zstd_rows),
            relay=bytes(relay).decode("utf-8", "replace") if relay is not None else None,
            verified=verify,
            damage=damage,
            gaps=gaps,
            oldest_seq=(decode_seq(oldest[1]) or None) if oldest else None,
            newest_seq=(_UNSIGNED.unpack(stored_seq)[0] if stored_seq is not None else None) if newest else None,
            seq_upgrade_through_time_us=_UNSIGNED.unpack_from(upgrade)[0] if upgrade is not None else None,
        )
    finally:
        # rocksdict keeps the database open while any column-family view lives.
        for family in families:
            family.close()
        db.close()


def add_inspect_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data_dir", help="the daemon's --data-dir")
    parser.add_argument("--exact", action="store_true", help="count events by iterating keys (slow on big logs)")
    parser.add_argument("--skip-verify", action="store_true",
                        help="do not read every block to check checksums (fast on big logs; damage goes unseen)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument("--log-level", default="warning", help="debug | info | warning | error")


def run_inspect(args, out=None) -> int:
    out = out if out is not None else sys.stdout
    try:
        summary = inspect_data_dir(args.data_dir, exact=args.exact, verify=not args.skip_verify)
    except InspectError as exc:
        sys.stderr.write(f"jetstream inspect: error: {exc}\n")
        return 1
    if args.json:
        out.write(json.dumps(asdict(summary)) + "\n")
    else:
        out.write(summary.as_text())
    if summary.damaged:
        sys.stderr.write("jetstream inspect: error: the log is damaged: " + "; ".join(summary.damage)
                         + "; stop the daemon and run `jetstream repair DATA_DIR`\n")
        return DAMAGED_EXIT_STATUS
    return 0
