"""The systemd unit (verified by systemd-analyze) and the daemon's side of the notify protocol."""
from __future__ import annotations

import asyncio
import configparser
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from jetstream.config import parse_serve_args
from jetstream.daemon import Daemon, sd_notify, watchdog_interval_s

pytestmark = pytest.mark.timeout(60)

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "jetstream.service"
INSTALLED_EXEC = "/opt/jetstream/.venv/bin/jetstream"


def unit_settings() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read_string(UNIT.read_text())
    return parser


def verify(unit_text: str, tmp_path: Path) -> str:
    """systemd-analyze verify on a copy whose ExecStart points at this checkout's entry point."""
    jetstream_bin = Path(sys.executable).parent / "jetstream"
    copy = tmp_path / "jetstream.service"
    copy.write_text(unit_text.replace(INSTALLED_EXEC, str(jetstream_bin)))
    result = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=30)
    return f"rc={result.returncode} {result.stdout}{result.stderr}".strip()


@pytest.fixture
def systemd_analyze():
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (.ci/run installs the systemd package)")


def test_unit_passes_systemd_analyze_verify_without_warnings(tmp_path, systemd_analyze):
    assert verify(UNIT.read_text(), tmp_path) == "rc=0"


def test_systemd_analyze_would_catch_a_broken_unit(tmp_path, systemd_analyze):
    broken = UNIT.read_text().replace("Type=notify", "Type=notiffy").replace("KillMode=mixed", "KillMoode=mixed")
    report = verify(broken, tmp_path)
    assert "notiffy" in report and "KillMoode" in report


def test_unit_is_notify_typed_sandboxed_and_restarted():
    service = unit_settings()["Service"]
    assert service["Type"] == "notify" and service["NotifyAccess"] == "main"
    assert int(service["WatchdogSec"]) > 0
    assert service["Restart"] == "always"
    assert service["DynamicUser"] == "yes" and service["StateDirectory"] == "jetstream"
    assert service["ProtectSystem"] == "strict" and service["NoNewPrivileges"] == "yes"
    assert service["ExecStart"] == f"{INSTALLED_EXEC} serve"
    # The daemon's own shutdown bound (15 s) fits inside systemd's before SIGKILL.
    assert int(service["TimeoutStopSec"]) > 15


def receiver(tmp_path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(5)
    return sock


def test_sd_notify_sends_one_datagram_to_notify_socket(tmp_path, monkeypatch):
    with receiver(tmp_path) as sock:
        monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
        assert sd_notify("READY=1") is True
        assert sock.recv(4096) == b"READY=1"


def test_sd_notify_reaches_an_abstract_socket(monkeypatch):
    name = f"jetstream-test-{id(monkeypatch)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sd_notify("WATCHDOG=1") is True
        assert sock.recv(4096) == b"WATCHDOG=1"


def test_sd_notify_is_a_no_op_outside_systemd_and_survives_a_dead_socket(tmp_path, monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sd_notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens.sock"))
    assert sd_notify("READY=1") is False


def test_watchdog_interval_is_half_of_watchdog_usec_and_only_for_this_pid(monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert watchdog_interval_s() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", "1")  # meant for another process
    assert watchdog_interval_s() is None
    monkeypatch.delenv("WATCHDOG_USEC")
    assert watchdog_interval_s() is None


async def test_daemon_sends_ready_when_log_and_listener_are_up_then_watchdog_pings(tmp_path, monkeypatch):
    sock = receiver(tmp_path)
    sock.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # a ping every 0.1 s
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    cfg = parse_serve_args(["--listen-addr", "127.0.0.1:0", "--metrics-listen-addr", "",
                            "--data-dir", str(tmp_path / "data")], environ={})
    daemon = Daemon(cfg)
    loop = asyncio.get_running_loop()
    try:
        await daemon.start(connect_relay=False)
        assert await asyncio.wait_for(loop.sock_recv(sock, 4096), 5) == b"READY=1"
        assert await asyncio.to_thread(healthz_status, daemon.port) == 200  # READY meant: listening, log open
        pings = [await asyncio.wait_for(loop.sock_recv(sock, 4096), 5) for _ in range(3)]
        assert pings == [b"WATCHDOG=1"] * 3
        await daemon.stop()
        later = []
        while b"STOPPING=1" not in later:  # a WATCHDOG=1 sent just before stop may come first
            later.append(await asyncio.wait_for(loop.sock_recv(sock, 4096), 5))
        assert set(later) <= {b"WATCHDOG=1", b"STOPPING=1"}
    finally:
        await daemon.stop()
        sock.close()


def healthz_status(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
