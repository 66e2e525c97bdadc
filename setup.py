"""Build script: compiles every Cython module in jetstream/_core/ at install time.

Metadata lives in pyproject.toml; this file exists only because the extension
list is computed (one extension per .pyx, so adding a module needs no edit here).
"""
from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup

CORE_DIR = Path("jetstream/_core")


def core_extensions() -> list[Extension]:
    return [
        Extension(
            f"jetstream._core.{pyx.stem}",
            [str(pyx)],
            extra_compile_args=["-O3"],
        )
        for pyx in sorted(CORE_DIR.glob("*.pyx"))
    ]


setup(
    ext_modules=cythonize(
        core_extensions(),
        language_level=3,
        compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True},
    ),
)
