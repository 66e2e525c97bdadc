"""`jetstream archive verify PATH|URL` and `jetstream archive ls PATH|URL`: an archive checked or listed offline.

Owns: walking every sealed segment of a directory or object store (store.py) in index order.
`verify` checks each one whole (reader.verify: checksums, the blocks' tiling and zstd frame
checksums, rows inside their bounds, seq ascending, counts, blooms) and the seq order across
segments, prints one line per bad segment and exits 1 if there is any (2 when the store cannot
be listed). `ls` prints each segment's seq and time bounds, events and bytes from its header
(verified against the footer's checksum), then the totals.
It must never write to the archive; an object is verified from a temporary local copy (deleted
after), never held whole in memory.
"""
from __future__ import annotations

import datetime
import os
import sys
import tempfile

from jetstream.archive.format import ActiveSegment, SegmentError
from jetstream.archive.manifest import open_segment
from jetstream.archive.reader import verify
from jetstream.archive.store import StoreError, open_store

EXIT_OK, EXIT_BAD, EXIT_UNREADABLE = 0, 1, 2


def add_archive_arguments(parser) -> None:
    actions = parser.add_subparsers(dest="archive_command", required=True)
    for name, help_text in (("verify", "check every segment whole (checksums, bounds, seq order within and across "
                                       "segments); exit 1 and one line per bad segment"),
                            ("ls", "list the segments: seq and time bounds, events, bytes; then totals")):
        p = actions.add_parser(name, help=help_text)
        p.add_argument("location", metavar="PATH|URL",
                       help="an archive directory, or s3://bucket/prefix, gs://, az://, file:// (credentials and "
                            "endpoint from the AWS_* / GOOGLE_* / AZURE_* environment)")
        p.set_defaults(archive_handler=run_verify if name == "verify" else run_ls)


def run_archive(args) -> int:
    return args.archive_handler(args.location, sys.stdout)


def _time(us: int) -> str:
    try:
        moment = datetime.datetime.fromtimestamp(us / 1_000_000, datetime.timezone.utc)
    except (OverflowError, OSError, ValueError):
        return str(us)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _list(location: str, out):
    try:
        store = open_store(location)
        return store, store.list_segments()
    except StoreError as exc:
        print(f"cannot list {location}: {exc}", file=out)
        return None, None


def run_ls(location: str, out) -> int:
    store, objects = _list(location, out)
    if objects is None:
        return EXIT_UNREADABLE
    print(f"{'segment':<20} {'min_seq':>12} {'max_seq':>12} {'min_time':<27} {'max_time':<27} {'events':>10} "
          f"{'bytes':>14}", file=out)
    events = size = bad = 0
    first = last = None
    for obj in objects:
        try:
            summary, _ = open_segment(store, obj)
        except ActiveSegment:
            print(f"{obj.name:<20} active (not sealed), {obj.size} bytes", file=out)
            continue
        except (SegmentError, StoreError) as exc:
            bad += 1
            print(f"{obj.name:<20} BAD: {exc}", file=out)
            continue
        h = summary.header
        print(f"{obj.name:<20} {h.min_seq:>12} {h.max_seq:>12} {_time(h.min_witnessed_at):<27} "
              f"{_time(h.max_witnessed_at):<27} {h.event_count:>10} {obj.size:>14}", file=out)
        events += h.event_count
        size += obj.size
        if h.event_count:
            first = h.min_seq if first is None else min(first, h.min_seq)
            last = h.max_seq if last is None else max(last, h.max_seq)
    seqs = f", seq {first}..{last}" if first is not None else ""
    print(f"total: {len(objects) - bad} segments, {events} events, {size} bytes{seqs}"
          + (f"; {bad} unreadable" if bad else ""), file=out)
    return EXIT_BAD if bad else EXIT_OK


def _verify_one(store, obj):
    path = store.local_path(obj.name)
    if path is not None:
        return verify(path)
    fd, tmp = tempfile.mkstemp(prefix="jetstream-verify-", suffix=".jss")
    try:
        got = store.read_range_into(obj.name, 0, obj.size, fd, obj.version) if obj.size else 0
        if got != obj.size:
            raise SegmentError(f"store gave {got} of {obj.size} bytes")
        return verify(tmp)
    finally:
        os.close(fd)
        os.unlink(tmp)


def run_verify(location: str, out) -> int:
    store, objects = _list(location, out)
    if objects is None:
        return EXIT_UNREADABLE
    bad = good = events = 0
    prev_max, prev_name = None, ""
    for obj in objects:
        try:
            report = _verify_one(store, obj)
        except ActiveSegment:
            continue  # not sealed: not part of the archive yet
        except (SegmentError, StoreError, OSError) as exc:
            bad += 1
            print(f"BAD {obj.name}: {exc}", file=out)
            continue
        h = report.header
        if h.event_count:
            if prev_max is not None and h.min_seq <= prev_max:
                bad += 1
                print(f"BAD {obj.name}: min_seq {h.min_seq} is not above {prev_name}'s max_seq {prev_max}", file=out)
                continue
            prev_max, prev_name = h.max_seq, obj.name
        good += 1
        events += report.events
    print(f"verified {good + bad} segments: {good} good ({events} events), {bad} bad", file=out)
    return EXIT_BAD if bad else EXIT_OK
