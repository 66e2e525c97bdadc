"""A sealed segment block's rows, decoded and rendered: reference twin of jetstream/_core/segment.pyx.

Owns: the reference of the archive's two per-event costs, under the names
jetstream.implementation gives both sides:
- `decode_block`: jetstream/archive/format.py's `decode_block_py` (the columnar body -> SegmentEvent
  rows, CorruptSegment on anything malformed), re-exported;
- the archive writer's per-event parse: `commit_record_fields` reads a commit's stored v2 record
  (events_v2: header, frame head and tail, CID, record block) into the segment row's kind, rev,
  rkey and payload without decoding any JSON;
- a commit row (create/update/delete/create_resync) as ingest made it: `commit_pending` runs the
  row through ingest's reference commit emitter as a one-op commit (`jetstream._py.commit`; the
  reasoning is jetstream/archive/render.py's), and `commit_v1_json` / `commit_v2_frame` are that
  event's v1 JSON (time_us = the row's witnessed_at) and v2 frame.
The Cython twin writes the same bytes straight from the row's fields and must agree with this
module for every row (tests/archive/test_render_fast.py).
It must never do I/O, and never render a row that is not a commit row (ValueError): identity,
account and sync rows go through the ingest decoder, render.py's part.
"""
from __future__ import annotations

import hashlib
import json
import struct

from jetstream import wire_v2
from jetstream._py.commit import commit_events
from jetstream.archive.format import (
    KIND_CREATE,
    KIND_CREATE_RESYNC,
    KIND_DELETE,
    KIND_UPDATE,
    decode_block_py,
)
from jetstream.events import PendingEvent, render_json

decode_block = decode_block_py

_OPERATION_KINDS = {b"create": KIND_CREATE, b"update": KIND_UPDATE, b"delete": KIND_DELETE}
_OPERATION_FIELD = b',"operation":"'
_RKEY_FIELD = b',"rkey":'
_REV_FIELD = b',"rev":'
_SEQ_END = b',"seq":'


def commit_record_fields(record: bytes) -> tuple[int | None, str, str, bytes] | None:
    """(kind, rev, rkey, payload) of a #commit's stored v2 record; kind None when its frame head does
    not give them (no frame, another shape: the caller reads the v1 JSON); None when the record is
    shorter than its own header.

    The head is `…,"operation":"X",["record":{…},]"rev":"…","rkey":"…","seq":`. Inside a JSON
    string a quote is always escaped, so the first `,"operation":"` is the field (did and
    collection come before it, the record after), and rev and rkey are the last two fields.
    """
    try:
        _, head_length, tail_length, cid_length = wire_v2.RECORD_HEAD.unpack_from(record)
    except struct.error:
        return None
    head_end = wire_v2.RECORD_HEAD.size + head_length
    payload = bytes(record[head_end + tail_length + cid_length:])
    fields = _head_fields(bytes(record[wire_v2.RECORD_HEAD.size:head_end])) if head_length else None
    if fields is None:
        return None, "", "", payload
    return fields[0], fields[1], fields[2], payload


def _head_fields(head: bytes) -> tuple[int, str, str] | None:
    start = head.find(_OPERATION_FIELD)
    if start < 0 or not head.endswith(_SEQ_END):
        return None
    start += len(_OPERATION_FIELD)
    kind = _OPERATION_KINDS.get(head[start:head.find(b'"', start)])
    end = len(head) - len(_SEQ_END)
    rkey_at = head.rfind(_RKEY_FIELD, 0, end)
    rev_at = head.rfind(_REV_FIELD, 0, rkey_at)
    if kind is None or rkey_at < 0 or rev_at < 0:
        return None
    return kind, _json_text(head[rev_at + len(_REV_FIELD):rkey_at]), _json_text(head[rkey_at + len(_RKEY_FIELD):end])


def _json_text(quoted: bytes) -> str:
    """A JSON string's value; the common case (no escape) without a JSON parser."""
    if b"\\" not in quoted:
        return quoted[1:-1].decode("utf-8", "replace")
    return json.loads(quoted)

_ACTIONS = {KIND_CREATE: "create", KIND_UPDATE: "update", KIND_DELETE: "delete", KIND_CREATE_RESYNC: "create"}
_DAG_CBOR_SHA256 = b"\x01\x71\x12\x20"  # CIDv1, dag-cbor, sha2-256, 32-byte digest


def commit_pending(event) -> PendingEvent | None:
    """The PendingEvent ingest made for a commit row; None when ingest would have made none."""
    return one_op_commit(event, commit_events)


def one_op_commit(event, emit) -> PendingEvent | None:
    """A commit row as the one-op commit `emit` (a commit_events: this module's, or the Cython
    core's for the rows its fast path leaves to this reference) makes of it."""
    action = _ACTIONS.get(event.kind)
    if action is None:
        raise ValueError(f"kind {event.kind!r} is not a commit row")
    op = {"action": action, "path": f"{event.collection}/{event.rkey}"}
    blocks = {}
    if action != "delete":
        block = bytes(event.payload)
        op["cid"] = _DAG_CBOR_SHA256 + hashlib.sha256(block).digest()
        blocks[op["cid"]] = block
    events: list[PendingEvent] = []
    drops: list = []
    try:
        emit(event.did, event.rev, [op], blocks, events, drops)
    except Exception:  # noqa: BLE001 - the emitter's FrameError on a row no relay op could have made
        return None
    return events[0] if len(events) == 1 else None


def commit_v1_json(event) -> bytes | None:
    """v1's exact JSON bytes for a commit row (time_us = the row's witnessed_at); None: no v1 event."""
    pending = commit_pending(event)
    return None if pending is None else render_json(pending, event.witnessed_at)


def commit_v2_frame(event) -> bytes:
    """v2's exact `subscribeEvents` frame for a commit row; b"" when it has none."""
    pending = commit_pending(event)
    if pending is None:
        return b""
    return wire_v2.frame_of_record(pending.v2_record, event.seq, event.witnessed_at)
