"""The distributions: `python -m build` makes an sdist and, from that sdist, a wheel.

Pinned: the sdist holds what a build needs (setup.py, pyproject.toml, README, the .pyx/.pxd
sources, the shipped dictionary) and the docs, and none of the repository's test data
(tests/data, v1's dictionary) or generated C; the wheel carries one compiled extension per
.pyx and the shipped dictionary; and that wheel, installed into a fresh venv without Cython,
gives a working `jetstream` whose core is the compiled one. `python -m build` builds the
wheel by unpacking the sdist and running its PEP 517 build in an isolated environment, which
is what `pip install jetstream_py-*.tar.gz` does, so a wheel here means the sdist builds.

Building compiles every .pyx once (2-5 minutes on 2 shared, busy cores); the build
environment and the runtime dependencies come from the package index pip is configured with.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

REPO_ROOT = Path(__file__).resolve().parents[2]
CORE_MODULES = sorted(p.stem for p in (REPO_ROOT / "jetstream" / "_core").glob("*.pyx"))
CORE_PXDS = sorted(p.name for p in (REPO_ROOT / "jetstream" / "_core").glob("*.pxd"))
SHIPPED_DICTIONARY = "jetstream/data/jetstream.zdict"
LEGACY_DICTIONARY = "legacy_subscribe.zdict"


def clean_env() -> dict[str, str]:
    """The environment without anything that would make the checkout importable."""
    return {key: value for key, value in os.environ.items()
            if key not in ("PYTHONPATH", "VIRTUAL_ENV") and not key.startswith("JETSTREAM_")}


@pytest.fixture(scope="module")
def distributions(tmp_path_factory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("dist")
    result = subprocess.run([sys.executable, "-m", "build", "--outdir", str(out), str(REPO_ROOT)],
                            capture_output=True, text=True, timeout=840, env=clean_env())
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    # pyproject's `license` is an SPDX string: no setuptools deprecation banner about a TOML table.
    assert "project.license" not in result.stdout + result.stderr
    (sdist,) = out.glob("jetstream_py-*.tar.gz")
    (wheel,) = out.glob("jetstream_py-*.whl")
    return sdist, wheel


def sdist_names(sdist: Path) -> set[str]:
    with tarfile.open(sdist) as archive:
        return {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}


def wheel_names(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        return set(archive.namelist())


def test_sdist_holds_the_build_inputs_and_no_test_data(distributions):
    names = sdist_names(distributions[0])
    needed_files = ("setup.py", "pyproject.toml", "README.md", "docs/protocol.md", SHIPPED_DICTIONARY, "jetstream/cli.py")
    for needed in needed_files:
        assert needed in names, needed
    assert {f"jetstream/_core/{module}.pyx" for module in CORE_MODULES} <= names
    assert {f"jetstream/_core/{pxd}" for pxd in CORE_PXDS} <= names
    assert not [n for n in names if n.startswith(("tests/", "bench/", "fuzz/", "soak/"))]
    assert not [n for n in names if n.endswith((".c", ".so", LEGACY_DICTIONARY))]


def test_wheel_holds_a_compiled_extension_per_pyx_and_the_shipped_dictionary(distributions):
    names = wheel_names(distributions[1])
    compiled = {n.split("/")[-1].split(".")[0] for n in names
                if n.startswith("jetstream/_core/") and n.endswith(".so")}
    assert compiled == set(CORE_MODULES)
    assert SHIPPED_DICTIONARY in names
    assert "jetstream/server/static/status.html" in names  # GET /status serves it from the package
    assert not [n for n in names if n.startswith("tests/") or n.endswith((".c", LEGACY_DICTIONARY))]


def test_wheel_installed_in_a_fresh_venv_without_cython_runs(distributions, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python, env = venv / "bin" / "python", clean_env()
    install = subprocess.run([str(python), "-m", "pip", "install", "--quiet", str(distributions[1])],
                             capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert install.returncode == 0, install.stdout[-4000:] + install.stderr[-4000:]

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(args, capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)

    assert run(str(python), "-c", "import Cython").returncode != 0, "Cython is a build-time dependency only"
    help_text = run(str(venv / "bin" / "jetstream"), "--help")
    assert help_text.returncode == 0, help_text.stderr
    assert "serve" in help_text.stdout and "demo" in help_text.stdout
    probe = run(str(python), "-c", (
        "import jetstream._core.ring as ring, jetstream.core as core, jetstream.dictionary as d; "
        "print(ring.__file__); print(core.USING_CYTHON); "
        "import hashlib; print(hashlib.sha256(d.SHIPPED_DICTIONARY_PATH.read_bytes()).hexdigest())"))
    assert probe.returncode == 0, probe.stderr
    ring_file, using_cython, dictionary_sha256 = probe.stdout.split()
    assert ring_file.startswith(str(venv)) and ring_file.endswith(".so"), "the compiled ring, from the venv"
    assert using_cython == "True"
    assert dictionary_sha256 == hashlib.sha256((REPO_ROOT / SHIPPED_DICTIONARY).read_bytes()).hexdigest()
