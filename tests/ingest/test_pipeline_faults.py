"""Bad input is survived (docs/architecture.md §2, invariant 4) and every frame is accounted for, through a
real relay socket -> Daemon -> RocksDB.

Every kind of bad frame, commit and op is spliced between the 150 real corpus frames:
each is counted under its reason (read from the prometheus registry), every good event
still comes out byte-identical to v1, the cursor moves past skipped kinds, and a relay
that resends everything after a restart adds nothing to the log.
"""
from __future__ import annotations

import asyncio
import json
import re

import libipld
import pytest

from jetstream.daemon import Daemon
from jetstream.ingest.decode import decode_frame
from jetstream.relaysim.seqpatch import patch_seq
from tests.ingest.test_ingest_helpers import car_bytes, cid_for, commit_block, dag_cbor, frame
from tests.ingest.test_relay_client_reconnect import ScriptedRelay, counter, seq_of, serve_config, wait_until

pytestmark = pytest.mark.timeout(60)

TIME_US = re.compile(rb'"time_us":\d+')
SEQ_FIELD = re.compile(rb'"seq":(\d+)')
FAULT_DID = "did:plc:faultsfaultsfaults"
FIRST_SEQ = 10_000
STEP = 100  # good frame i has seq FIRST_SEQ + i*STEP; faults use the seqs in between
NOW = "2026-01-01T00:00:00.000Z"


def error_frame(error: str, message: str) -> bytes:
    return dag_cbor({"op": -1}) + dag_cbor({"error": error, "message": message})


def record(text: str) -> bytes:
    return dag_cbor({"$type": "app.bsky.feed.post", "text": text, "createdAt": NOW})


def commit(seq: int, ops: list[dict], car_blocks: list[tuple[bytes, bytes]], **overrides) -> bytes:
    """A #commit by FAULT_DID whose CAR holds its signed commit and exactly `car_blocks`."""
    rev = f"rev{seq}"
    signed = commit_block(FAULT_DID, rev)
    signed_cid = cid_for(signed)
    body = {"seq": seq, "repo": FAULT_DID, "rev": rev, "since": None, "time": NOW, "ops": ops,
            "blocks": car_bytes([signed_cid], [(signed_cid, signed)] + car_blocks), "commit": signed_cid,
            "rebase": False, "tooBig": False, "blobs": [], "prevData": None}
    body.update(overrides)
    return frame("#commit", body)


def create(rkey: str, block: bytes | None, **overrides) -> dict:
    op = {"action": "create", "path": f"app.bsky.feed.post/{rkey}",
          "cid": None if block is None else cid_for(block), "prev": None}
    op.update(overrides)
    return op


def commit_with_bad_middle_op(seq: int, reason: str) -> bytes:
    """Three creates; the middle one is broken so that it must be dropped for `reason`."""
    good = [record(f"good {seq} a"), record(f"good {seq} c")]
    middle = record(f"middle {seq}")
    blocks = [(cid_for(b), b) for b in good]
    middle_op = create(f"{seq}b", middle)
    if reason == "missing_block":
        pass  # the op names a block the CAR does not hold
    elif reason == "cid_mismatch":
        blocks.append((cid_for(middle), record("not what the cid says")))
    elif reason == "bad_path":
        middle_op["path"] = "no-slash-here"
        blocks.append((cid_for(middle), middle))
    elif reason == "bad_record":
        bad = dag_cbor({"$type": "app.bsky.feed.post", "ratio": 0.5})
        middle_op["cid"] = cid_for(bad)
        blocks.append((cid_for(bad), bad))
    elif reason == "missing_cid":
        middle_op["cid"] = None
    elif reason == "unknown_action":
        middle_op["action"] = "resurrect"
        blocks.append((cid_for(middle), middle))
    ops = [create(f"{seq}a", good[0]), middle_op, create(f"{seq}c", good[1])]
    return commit(seq, ops, blocks)


OP_FAULTS = ("missing_block", "cid_mismatch", "bad_path", "bad_record", "missing_cid", "unknown_action")


def _y() -> bytes:
    return record("y")


