"""`jetstream cluster reset-node`: clear a stopped node's local log so it re-syncs from the stream.

Owns: the offline reset of one data dir: prove it is an event log and that no daemon holds it
(opening it takes RocksDB's lock, which a running daemon holds), say what it holds, and, with
--yes, delete the log's files. The next `serve --cluster` on that dir builds the log again from
the stream (what the stream still retains, --event-ttl), as a new node would.
It must never touch a log a daemon has open, never delete a directory that is not an event log,
and never delete without --yes.
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from jetstream.log.store import EventLog, LogError

EXIT_OK = 0
EXIT_REFUSED = 1


def add_reset_node_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", required=True, help="the stopped node's --data-dir")
    parser.add_argument("--yes", action="store_true",
                        help="delete the log (without it, only say what would be deleted)")


def describe_log(data_dir: str) -> str:
    """What the log holds, in one line; LogError if it is not a log or a daemon holds it."""
    with EventLog(data_dir, create=False) as event_log:
        mode = (f"cluster node log, applied to stream seq {event_log.stream_seq()}" if event_log.stream_seq()
                else "single-node log (written without --cluster)")
        return (f"{mode}: about {event_log.count_estimate()} events, newest time_us {event_log.hwm()}, "
                f"relay cursor {event_log.relay_cursor()}, instance {event_log.instance_id()}")


def run_reset_node(args) -> int:
    data_dir = args.data_dir
    try:
        summary = describe_log(data_dir)
    except LogError as exc:
        held = "lock" in str(exc).lower()
        why = "a daemon holds it (stop the node first)" if held else str(exc)
        print(f"reset-node: refused: {data_dir}: {why}")
        return EXIT_REFUSED
    if not args.yes:
        print(f"reset-node: {data_dir} holds a {summary}.\n"
              "reset-node: nothing deleted; run again with --yes to delete it (the node then re-syncs from the stream)")
        return EXIT_REFUSED
    removed = 0
    for entry in Path(data_dir).iterdir():  # the directory itself stays: its owner and mode are the operator's
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
        removed += 1
    print(f"reset-node: deleted {data_dir}'s {summary} ({removed} files). "
          f"Start the node with --cluster: it re-syncs from the stream.")
    return EXIT_OK
