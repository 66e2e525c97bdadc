"""The .pyi stubs of the Cython extensions say what the extensions really export.

Every public name a stub declares exists in the built module (same kind, same parameter
names for functions and methods), and everything public the module defines itself is in
its stub, so callers' parameters can be typed against the stubs.
"""
from __future__ import annotations

import ast
import importlib
import inspect
import pathlib

import pytest

CORE = pathlib.Path(__file__).resolve().parents[2] / "jetstream" / "_core"
EXTENSIONS = sorted(path.stem for path in CORE.glob("*.pyx"))


def _stub(name: str) -> ast.Module:
    return ast.parse((CORE / f"{name}.pyi").read_text())


def _module(name: str):
    try:
        return importlib.import_module(f"jetstream._core.{name}")
    except ImportError:
        pytest.skip("Cython extensions not built")


def _parameters(node: ast.FunctionDef) -> list[str]:
    args = node.args
    return [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs if a.arg != "self"]


def _runtime_parameters(function) -> list[str] | None:
    try:
        return [p for p in inspect.signature(function).parameters if p != "self"]
    except (TypeError, ValueError):  # no introspectable signature (e.g. a property)
        return None


def test_every_extension_has_a_stub():
    assert EXTENSIONS and all((CORE / f"{name}.pyi").exists() for name in EXTENSIONS)


@pytest.mark.parametrize("name", EXTENSIONS)
def test_stub_names_and_parameters_match_the_module(name):
    module, stub = _module(name), _stub(name)
    declared = set()
    for node in stub.body:
        if isinstance(node, ast.FunctionDef):
            declared.add(node.name)
            assert _runtime_parameters(getattr(module, node.name)) in (None, _parameters(node)), node.name
        elif isinstance(node, ast.ClassDef):
            declared.add(node.name)
            cls = getattr(module, node.name)
            assert isinstance(cls, type), node.name
            methods = {item.name: item for item in node.body if isinstance(item, ast.FunctionDef)}
            fields = {item.target.id for item in node.body if isinstance(item, ast.AnnAssign)}
            for method_name, item in methods.items():
                assert hasattr(cls, method_name), f"{name}.{node.name}.{method_name}"
                if not method_name.startswith("__") and not any(
                        isinstance(d, ast.Name) and d.id == "property" for d in item.decorator_list):
                    got = _runtime_parameters(getattr(cls, method_name))
                    assert got in (None, _parameters(item)), f"{name}.{node.name}.{method_name}"
            public = {attr for attr in dir(cls) if not attr.startswith("_")}
            assert public <= set(methods) | fields, f"{name}.{node.name} lacks {public - set(methods) - fields}"
        elif isinstance(node, ast.AnnAssign):
            declared.add(node.target.id)
            assert hasattr(module, node.target.id), node.target.id
        elif isinstance(node, ast.ImportFrom):
            declared.update(alias.asname for alias in node.names if alias.asname == alias.name)
    own = {attr for attr, value in vars(module).items()
           if not attr.startswith("_") and getattr(value, "__module__", None) == module.__name__}
    assert own <= declared, f"{name}: not in the stub: {own - declared}"
