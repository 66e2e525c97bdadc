"""Relay frame -> the v1 events it yields (PendingEvent, JSON waiting for time_us).

Owns: v1's per-frame behaviour (docs/architecture.md §3.1): which frame types yield events,
what is dropped and why, and the exact envelope bytes (struct field order and omitempty
in docs/protocol.md §4); the per-op loop of a commit lives in jetstream/_py/commit.py and its Cython
twin jetstream/_core/commit.pyx. Pure: bytes in, values out.
It must never do I/O, assign time_us, or raise for bad *content*: a bad op, record or
timestamp becomes a (reason, detail) drop and its neighbours still come out. Only a
frame that cannot be decoded at all, or whose fields have the wrong types (v1's
decoder would have failed and ended the stream), raises FrameError.

Each event also carries its v2 record (jetstream/wire_v2.py `pack_record`): the parts of
its Jetstream v2 frame and the raw archive payload (the relay's body, re-encoded canonically, for
#identity/#account/#sync; the record block for commits, made in commit.py/commit.pyx).

One addition: a #sync frame (Sync 1.1; v1 emitted nothing) yields a `kind: "sync"` event,
which readers send only to clients that asked with includeSync=true.

Deliberate differences from v1, all on inputs a conforming relay never sends:
- By default the record block is found by op.cid in the CAR and its hash verified,
  instead of walking the MST to the path (v1 dropped an op whose MST leaf CID != op.cid):
  an op whose cid names a block that is not its path's MST leaf is emitted by us.
  verify_mst=True (--verify-mst) adds v1's walk from the signed commit's `data` root
  (jetstream/_py/mst.py): mst_missing_node, mst_bad_node, mst_not_found and
  mst_cid_mismatch drop the op (v1 skipped it with "record cid mismatch" or a lookup error).
- Only record blocks are hash-checked (v1 checked every block and dropped the whole
  commit); pass verify_all_blocks=True for v1's rule.
- Paths are checked with v1's MST key rules (create/update) and split like v1
  (strings.Split(path, "/")[0], [1]); a delete path without "/" crashed v1, we drop it.
"""
from __future__ import annotations

import logging
from typing import NamedTuple

import libipld

from jetstream import wire_v2
from jetstream.errors import CarError, FrameError
from jetstream.events import KIND_ACCOUNT, KIND_IDENTITY, KIND_SYNC, PendingEvent
from jetstream.implementation import MstReader, commit_events, go_json_string, is_rfc3339, read_car
from jetstream.ingest.frames import split_frame

log = logging.getLogger(__name__)


class DecodedFrame(NamedTuple):
    seq: int | None  # the relay seq, when the body carries one
    frame_type: str  # header t ("#commit", "#identity", …) or "error" for op == -1
    events: list[PendingEvent]
    drops: list[tuple[str, str]]  # (reason, detail) per op or event skipped
    info: str = ""  # an #info frame's name and message (the pipeline logs OutdatedCursor)


def decode_frame(frame: bytes, *, verify_all_blocks: bool = False, verify_mst: bool = False) -> DecodedFrame:
    """Decode one relay frame into v1 events and drops; FrameError if it is unusable.

    verify_all_blocks: v1's whole-CAR hash check. verify_mst: v1's MST lookup of each
    create/update path (both off by default; see the module docstring).
    """
    header, body = split_frame(frame)
    op = header.get("op")
    if op == -1:
        return _error_frame(body)
    if op != 1:
        raise FrameError("unknown_op", repr(op))
    frame_type = header.get("t")
    if type(frame_type) is not str:
        raise FrameError("missing_type")
    seq = body.get("seq")
    if type(seq) is not int:
        seq = None
    if frame_type == "#commit":
        return _commit_frame(body, seq, verify_all_blocks, verify_mst)
    if frame_type == "#identity":
        return _identity_frame(body, seq)
    if frame_type == "#account":
        return _account_frame(body, seq)
    if frame_type == "#sync":
        return _sync_frame(body, seq)
    if frame_type == "#info":
        # No event (as v1), but the pipeline logs it: OutdatedCursor means events may be missing.
        return DecodedFrame(seq, frame_type, [], [], f"name={body.get('name')!r} message={body.get('message')!r}")
    # #labels and anything unknown: v1 emitted nothing.
    return DecodedFrame(seq, frame_type, [], [])


