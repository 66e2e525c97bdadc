"""The history archive: Jetstream v2's sealed `.jss` segment files (issue 24).

Owns: the segment format (format.py), gloom-compatible DID blooms (bloom.py), the segment writer
(writer.py) and the reader and verifier (reader.py). It must never reach into the log, the
server or the daemon: they feed it events and read segments through this package's API.
"""
from jetstream.archive.format import (
    KIND_ACCOUNT,
    KIND_CREATE,
    KIND_CREATE_RESYNC,
    KIND_DELETE,
    KIND_IDENTITY,
    KIND_SYNC,
    KIND_UPDATE,
    ActiveSegment,
    BlockInfo,
    BlockOutOfRange,
    ChecksumMismatch,
    CorruptSegment,
    Header,
    InvalidBlockIndex,
    InvalidEvent,
    InvalidFooter,
    SegmentError,
    SegmentEvent,
    parse_segment_name,
    segment_name,
)
from jetstream.archive.reader import SegmentReader, VerifyReport, verify
from jetstream.archive.writer import SealResult, SegmentOptions, SegmentWriter

__all__ = [
    "KIND_ACCOUNT", "KIND_CREATE", "KIND_CREATE_RESYNC", "KIND_DELETE", "KIND_IDENTITY", "KIND_SYNC",
    "KIND_UPDATE", "ActiveSegment", "BlockInfo", "BlockOutOfRange", "ChecksumMismatch", "CorruptSegment",
    "Header", "InvalidBlockIndex", "InvalidEvent", "InvalidFooter", "SealResult", "SegmentError",
    "SegmentEvent", "SegmentOptions", "SegmentReader", "SegmentWriter", "VerifyReport", "parse_segment_name",
    "segment_name", "verify",
]
