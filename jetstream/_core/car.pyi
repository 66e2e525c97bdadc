"""Type stub of the Cython CAR reader (car.pyx); the reference twin is jetstream/_py/car.py."""
from collections.abc import Iterator, KeysView, Mapping

from jetstream._py.car import CarFile as CarFile
from jetstream.errors import CarError as CarError

class Blocks(Mapping[bytes, memoryview]):
    def __init__(self, data: bytes, spans: dict[bytes, tuple[int, int]]) -> None: ...
    def __getitem__(self, cid: bytes) -> memoryview: ...
    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[bytes]: ...
    def get(self, cid: bytes, default: memoryview | None = None) -> memoryview | None: ...  # type: ignore[override]
    def keys(self) -> KeysView[bytes]: ...  # type: ignore[override]
    def values(self) -> list[memoryview]: ...  # type: ignore[override]
    def items(self) -> list[tuple[bytes, memoryview]]: ...  # type: ignore[override]

def read_car(data: bytes | bytearray | memoryview, verify: bool = False) -> CarFile: ...
