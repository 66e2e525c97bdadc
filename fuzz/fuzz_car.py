"""atheris harness: CAR reading. read_car returns or raises CarError; a verifying read
only returns blocks that hash to their CIDs. Run via `make fuzz`."""
import sys

import atheris

with atheris.instrument_imports(include=["jetstream"]):
    from jetstream.ingest.car import CarError, read_car, verify_block


def test_one_input(data: bytes) -> None:
    try:
        car = read_car(data, verify=True)
    except CarError:
        try:
            read_car(data, verify=False)
        except CarError:
            pass
        return
    assert car.roots
    assert all(verify_block(cid, block) for cid, block in car.blocks.items())


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
