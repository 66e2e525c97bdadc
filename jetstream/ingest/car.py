"""CAR v1 reading on raw bytes: header roots, and a CID -> block map.

Owns: splitting a relay commit's `blocks` field into its sections, CID parsing at
section starts (go-car / go-cid rules), block hash verification, and CID text form.
It must never decode block contents (records go to the record emitter as raw bytes)
and never copy block bytes: blocks are memoryview slices of the input.

v1 (go-car v0.6.2) verified every block's hash and dropped the whole commit on any
mismatch. `read_car(verify=True)` does the same; the ingest default verifies only the
blocks whose bytes reach the output (see decode.py), which is where a bad hash matters.
"""
from __future__ import annotations

import hashlib
from typing import NamedTuple

import libipld

from jetstream._py.record_json import cid_length

try:
    from jetstream._core.record_json import cid_to_string as _cid_to_string
except ImportError:  # unbuilt checkout: the reference twin gives the same text
    from jetstream._py.record_json import cid_to_string as _cid_to_string

MAX_SECTION_BYTES = 32 << 20  # go-car MaxAllowedSectionSize
CODEC_DAG_CBOR = 0x71
CODEC_RAW = 0x55
HASH_SHA2_256 = 0x12


class CarError(ValueError):
    """The CAR is malformed; v1 dropped the whole commit. `reason` is a short token."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class CarFile(NamedTuple):
    roots: list[bytes]  # binary CIDs (no multibase prefix)
    blocks: dict[bytes, memoryview]  # binary CID -> block bytes (a slice of the input)


def _read_section_length(data: bytes, pos: int, end: int) -> tuple[int, int]:
    """Unsigned LEB128 (Go binary.ReadUvarint; up to 10 bytes) -> (value, next)."""
    byte = data[pos]
    if byte < 0x80:  # nearly every section header is one or two bytes
        return byte, pos + 1
    value = 0
    shift = 0
    while pos < end and shift < 70:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
    raise CarError("bad_varint")


def _read_header(data: bytes, end: int) -> tuple[list[bytes], int]:
    if end == 0:
        raise CarError("empty")
    header_len, pos = _read_section_length(data, 0, end)
    if header_len == 0 or header_len > MAX_SECTION_BYTES or pos + header_len > end:
        raise CarError("bad_header_length")
    try:
        header = libipld.decode_dag_cbor(data[pos:pos + header_len])
    except (ValueError, RecursionError):
        raise CarError("bad_header") from None
    if not isinstance(header, dict) or header.get("version") != 1:
        raise CarError("bad_header")
    roots = header.get("roots")
    if not isinstance(roots, list) or not all(isinstance(root, bytes) for root in roots):
        raise CarError("bad_header")
    if not roots:
        raise CarError("no_roots")
    return roots, pos + header_len


def read_car(data: bytes, verify: bool = False) -> CarFile:
    """Parse a CAR v1; CarError(reason) if malformed (or, with verify, any block's hash is wrong)."""
    end = len(data)
    roots, pos = _read_header(data, end)
    view = memoryview(data)
    blocks: dict[bytes, memoryview] = {}
    while pos < end:
        section_len, pos = _read_section_length(data, pos, end)
        section_end = pos + section_len
        if section_len == 0 or section_len > MAX_SECTION_BYTES or section_end > end:
            raise CarError("bad_section_length")
        # Fast path: the CIDv1 shape every atproto block uses (version 1, one-byte codec,
        # sha2-256 with a 32-byte digest); anything else takes the general parser.
        if (section_len >= 36 and data[pos] == 1 and data[pos + 1] < 0x80
                and data[pos + 2] == 0x12 and data[pos + 3] == 0x20):
            cid_len = 36
        else:
            cid_len = cid_length(data, pos, section_end)
        if cid_len < 0:
            raise CarError("bad_block_cid")
        cid = data[pos:pos + cid_len]
        block = view[pos + cid_len:section_end]
        if verify and not verify_block(cid, block):
            raise CarError("block_hash_mismatch")
        blocks[cid] = block
        pos = section_end
    return CarFile(roots, blocks)


def verify_block(cid: bytes, block) -> bool:
    """Does `block` hash to `cid`? sha2-256 only; CIDv0, or CIDv1 dag-cbor/raw; else False."""
    if len(cid) == 34 and cid[0] == HASH_SHA2_256 and cid[1] == 0x20:
        digest = cid[2:]
    elif (len(cid) == 36 and cid[0] == 1 and cid[1] in (CODEC_DAG_CBOR, CODEC_RAW)
          and cid[2] == HASH_SHA2_256 and cid[3] == 0x20):
        digest = cid[4:]
    else:
        return False
    return hashlib.sha256(block).digest() == digest


def cid_to_string(cid: bytes) -> str:
    """go-cid String(): multibase base32 lower ('b…') for CIDv1, base58btc for CIDv0."""
    return _cid_to_string(cid)
