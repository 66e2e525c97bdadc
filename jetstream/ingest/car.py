"""CAR v1 reading on raw bytes: header roots, and a CID -> block map.

Owns: the one import point for CAR reading (the Cython reader when built, else the
reference twin in jetstream/_py/car.py, which holds the rules), block hash verification
and CID text form. It must never decode block contents (records go to the record emitter
as raw bytes) and never copy block bytes: blocks are memoryview slices of the input.

v1 (go-car v0.6.2) verified every block's hash and dropped the whole commit on any
mismatch. `read_car(verify=True)` does the same; the ingest default verifies only the
blocks whose bytes reach the output (see decode.py), which is where a bad hash matters.
"""
from __future__ import annotations

import logging

from jetstream._py.car import (  # noqa: F401  (re-exported: the public names of CAR reading)
    CODEC_DAG_CBOR,
    CODEC_RAW,
    HASH_SHA2_256,
    MAX_SECTION_BYTES,
    CarError,
    CarFile,
    verify_block,
)

log = logging.getLogger(__name__)

try:
    from jetstream._core.car import read_car
    from jetstream._core.record_json import cid_to_string as _cid_to_string

    CAR_READER = "cython"
except ImportError:  # unbuilt checkout: the reference twins give the same results
    from jetstream._py.car import read_car
    from jetstream._py.record_json import cid_to_string as _cid_to_string

    CAR_READER = "python"
    log.warning("event=car_reader_fallback impl=python reason=cython_module_not_built")


def cid_to_string(cid: bytes) -> str:
    """go-cid String(): multibase base32 lower ('b…') for CIDv1, base58btc for CIDv0."""
    return _cid_to_string(cid)
