"""Relay frame -> the v1 events it yields (PendingEvent, JSON waiting for time_us).

Owns: v1's per-frame behaviour (V1-REFERENCE §5.2-5.3): which frame types yield events,
commit processing op by op, what is dropped and why, and the exact envelope bytes
(struct field order and omitempty of §4.1). Pure: bytes in, values out.
It must never do I/O, assign time_us, or raise for bad *content*: a bad op, record or
timestamp becomes a (reason, detail) drop and its neighbours still come out. Only a
frame that cannot be decoded at all, or whose fields have the wrong types (v1's
decoder would have failed and ended the stream), raises FrameError.

Deliberate differences from v1, all on inputs a conforming relay never sends:
- The record block is found by op.cid in the CAR and its hash verified, instead of
  walking the MST to the path (v1 dropped an op whose MST leaf CID != op.cid). An op
  whose cid names a block that is not its path's MST leaf is emitted by us.
- Only record blocks are hash-checked (v1 checked every block and dropped the whole
  commit); pass verify_all_blocks=True for v1's rule.
- Paths are checked with v1's MST key rules (create/update) and split like v1
  (strings.Split(path, "/")[0], [1]); a delete path without "/" crashed v1, we drop it.
"""
from __future__ import annotations

import logging
import re
from typing import NamedTuple

from jetstream.events import KIND_ACCOUNT, KIND_COMMIT, KIND_IDENTITY, PendingEvent
from jetstream.ingest.car import CarError, cid_to_string, read_car, verify_block
from jetstream.ingest.frames import FrameError, split_frame
from jetstream._py.record_json import RecordError

log = logging.getLogger(__name__)

try:
    from jetstream._core.record_json import go_json_string, record_to_json

    RECORD_EMITTER = "cython"
except ImportError:  # an unbuilt checkout still works, just slower
    from jetstream._py.record_json import go_json_string, record_to_json

    RECORD_EMITTER = "python"
    log.warning("event=record_emitter_fallback impl=python reason=cython_module_not_built")

import libipld  # noqa: E402  (after the emitter choice so its log line comes first)


class DecodedFrame(NamedTuple):
    seq: int | None  # the relay seq, when the body carries one
    frame_type: str  # header t ("#commit", "#identity", …) or "error" for op == -1
    events: list[PendingEvent]
    drops: list[tuple[str, str]]  # (reason, detail) per op or event skipped


# Go time.Parse(time.RFC3339): fraction optional ('.' or ','), zone 'Z' or ±hh:mm.
_RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})"
    r"(?:[.,][0-9]+)?(?:Z|[+-]([0-9]{2}):([0-9]{2}))",
    re.ASCII,
)
_DAYS_IN_MONTH = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)

# MST key (the repo path) rules v1's MST lookup enforced, '~' included (indigo 20524de).
_MST_KEY = re.compile(r"[A-Za-z0-9_:.~-]+/[A-Za-z0-9_:.~-]+", re.ASCII)
_MST_KEY_MAX = 256


def is_rfc3339(value: str) -> bool:
    """Would Go's time.Parse(time.RFC3339, value) succeed?"""
    match = _RFC3339.fullmatch(value)
    if match is None:
        return False
    year, month, day, hour, minute, second, zone_hour, zone_minute = match.groups()
    month_no, day_no = int(month), int(day)
    if not 1 <= month_no <= 12 or day_no < 1 or day_no > _DAYS_IN_MONTH[month_no - 1]:
        return False
    if month_no == 2 and day_no == 29 and not _is_leap(int(year)):
        return False
    if int(hour) > 23 or int(minute) > 59 or int(second) > 59:
        return False
    # Go's general parser (the fallback of its RFC3339 fast path) allows offsets up to
    # 24h and 60m "as some people do write" them.
    if zone_hour is not None and (int(zone_hour) > 24 or int(zone_minute) > 60):
        return False
    return True


def _is_leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def decode_frame(frame: bytes, *, verify_all_blocks: bool = False) -> DecodedFrame:
    """Decode one relay frame into v1 events and drops; FrameError if it is unusable."""
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
        return _commit_frame(body, seq, verify_all_blocks)
    if frame_type == "#identity":
        return _identity_frame(body, seq)
    if frame_type == "#account":
        return _account_frame(body, seq)
    # #sync, #info, #labels and anything unknown: v1 emitted nothing.
    return DecodedFrame(seq, frame_type, [], [])


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
    event = PendingEvent(did, KIND_IDENTITY, "", b'{"did":' + did_json + b',"time_us":', tail)
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
    event = PendingEvent(did, KIND_ACCOUNT, "", b'{"did":' + did_json + b',"time_us":', tail)
    return DecodedFrame(seq, "#account", [event], [])