# (metric, label, build(seq, good neighbour frame)): one of each, spliced after good frame i.
FRAME_FAULTS = [
    ("drop", "frame_undecodable", lambda seq, good: b"\xff\x00 definitely not cbor"),
    ("drop", "frame_undecodable", lambda seq, good: good[: len(good) // 2]),
    ("drop", "frame_bad_body", lambda seq, good: commit(seq, [], [], repo=12345)),
    ("drop", "too_big", lambda seq, good: commit(seq, [], [], tooBig=True, blocks=b"")),
    ("drop", "bad_car", lambda seq, good: commit(seq, [create("x", _y())], [], blocks=b"\x05not a car")),
    ("drop", "bad_time", lambda seq, good: commit(seq, [create("y", _y())], [(cid_for(_y()), _y())], time="yesterday")),
    ("processed", "sync", lambda seq, good: frame("#sync", {"seq": seq, "did": FAULT_DID, "rev": "r",
                                                              "blocks": b"", "time": NOW})),
    ("processed", "info", lambda seq, good: frame("#info", {"name": "OutdatedCursor", "message": "old"})),
    ("processed", "unknown", lambda seq, good: frame("#brandnew", {"seq": seq})),
] + [("drop", reason, lambda seq, good, reason=reason: commit_with_bad_middle_op(seq, reason)) for reason in OP_FAULTS]


def good_seq(index: int) -> int:
    return FIRST_SEQ + index * STEP


def build_scripts(corpus_frames):
    """(first connection's script ending in an error frame, the full script, seqs of op-fault commits)."""
    goods = [patch_seq(good, good_seq(i)) for i, good in enumerate(corpus_frames)]
    script, op_fault_seqs = [], []
    for i, good in enumerate(goods):
        script.append(good)
        if i < len(FRAME_FAULTS):
            _, label, build = FRAME_FAULTS[i]
            script.append(build(good_seq(i) + 1, good))
            if label in OP_FAULTS:
                op_fault_seqs.append(good_seq(i) + 1)
        elif i == len(FRAME_FAULTS):
            script.append(good)  # the same seq again
        elif i == len(FRAME_FAULTS) + 1:
            script.append(goods[3])  # an older seq
        if i == 40:
            first_connection = script + [error_frame("ConsumerTooSlow", "catch up please")]
    script.append(frame("#sync", {"seq": good_seq(len(goods)), "did": FAULT_DID, "rev": "r", "blocks": b"", "time": NOW}))
    return first_connection, script, op_fault_seqs


def expected_deltas(socket_url: str) -> dict[tuple[str, tuple], float]:
    deltas: dict[tuple[str, tuple], float] = {}

    def add(name, labels, amount=1.0):
        key = (name, tuple(sorted(labels.items())))
        deltas[key] = deltas.get(key, 0.0) + amount

    for metric, label, _ in FRAME_FAULTS:
        if metric == "drop":
            add("jetstream_ingest_drops_total", {"reason": label})
        else:
            add("consumer_events_processed_total", {"event_type": label, "socket_url": socket_url})
    add("jetstream_ingest_drops_total", {"reason": "duplicate_seq"})
    add("jetstream_ingest_drops_total", {"reason": "regressed_seq"})
    add("consumer_events_processed_total", {"event_type": "sync", "socket_url": socket_url})  # the last frame
    add("consumer_events_processed_total", {"event_type": "error", "socket_url": socket_url})
    add("jetstream_relay_disconnects_total", {"reason": "error_frame"})
    return deltas


def read_counters(keys) -> dict:
    return {key: counter(key[0], **dict(key[1])) for key in keys}


def without_time_us(line: bytes) -> bytes:
    return TIME_US.sub(b'"time_us":0', line, count=1)


def renumber_seq(line: bytes, corpus_frames) -> bytes:
    """An expected identity/account line with its relay seq renumbered as the script did."""
    first = seq_of(corpus_frames[0])
    return SEQ_FIELD.sub(lambda m: b'"seq":%d' % good_seq(int(m.group(1)) - first), line)


def decodable_seq(raw: bytes) -> int | None:
    """The seq of a frame that is whole CBOR (a truncated frame may still show its seq bytes)."""
    try:
        _, body = libipld.decode_dag_cbor_multi(raw)
    except ValueError:
        return None
    return body.get("seq") if isinstance(body, dict) else None


def log_lines(event_log) -> list[bytes]:
    return [row.payload for row in event_log.read_after(0, 100_000, compressed=False)]


def test_every_fault_builder_makes_the_fault_it_is_named_for():
    """Guards the fixtures: each spliced frame really is rejected for its label (not by accident)."""
    good = commit_with_bad_middle_op(1, "missing_block")  # any well-formed frame
    for metric, label, build in FRAME_FAULTS:
        bad = build(77, good)
        try:
            decoded = decode_frame(bad)
        except Exception as exc:  # noqa: BLE001
            assert label == "frame_" + getattr(exc, "reason", "?"), label
            continue
        if metric == "drop":
            assert [reason for reason, _ in decoded.drops] == [label]
        else:
            # A #sync is stored as one kind-3 event (served only with includeSync=true).
            expected_kinds = [3] if label == "sync" else []
            assert [event.kind for event in decoded.events] == expected_kinds
            assert decoded.frame_type.lstrip("#") in (label, "brandnew")


async def test_each_bad_frame_commit_and_op_is_counted_and_every_good_event_comes_out(
        tmp_path, corpus_frames, expected_v1_lines):
    first_connection, script, op_fault_seqs = build_scripts(corpus_frames)
    relay = await ScriptedRelay([first_connection, script]).start()
    expected = expected_deltas(relay.url)
    before = read_counters(expected)
    daemon = Daemon(serve_config(tmp_path, relay.url, "--override-relay-cursor", str(FIRST_SEQ - 1)))
    await daemon.start()
    try:
        await wait_until(lambda: daemon.event_log.relay_cursor() == good_seq(len(corpus_frames)))
        lines = log_lines(daemon.event_log)
    finally:
        await daemon.stop()
        await relay.close()

    after = read_counters(expected)
    assert {key: after[key] - before[key] for key in expected} == expected
    assert relay.dialled_cursors[:2] == [FIRST_SEQ - 1, good_seq(40)], "re-dialled after the error frame"
    corpus_lines = [line for line in lines if FAULT_DID.encode() not in line]
    assert [without_time_us(l) for l in corpus_lines] == [renumber_seq(without_time_us(l), corpus_frames)
                                                          for l in expected_v1_lines]
    fault_lines = [line for line in lines if FAULT_DID.encode() in line]
    # The #sync frames (one spliced, one at the end) are stored as sync events, not served to v1 clients.
    assert [json.loads(line)["kind"] for line in fault_lines].count("sync") == 2
    neighbours = [json.loads(line)["commit"]["rkey"] for line in fault_lines if b'"kind":"sync"' not in line]
    assert neighbours == [f"{seq}{side}" for seq in op_fault_seqs for side in "ac"]
    times = [json.loads(line)["time_us"] for line in lines]
    assert times == sorted(set(times))


async def test_after_a_restart_a_relay_resending_everything_adds_nothing(tmp_path, corpus_frames):
    _, script, _ = build_scripts(corpus_frames)
    last_seq = good_seq(len(corpus_frames))
    relay = await ScriptedRelay([script]).start()
    try:
        daemon = Daemon(serve_config(tmp_path, relay.url, "--override-relay-cursor", str(FIRST_SEQ - 1)))
        await daemon.start()
        try:
            await wait_until(lambda: daemon.event_log.relay_cursor() == last_seq)
            lines_before = log_lines(daemon.event_log)
        finally:
            await daemon.stop()
    finally:
        await relay.close()

    # A misbehaving relay that ignores the cursor and replays the whole stream.
    replaying = await ScriptedRelay([script], honour_cursor=False).start()
    seq_bearing = sum(1 for f in script if decodable_seq(f) is not None)
    old_before = counter("jetstream_ingest_drops_total", reason="regressed_seq") + counter(
        "jetstream_ingest_drops_total", reason="duplicate_seq")
    daemon = Daemon(serve_config(tmp_path, replaying.url))
    await daemon.start()
    try:
        await wait_until(lambda: counter("jetstream_ingest_drops_total", reason="regressed_seq") + counter(
            "jetstream_ingest_drops_total", reason="duplicate_seq") >= old_before + seq_bearing)
        await asyncio.sleep(0.1)
        assert counter("jetstream_ingest_drops_total", reason="regressed_seq") + counter(
            "jetstream_ingest_drops_total", reason="duplicate_seq") == old_before + seq_bearing
        assert replaying.dialled_cursors[0] == last_seq
        assert log_lines(daemon.event_log) == lines_before
        assert daemon.event_log.relay_cursor() == last_seq
    finally:
        await daemon.stop()
        await replaying.close()
