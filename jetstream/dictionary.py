"""zstd dictionaries for compressed subscribers: the shipped one, an operator's, training new ones.

Owns: where the project's own dictionaries live (jetstream/data/jetstream.zdict for v1's
`/subscribe`, jetstream/data/jetstream-v2.zdict for the v2 wire's `subscribeEvents`), which
dictionary the daemon uses (an operator's file from --zstd-dictionary-path, else the
shipped one), reading a dictionary's id, and training: from synthetic relay frames decoded
through our own ingest (how the shipped file is made, `jetstream train-dictionary
--synthetic N`) or from the events of an existing log (`--data-dir D`).
It must never train from, or ship, the captured corpus, v1's dictionary or v2's: operators who
want v1's point the flag at their copy.
"""
from __future__ import annotations

import logging
import struct
from pathlib import Path
from typing import Iterable, Iterator

import zstandard

log = logging.getLogger(__name__)

SHIPPED_DICTIONARY_PATH = Path(__file__).parent / "data" / "jetstream.zdict"
# The v2 wire's (subscribeEvents `zstdDictionary=<id>`, getZstdDictionary): trained the same way,
# on the v2 frames our ingest renders from the same synthetic relay frames. Never v2's own.
SHIPPED_V2_DICTIONARY_PATH = Path(__file__).parent / "data" / "jetstream-v2.zdict"
SHIPPED_V2_DICTIONARY_ID = 0x4A535032  # "JSP2"
DEFAULT_DICTIONARY_SIZE = 112_640  # v1's size (docs/protocol.md §7.2)
DEFAULT_SYNTHETIC_SAMPLES = 40_000
# Dictionary ids 0..32767 are reserved for a registrar and >= 2**31 by the format; ours
# sit between, spelled "JSPY" so a hex dump names them.
SHIPPED_DICTIONARY_ID = 0x4A535059
_MIN_PRIVATE_ID, _MAX_PRIVATE_ID = 32_768, (1 << 31) - 1
_DICTIONARY_MAGIC = b"\x37\xa4\x30\xec"
# Synthetic samples get time_us values of the present era, so the digits look like production's.
_SAMPLE_BASE_TIME_US = 1_735_689_600_000_000
_SAMPLE_STEP_US = 211


def dictionary_id(dictionary: bytes) -> int:
    """The id a formatted dictionary declares (bytes 4..8, little-endian); 0 for raw content."""
    if len(dictionary) < 8 or dictionary[:4] != _DICTIONARY_MAGIC:
        return 0
    return struct.unpack_from("<I", dictionary, 4)[0]


def active_dictionary(operator_path: str = "") -> bytes:
    """The dictionary the daemon compresses with: the operator's file if given, else ours."""
    path = Path(operator_path) if operator_path else SHIPPED_DICTIONARY_PATH
    data = path.read_bytes()
    if dictionary_id(data) == 0:
        raise ValueError(f"{path} is not a formatted zstd dictionary (no magic or id 0)")
    log.info("event=zstd_dictionary_loaded path=%s id=%d size=%d", path, dictionary_id(data), len(data))
    return data


def active_v2_dictionary() -> bytes:
    """The dictionary of the v2 wire's compressed frames: the shipped one (getZstdDictionary serves it)."""
    data = SHIPPED_V2_DICTIONARY_PATH.read_bytes()
    if dictionary_id(data) == 0:
        raise ValueError(f"{SHIPPED_V2_DICTIONARY_PATH} is not a formatted zstd dictionary (no magic or id 0)")
    return data


def train(samples: list[bytes], size: int = DEFAULT_DICTIONARY_SIZE, dict_id: int = 0) -> bytes:
    """A formatted dictionary of at most `size` bytes trained on `samples` (event JSON).

    fastcover with fixed k/d and one thread: measured good on event JSON and bounded in
    time, where zstd's parameter search would take minutes on a shared machine.
    """
    if not samples:
        raise ValueError("no samples to train a dictionary from")
    if dict_id == 0:
        dict_id = _id_for(samples)
    trained = zstandard.train_dictionary(size, samples, k=200, d=8, level=3, threads=1, dict_id=dict_id)
    return trained.as_bytes()


def _id_for(samples: list[bytes]) -> int:
    import xxhash

    digest = xxhash.xxh64()
    for sample in samples[:1000]:
        digest.update(sample)
    return _MIN_PRIVATE_ID + digest.intdigest() % (_MAX_PRIVATE_ID - _MIN_PRIVATE_ID)


def synthetic_samples(count: int = DEFAULT_SYNTHETIC_SAMPLES, seed: int = 1, dids: int = 5000,
                      wire: str = "v1") -> list[bytes]:
    """`count` event JSONs (wire "v1") or v2 frames ("v2") rendered by our ingest from the synthetic relay's frames."""
    from jetstream.events import render_json
    from jetstream.ingest.decode import decode_frame
    from jetstream.relaysim.synthetic import SyntheticSource
    from jetstream.wire_v2 import frame_of_record

    source = SyntheticSource(seed=seed, dids=dids)
    samples: list[bytes] = []
    seq = 1
    while len(samples) < count:
        for pending in decode_frame(source.frame(seq)).events:
            time_us = _SAMPLE_BASE_TIME_US + len(samples) * _SAMPLE_STEP_US
            if wire == "v2":
                frame = frame_of_record(pending.v2_record, 1_000_000 + len(samples), time_us)
                if frame:
                    samples.append(frame)
            else:
                samples.append(render_json(pending, time_us))
        seq += 1
    return samples[:count]


def log_samples(data_dir: str, limit: int, wire: str = "v1") -> list[bytes]:
    """Up to `limit` event JSONs (or, wire "v2", v2 frames) from a log, oldest first.

    The log must not be open in a running daemon (RocksDB allows one writer); train from a
    stopped instance or a copy of its data directory.
    """
    from jetstream.log.store import EventLog
    from jetstream.wire_v2 import frame_of_record

    samples: list[bytes] = []
    with EventLog(data_dir, create=False) as event_log:
        for row in _rows(event_log, wire == "v2"):
            sample = frame_of_record(row.payload, row.seq, row.time_us) if wire == "v2" else row.payload
            if sample:
                samples.append(sample)
            if len(samples) >= limit:
                break
    return samples


def _rows(event_log, v2: bool = False) -> Iterator:
    position = -1
    while True:
        rows = event_log.read_after(position, 4096, False, v2=v2)
        if not rows:
            return
        yield from rows
        position = rows[-1].time_us


def compressed_size(samples: Iterable[bytes], dictionary: bytes = b"") -> int:
    """Total bytes of the samples as compressed events (our frame settings, one frame each)."""
    from jetstream.compression import EventCompressor

    compressor = EventCompressor(dictionary or None)
    return sum(len(compressor.compress(sample)) for sample in samples)