# ---------------------------------------------------------------------------
# #commit
# ---------------------------------------------------------------------------

class _Commit(NamedTuple):
    repo: str
    head: bytes  # b'{"did":"…","time_us":'
    commit_prefix: bytes  # b',"kind":"commit","commit":{"rev":"…"'


def _commit_frame(body: dict, seq: int | None, verify_all_blocks: bool) -> DecodedFrame:
    repo = _require(body, "repo", str, "#commit")
    if body.get("tooBig") is True:
        return DecodedFrame(seq, "#commit", [], [("too_big", f"did={repo} seq={seq}")])
    rev = _require(body, "rev", str, "#commit")
    time = _require(body, "time", str, "#commit")
    ops = _require(body, "ops", list, "#commit")
    blocks = _require(body, "blocks", bytes, "#commit")
    try:
        car = read_car(blocks, verify=verify_all_blocks)
        _check_commit_block(car)
    except CarError as err:
        return DecodedFrame(seq, "#commit", [], [("bad_car", f"did={repo} seq={seq} reason={err.reason}")])
    if not is_rfc3339(time):
        return DecodedFrame(seq, "#commit", [], [("bad_time", f"did={repo} seq={seq} time={time!r}")])
    repo_json = go_json_string(repo)
    # omitempty: an empty rev would vanish from v1's output.
    rev_part = b'"rev":' + go_json_string(rev) if rev else b""
    commit = _Commit(repo, b'{"did":' + repo_json + b',"time_us":',
                     b',"kind":"commit","commit":{' + rev_part)
    events: list[PendingEvent] = []
    drops: list[tuple[str, str]] = []
    for op in ops:
        _commit_op(commit, op, car.blocks, events, drops)
    return DecodedFrame(seq, "#commit", events, drops)


def _check_commit_block(car) -> None:
    """v1 loaded root[0] as the signed commit (repo version 2 or 3) before any op."""
    block = car.blocks.get(car.roots[0])
    if block is None:
        raise CarError("missing_commit_block")
    try:
        signed_commit = libipld.decode_dag_cbor(bytes(block))
    except (ValueError, RecursionError):
        raise CarError("bad_commit_block") from None
    if not isinstance(signed_commit, dict) or signed_commit.get("version") not in (2, 3):
        raise CarError("bad_commit_block")


def _split_path(path: str) -> tuple[str, str] | None:
    parts = path.split("/")
    if len(parts) < 2:
        return None
    return parts[0], parts[1]


def _commit_op(commit: _Commit, op, blocks, events: list, drops: list) -> None:
    if not isinstance(op, dict):
        raise FrameError("bad_body", "type=#commit field=ops")
    action, path = op.get("action"), op.get("path")
    if type(action) is not str or type(path) is not str:
        raise FrameError("bad_body", "type=#commit field=ops")
    where = f"did={commit.repo} path={path!r}"
    if action == "delete":
        split = _split_path(path)
        if split is None:
            drops.append(("bad_path", where))
            return
        events.append(_commit_event(commit, "delete", split, b""))
        return
    if action not in ("create", "update"):
        drops.append(("unknown_action", f"{where} action={action!r}"))
        return
    if len(path) > _MST_KEY_MAX or _MST_KEY.fullmatch(path) is None:
        drops.append(("bad_path", where))
        return
    cid = op.get("cid")
    if type(cid) is not bytes:
        drops.append(("missing_cid", where))
        return
    block = blocks.get(cid)
    if block is None:
        drops.append(("missing_block", where))
        return
    if not verify_block(cid, block):
        drops.append(("cid_mismatch", where))
        return
    try:
        record = record_to_json(block)
    except RecordError as err:
        drops.append(("bad_record", f"{where} reason={err.reason}"))
        return
    record_and_cid = b',"record":' + record + b',"cid":"' + cid_to_string(cid).encode("ascii") + b'"'
    events.append(_commit_event(commit, action, _split_path(path), record_and_cid))


def _commit_event(commit: _Commit, operation: str, split: tuple[str, str], record_and_cid: bytes) -> PendingEvent:
    collection, rkey = split
    parts = [commit.commit_prefix]
    if commit.commit_prefix[-1:] != b"{":
        parts.append(b",")
    parts.append(b'"operation":"%s"' % operation.encode("ascii"))
    if collection:  # omitempty
        parts += [b',"collection":', go_json_string(collection)]
    if rkey:
        parts += [b',"rkey":', go_json_string(rkey)]
    parts += [record_and_cid, b"}}"]
    return PendingEvent(commit.repo, KIND_COMMIT, collection, commit.head, b"".join(parts))
