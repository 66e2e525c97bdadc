"""DID bloom filters, bit for bit as github.com/jcalabro/gloom v0.1.0 builds and marshals them.

Owns: sizing (`gloom.New(expected_items, fp_rate)`), insertion and lookup (`AddString`,
`TestString`) and the `MarshalBinary` / `UnmarshalBinary` layout, which v2 writes into segment
footers verbatim (v2 docs/README.md section 3.1.3: a gloom serialization change is a segment format
change). It must never do I/O.

gloom is a cache-line blocked, one-hashing filter: 512-bit blocks, each split into k partitions of
pairwise-coprime sizes summing to 512. A key's xxh3-128 hash picks block
floor(hi64 * num_blocks / 2**64) and an intra-block hash lo32(lo64) ^ hi32(lo64); partition i
sets bit offsets[i] + intra % sizes[i] of that block.

Sizing starts from the textbook bits per item, then grows the block count by ~12.5% steps until
the Poisson-weighted estimate of the blocked filter's false-positive rate, at the best k in
3..17, meets the target (at most 4x). Python's libm and Go's math package agree on these
doubles for the sizes the tests pin; a last-ulp difference could only change a choice that sits
exactly on a threshold.

Serialized: u8 version (1) | u32 k | u64 num_blocks | u64 count | num_blocks * 64 bytes of
little-endian u64 words | u32 CRC-32C (Castagnoli) of everything before it. count is the number
of additions (v2 adds each distinct DID once).
"""
from __future__ import annotations

import functools
import math
import struct

import xxhash

from jetstream.archive.format import InvalidFooter

try:  # the C implementation; the table below is the fallback with the same results
    from google_crc32c import value as _crc32c
except ImportError:  # pragma: no cover - exercised only where the wheel is missing
    _crc32c = None

BLOCK_BITS = 512
BLOCK_BYTES = BLOCK_BITS // 8
SERIALIZE_VERSION = 1
HEADER_SIZE = 21
CHECKSUM_SIZE = 4
DID_FP_RATE = 0.001  # v2 segment/bloom.go: both the segment bloom and the per-block blooms
MIN_K, MAX_K = 3, 17
_LN2_SQUARED = 0.4804530139182014
_GROWTH_CAP = 4.0
_MAX_BLOCKS = 1 << 32  # far past any real segment; bounds a hostile num_blocks
_HEADER = struct.Struct("<BIQQ")
_U32 = struct.Struct("<I")
_U64_MASK = (1 << 64) - 1

# k -> partition sizes: pairwise coprime, summing to 512 (gloom params.go primePartitions).
PARTITIONS = {
    3: (167, 173, 172),
    4: (109, 127, 137, 139),
    5: (97, 101, 103, 109, 102),
    6: (61, 79, 83, 89, 97, 103),
    7: (61, 67, 71, 79, 83, 89, 62),
    8: (37, 47, 53, 61, 67, 71, 79, 97),
    9: (41, 43, 47, 53, 59, 67, 71, 73, 58),
    10: (31, 37, 41, 43, 47, 53, 59, 61, 67, 73),
    11: (29, 31, 37, 41, 43, 44, 47, 53, 59, 61, 67),
    12: (17, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 71),
    13: (17, 19, 23, 29, 31, 37, 41, 43, 47, 52, 53, 59, 61),
    14: (11, 13, 17, 19, 23, 29, 31, 37, 41, 47, 53, 59, 61, 71),
    15: (11, 13, 17, 19, 23, 28, 29, 31, 37, 41, 43, 47, 53, 59, 61),
    16: (5, 7, 11, 13, 17, 19, 23, 27, 29, 31, 37, 41, 43, 47, 53, 109),
    17: (3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 32, 37, 41, 43, 47, 53, 101),
}
_PROBES = {k: tuple(zip([sum(sizes[:i]) for i in range(k)], sizes)) for k, sizes in PARTITIONS.items()}
_hash128 = xxhash.xxh3_128_intdigest


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


def crc32c(data: bytes) -> int:
    if _crc32c is not None:
        return _crc32c(data)
    table = _CRC_TABLE
    crc = 0xFFFFFFFF
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


_CRC_TABLE = _crc32c_table()


def _block_fp(sizes, j: float) -> float:
    fp = 1.0
    for p in sizes:
        fp *= 1 - math.pow(1 - 1 / p, j)
    return fp


def estimate_fp_rate(num_blocks: int, k: int, items: int) -> float:
    """gloom.EstimateFalsePositiveRate: E[block FP] with the block load J ~ Poisson(items / blocks)."""
    if num_blocks == 0 or items == 0:
        return 0.0
    sizes = PARTITIONS[k]
    lam = items / num_blocks
    if lam > 10000:
        return _block_fp(sizes, lam)
    max_j = int(lam + 10 * math.sqrt(lam) + 20)
    fp = 0.0
    log_factorial = 0.0
    log_lam = math.log(lam)
    for j in range(max_j + 1):
        if j > 0:
            log_factorial += math.log(j)
        prob = math.exp(-lam + j * log_lam - log_factorial)
        if prob < 1e-15 and j > int(lam):
            break
        if j > 0:
            fp += prob * _block_fp(sizes, j)
    return fp


def _best_k(num_blocks: int, items: int) -> int:
    best, best_fp = MIN_K, math.inf
    for k in range(MIN_K, MAX_K + 1):
        fp = estimate_fp_rate(num_blocks, k, items)
        if fp < best_fp:
            best, best_fp = k, fp
    return best


