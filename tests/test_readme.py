"""The README's configuration table lists every flag of `jetstream serve` with its env var."""
from pathlib import Path

from jetstream.config import SERVE_FLAGS

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_every_serve_flag_and_env_var_is_in_the_configuration_table():
    table = README[README.index("## Configuration"):README.index("## Where we differ")]
    missing = [f.name for f in SERVE_FLAGS if f"`--{f.name}`" not in table or f"`{f.env}`" not in table]
    assert not missing, f"README Configuration table lacks: {missing}"


def test_quick_start_names_the_three_make_targets():
    quick = README[README.index("## Quick start"):README.index("## How it works")]
    for target in ("make run", "make test", "make demo"):
        assert target in quick
