"""atheris harness: record -> JSON. The Cython emitter and its pure-Python twin give the
same bytes or the same RecordError reason, and the bytes are a JSON object. Run via
`make fuzz`. (Coverage guidance sees the Python twin; the Cython one is compared.)"""
import json
import sys

import atheris

with atheris.instrument_imports(include=["jetstream"]):
    from jetstream._core import record_json as cython_twin
    from jetstream._py import record_json as python_twin


def convert(twin, data: bytes):
    try:
        return "ok", twin.record_to_json(data)
    except twin.RecordError as err:
        return "error", err.reason


def test_one_input(data: bytes) -> None:
    fast, reference = convert(cython_twin, data), convert(python_twin, data)
    assert fast == reference, (fast, reference)
    if fast[0] == "ok":
        assert isinstance(json.loads(fast[1]), dict)


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
