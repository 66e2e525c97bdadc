"""CAR v1 reading, reference twin of `jetstream._core.car` (same names, same results).

Owns: the rules for splitting a relay commit's `blocks` field into its sections: the
uvarint section lengths, the header (version 1, at least one root), CID parsing at each
section start (go-car / go-cid rules), optional block hash verification, and the
CarError reason for every way a CAR can be malformed. The Cython twin must agree with
this module on every input (tests/ingest/test_ingest_car_fast.py compares them).
It must never decode block contents and never copy block bytes: blocks are memoryview
slices of the input.
"""
from __future__ import annotations

import hashlib
from typing import Mapping, NamedTuple

import libipld

from jetstream._py.record_json import cid_length
from jetstream.errors import CarError

MAX_SECTION_BYTES = 32 << 20  # go-car MaxAllowedSectionSize
CODEC_DAG_CBOR = 0x71
CODEC_RAW = 0x55
HASH_SHA2_256 = 0x12

# The header every atproto CAR carries: {"roots": [one CIDv1 sha2-256], "version": 1} in
# canonical DAG-CBOR. Matching these bytes skips a CBOR decode; the CID bytes sit between.
HEADER_ONE_ROOT_PREFIX = b"\xa2eroots\x81\xd8\x2a\x58\x25\x00"
HEADER_ONE_ROOT_SUFFIX = b"gversion\x01"
HEADER_ONE_ROOT_SIZE = len(HEADER_ONE_ROOT_PREFIX) + 36 + len(HEADER_ONE_ROOT_SUFFIX)


class CarFile(NamedTuple):
    roots: list[bytes]  # binary CIDs (no multibase prefix)
    # binary CID -> block bytes (a memoryview slice of the input): a dict here, a read-only
    # mapping with the same get/[]/in/len/iter/keys/values/items in the Cython twin.
    blocks: Mapping[bytes, memoryview]


def is_common_cid(data, pos: int, end: int) -> bool:
    """The CIDv1 shape every atproto block uses: version 1, one-byte codec, sha2-256, 32 bytes."""
    return (end - pos >= 36 and data[pos] == 1 and data[pos + 1] < 0x80
            and data[pos + 2] == HASH_SHA2_256 and data[pos + 3] == 0x20)


def read_section_length(data: bytes, pos: int, end: int) -> tuple[int, int]:
    """Unsigned LEB128 (Go binary.ReadUvarint; up to 10 bytes) -> (value, next); pos < end."""
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


def parse_header(data: bytes, pos: int, header_len: int) -> list[bytes]:
    """The roots of the header at data[pos:pos + header_len] (length already checked)."""
    if (header_len == HEADER_ONE_ROOT_SIZE and data.startswith(HEADER_ONE_ROOT_PREFIX, pos)
            and is_common_cid(data, pos + 13, pos + 49)
            and data.startswith(HEADER_ONE_ROOT_SUFFIX, pos + 49)):
        return [data[pos + 13:pos + 49]]
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
    return roots


def read_car(data: bytes, verify: bool = False) -> CarFile:
    """Parse a CAR v1; CarError(reason) if malformed (or, with verify, any block's hash is wrong)."""
    end = len(data)
    if end == 0:
        raise CarError("empty")
    header_len, pos = read_section_length(data, 0, end)
    if header_len == 0 or header_len > MAX_SECTION_BYTES or pos + header_len > end:
        raise CarError("bad_header_length")
    roots = parse_header(data, pos, header_len)
    pos += header_len
    view = memoryview(data)
    blocks: dict[bytes, memoryview] = {}
    while pos < end:
        section_len, pos = read_section_length(data, pos, end)
        section_end = pos + section_len
        if section_len == 0 or section_len > MAX_SECTION_BYTES or section_end > end:
            raise CarError("bad_section_length")
        cid_len = 36 if is_common_cid(data, pos, section_end) else cid_length(data, pos, section_end)
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
