"""`jetstream serve` refuses every unusable setting before it opens or binds anything.

Each case runs the real CLI as a subprocess, once with the flag and once with its
JETSTREAM_* variable, and checks: exit status 2, exactly one `event=startup_failed` line
naming both the flag and the variable, no traceback, no listener bound, no data dir made.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from jetstream.config import SERVE_FLAGS

pytestmark = pytest.mark.timeout(120)

REPO_ROOT = Path(__file__).resolve().parents[2]
ENV_OF = {flag.name: flag.env for flag in SERVE_FLAGS}

# (flag, bad value, what the error line must say)
INVALID = [
    ("max-sub-rate", "0", "must be > 0"),
    ("max-sub-rate", "-1", "must be > 0"),
    ("listen-addr", "abc", "HOST:PORT"),
    ("listen-addr", "127.0.0.1:99999", "0..65535"),
    ("metrics-listen-addr", "127.0.0.1:70000", "0..65535"),
    ("event-ttl", "-5s", "must be > 0"),
    ("event-ttl", "0", "must be > 0"),
    ("event-ttl", "abc", "not a duration"),
    ("ring-capacity", "0", "must be >= 1"),
    ("log-level", "verbose", "one of debug, info, warning, error"),
    ("log-format", "xml", "one of text, json"),
    ("group-commit-ms", "-1", "must be >= 0"),
    ("ws-url", "notaurl", "ws:// or wss://"),
    ("ws-url", "http://relay.example/xrpc/com.atproto.sync.subscribeRepos", "ws:// or wss://"),
    ("override-relay-cursor", "-2", "must be >= -1"),
    ("max-client-message-bytes", "0", "must be >= 1"),
    ("verify-mst", "maybe", "true or false"),
    ("verify-processes", "-1", "must be >= 0"),
    ("verify-processes", "many", "not a count or auto"),
]


def run_serve(tmp_path: Path, argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("JETSTREAM_")}
    return subprocess.run(
        [sys.executable, "-m", "jetstream.cli", "serve", *argv],
        cwd=tmp_path, env=dict(base, PYTHONUNBUFFERED="1", **(env or {})),
        capture_output=True, text=True, timeout=60)


def defaults_for(tmp_path: Path, skip: str) -> list[str]:
    """Good values for everything the case does not set, so only the bad one can fail."""
    good = {"data-dir": str(tmp_path / "data"), "listen-addr": "127.0.0.1:0", "metrics-listen-addr": "",
            "ws-url": "ws://127.0.0.1:9/xrpc/com.atproto.sync.subscribeRepos"}
    return [arg for name, value in good.items() if name != skip for arg in (f"--{name}", value)]


def assert_refused(result: subprocess.CompletedProcess, flag: str, says: str, data_dir: Path | None) -> None:
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    lines = [line for line in output.splitlines() if "event=startup_failed" in line]
    assert len(lines) == 1, output
    assert f"flag=--{flag} " in lines[0] and f"env={ENV_OF[flag]} " in lines[0], lines[0]
    assert says in lines[0], lines[0]
    assert "Traceback" not in output
    for listening in ("subscribe_server_listening", "metrics_listening", "log_opened", "daemon_started"):
        assert listening not in output, output
    if data_dir is not None:
        assert not data_dir.exists(), "nothing may be created for a refused setting"


@pytest.mark.parametrize("form", ["flag", "env"])
@pytest.mark.parametrize("flag, value, says", INVALID, ids=[f"{f}={v}" for f, v, _ in INVALID])
def test_invalid_setting_is_refused_before_anything_opens(tmp_path, flag, value, says, form):
    argv = defaults_for(tmp_path, flag)
    if form == "flag":
        result = run_serve(tmp_path, argv + [f"--{flag}={value}"])
    else:
        result = run_serve(tmp_path, argv, {ENV_OF[flag]: value})
    assert_refused(result, flag, says, tmp_path / "data")
    if form == "env":
        assert "source=environment " in result.stderr


@pytest.mark.parametrize("form", ["flag", "env"])
@pytest.mark.parametrize("problem", ["missing", "corrupt"])
def test_unusable_zstd_dictionary_is_refused(tmp_path, problem, form):
    path = tmp_path / "dict.zdict"
    if problem == "corrupt":
        path.write_bytes(b"this is not a zstd dictionary" * 10)
    argv = defaults_for(tmp_path, "zstd-dictionary-path")
    if form == "flag":
        result = run_serve(tmp_path, argv + ["--zstd-dictionary-path", str(path)])
    else:
        result = run_serve(tmp_path, argv, {"JETSTREAM_ZSTD_DICTIONARY_PATH": str(path)})
    assert_refused(result, "zstd-dictionary-path", "cannot read" if problem == "missing" else "not a zstd dictionary",
                   tmp_path / "data")
    assert str(path) in result.stderr


@pytest.mark.parametrize("form", ["flag", "env"])
@pytest.mark.parametrize("flag", ["listen-addr", "metrics-listen-addr"])
def test_address_in_use_names_the_address(tmp_path, flag, form):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        addr = f"127.0.0.1:{taken.getsockname()[1]}"
        argv = defaults_for(tmp_path, flag)
        if form == "flag":
            result = run_serve(tmp_path, argv + [f"--{flag}", addr])
        else:
            result = run_serve(tmp_path, argv, {ENV_OF[flag]: addr})
    assert_refused(result, flag, f"cannot bind {addr}", tmp_path / "data")
    assert "in use" in result.stderr


def _readonly_mount_available() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount --bind / /mnt 2>/dev/null; true"],
                           capture_output=True, timeout=10)
    return probe.returncode == 0


@pytest.mark.skipif(not _readonly_mount_available(), reason="needs unshare -m and mount (root) for a read-only bind mount")
@pytest.mark.parametrize("form", ["flag", "env"])
def test_data_dir_under_read_only_parent_is_refused(tmp_path, form):
    # Root ignores permission bits, so the parent is made read-only the way a real read-only
    # filesystem is: a read-only bind mount, in a private mount namespace of the child only.
    parent = tmp_path / "ro"
    parent.mkdir()
    data_dir = parent / "data"
    argv = defaults_for(tmp_path, "data-dir")
    serve = [sys.executable, "-m", "jetstream.cli", "serve", *argv]
    env = {k: v for k, v in os.environ.items() if not k.startswith("JETSTREAM_")}
    if form == "flag":
        serve += ["--data-dir", str(data_dir)]
    else:
        env["JETSTREAM_DATA_DIR"] = str(data_dir)
    script = f'mount --bind "{parent}" "{parent}" && mount -o remount,ro,bind "{parent}" && exec "$@"'
    result = subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", *serve], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert_refused(result, "data-dir", "not writable", data_dir)
    assert "Read-only file system" in result.stderr


def test_help_names_formats_not_functions(tmp_path):
    result = subprocess.run([sys.executable, "-m", "jetstream.cli", "serve", "--help"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert "parse_duration" not in result.stdout and "invalid" not in result.stdout
    assert "a duration (24h, 1m30s, 250ms, or seconds), > 0" in " ".join(result.stdout.split())


def test_valid_settings_still_start(tmp_path):
    """The checks refuse bad values only: a daemon with valid edge values comes up (and is stopped)."""
    argv = defaults_for(tmp_path, "") + ["--group-commit-ms", "0", "--ping-interval", "0", "--max-lag-events", "0",
                                         "--override-relay-cursor", "-1"]
    base = {k: v for k, v in os.environ.items() if not k.startswith("JETSTREAM_")}
    proc = subprocess.Popen([sys.executable, "-m", "jetstream.cli", "serve", *argv], cwd=tmp_path,
                            env=dict(base, PYTHONUNBUFFERED="1"), stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stderr:
            if "event=daemon_started" in line:
                break
            assert "startup_failed" not in line, line
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert proc.returncode == 0


@pytest.mark.parametrize("argv, flag, says", [
    (["--rate", "-1"], "rate", "must be >= 0"),
    (["--listen-addr", "nope"], "listen-addr", "HOST:PORT"),
    (["--log-format", "xml"], "log-format", "one of text, json"),
])
def test_relay_sim_refuses_bad_flags_the_same_way(tmp_path, argv, flag, says):
    result = subprocess.run([sys.executable, "-m", "jetstream.cli", "relay-sim", *argv], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    (line,) = [line for line in result.stderr.splitlines() if "event=startup_failed" in line]
    assert f"flag=--{flag} " in line and says in line
    assert "Traceback" not in result.stderr and "relay_sim_listening" not in result.stderr


def test_relay_sim_address_in_use_names_the_address(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        addr = f"127.0.0.1:{taken.getsockname()[1]}"
        result = subprocess.run([sys.executable, "-m", "jetstream.cli", "relay-sim", "--listen-addr", addr],
                                cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and f"cannot bind {addr}" in result.stderr and "Traceback" not in result.stderr
