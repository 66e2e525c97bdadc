"""The systemd unit (verified by systemd-analyze), how its venv is made (`make install`), and the
daemon's side of the notify protocol."""
from __future__ import annotations

import asyncio
import configparser
import os
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

REPO_ROOT = Path(__file__).resolve().parent.parent
UNIT = REPO_ROOT / "systemd" / "jetstream.service"
INSTALLED_EXEC = "/opt/jetstream/.venv/bin/jetstream"
CHECK_PYTHON = REPO_ROOT / "systemd" / "check_install_python.py"


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


def unit_values(section: str, key: str) -> list[str]:
    """Every value of a key that may repeat (configparser keeps only the last)."""
    values, current = [], None
    for line in UNIT.read_text().splitlines():
        if line.startswith("["):
            current = line.strip("[]")
        elif current == section and line.startswith(f"{key}="):
            values.append(line.split("=", 1)[1])
    return values


def test_a_refused_setting_is_not_restarted_in_a_loop():
    # Exit status 2 is `startup_failed` (tests/operator/test_startup_validation.py pins that).
    from jetstream.startup import EXIT_STARTUP_FAILED

    service = unit_settings()["Service"]
    assert service["RestartPreventExitStatus"].split() == [str(EXIT_STARTUP_FAILED)]


def test_documentation_is_our_own_installed_beside_the_venv():
    links = unit_values("Unit", "Documentation")
    assert links, "the unit names its docs"
    for link in links:
        assert link.startswith("file:/opt/jetstream/"), f"{link}: our own docs, where `make install` puts them"
        relative = link.removeprefix("file:/opt/jetstream/")
        assert relative == "README.md" or relative.startswith("docs/"), link
        assert (REPO_ROOT / relative).exists(), link
    assert "github.com" not in UNIT.read_text()


def test_unit_says_which_python_to_build_its_venv_with():
    header = UNIT.read_text().split("[Unit]")[0]
    assert "make install" in header and "/usr/bin/python3" in header and "ProtectHome" in header
    assert unit_settings()["Service"]["ProtectHome"] == "yes"


def check_python(python: str, prefix: str) -> subprocess.CompletedProcess:
    return subprocess.run([python, str(CHECK_PYTHON), prefix], capture_output=True, text=True, timeout=30)


def test_install_refuses_a_prefix_protecthome_hides():
    result = check_python(sys.executable, "/home/someone/jetstream")
    assert result.returncode == 2 and "ProtectHome=yes" in result.stderr and "/opt" in result.stderr
    assert len(result.stderr.splitlines()) == 1


def hidden_python() -> str | None:
    """A Python interpreter under /root or /home on this machine (pyenv, conda ...), if any."""
    for candidate in (sys.executable, getattr(sys, "_base_executable", ""), shutil.which("python3") or ""):
        real = os.path.realpath(candidate) if candidate else ""
        if real.startswith(("/root/", "/home/")):
            return candidate
    return None


def test_install_refuses_a_python_protecthome_hides_before_making_anything(tmp_path):
    python = hidden_python()
    if python is None:
        pytest.skip("no Python under /root or /home on this machine")
    result = check_python(python, "/opt/jetstream")
    assert result.returncode == 2 and "ProtectHome=yes" in result.stderr and "/usr/bin/python3" in result.stderr
    # Through make: refused first, nothing made.
    made = subprocess.run(["make", "-s", "install", f"PREFIX={tmp_path / 'opt'}", f"INSTALL_PYTHON={python}"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert made.returncode != 0 and "refused" in made.stderr
    assert not (tmp_path / "opt").exists()


def test_a_system_python_passes_the_install_check():
    if not os.path.exists("/usr/bin/python3"):
        pytest.skip("no /usr/bin/python3")
    result = check_python("/usr/bin/python3", "/opt/jetstream")
    if "no venv/ensurepip" in result.stderr or "no C headers" in result.stderr:
        pytest.skip(result.stderr.strip())
    assert result.returncode == 0, result.stderr


def make_dry_run(target: str, *args: str) -> str:
    result = subprocess.run(["make", "-n", "-B", target, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_install_makes_a_production_venv_without_the_test_extras():
    commands = make_dry_run("install", "PREFIX=/opt/jetstream")
    assert "-m venv --clear /opt/jetstream/.venv" in commands
    assert "/opt/jetstream/.venv/bin/python -m pip install" in commands
    assert "[test]" not in commands and "test-requirements" not in commands and " -e " not in commands
    # ... while `make test` still gets them.
    assert "test-requirements.txt" in make_dry_run("test")
    assert "'.[cluster]'" in make_dry_run("install", "INSTALL_EXTRAS=cluster")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_make_install_gives_a_venv_the_unit_can_run(tmp_path):
    """The real thing (~2 min: compiles the core): a venv from the system Python, no test tools,
    the compiled core, the docs beside it; its python resolves outside what ProtectHome hides."""
    if not os.path.exists("/usr/bin/python3") or check_python("/usr/bin/python3", "/opt/jetstream").returncode:
        pytest.skip("no usable system Python (/usr/bin/python3 with venv and headers)")
    prefix = tmp_path / "opt"
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH") and not k.startswith("JETSTREAM_")}
    made = subprocess.run(["make", "-s", "install", f"PREFIX={prefix}"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=840)
    assert made.returncode == 0, made.stdout[-3000:] + made.stderr[-3000:]
    assert "project.license" not in made.stdout + made.stderr, "no setuptools license banner"
    python = prefix / ".venv" / "bin" / "python"
    assert not os.path.realpath(python).startswith(("/root/", "/home/"))
    probe = subprocess.run([str(python), "-c", (
        "import importlib.util as u, jetstream.core as core; "
        "print(core.USING_CYTHON, *(u.find_spec(m) is not None for m in ('pytest', 'ruff', 'hypothesis', 'Cython')))")],
        capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env)
    assert probe.stdout.split() == ["True", "False", "False", "False", "False"], probe.stderr
    assert (prefix / "README.md").exists() and (prefix / "docs" / "architecture.md").exists()
    help_text = subprocess.run([str(prefix / ".venv" / "bin" / "jetstream"), "serve", "--help"], capture_output=True,
                               text=True, timeout=60, cwd=tmp_path, env=env)
    assert help_text.returncode == 0 and "--workers" in help_text.stdout


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