def decode_relay_event(frame_type: str, body: dict) -> DecodedFrame:
    """An #identity, #account or #sync body (already decoded) as decode_frame would yield it.

    The archive keeps these events' relay bodies (jetstream/archive/render.py): rendering them
    again goes through the same handling as a frame off the wire. FrameError as decode_frame.
    """
    seq = body.get("seq")
    return _RELAY_EVENT_DECODERS[frame_type](body, seq if type(seq) is int else None)


def _error_frame(body: dict) -> DecodedFrame:
    detail = f"error={body.get('error')!r} message={body.get('message')!r}"
    return DecodedFrame(None, "error", [], [("error_frame", detail)])


def _require(body: dict, field: str, kind: type, frame_type: str, optional: bool = False):
    value = body.get(field)
    if value is None and optional:
        return None
    if type(value) is not kind:
        raise FrameError("bad_body", f"type={frame_type} field={field}")
    return value


# ---------------------------------------------------------------------------
# #identity and #account
# ---------------------------------------------------------------------------

def _identity_frame(body: dict, seq: int | None) -> DecodedFrame:
    did = _require(body, "did", str, "#identity")
    seq = _require(body, "seq", int, "#identity")
    time = _require(body, "time", str, "#identity")
    handle = _require(body, "handle", str, "#identity", optional=True)
    if not is_rfc3339(time):
        return DecodedFrame(seq, "#identity", [], [("bad_time", f"did={did} time={time!r}")])
    did_json = go_json_string(did)
    parts = [b'{"did":', did_json]
    if handle is not None:
        parts += [b',"handle":', go_json_string(handle)]
    parts += [b',"seq":%d,"time":' % seq, go_json_string(time), b"}}"]
    tail = b',"kind":"identity","identity":' + b"".join(parts)
    record = wire_v2.pack_record(wire_v2.identity_parts(did, seq, time, handle), b"", _archive_body(body))
    event = PendingEvent(did, KIND_IDENTITY, "", b'{"did":' + did_json + b',"time_us":', tail, record)
    return DecodedFrame(seq, "#identity", [event], [])


def _account_frame(body: dict, seq: int | None) -> DecodedFrame:
    did = _require(body, "did", str, "#account")
    seq = _require(body, "seq", int, "#account")
    time = _require(body, "time", str, "#account")
    active = _require(body, "active", bool, "#account", optional=True) or False
    status = _require(body, "status", str, "#account", optional=True)
    if not is_rfc3339(time):
        return DecodedFrame(seq, "#account", [], [("bad_time", f"did={did} time={time!r}")])
    did_json = go_json_string(did)
    parts = [b'{"active":true,"did":' if active else b'{"active":false,"did":', did_json,
             b',"seq":%d' % seq]
    if status is not None:
        parts += [b',"status":', go_json_string(status)]
    parts += [b',"time":', go_json_string(time), b"}}"]
    tail = b',"kind":"account","account":' + b"".join(parts)
    record = wire_v2.pack_record(wire_v2.account_parts(did, active, seq, time, status), b"", _archive_body(body))
    event = PendingEvent(did, KIND_ACCOUNT, "", b'{"did":' + did_json + b',"time_us":', tail, record)
    return DecodedFrame(seq, "#account", [event], [])


