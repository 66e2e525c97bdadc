"""Shared inputs for the archive tests: the corpus segment's events rebuilt from repo.car, and writers.

The expected events come from repo.car through our CAR reader and goat's record list
(tests/data/car_expected_records.tsv), never from the segment under test.
"""
from __future__ import annotations

import base64
import os
from pathlib import Path

from jetstream.archive import KIND_CREATE, SegmentEvent, SegmentOptions, SegmentReader, SegmentWriter
from jetstream.ingest.car import read_car

DATA = Path(__file__).resolve().parents[1] / "data"
GOLDEN_CORPUS_SEGMENT = DATA / "golden_corpus_segment.jss"
V2_FIXTURES = DATA / "v2_segment"
CORPUS_BLOCK_EVENTS = 8  # how the golden was cut (tests/data/README.md)
CORPUS_BASE_US = 1_750_000_000_000_000


def cid_bytes(text: str) -> bytes:
    body = text[1:].upper()  # multibase "b": base32, lower case, no padding
    return base64.b32decode(body + "=" * (-len(body) % 8))


def corpus_car_events() -> list[SegmentEvent]:
    """One create per repo.car record in MST key order, as NOTES.md says the golden was made."""
    car = read_car((DATA / "repo.car").read_bytes())
    blocks = {bytes(cid): bytes(block) for cid, block in car.blocks.items()}
    commit = dict(line.split(": ", 1) for line in (DATA / "car_expected_commit.txt").read_text().splitlines())
    records = [line.split("\t") for line in (DATA / "car_expected_records.tsv").read_text().splitlines()]
    records.sort(key=lambda row: row[0].encode())  # MST key order is byte order of the path
    events = []
    for seq, (path, cid_text) in enumerate(records, start=1):
        collection, rkey = path.split("/", 1)
        events.append(SegmentEvent(seq, CORPUS_BASE_US + seq, 0, KIND_CREATE, commit["DID"], collection, rkey,
                                   commit["Revision"], blocks[cid_bytes(cid_text)]))
    return events


def write_segment(directory, events, block_events=4096, cuts=(), name="seg_0000000000.jss") -> str:
    """Seal `events` into directory/name; `cuts` are indices after which the block is cut early."""
    final = os.path.join(directory, name)
    writer = SegmentWriter(final + ".tmp", events[0].seq if events else 1, SegmentOptions(block_events=block_events))
    cut_after = set(cuts)
    for i, event in enumerate(events):
        writer.add(event)
        if i in cut_after:
            writer.cut_block()
    writer.seal()
    return final


def read_all(path) -> list[SegmentEvent]:
    with SegmentReader.open(str(path)) as reader:
        return list(reader.iter_events())
