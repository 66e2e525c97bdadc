"""Flags that ran away (issue 22, section 4), each refused or warned about by name.

- Two of our own listen flags on one port: exit 2 with one `startup_failed` line naming both
  flags, before anything is bound or created (also with --workers 2).
- A JETSTREAM_* variable that names no flag (JETSTREAM_EVENTTTL=1h): one warning, with the
  closest real variable, once per start (not again from each worker); ours that are not
  flags (JETSTREAM_PURE_PYTHON, ...) are not warned about.
- `--worker-count` (v1's, unused): not in --help, still accepted, one deprecation line.
- Each command reads its own variables: relay-sim RELAYSIM_*, demo JETSTREAM_DEMO_*; the
  daemon's JETSTREAM_LISTEN_ADDR moves neither.
Real `jetstream` subprocesses; the pure parts (unknown_variables, the overlap rule) also directly.
"""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jetstream.config import (
    DEMO_ENV_PREFIX,
    ENV_NOT_FLAGS,
    RELAY_SIM_FLAGS,
    SERVE_FLAGS,
    deprecated_flags_set,
    parse_serve_args,
    unknown_variables,
)
from jetstream.startup import _overlap
from tests.operator.test_startup_validation import assert_refused, defaults_for, run_serve
from tests.ports import free_port

pytestmark = pytest.mark.timeout(120)

REPO_ROOT = Path(__file__).resolve().parents[2]
ENV_OF = {flag.name: flag.env for flag in SERVE_FLAGS}


def clean_env(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("JETSTREAM_", "RELAYSIM_"))}
    return dict(base, PYTHONUNBUFFERED="1", **extra)


# --- (a) our own listen addresses clash -------------------------------------------------------

CLASHES = [  # (listen-addr, metrics-listen-addr) with {port} the same free port
    ("127.0.0.1:{port}", "127.0.0.1:{port}"),
    (":{port}", "127.0.0.1:{port}"),  # 0.0.0.0 takes 127.0.0.1 too
    ("127.0.0.1:{port}", "localhost:{port}"),
    ("[::]:{port}", "127.0.0.1:{port}"),
]


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("form", ["flag", "env"])
@pytest.mark.parametrize("listen, metrics", CLASHES, ids=[f"{a}+{b}" for a, b in CLASHES])
def test_listen_and_metrics_on_one_port_is_refused_naming_both_flags(tmp_path, listen, metrics, form, workers):
    port = free_port()
    listen, metrics = listen.format(port=port), metrics.format(port=port)
    argv = [arg for arg in defaults_for(tmp_path, "listen-addr") if arg not in ("--metrics-listen-addr", "")]
    argv += ["--workers", workers]
    if form == "flag":
        result = run_serve(tmp_path, argv + ["--listen-addr", listen, "--metrics-listen-addr", metrics])
    else:
        result = run_serve(tmp_path, argv, {"JETSTREAM_LISTEN_ADDR": listen, "JETSTREAM_METRICS_LISTEN_ADDR": metrics})
    assert_refused(result, "metrics-listen-addr", "same port as --listen-addr (JETSTREAM_LISTEN_ADDR)", tmp_path / "data")
    (line,) = [line for line in result.stderr.splitlines() if "startup_failed" in line]
    assert repr(listen) in line or listen in line
    assert f"source={'command line' if form == 'flag' else 'environment'}" in line.replace('"', "")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr  # nothing else ran
    assert "worker_spawned" not in result.stderr


