"""The `jetstream` command: `serve`, `relay-sim`, `demo`.

Owns: argument parsing (via jetstream.config), logging set-up and the event loop.
It must never contain daemon logic; each subcommand calls one entry point.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from jetstream.config import RELAY_SIM_FLAGS, SERVE_FLAGS, add_flags, to_config


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="ts=%(asctime)s level=%(levelname)s logger=%(name)s %(message)s",
        stream=sys.stderr,
    )


def run_loop(coro) -> None:
    try:
        import uvloop

        uvloop.run(coro)
    except ImportError:  # pragma: no cover - uvloop is a hard dependency; keep a fallback anyway
        asyncio.run(coro)


def cmd_serve(cfg) -> None:
    from jetstream.daemon import Daemon

    run_loop(Daemon(cfg).run_until_signalled())


def cmd_relay_sim(cfg) -> None:
    from jetstream.relaysim.server import run_from_config

    run_loop(run_from_config(cfg))


def cmd_demo(cfg) -> None:
    from jetstream.demo import run_demo

    run_loop(run_demo(cfg))


def build_parser(environ: dict[str, str]) -> tuple[argparse.ArgumentParser, dict]:
    parser = argparse.ArgumentParser(prog="jetstream", description="atproto firehose translation service")
    sub = parser.add_subparsers(dest="command", required=True)
    flag_sets = {}
    for name, flags, handler, help_text in (
        ("serve", SERVE_FLAGS, cmd_serve, "run the daemon"),
        ("relay-sim", RELAY_SIM_FLAGS, cmd_relay_sim, "run a fake relay (tests, demo)"),
        ("demo", SERVE_FLAGS, cmd_demo, "fake relay + daemon + a printing client, offline"),
    ):
        p = sub.add_parser(name, help=help_text)
        add_flags(p, flags, environ)
        p.set_defaults(handler=handler)
        flag_sets[name] = flags
    return parser, flag_sets


def main(argv: list[str] | None = None) -> None:
    parser, flag_sets = build_parser(dict(os.environ))
    args = parser.parse_args(argv)
    cfg = to_config(args, flag_sets[args.command])
    setup_logging(cfg.log_level)
    args.handler(cfg)


if __name__ == "__main__":
    main()