@functools.lru_cache(maxsize=4096)
def optimal_params(expected_items: int, fp_rate: float) -> tuple[int, int]:
    """(num_blocks, k) as gloom.OptimalParams chooses them."""
    expected_items = max(expected_items, 1)
    if fp_rate <= 0:
        fp_rate = 0.0001
    if fp_rate >= 1:
        fp_rate = 0.99
    bits_per_item = -math.log(fp_rate) / _LN2_SQUARED
    base_blocks = math.ceil(expected_items * bits_per_item / BLOCK_BITS)
    max_blocks = math.ceil(base_blocks * _GROWTH_CAP)
    num_blocks = base_blocks
    k = _best_k(num_blocks, expected_items)
    while estimate_fp_rate(num_blocks, k, expected_items) > fp_rate and num_blocks < max_blocks:
        num_blocks = min(num_blocks + num_blocks // 8 + 1, max_blocks)
        k = _best_k(num_blocks, expected_items)
    return num_blocks, k


class Bloom:
    """A gloom filter: add and test DIDs, marshal to the bytes v2 stores."""

    __slots__ = ("num_blocks", "k", "count", "bits", "_probes")

    def __init__(self, num_blocks: int, k: int, count: int = 0, bits: bytearray | None = None):
        if k not in PARTITIONS:
            raise ValueError(f"k={k} is not supported ({MIN_K}..{MAX_K})")
        self.num_blocks = max(num_blocks, 1)
        self.k = k
        self.count = count
        self.bits = bits if bits is not None else bytearray(self.num_blocks * BLOCK_BYTES)
        self._probes = _PROBES[k]

    @classmethod
    def for_items(cls, expected_items: int, fp_rate: float = DID_FP_RATE) -> Bloom:
        return cls(*optimal_params(expected_items, fp_rate))

    def add(self, key: str) -> None:
        self.add_hashes((key_hash(key),))

    def add_hashes(self, hashes) -> None:
        """Add keys by their key_hash() (the writer hashes each DID once for both of its blooms)."""
        num_blocks, bits, probes, added = self.num_blocks, self.bits, self._probes, 0
        for h in hashes:
            base = (((h >> 64) * num_blocks) >> 64) * BLOCK_BITS
            low = h & _U64_MASK
            low = (low ^ (low >> 32)) & 0xFFFFFFFF
            for offset, size in probes:
                pos = base + offset + low % size
                bits[pos >> 3] |= 1 << (pos & 7)
            added += 1
        self.count += added

    def might_contain(self, key: str) -> bool:
        h = _hash128(key.encode())
        base = (((h >> 64) * self.num_blocks) >> 64) * BLOCK_BITS
        low = h & _U64_MASK
        low = (low ^ (low >> 32)) & 0xFFFFFFFF
        bits = self.bits
        for offset, size in self._probes:
            pos = base + offset + low % size
            if not bits[pos >> 3] & (1 << (pos & 7)):
                return False
        return True

    __contains__ = might_contain

    def marshal(self) -> bytes:
        data = _HEADER.pack(SERIALIZE_VERSION, self.k, self.num_blocks, self.count) + bytes(self.bits)
        return data + _U32.pack(crc32c(data))

    @classmethod
    def unmarshal(cls, data: bytes) -> Bloom:
        """The filter `data` holds; InvalidFooter on anything gloom's UnmarshalBinary refuses."""
        if len(data) < HEADER_SIZE + CHECKSUM_SIZE:
            raise InvalidFooter(f"bloom is {len(data)} bytes, shorter than its header and checksum")
        version, k, num_blocks, count = _HEADER.unpack_from(data)
        if version != SERIALIZE_VERSION:
            raise InvalidFooter(f"bloom serialization version {version}, want {SERIALIZE_VERSION}")
        if k not in PARTITIONS:
            raise InvalidFooter(f"bloom k={k} is not supported ({MIN_K}..{MAX_K})")
        if num_blocks == 0 or num_blocks > _MAX_BLOCKS:
            raise InvalidFooter(f"bloom num_blocks {num_blocks} is out of range")
        want = HEADER_SIZE + num_blocks * BLOCK_BYTES + CHECKSUM_SIZE
        if len(data) != want:
            raise InvalidFooter(f"bloom is {len(data)} bytes, want {want}")
        if _U32.unpack_from(data, want - CHECKSUM_SIZE)[0] != crc32c(data[:want - CHECKSUM_SIZE]):
            raise InvalidFooter("bloom CRC-32C does not match its bytes")
        return cls(num_blocks, k, count, bytearray(data[HEADER_SIZE:want - CHECKSUM_SIZE]))


def key_hash(key: str) -> int:
    """The xxh3-128 of a key's UTF-8, the one hash gloom derives every probe from."""
    return _hash128(key.encode())


def build(keys, capacity: int | None = None, fp_rate: float = DID_FP_RATE) -> Bloom:
    """A filter sized for `capacity` (default: len(keys)) holding each of `keys` once."""
    return build_from_hashes([key_hash(key) for key in keys], capacity, fp_rate)


def build_from_hashes(hashes, capacity: int | None = None, fp_rate: float = DID_FP_RATE) -> Bloom:
    hashes = list(hashes)
    bloom = Bloom.for_items(len(hashes) if capacity is None else capacity, fp_rate)
    bloom.add_hashes(hashes)
    return bloom