def test_a_clash_is_found_before_the_port_is_probed(tmp_path):
    """The port is taken by someone else too: the message is still about our own two flags."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        addr = f"127.0.0.1:{taken.getsockname()[1]}"
        argv = [arg for arg in defaults_for(tmp_path, "listen-addr") if arg not in ("--metrics-listen-addr", "")]
        result = run_serve(tmp_path, argv + ["--listen-addr", addr, "--metrics-listen-addr", addr])
    assert_refused(result, "metrics-listen-addr", "same port as --listen-addr", tmp_path / "data")


@pytest.mark.parametrize("first, second, clash", [
    ({"127.0.0.1"}, {"127.0.0.1"}, True),
    ({"0.0.0.0"}, {"127.0.0.1"}, True),
    ({"::"}, {"127.0.0.1"}, True),
    ({"127.0.0.1"}, {"127.0.0.2"}, False),
    ({"127.0.0.1", "::1"}, {"::1"}, True),
])
def test_overlap_rule(first, second, clash):
    assert _overlap(first, second) is clash


def test_same_port_on_two_distinct_addresses_is_allowed(tmp_path):
    """Only a real clash is refused: 127.0.0.1:P and 127.0.0.2:P both bind, and the daemon starts."""
    port = free_port()
    argv = [arg for arg in defaults_for(tmp_path, "listen-addr") if arg not in ("--metrics-listen-addr", "")]
    argv += ["--listen-addr", f"127.0.0.1:{port}", "--metrics-listen-addr", f"127.0.0.2:{port}"]
    lines = run_until_started(tmp_path, argv, clean_env())
    assert any("event=daemon_started" in line for line in lines), lines


def test_port_zero_never_clashes(tmp_path):
    cfg = parse_serve_args(["--listen-addr", "127.0.0.1:0", "--metrics-listen-addr", "127.0.0.1:0",
                            "--data-dir", str(tmp_path / "data")], environ={})
    from jetstream.startup import check_listen_addresses_distinct

    check_listen_addresses_distinct(cfg)  # the kernel gives each its own port


# --- (b) unknown JETSTREAM_* variables, (d) --worker-count ------------------------------------

def run_until_started(tmp_path: Path, argv: list[str], env: dict[str, str], workers: int = 1) -> list[str]:
    """Start `serve`, wait for daemon_started, stop it with SIGTERM; every stderr line."""
    proc = subprocess.Popen([sys.executable, "-m", "jetstream.cli", "serve", *argv, "--workers", str(workers)],
                            cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    lines = []
    try:
        for line in proc.stderr:
            lines.append(line)
            assert "startup_failed" not in line, "".join(lines)
            if "event=daemon_started" in line:
                break
    finally:
        proc.terminate()
        rest, _ = proc.communicate(timeout=60)
    lines += rest.splitlines(keepends=True) if rest else []
    assert proc.returncode == 0, "".join(lines)
    return lines


def test_unknown_variables_and_deprecated_flag_are_warned_once_per_start_also_with_workers(tmp_path):
    env = clean_env(JETSTREAM_EVENTTTL="1h", JETSTREAM_NO_SUCH_THING="x",
                    # ours, not flags: never warned about
                    JETSTREAM_PURE_PYTHON="0", JETSTREAM_DEMO_SECONDS="3", JETSTREAM_BENCH_QUICK="0",
                    # a flag's variable: fine
                    JETSTREAM_LIVE_FASTPATH="true",
                    # relay-sim's: not serve's business
                    RELAYSIM_RATE="5")
    argv = defaults_for(tmp_path, "") + ["--worker-count", "8"]
    lines = run_until_started(tmp_path, argv, env, workers=2)
    unknown = [line for line in lines if "event=env_variable_unknown" in line]
    assert len(unknown) == 2, "".join(lines)
    typo = [line for line in unknown if "variable=JETSTREAM_EVENTTTL " in line]
    assert len(typo) == 1 and "did_you_mean=JETSTREAM_EVENT_TTL " in typo[0] and "level=WARNING" in typo[0]
    assert any("variable=JETSTREAM_NO_SUCH_THING " in line for line in unknown)
    deprecated = [line for line in lines if "event=flag_deprecated" in line]
    assert len(deprecated) == 1, "".join(lines)
    assert "flag=--worker-count env=JETSTREAM_WORKER_COUNT" in deprecated[0] and "--workers" in deprecated[0]
    assert 'source="command line"' in deprecated[0]
    started = next(i for i, line in enumerate(lines) if "daemon_started" in line)
    assert all(lines.index(line) < started for line in unknown + deprecated), "warned at start-up, before serving"
    assert "Traceback" not in "".join(lines)


@pytest.mark.parametrize("name, closest", [
    ("JETSTREAM_EVENTTTL", "JETSTREAM_EVENT_TTL"),
    ("JETSTREAM_LISTEN_ADRESS", "JETSTREAM_LISTEN_ADDR"),
    ("JETSTREAM_WORKER", "JETSTREAM_WORKERS"),
    ("JETSTREAM_ZZZZZZZZZZZZZZZZZZZZZZZ", ""),
])
def test_unknown_variable_gets_the_closest_real_name(name, closest):
    assert unknown_variables({name: "1"}, SERVE_FLAGS) == [(name, closest)]


def test_known_and_foreign_variables_are_not_unknown():
    environ = {flag.env: "x" for flag in SERVE_FLAGS}
    environ.update({name: "1" for name in ENV_NOT_FLAGS})
    environ.update({"JETSTREAM_DEMO_LISTEN_ADDR": "x", "RELAYSIM_RATE": "1", "PATH": "/bin", "JETSTREAMX": "1"})
    assert unknown_variables(environ, SERVE_FLAGS) == []
    assert unknown_variables({"RELAYSIM_RAET": "1", "JETSTREAM_RATE": "1"}, RELAY_SIM_FLAGS) == [
        ("RELAYSIM_RAET", "RELAYSIM_RATE")]


def test_every_jetstream_variable_the_code_reads_is_a_flag_or_allowed():
    """A new JETSTREAM_* switch must be added to ENV_NOT_FLAGS, or `serve` would warn about it."""
    from jetstream.cli import demo_flags

    known = {flag.env for flag in SERVE_FLAGS} | {flag.env for flag in demo_flags()} | set(ENV_NOT_FLAGS)
    sources = [path for tree in ("jetstream", "bench", "soak", "fuzz", "systemd") for path in (REPO_ROOT / tree).rglob("*")
               if path.suffix in (".py", ".pyx", ".service", ".md")] + [REPO_ROOT / "Makefile"]
    named = {match for path in sources for match in re.findall(r"\bJETSTREAM_[A-Z0-9_]*[A-Z0-9]\b", path.read_text())}
    assert named, "the scan found the variables"
    assert not sorted(named - known), "named in the code but neither a flag's variable nor in config.ENV_NOT_FLAGS"


def test_worker_count_is_hidden_from_help_but_still_accepted(tmp_path):
    result = subprocess.run([sys.executable, "-m", "jetstream.cli", "serve", "--help"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60, env=clean_env())
    assert result.returncode == 0
    assert "--worker-count" not in result.stdout and "--workers" in result.stdout
    cfg = parse_serve_args([], environ={"JETSTREAM_WORKER_COUNT": "8"})
    assert cfg.worker_count == 8 and cfg.sources["worker_count"] == "environment"
    assert [flag.name for flag in deprecated_flags_set(cfg, SERVE_FLAGS)] == ["worker-count"]
    assert deprecated_flags_set(parse_serve_args([], environ={}), SERVE_FLAGS) == []


# --- (e) each command its own variables -------------------------------------------------------

def test_no_two_commands_share_a_variable():
    from jetstream.cli import demo_flags

    serve = {flag.env for flag in SERVE_FLAGS}
    relay_sim = {flag.env for flag in RELAY_SIM_FLAGS}
    demo = {flag.env for flag in demo_flags()}
    assert not serve & relay_sim and not serve & demo and not relay_sim & demo
    assert all(name.startswith("RELAYSIM_") for name in relay_sim)
    assert all(name.startswith(DEMO_ENV_PREFIX) for name in demo)


def relay_sim(tmp_path: Path, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "jetstream.cli", "relay-sim", "--synthetic", *argv], cwd=tmp_path,
                            env=env, stderr=subprocess.PIPE, text=True)


def listening_url(proc: subprocess.Popen, seen: list[str] | None = None) -> str:
    """The URL relay-sim logs once it listens; the lines before it go into `seen`."""
    seen = [] if seen is None else seen
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        seen.append(line)
        match = re.search(r"event=relay_sim_listening url=(\S+)", line)
        if match:
            return match.group(1)
    raise AssertionError("relay-sim did not listen: " + "".join(seen))


def test_relay_sim_ignores_the_daemons_listen_addr_and_reads_its_own(tmp_path):
    with socket.socket() as daemons_port:
        daemons_port.bind(("127.0.0.1", 0))
        daemons_port.listen()
        taken = daemons_port.getsockname()[1]
        own = free_port()
        # The daemon's variable names a port in use: relay-sim used to try it and fail.
        env = clean_env(JETSTREAM_LISTEN_ADDR=f"127.0.0.1:{taken}", RELAYSIM_LISTEN_ADDR=f"127.0.0.1:{own}")
        proc = relay_sim(tmp_path, [], env)
        try:
            url = listening_url(proc)
        finally:
            proc.terminate()
            proc.communicate(timeout=30)
    assert f"127.0.0.1:{own}/" in url


def test_relay_sim_refuses_its_own_bad_variable_by_its_name(tmp_path):
    result = subprocess.run([sys.executable, "-m", "jetstream.cli", "relay-sim"], cwd=tmp_path,
                            env=clean_env(RELAYSIM_LISTEN_ADDR="nope", RELAYSIM_LOG_FORMAT="json"),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    (line,) = [line for line in result.stderr.splitlines() if "startup_failed" in line]
    assert '"env": "RELAYSIM_LISTEN_ADDR"' in line and '"flag": "--listen-addr"' in line  # JSON: its own log format


def test_relay_sim_address_in_use_names_its_own_variable(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        addr = f"127.0.0.1:{taken.getsockname()[1]}"
        result = subprocess.run([sys.executable, "-m", "jetstream.cli", "relay-sim"], cwd=tmp_path,
                                env=clean_env(RELAYSIM_LISTEN_ADDR=addr), capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "env=RELAYSIM_LISTEN_ADDR " in result.stderr and "JETSTREAM_LISTEN_ADDR" not in result.stderr


@pytest.mark.parametrize("command, own, daemons", [
    ("relay-sim", "RELAYSIM_LISTEN_ADDR", "JETSTREAM_LISTEN_ADDR"),
    ("demo", "JETSTREAM_DEMO_LISTEN_ADDR", "env JETSTREAM_LISTEN_ADDR"),
])
def test_help_names_each_commands_own_variables(tmp_path, command, own, daemons):
    result = subprocess.run([sys.executable, "-m", "jetstream.cli", command, "--help"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60, env=clean_env())
    text = " ".join(result.stdout.split())
    assert own in text and daemons not in text


def test_relay_sim_warns_about_its_own_unknown_variables_only(tmp_path):
    env = clean_env(RELAYSIM_RAET="5", JETSTREAM_EVENTTTL="1h", RELAYSIM_LISTEN_ADDR="127.0.0.1:0")
    proc = relay_sim(tmp_path, [], env)
    seen: list[str] = []
    try:
        listening_url(proc, seen)
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    unknown = [line for line in seen if "event=env_variable_unknown" in line]
    assert len(unknown) == 1, "".join(seen)
    assert "variable=RELAYSIM_RAET did_you_mean=RELAYSIM_RATE " in unknown[0]
