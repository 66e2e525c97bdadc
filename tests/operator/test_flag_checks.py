"""Every flag is checked, its rule is in --help and in docs/operations.md, and bad values are
refused with a ConfigError naming the flag, its variable and where the value came from."""
from __future__ import annotations

from pathlib import Path

import pytest

from jetstream.config import (
    RELAY_SIM_FLAGS,
    SERVE_FLAGS,
    ConfigError,
    describe_rule,
    parse_bool,
    parse_listen_addr,
    parse_serve_args,
)

OPERATIONS = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()


@pytest.mark.parametrize("flag", SERVE_FLAGS, ids=lambda f: f.name)
def test_every_serve_flag_has_a_check_or_is_a_boolean(flag):
    # A new flag without check= would accept anything and fail later, inside a listener.
    assert flag.check is not None or flag.parse is parse_bool, f"--{flag.name} needs check= (see config.py)"


def test_every_default_passes_its_own_check():
    parse_serve_args([], environ={})  # raises ConfigError for a default that fails its check


def test_relay_sim_defaults_pass_their_checks():
    from jetstream.config import resolve_flag

    for flag in RELAY_SIM_FLAGS:
        resolve_flag(flag, flag.default, "default")


def test_the_operations_doc_lists_every_flags_rule():
    start = OPERATIONS.index("\n### Valid values")
    table = OPERATIONS[start:OPERATIONS.index("\n## ", start)]
    missing = [f.name for f in SERVE_FLAGS if f"| `--{f.name}` | {describe_rule(f)} |" not in table]
    assert not missing, f"docs/operations.md's valid-values table lacks (or has a stale rule for): {missing}"


@pytest.mark.parametrize("text, expected", [
    (":6008", ("0.0.0.0", 6008)), ("127.0.0.1:0", ("127.0.0.1", 0)), ("[::1]:80", ("::1", 80)),
    ("localhost:65535", ("localhost", 65535)),
])
def test_listen_addr_parses(text, expected):
    assert parse_listen_addr(text) == expected


@pytest.mark.parametrize("text", ["abc", "127.0.0.1", "127.0.0.1:99999", "127.0.0.1:-1", ":x", ""])
def test_listen_addr_refuses(text):
    with pytest.raises(ValueError):
        parse_listen_addr(text)


def test_config_error_names_flag_env_and_source():
    with pytest.raises(ConfigError) as raised:
        parse_serve_args([], environ={"JETSTREAM_RING_CAPACITY": "0"})
    error = raised.value
    assert error.flag.name == "ring-capacity" and error.source == "environment" and error.value == "0"
    assert "JETSTREAM_RING_CAPACITY" in str(error) and "--ring-capacity" in str(error)


def test_command_line_wins_over_environment_and_is_checked_first():
    cfg = parse_serve_args(["--event-ttl", "1h"], environ={"JETSTREAM_EVENT_TTL": "abc"})
    assert cfg.event_ttl == 3600.0


def test_help_text_carries_the_rule():
    flag = next(f for f in SERVE_FLAGS if f.name == "event-ttl")
    assert describe_rule(flag) == "a duration (24h, 1m30s, 250ms, or seconds), > 0"
