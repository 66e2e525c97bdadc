"""CAR v1 reading on raw bytes: header roots, and a CID -> block map.

Owns: the public names of CAR reading (the reader chosen by jetstream/implementation.py;
the reference twin in jetstream/_py/car.py holds the rules), block hash verification
and CID text form. It must never decode block contents (records go to the record emitter
as raw bytes) and never copy block bytes: blocks are memoryview slices of the input.

v1 (go-car v0.6.2) verified every block's hash and dropped the whole commit on any
mismatch. `read_car(verify=True)` does the same; the ingest default verifies only the
blocks whose bytes reach the output (see decode.py), which is where a bad hash matters.
"""
from __future__ import annotations

from jetstream._py.car import (  # noqa: F401  (re-exported: the public names of CAR reading)
    CODEC_DAG_CBOR,
    CODEC_RAW,
    HASH_SHA2_256,
    MAX_SECTION_BYTES,
    CarError,
    CarFile,
    verify_block,
)

# cid_to_string: go-cid String(), multibase base32 lower ('b…') for CIDv1, base58btc for CIDv0.
from jetstream.implementation import cid_to_string, read_car  # noqa: F401  (re-exported)
