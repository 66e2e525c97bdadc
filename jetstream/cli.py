"""The `jetstream` command: `serve`, `relay-sim`, `demo`, `train-dictionary`, `tail`, `inspect`, `repair`, `cluster`.

Owns: argument parsing (via jetstream.config), logging set-up and the event loop.
It must never contain daemon logic; each subcommand calls one entry point.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from jetstream.config import (
    DEMO_ENV_PREFIX,
    RELAY_SIM_FLAGS,
    SERVE_FLAGS,
    ConfigError,
    add_flags,
    deprecated_flags_set,
    to_config,
    unknown_variables,
)
from jetstream.logfmt import setup_logging


def run_loop(coro) -> None:
    try:
        import uvloop

        uvloop.run(coro)
    except ImportError:  # pragma: no cover - uvloop is a hard dependency; keep a fallback anyway
        asyncio.run(coro)


def cmd_serve(cfg) -> None:
    from jetstream.daemon import Daemon
    from jetstream.log.store import LogError
    from jetstream.startup import EXIT_STARTUP_FAILED, StartupError, preflight, report_startup_failure
    from jetstream.workers.supervisor import WorkersDaemon, WorkersError

    # --workers N > 1: this process ingests and N processes serve the port (jetstream/workers/).
    daemon = WorkersDaemon(cfg) if cfg.workers > 1 else Daemon(cfg)
    try:
        preflight(cfg)
        run_loop(daemon.run_until_signalled())
    except StartupError as exc:
        report_startup_failure(exc)
        sys.exit(EXIT_STARTUP_FAILED)
    except LogError as exc:
        # A foreign, corrupted or locked data dir is an operator error: say so, never re-create.
        report_startup_failure(StartupError("data-dir", cfg.data_dir, str(exc)))
        sys.exit(EXIT_STARTUP_FAILED)
    except WorkersError as exc:
        report_startup_failure(StartupError("workers", cfg.workers, str(exc)))
        sys.exit(EXIT_STARTUP_FAILED)


def cmd_relay_sim(cfg) -> None:
    from jetstream.relaysim.server import run_from_config
    from jetstream.startup import EXIT_STARTUP_FAILED, StartupError, check_bindable, report_startup_failure

    try:
        listen_flag = next(flag for flag in RELAY_SIM_FLAGS if flag.name == "listen-addr")
        check_bindable(listen_flag, cfg.listen_addr)
    except StartupError as exc:
        report_startup_failure(exc)
        sys.exit(EXIT_STARTUP_FAILED)
    run_loop(run_from_config(cfg))


def cmd_demo(cfg) -> None:
    from jetstream.demo import run_demo

    run_loop(run_demo(cfg))


def cmd_train_dictionary(args) -> None:
    from jetstream import dictionary

    if bool(args.data_dir) == bool(args.synthetic):
        raise SystemExit("train-dictionary: give exactly one of --data-dir or --synthetic")
    if args.data_dir:
        samples = dictionary.log_samples(args.data_dir, args.samples, args.wire)
    else:
        samples = dictionary.synthetic_samples(args.synthetic, wire=args.wire)
    trained = dictionary.train(samples, args.size, args.dict_id)
    with open(args.out, "wb") as out:
        out.write(trained)
    raw = sum(map(len, samples))
    print(f"train-dictionary: {args.out}: id {dictionary.dictionary_id(trained)}, {len(trained)} bytes, "
          f"{len(samples)} samples, compressed/raw {dictionary.compressed_size(samples, trained) / raw:.3f}")


def add_train_dictionary_parser(sub) -> None:
    from jetstream import dictionary

    p = sub.add_parser("train-dictionary", help="train a zstd dictionary for compressed clients")
    p.add_argument("--data-dir", default="", help="train from the events of this (stopped) daemon's log")
    p.add_argument("--synthetic", type=int, default=0, metavar="N",
                   help="train from N events of synthetic relay frames (how the shipped dictionary is made)")
    p.add_argument("--out", required=True, help="where to write the dictionary")
    p.add_argument("--size", type=int, default=dictionary.DEFAULT_DICTIONARY_SIZE, help="dictionary size in bytes")
    p.add_argument("--samples", type=int, default=100_000, help="at most this many events from --data-dir")
    p.add_argument("--dict-id", type=int, default=0, help="dictionary id (default: derived from the samples)")
    p.add_argument("--wire", choices=("v1", "v2"), default="v1",
                   help="train on v1 /subscribe JSON (default) or on v2 subscribeEvents frames")
    p.set_defaults(handler=cmd_train_dictionary, plain_args=True)


def cmd_tail(args) -> None:
    from jetstream.tail import run_tail

    logging.getLogger().setLevel(getattr(logging, args.log_level.upper(), logging.WARNING))
    result: list[int] = []

    async def tail() -> None:
        result.append(await run_tail(args))

    run_loop(tail())
    raise SystemExit(result[0] if result else 0)


def add_tail_parser(sub) -> None:
    from jetstream.tail import add_tail_arguments

    p = sub.add_parser("tail", help="print a Jetstream stream (this daemon or any v1 endpoint)")
    add_tail_arguments(p)
    p.set_defaults(handler=cmd_tail, plain_args=True)


def cmd_inspect(args) -> None:
    from jetstream.inspect import run_inspect

    logging.getLogger().setLevel(getattr(logging, args.log_level.upper(), logging.WARNING))
    raise SystemExit(run_inspect(args))


def add_inspect_parser(sub) -> None:
    from jetstream.inspect import add_inspect_arguments

    p = sub.add_parser("inspect", help="summarise an event log (read-only; safe while the daemon runs)")
    add_inspect_arguments(p)
    p.set_defaults(handler=cmd_inspect, plain_args=True)


def cmd_repair(args) -> None:
    from jetstream.log.repair import run_repair

    logging.getLogger().setLevel(getattr(logging, args.log_level.upper(), logging.WARNING))
    raise SystemExit(run_repair(args))


def add_repair_parser(sub) -> None:
    from jetstream.log.repair import add_repair_arguments

    p = sub.add_parser("repair", help="drop a damaged event log's unreadable ranges and record them as gaps "
                                      "(offline: stop the daemon first)")
    add_repair_arguments(p)
    p.set_defaults(handler=cmd_repair, plain_args=True)


def cmd_cluster_reset_node(args) -> None:
    from jetstream.cluster.reset import run_reset_node

    raise SystemExit(run_reset_node(args))


def add_cluster_parser(sub) -> None:
    from jetstream.cluster.reset import add_reset_node_arguments

    p = sub.add_parser("cluster", help="cluster-mode maintenance (offline)")
    actions = p.add_subparsers(dest="cluster_command", required=True)
    reset = actions.add_parser("reset-node", help="delete a stopped node's local log so it re-syncs from the stream")
    add_reset_node_arguments(reset)
    reset.set_defaults(handler=cmd_cluster_reset_node, plain_args=True)


def cmd_archive(args) -> None:
    from jetstream.archive.tool import run_archive

    raise SystemExit(run_archive(args))


def add_archive_parser(sub) -> None:
    from jetstream.archive.tool import add_archive_arguments

    p = sub.add_parser("archive", help="check or list a sealed archive (a directory or an object store URL)")
    add_archive_arguments(p)
    p.set_defaults(handler=cmd_archive, plain_args=True)


def build_parser(environ: dict[str, str]) -> tuple[argparse.ArgumentParser, dict]:
    parser = argparse.ArgumentParser(prog="jetstream", description="atproto firehose translation service")
    sub = parser.add_subparsers(dest="command", required=True)
    flag_sets = {}
    for name, flags, handler, help_text in (
        ("serve", SERVE_FLAGS, cmd_serve, "run the daemon"),
        ("relay-sim", RELAY_SIM_FLAGS, cmd_relay_sim, "run a fake relay (tests, demo)"),
        ("demo", demo_flags(), cmd_demo, "fake relay + daemon + a printing client, offline"),
    ):
        p = sub.add_parser(name, help=help_text)
        add_flags(p, flags, environ)
        p.set_defaults(handler=handler)
        flag_sets[name] = flags
    # The demo keeps its log in a throwaway temp dir unless --data-dir is on its command line
    # (JETSTREAM_DEMO_DATA_DIR is not read: a demo's log is never a kept one), and prints
    # events, not daemon logs.
    sub.choices["demo"].set_defaults(data_dir="", log_level="warning")
    add_train_dictionary_parser(sub)
    add_tail_parser(sub)
    add_inspect_parser(sub)
    add_repair_parser(sub)
    add_cluster_parser(sub)
    add_archive_parser(sub)
    return parser, flag_sets


def demo_flags() -> tuple:
    """SERVE_FLAGS under the demo's own variables (JETSTREAM_DEMO_*: a daemon's exported
    JETSTREAM_LISTEN_ADDR must not move the demo onto its port), except that an empty
    --data-dir is valid: the demo's throwaway temp dir."""
    from dataclasses import replace

    from jetstream.config import Check

    throwaway = Check("empty (a temp dir removed at exit) or a directory", lambda text: True)
    return tuple(replace(flag, env_prefix=DEMO_ENV_PREFIX, **({"check": throwaway} if flag.name == "data-dir" else {}))
                 for flag in SERVE_FLAGS)


