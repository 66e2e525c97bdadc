"""jetstream/errors.py: one class per refusal, shared by both twins and their callers."""
from __future__ import annotations

import ast
import pathlib

import jetstream.errors as errors
from jetstream import implementation
from jetstream._py import car as py_car
from jetstream._py import mst as py_mst
from jetstream._py import position as py_position
from jetstream._py import record_json as py_record_json
from jetstream.ingest import frames

PACKAGE = pathlib.Path(errors.__file__).parent


def test_every_layer_names_the_same_classes():
    assert frames.FrameError is errors.FrameError
    assert py_car.CarError is errors.CarError
    assert py_mst.MstError is errors.MstError
    assert py_record_json.RecordError is errors.RecordError
    assert py_position.PositionConflict is errors.PositionConflict
    assert implementation.PositionConflict is errors.PositionConflict


def test_errors_imports_nothing_from_the_project():
    tree = ast.parse((PACKAGE / "errors.py").read_text())
    imported = [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    imported += [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    assert [name for name in imported if name and name.startswith("jetstream")] == []


def test_the_core_and_its_twins_never_import_ingest_or_server():
    """_core and _py sit below ingest and server: an import upwards would be a cycle."""
    offenders = []
    for path in list((PACKAGE / "_core").glob("*.py*")) + list((PACKAGE / "_py").glob("*.py")):
        for line in path.read_text().splitlines():
            words = line.split()
            if len(words) > 1 and words[0] in ("from", "import", "cimport") and (
                    words[1].startswith(("jetstream.ingest", "jetstream.server", "jetstream.log"))):
                offenders.append(f"{path.name}: {line.strip()}")
    assert offenders == []


def test_frame_error_keeps_reason_and_detail():
    err = errors.FrameError("bad_body", "type=#commit field=ops")
    assert (err.reason, err.detail, str(err)) == ("bad_body", "type=#commit field=ops", "bad_body: type=#commit field=ops")
    assert isinstance(err, ValueError) and isinstance(errors.PositionConflict("x"), RuntimeError)
