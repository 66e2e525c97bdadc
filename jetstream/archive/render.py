"""An archived event back into what ingest made of it: v1 JSON, the v2 frame, the log's record.

Owns: turning one `SegmentEvent` (a segment row: kind, did, collection, rkey, rev and the
DAG-CBOR payload) into the `PendingEvent` ingest built for the same relay event, by running
it through ingest's own emitters: a commit row becomes a one-op commit (`commit_events`, the
Cython core or its twin, exactly as a relay frame's op does), an identity/account/sync row's
payload is the relay's event body and goes through the decoder's own `#identity` /
`#account` / `#sync` handling. So the archive never has a renderer of its own that could
drift from the live path: for every event still in both the log and the archive, `v1_json`
equals the log's v1 bytes and `v2_frame` the v2 frame the log renders (tested on the corpus
and on synthetic traffic, tests/archive/test_render.py).

Why a rebuilt op is the same op: a record's CID in atproto is CIDv1 dag-cbor sha2-256 of its
block, which is what v2 computes and what a conforming relay sends; an op whose relay CID
differed (another codec or hash over the same bytes) would render with the recomputed CID.
The segment keeps the commit's rev; the relay frame's other fields (`time`, `ops` beyond this
one) never reached the v1 or v2 output of an event.

Speed: a commit row (nearly every row) is rendered by the chosen core's commit-row renderer
(jetstream/_core/segment.pyx: the v1 JSON or the v2 frame written straight from the row's fields,
~2-3 µs an event) whose pure-Python twin, jetstream/_py/segment.py, is this one-op-commit path;
they are tested equal (tests/archive/test_render_fast.py). `render_block_v1` / `render_block_v2`
render a run of rows in one call, for a reader that sends every row of a block.

It must never do I/O, touch the log or the clock, or change an event's seq and time_us: the
row's `seq` and `witnessed_at` (our time_us) are its identity on both wires.
"""
from __future__ import annotations

import hashlib

import libipld

from jetstream.archive.format import (
    COMMIT_KINDS,
    KIND_ACCOUNT,
    KIND_CREATE,
    KIND_CREATE_RESYNC,
    KIND_DELETE,
    KIND_IDENTITY,
    KIND_SYNC,
    KIND_UPDATE,
    SegmentEvent,
)
from jetstream.events import KIND_ACCOUNT as LOG_ACCOUNT
from jetstream.events import KIND_COMMIT as LOG_COMMIT
from jetstream.events import KIND_IDENTITY as LOG_IDENTITY
from jetstream.events import KIND_SYNC as LOG_SYNC
from jetstream.events import PendingEvent, render_json
from jetstream.implementation import commit_pending, commit_v1_json, commit_v2_frame, frame_of_record

_LOG_KINDS = {KIND_CREATE: LOG_COMMIT, KIND_UPDATE: LOG_COMMIT, KIND_DELETE: LOG_COMMIT,
              KIND_CREATE_RESYNC: LOG_COMMIT, KIND_IDENTITY: LOG_IDENTITY, KIND_ACCOUNT: LOG_ACCOUNT,
              KIND_SYNC: LOG_SYNC}
_RELAY_TYPES = {KIND_IDENTITY: "#identity", KIND_ACCOUNT: "#account", KIND_SYNC: "#sync"}
_DAG_CBOR_SHA256 = b"\x01\x71\x12\x20"  # CIDv1, dag-cbor, sha2-256, 32-byte digest


def log_kind(event: SegmentEvent) -> int | None:
    """The log's kind code (jetstream.events KIND_*) of a segment row; None for a kind we do not know."""
    return _LOG_KINDS.get(event.kind)


def pending_of(event: SegmentEvent) -> PendingEvent | None:
    """The PendingEvent ingest made for this event; None when ingest would have made none.

    None means the row cannot be an event of ours (an unknown kind, a payload that does not
    decode, a record the v1 emitter refuses): the reader counts and skips it, never guesses.
    """
    if event.kind in COMMIT_KINDS:
        return commit_pending(event)
    relay_type = _RELAY_TYPES.get(event.kind)
    if relay_type is None:
        return None
    return _relay_event_pending(event, relay_type)


def v1_json(event: SegmentEvent) -> bytes | None:
    """v1's exact JSON bytes for this event (time_us = the row's witnessed_at); None: no v1 event."""
    if event.kind in COMMIT_KINDS:
        return commit_v1_json(event)
    pending = pending_of(event)
    return None if pending is None else render_json(pending, event.witnessed_at)


def v2_frame(event: SegmentEvent) -> bytes:
    """v2's exact `subscribeEvents` text frame for this event; b"" when it has none (v2 readers skip it)."""
    if event.kind in COMMIT_KINDS:
        return commit_v2_frame(event)
    pending = pending_of(event)
    if pending is None:
        return b""
    return frame_of_record(pending.v2_record, event.seq, event.witnessed_at)


def render_block_v1(events: list[SegmentEvent]) -> list[bytes | None]:
    """v1_json of each row, in order (None: no v1 event), in one call."""
    return [commit_v1_json(event) if event.kind in COMMIT_KINDS else v1_json(event) for event in events]


def render_block_v2(events: list[SegmentEvent]) -> list[bytes]:
    """v2_frame of each row, in order (b"": no frame), in one call."""
    return [commit_v2_frame(event) if event.kind in COMMIT_KINDS else v2_frame(event) for event in events]


def record_cid(block: bytes) -> bytes:
    """The binary CIDv1 (dag-cbor, sha2-256) of a record block, as the relay's op carries it."""
    return _DAG_CBOR_SHA256 + hashlib.sha256(block).digest()


def _relay_event_pending(event: SegmentEvent, relay_type: str) -> PendingEvent | None:
    # Imported here: the decoder pulls in the whole ingest stack, which a segment tool does not need.
    from jetstream.ingest import decode

    try:
        body = libipld.decode_dag_cbor(bytes(event.payload))
    except Exception:  # noqa: BLE001 - libipld raises several types for a bad body
        return None
    if not isinstance(body, dict):
        return None
    try:
        decoded = decode.decode_relay_event(relay_type, body)
    except Exception:  # noqa: BLE001 - a body the decoder refuses (a missing field) is no event
        return None
    return decoded.events[0] if len(decoded.events) == 1 else None
