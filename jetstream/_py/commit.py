"""A #commit's ops -> v1 commit events: reference twin of `jetstream._core.commit`.

Owns: v1's per-op rules (docs/architecture.md §3.1) once the frame is decoded and its CAR read:
which op is dropped and why (bad path, unknown action, missing cid or block, hash
mismatch, bad record, and given an MstReader v1's MST lookup: mst_missing_node,
mst_bad_node, mst_not_found, mst_cid_mismatch), the path split, the exact bytes of
each commit event (struct field order and omitempty, docs/protocol.md §4.2), and Go's RFC 3339 check
for the frame `time`. Each event also carries its v2 record (jetstream/wire_v2.py): the
`#commit` frame parts (`commit_parts`, with `record_to_json_v2` of the block and v2's CID of it)
and the archive payload (the record block; empty for a delete). A record v2's decoder refuses
gets a record without a frame (v2 readers skip the event; v1 is unaffected).
The Cython twin must give the same events and drops for every input
(tests/ingest/test_ingest_commit_fast.py compares them); jetstream/ingest/decode.py
explains the deliberate differences from v1.
It must never do I/O and never raise for bad op *content*: only an op that is not a map,
or whose action/path are not strings (v1's decoder failed there), raises FrameError.
"""
from __future__ import annotations

import hashlib
import re

from jetstream import wire_v2
from jetstream._py.car import verify_block
from jetstream._py.mst import is_mst_key
from jetstream._py.record_json import cid_to_string, go_json_string, record_to_json, record_to_json_v2
from jetstream.errors import FrameError, MstError, RecordError
from jetstream.events import KIND_COMMIT, PendingEvent

# Go time.Parse(time.RFC3339): fraction optional ('.' or ','), zone 'Z' or ±hh:mm.
_RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})"
    r"(?:[.,][0-9]+)?(?:Z|[+-]([0-9]{2}):([0-9]{2}))",
    re.ASCII,
)
_DAYS_IN_MONTH = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


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


def commit_events(repo: str, rev: str, ops: list, blocks, events: list, drops: list, mst=None) -> None:
    """Append each op's event (or (reason, detail) drop) in op order.

    With `mst` (an MstReader of this commit), a create/update must also be the MST leaf at
    its path, as v1 required (--verify-mst); without it only op.cid's block hash is checked.
    """
    head = b'{"did":' + go_json_string(repo) + b',"time_us":'
    # omitempty: an empty rev would vanish from v1's output.
    commit_prefix = b',"kind":"commit","commit":{' + (b'"rev":' + go_json_string(rev) + b"," if rev else b"")
    for op in ops:
        _commit_op(repo, rev, head, commit_prefix, op, blocks, events, drops, mst)


def _split_path(path: str) -> tuple[str, str] | None:
    parts = path.split("/")
    if len(parts) < 2:
        return None
    return parts[0], parts[1]


def _commit_op(repo: str, rev: str, head: bytes, commit_prefix: bytes, op, blocks, events: list, drops: list,
               mst) -> None:
    if not isinstance(op, dict):
        raise FrameError("bad_body", "type=#commit field=ops")
    action, path = op.get("action"), op.get("path")
    if type(action) is not str or type(path) is not str:
        raise FrameError("bad_body", "type=#commit field=ops")
    if action == "delete":
        split = _split_path(path)
        if split is None:
            drops.append(("bad_path", f"did={repo} path={path!r}"))
            return
        parts = wire_v2.commit_parts(repo, rev, "delete", split[0], split[1])
        events.append(_commit_event(repo, head, commit_prefix, b"delete", split, b"", wire_v2.pack_record(parts)))
        return
    if action not in ("create", "update"):
        drops.append(("unknown_action", f"did={repo} path={path!r} action={action!r}"))
        return
    if not is_mst_key(path):
        drops.append(("bad_path", f"did={repo} path={path!r}"))
        return
    cid = op.get("cid")
    if type(cid) is not bytes:
        drops.append(("missing_cid", f"did={repo} path={path!r}"))
        return
    if mst is not None and not _is_mst_leaf(repo, path, cid, mst, drops):
        return
    block = blocks.get(cid)
    if block is None:
        drops.append(("missing_block", f"did={repo} path={path!r}"))
        return
    if not verify_block(cid, block):
        drops.append(("cid_mismatch", f"did={repo} path={path!r}"))
        return
    try:
        record = record_to_json(block)
    except RecordError as err:
        drops.append(("bad_record", f"did={repo} path={path!r} reason={err.reason}"))
        return
    record_and_cid = b',"record":' + record + b',"cid":"' + cid_to_string(cid).encode("ascii") + b'"'
    split = _split_path(path)
    events.append(_commit_event(repo, head, commit_prefix, action.encode("ascii"), split, record_and_cid,
                                v2_commit_record(repo, rev, action, split, bytes(block))))


def v2_commit_record(repo: str, rev: str, action: str, split: tuple[str, str], block: bytes) -> bytes:
    """A create/update's v2 record: the #commit parts and v2's CID and the block; no frame if v2 refuses it."""
    cid = b"\x01\x71\x12\x20" + hashlib.sha256(block).digest()  # v2: cbor.ComputeCID(CodecDagCBOR, block)
    try:
        record_json = record_to_json_v2(block)
    except RecordError:
        return wire_v2.pack_record(None, cid, block)
    parts = wire_v2.commit_parts(repo, rev, action, split[0], split[1], wire_v2.record_cid(block), record_json)
    return wire_v2.pack_record(parts, cid, block)


def _is_mst_leaf(repo: str, path: str, cid: bytes, mst, drops: list) -> bool:
    """v1's GetRecordBytes(path) + "record cid mismatch": False after appending the drop."""
    try:
        leaf = mst.get(path)
    except MstError as err:
        drops.append(("mst_" + err.reason, f"did={repo} path={path!r}"))
        return False
    if leaf != cid:
        drops.append(("mst_cid_mismatch", f"did={repo} path={path!r}"))
        return False
    return True


def _commit_event(repo: str, head: bytes, commit_prefix: bytes, operation: bytes, split: tuple[str, str],
                  record_and_cid: bytes, v2_record: bytes) -> PendingEvent:
    collection, rkey = split
    parts = [commit_prefix, b'"operation":"', operation, b'"']
    if collection:  # omitempty
        parts += [b',"collection":', go_json_string(collection)]
    if rkey:
        parts += [b',"rkey":', go_json_string(rkey)]
    parts += [record_and_cid, b"}}"]
    return PendingEvent(repo, KIND_COMMIT, collection, head, b"".join(parts), v2_record)
