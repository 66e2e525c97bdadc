"""`jetstream tail URL`: print a Jetstream v1 stream in a terminal or into a pipe.

Owns: the tail command's arguments, the cursor syntax (µs, or a duration ago such as
-5m), the two output formats (JSON lines, exactly the bytes received; or one human line
per event), the --stats display (a status line redrawn on stderr when stderr is a
terminal, plain key=value lines otherwise; with --heartbeat N it counts the server's
cursor heartbeats, which are not events and never go to stdout) and a clean exit (code 0) on Ctrl-C/SIGTERM
or a closed pipe.
It must never alter an event's bytes in JSON-lines mode, and never write anything but
events to stdout (stats and logs go to stderr).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import sys
import time
from datetime import datetime, timezone

from jetstream.client import AccountEvent, CommitEvent, HeartbeatEvent, IdentityEvent, Jetstream, JetstreamError
from jetstream.config import parse_duration

FLUSH_BYTES = 64 * 1024
TEXT_SNIPPET_CHARS = 80
REDRAW_INTERVAL_S = 0.5  # terminal status line
PLAIN_STATS_INTERVAL_S = 5.0  # piped stderr: one line per interval


def parse_cursor(text: str, now_us: int) -> int:
    """An integer is a time_us as is; a duration ('-5m', '30s', '1h30m') means that long ago."""
    text = text.strip()
    try:
        return int(text)
    except ValueError:
        pass
    try:
        seconds = parse_duration(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid cursor {text!r}: give time_us or a duration like -5m") from None
    return now_us - int(abs(seconds) * 1_000_000)


def _cursor_argument(text: str) -> str:
    """argparse check of --cursor, so a bad one is a usage error (exit 2), not a traceback."""
    parse_cursor(text, 0)
    return text


def iso_time(time_us: int) -> str:
    return datetime.fromtimestamp(time_us / 1_000_000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def human_line(event) -> str:
    """One readable line: time, kind, what happened, who, and a snippet of text if any."""
    head = f"{iso_time(event.time_us)} {event.kind:<8}"
    if isinstance(event, CommitEvent):
        line = f"{head} {event.operation:<6} {event.collection} {event.did}/{event.rkey}"
        text = (event.record or {}).get("text")
        if isinstance(text, str) and text:
            snippet = " ".join(text.split())[:TEXT_SNIPPET_CHARS]
            line += f" {snippet!r}"
        return line
    if isinstance(event, IdentityEvent):
        return f"{head} {event.did} handle={event.handle or '-'} seq={event.seq}"
    if isinstance(event, AccountEvent):
        return f"{head} {event.did} active={str(event.active).lower()} status={event.status or '-'} seq={event.seq}"
    return f"{head} {event.did}"


class TailStats:
    """Events seen, their rate over the last interval, and lag behind the newest time_us."""

    def __init__(self, now_s: float) -> None:
        self.total = 0
        self._window_count = 0
        self._window_start_s = now_s
        self.last_time_us: int | None = None
        self.heartbeats = 0
        self.last_heartbeat_us: int | None = None

    def record(self, time_us: int) -> None:
        self.total += 1
        self._window_count += 1
        self.last_time_us = time_us

    def record_heartbeat(self, time_us: int) -> None:
        self.heartbeats += 1
        self.last_heartbeat_us = time_us

    def take_line(self, now_s: float, client: Jetstream) -> str:
        """The status text for the interval ending now (starts the next interval)."""
        elapsed = max(now_s - self._window_start_s, 1e-9)
        rate = self._window_count / elapsed
        self._window_count, self._window_start_s = 0, now_s
        # A heartbeat says the reader has passed its time_us: the lag of a sparse filter is that.
        newest = max((t for t in (self.last_time_us, self.last_heartbeat_us) if t is not None), default=None)
        lag = "-" if newest is None else f"{now_s - newest / 1_000_000:.2f}"
        line = (f"events={self.total} rate_per_s={rate:.1f} lag_s={lag} "
                f"connections={client.connections} duplicates_dropped={client.duplicates_dropped}")
        if self.heartbeats:
            line += f" heartbeats={self.heartbeats} heartbeat_time_us={self.last_heartbeat_us}"
        return line


class StatsDisplay:
    """Writes TailStats to stderr: redrawn in place on a terminal, plain lines in a pipe."""

    def __init__(self, stream, client: Jetstream, redraw: bool) -> None:
        self.stream = stream
        self.client = client
        self.redraw = redraw
        self.stats = TailStats(time.time())
        self.interval_s = REDRAW_INTERVAL_S if redraw else PLAIN_STATS_INTERVAL_S

    def show(self) -> None:
        line = self.stats.take_line(time.time(), self.client)
        if self.redraw:
            self.stream.write("\r\x1b[K" + line)
        else:
            self.stream.write(f"event=tail_stats {line}\n")
        self.stream.flush()

    def clear(self) -> None:
        """Erase the status line before event lines go to the same terminal."""
        if self.redraw:
            self.stream.write("\r\x1b[K")

    def finish(self) -> None:
        self.show()
        if self.redraw:
            self.stream.write("\n")
        self.stream.flush()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            self.show()


class EventWriter:
    """Buffers output and flushes whenever the client has nothing more queued (or 64 KiB)."""

    def __init__(self, out, human: bool, display: StatsDisplay | None, share_terminal: bool) -> None:
        self.out = out
        self.human = human
        self.display = display if share_terminal else None
        self._pending = 0

    def write(self, event, more_queued: bool) -> None:
        data = (human_line(event) + "\n").encode() if self.human else event.raw + b"\n"
        if self.display is not None:
            self.display.clear()
        self.out.write(data)
        self._pending += len(data)
        if not more_queued or self._pending >= FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        self.out.flush()
        self._pending = 0


def add_tail_arguments(parser: argparse.ArgumentParser) -> None:
    # So `--cursor -5m` reads -5m as a value: argparse only treats plain negative numbers
    # as values, and would otherwise demand `--cursor=-5m`.
    parser._negative_number_matcher = re.compile(r"^-\d")
    parser.add_argument("url", help="Jetstream URL or host (ws://localhost:6008, jetstream2.us-east.bsky.network)")
    parser.add_argument("--collection", action="append", dest="collections", metavar="NSID",
                        help="wanted collection (NSID or prefix.*); repeat for several")
    parser.add_argument("--did", action="append", dest="dids", metavar="DID", help="wanted DID; repeat for several")
    parser.add_argument("--cursor", default=None, type=_cursor_argument,
                        help="start at this time_us (inclusive), or a duration ago: -5m, -30s, -1h30m")
    parser.add_argument("--compress", action="store_true", help="receive zstd frames (decoded before output)")
    parser.add_argument("--zstd-dictionary", default=None, metavar="PATH",
                        help="dictionary for --compress (default: the server's GET /zstd-dictionary)")
    parser.add_argument("--format", choices=("json", "human"), default="json",
                        help="json: the exact bytes received, one per line; human: one summary line per event")
    parser.add_argument("--stats", action="store_true", help="rate and lag on stderr")
    parser.add_argument("--heartbeat", type=_heartbeat_seconds, default=0, metavar="N",
                        help="ask the server for a cursor heartbeat after N s without a message (1-3600; "
                             "this project's servers); counted in --stats, never printed")
    parser.add_argument("--limit", type=int, default=0, help="exit after this many events (0: never)")
    parser.add_argument("--log-level", default="warning", help="debug | info | warning | error")


async def run_tail(args, out=None, err=None) -> int:
    out = out if out is not None else sys.stdout.buffer
    err = err if err is not None else sys.stderr
    cursor = parse_cursor(args.cursor, time.time_ns() // 1000) if args.cursor is not None else None
    if args.zstd_dictionary is not None:
        try:
            with open(args.zstd_dictionary, "rb"):
                pass
        except OSError as exc:  # local: fail now, naming the path, instead of retrying forever
            err.write(f"jetstream tail: error: cannot read --zstd-dictionary {args.zstd_dictionary!r}: "
                      f"{exc.strerror or exc}\n")
            return 2
    client = Jetstream(args.url, collections=args.collections, dids=args.dids, cursor=cursor,
                       compress=args.compress, dictionary=args.zstd_dictionary,
                       heartbeat_seconds=getattr(args, "heartbeat", 0))
    display = StatsDisplay(err, client, redraw=err.isatty()) if args.stats else None
    share_terminal = display is not None and display.redraw and sys.stdout.isatty()
    writer = EventWriter(out, args.format == "human", display, share_terminal)
    consumer = asyncio.ensure_future(_consume(client, writer, display, args.limit))
    ticker = asyncio.ensure_future(display.run()) if display else None
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, consumer.cancel)
    try:
        await consumer
        return 0
    except asyncio.CancelledError:
        return 0  # Ctrl-C / SIGTERM: a normal way to stop tailing
    except JetstreamError as exc:
        err.write(f"jetstream tail: error: {exc}\n")
        return 1
    except BrokenPipeError:
        _silence_stdout()
        return 0
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        if ticker:
            ticker.cancel()
        await client.close()
        try:
            writer.flush()
        except BrokenPipeError:
            _silence_stdout()
        if display:
            display.finish()


async def _consume(client: Jetstream, writer: EventWriter, display: StatsDisplay | None, limit: int) -> None:
    seen = 0
    async for event in client:
        if isinstance(event, HeartbeatEvent):
            if display:
                display.stats.record_heartbeat(event.time_us)
            continue
        writer.write(event, more_queued=client.buffered > 0)
        if display:
            display.stats.record(event.time_us)
        seen += 1
        if limit and seen >= limit:
            return


def _heartbeat_seconds(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"invalid heartbeat {text!r}: give whole seconds, 1 to 3600")
    return value


def _silence_stdout() -> None:
    # The reader went away (`| head`): point stdout at /dev/null so the interpreter's
    # final flush does not print a BrokenPipeError traceback.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