def warn_about_settings(cfg, flags: tuple, environ: dict[str, str]) -> None:
    """At start-up, one warning per variable under the command's prefix that names no flag
    (a typo would otherwise be ignored in silence) and per deprecated flag that was set."""
    log = logging.getLogger("jetstream.cli")
    for name, closest in unknown_variables(environ, flags):
        log.warning("event=env_variable_unknown variable=%s did_you_mean=%s note=%s", name, closest or "-",
                    "names no flag of this command; ignored")
    for flag in deprecated_flags_set(cfg, flags):
        log.warning("event=flag_deprecated flag=--%s env=%s source=%s note=%s", flag.name, flag.env,
                    cfg.sources[flag.attr], f"{flag.deprecated}; ignored")


def main(argv: list[str] | None = None) -> None:
    parser, flag_sets = build_parser(dict(os.environ))
    args = parser.parse_args(argv)
    if getattr(args, "plain_args", False):
        setup_logging("warning")
        args.handler(args)
        return
    environ = dict(os.environ)
    try:
        cfg = to_config(args, flag_sets[args.command], environ)
    except ConfigError as exc:
        _refuse_config(exc, args, environ, exc.flag.env_prefix)
    setup_logging(cfg.log_level, cfg.log_format)
    warn_about_settings(cfg, flag_sets[args.command], environ)
    args.handler(cfg)


def _refuse_config(exc: ConfigError, args, environ: dict[str, str], env_prefix: str) -> None:
    """One `event=startup_failed` line (in the requested log format when that one is valid), exit 2."""
    from jetstream.startup import EXIT_STARTUP_FAILED, report_startup_failure

    log_format = getattr(args, "log_format", None) or environ.get(env_prefix + "LOG_FORMAT", "text")
    setup_logging("info", log_format if log_format in ("text", "json") else "text")
    report_startup_failure(exc, logging.getLogger("jetstream.cli"))
    sys.exit(EXIT_STARTUP_FAILED)


if __name__ == "__main__":
    main()
