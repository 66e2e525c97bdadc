"""The README is a first read (what it is, the three make targets, what degrades /healthz, where
to read on), and docs/operations.md's configuration table lists every flag of `jetstream serve`
with its env var."""
import re
from pathlib import Path

from jetstream.config import SERVE_FLAGS

REPO_ROOT = Path(__file__).resolve().parents[1]
README = (REPO_ROOT / "README.md").read_text()
OPERATIONS = (REPO_ROOT / "docs" / "operations.md").read_text()
README_MAX_LINES = 300  # a newcomer's first read; the manual is docs/
RAISED_KIND = re.compile(r"""raise_problem\(\s*["']([a-z0-9_]+)["']""")


def section(text: str, heading: str) -> str:
    """From `heading` (a "## " line) to the next "## " heading."""
    start = text.index(f"\n{heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else len(text)]


def test_every_serve_flag_and_env_var_is_in_the_configuration_table():
    table = section(OPERATIONS, "## Configuration")
    missing = [f.name for f in SERVE_FLAGS if f"`--{f.name}`" not in table or f"`{f.env}`" not in table]
    assert not missing, f"docs/operations.md Configuration table lacks: {missing}"


def test_quick_start_names_the_three_make_targets():
    quick = section(README, "## Quick start")
    for target in ("make run", "make test", "make demo"):
        assert target in quick


def test_the_readme_stays_a_first_read():
    lines = README.count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines: move the detail into docs/"
    for heading in ("## Quick start", "## Documentation", "## Health"):
        assert f"\n{heading}\n" in README
    for doc in ("docs/operations.md", "docs/performance.md", "docs/protocol.md", "docs/architecture.md"):
        assert f"]({doc})" in section(README, "## Documentation"), doc


def test_every_problem_kind_the_code_raises_is_in_the_readme_health_table():
    health = section(README, "## Health")
    rows = {line.split("|")[1].strip().strip("`") for line in health.splitlines()
            if line.startswith("| ") and not line.startswith("| kind ")}
    raised = {kind for path in (REPO_ROOT / "jetstream").rglob("*.py")
              for kind in RAISED_KIND.findall(path.read_text())}
    assert not raised - rows, f"README's Health table lacks: {sorted(raised - rows)}"
