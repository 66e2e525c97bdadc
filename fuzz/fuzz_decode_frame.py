"""atheris harness: relay frame decoding. decode_frame returns or raises FrameError, and
every event it emits renders to JSON naming its DID. Run via `make fuzz`."""
import json
import sys

import atheris

with atheris.instrument_imports(include=["jetstream"]):
    from jetstream.events import render_json
    from jetstream.ingest.decode import decode_frame
    from jetstream.ingest.frames import FrameError


def test_one_input(data: bytes) -> None:
    for verify_all_blocks in (False, True):
        try:
            decoded = decode_frame(data, verify_all_blocks=verify_all_blocks)
        except FrameError:
            return
        for event in decoded.events:
            assert json.loads(render_json(event, 1))["did"] == event.did


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