def _sync_frame(body: dict, seq: int | None) -> DecodedFrame:
    """A #sync (Sync 1.1) as a `kind: "sync"` event, for clients that ask with includeSync=true.

    v1 emitted nothing for it. The shape follows jetstream-legacy PR #79 (indigo's
    SyncSubscribeRepos_Sync without its `blocks`): did, rev, seq, time; the CAR is not read.
    """
    did = _require(body, "did", str, "#sync")
    seq = _require(body, "seq", int, "#sync")
    rev = _require(body, "rev", str, "#sync")
    time = _require(body, "time", str, "#sync")
    if not is_rfc3339(time):
        return DecodedFrame(seq, "#sync", [], [("bad_time", f"did={did} time={time!r}")])
    did_json = go_json_string(did)
    tail = b"".join((b',"kind":"sync","sync":{"did":', did_json, b',"rev":', go_json_string(rev),
                     b',"seq":%d,"time":' % seq, go_json_string(time), b"}}"))
    # v2's #sync carries the relay's `blocks` (the CAR) as {"$bytes": …}; without them it has no v2 frame.
    blocks = body.get("blocks")
    parts = wire_v2.sync_parts(did, rev, seq, time, blocks) if type(blocks) is bytes else None
    record = wire_v2.pack_record(parts, b"", _archive_body(body))
    event = PendingEvent(did, KIND_SYNC, "", b'{"did":' + did_json + b',"time_us":', tail, record)
    return DecodedFrame(seq, "#sync", [event], [])


_RELAY_EVENT_DECODERS = {"#identity": _identity_frame, "#account": _account_frame, "#sync": _sync_frame}


def _archive_body(body: dict) -> bytes:
    """The relay's event body as DAG-CBOR (canonical: the relay's own bytes for a conforming relay),
    the archive payload of an #identity/#account/#sync v2 record."""
    try:
        return libipld.encode_dag_cbor(body)
    except (ValueError, TypeError, OverflowError):  # a body libipld decoded but cannot re-encode
        return b""


# ---------------------------------------------------------------------------
# #commit
# ---------------------------------------------------------------------------

def _commit_frame(body: dict, seq: int | None, verify_all_blocks: bool, verify_mst: bool) -> DecodedFrame:
    repo = _require(body, "repo", str, "#commit")
    if body.get("tooBig") is True:
        return DecodedFrame(seq, "#commit", [], [("too_big", f"did={repo} seq={seq}")])
    rev, time, ops, blocks = body.get("rev"), body.get("time"), body.get("ops"), body.get("blocks")
    if type(rev) is not str or type(time) is not str or type(ops) is not list or type(blocks) is not bytes:
        # Rare: name the first bad field, in the order v1's decoder met them.
        for field, kind in (("rev", str), ("time", str), ("ops", list), ("blocks", bytes)):
            _require(body, field, kind, "#commit")
    try:
        car = read_car(blocks, verify=verify_all_blocks)
        mst_root = _check_commit_block(car)
        if verify_mst and mst_root is None:
            raise CarError("bad_commit_block")
    except CarError as err:
        return DecodedFrame(seq, "#commit", [], [("bad_car", f"did={repo} seq={seq} reason={err.reason}")])
    if not is_rfc3339(time):
        return DecodedFrame(seq, "#commit", [], [("bad_time", f"did={repo} seq={seq} time={time!r}")])
    events: list[PendingEvent] = []
    drops: list[tuple[str, str]] = []
    mst = MstReader(car.blocks, mst_root) if verify_mst else None
    commit_events(repo, rev, ops, car.blocks, events, drops, mst)
    return DecodedFrame(seq, "#commit", events, drops)


def _check_commit_block(car) -> bytes | None:
    """v1 loaded root[0] as the signed commit (repo version 2 or 3) before any op.

    Returns its `data` (the MST root CID), or None when that is not a link: v1 then failed
    to load the commit, but only --verify-mst reads `data`, so only then is it a bad_car.
    """
    block = car.blocks.get(car.roots[0])
    if block is None:
        raise CarError("missing_commit_block")
    try:
        signed_commit = libipld.decode_dag_cbor(bytes(block))
    except (ValueError, RecursionError):
        raise CarError("bad_commit_block") from None
    if not isinstance(signed_commit, dict) or signed_commit.get("version") not in (2, 3):
        raise CarError("bad_commit_block")
    data = signed_commit.get("data")
    return data if type(data) is bytes else None
