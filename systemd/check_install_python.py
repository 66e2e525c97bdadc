"""`make install`'s first step: is this Python one the systemd unit can run a venv of?

Owns: refusing, in one line and with exit status 2, an interpreter (or a PREFIX) that
systemd/jetstream.service cannot use, before `make install` makes anything: a venv's
python is a link to the interpreter it was made from and reads that interpreter's
standard library, and the unit's ProtectHome=yes hides /root, /home and /run/user, so a
venv made from a pyenv, conda or uv Python there fails at start with "No such file".
Also a Python older than the package needs, or one without the venv module or the C
headers the Cython core compiles against.
It must never change anything: it only looks at the running interpreter and a path.

Run as: INSTALL_PYTHON systemd/check_install_python.py PREFIX
"""
from __future__ import annotations

import importlib.util
import os
import sys
import sysconfig

# What ProtectHome=yes makes inaccessible to the service.
HIDDEN_BY_PROTECT_HOME = ("/root", "/home", "/run/user")
MINIMUM = (3, 11)  # pyproject.toml: requires-python
ADVICE = ("use a system Python, e.g. make install INSTALL_PYTHON=/usr/bin/python3 "
          "(Debian/Ubuntu: apt install python3 python3-venv python3-dev)")


def hidden(path: str) -> bool:
    real = os.path.realpath(path)
    return any(real == top or real.startswith(top + "/") for top in HIDDEN_BY_PROTECT_HOME)


def problem(prefix: str) -> str:
    """Why this interpreter (or prefix) will not do, or "" when it will."""
    if hidden(prefix):
        return (f"PREFIX {prefix} is under a directory the unit's ProtectHome=yes hides from the service; "
                f"install under /opt (the unit runs /opt/jetstream/.venv/bin/jetstream)")
    if sys.version_info < MINIMUM:
        return f"Python {sys.version.split()[0]} is older than {MINIMUM[0]}.{MINIMUM[1]}"
    for what, path in (("the interpreter", sys.executable), ("its installation", sys.base_prefix)):
        if hidden(path):
            return (f"{what} is under {os.path.realpath(path)}, which the unit's ProtectHome=yes hides "
                    f"from the service (a venv made from it cannot start)")
    if importlib.util.find_spec("venv") is None or importlib.util.find_spec("ensurepip") is None:
        return "it has no venv/ensurepip module (Debian/Ubuntu: apt install python3-venv)"
    if not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")):
        return "it has no C headers (Python.h) to compile the Cython core (Debian/Ubuntu: apt install python3-dev)"
    return ""


def main(argv: list[str]) -> int:
    prefix = argv[1] if len(argv) > 1 else "/opt/jetstream"
    why = problem(prefix)
    if why:
        advice = "" if why.startswith("PREFIX") else f"; {ADVICE}"
        print(f"install: refused INSTALL_PYTHON={sys.executable}: {why}{advice}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
