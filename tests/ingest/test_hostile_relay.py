"""A hostile relay: records and frames built to exhaust CPU or memory, or to confuse the
decoder, are handled per docs/architecture.md §3.1 and §2 (invariant 4).

Each hostile record rides in the middle of a three-create commit: the bad op is dropped
(counted under its reason), its two neighbours come out. Hostile *frames* (duplicate or
unsorted map keys in the frame itself, 100k-deep nesting) are counted and skipped, and the
good frames around them are ingested. Every input is decoded under tracemalloc with a
clock: loose bounds (seconds, a few times the input size) catch unbounded work without
depending on the machine's speed.

Our deliberate choices, on inputs a conforming relay never sends:
- records: nesting deeper than 2,048 levels is refused (v1 had no bound); non-minimal
  integer/length heads and unsorted keys are accepted (go-ipld-cbor was lenient too);
  duplicate keys are refused.
- frames: libipld refuses non-canonical and duplicate-key maps, and deep nesting, so such a
  frame is undecodable: v1 ended its stream there, we count it and go on.
"""
from __future__ import annotations

import json
import time
import tracemalloc

import pytest

from jetstream.daemon import Daemon
from jetstream.ingest.decode import decode_frame
from jetstream.ingest.frames import FrameError
from tests.ingest.test_ingest_helpers import CID, Raw, car_bytes, cid_for, commit_block, dag_cbor, frame
from tests.ingest.test_relay_client_reconnect import ScriptedRelay, counter, serve_config, wait_until

pytestmark = pytest.mark.timeout(120)

DID = "did:plc:hostilehostilehostile00"
NOW = "2026-01-01T00:00:00.000Z"
POST = "app.bsky.feed.post"
MIB = 1 << 20
SECONDS_PER_INPUT = 10.0  # real cost is milliseconds; this only catches runaway work
MEMORY_FACTOR, MEMORY_SLACK = 8, 8 * MIB


def cbor_text(text: bytes) -> bytes:
    return dag_cbor(text.decode())


def post_with(field: bytes) -> bytes:
    """A post record whose `text` value is the given pre-encoded CBOR item."""
    return dag_cbor({"$type": POST, "createdAt": NOW, "text": Raw(field)})


def array_of(count: int) -> bytes:
    return b"\x9a" + count.to_bytes(4, "big") + b"\x01" * count


# name -> (record block, drop reason or None if it must be emitted)
HOSTILE_RECORDS = {
    "array_nesting_100k": (post_with(b"\x81" * 100_000 + b"\x01"), "too_deep"),
    "map_nesting_100k": (post_with(b"\xa1\x61a" * 100_000 + b"\x01"), "too_deep"),
    "string_of_1MiB": (post_with(b"\x7a" + MIB.to_bytes(4, "big") + b"x" * MIB), "record_too_large"),
    "string_just_under_the_record_limit": (post_with(b"\x7a" + (MIB - 256).to_bytes(4, "big") + b"x" * (MIB - 256)),
                                           None),
    "array_of_131073": (post_with(array_of(131_073)), "container_too_long"),
    "array_of_131072": (post_with(array_of(131_072)), None),
    "declared_2^62_elements": (post_with(b"\x9b" + (1 << 62).to_bytes(8, "big")), "container_too_long"),
    "duplicate_map_keys": (b"\xa3" + cbor_text(b"$type") + cbor_text(POST.encode()) + cbor_text(b"text")
                           + cbor_text(b"one") + cbor_text(b"text") + cbor_text(b"two"), "duplicate_key"),
    # keys out of canonical order, a non-minimal integer head and a non-minimal length head
    "non_canonical": (b"\xa3" + cbor_text(b"text") + b"\x78\x02hi" + cbor_text(b"$type") + cbor_text(POST.encode())
                      + cbor_text(b"n") + b"\x19\x00\x07", None),
}
NON_CANONICAL_EQUIVALENT = {"$type": POST, "n": 7, "text": "hi"}


def ops_and_blocks(seq: int, middle: bytes, middle_cid: bytes | None = None):
    """Three creates: good a, the hostile middle (under `middle_cid` if given), good c."""
    good = [dag_cbor({"$type": POST, "createdAt": NOW, "text": f"good {seq} {side}"}) for side in "ac"]
    cids = [cid_for(good[0]), CID(middle_cid) if middle_cid else cid_for(middle), cid_for(good[1])]
    ops = [{"action": "create", "path": f"{POST}/{seq}{side}", "cid": cid, "prev": None}
           for side, cid in zip("abc", cids)]
    blocks = [(cids[0], good[0]), (cids[1], middle), (cids[2], good[1])]
    return ops, blocks


def commit(seq: int, ops: list[dict], blocks: list[tuple[bytes, bytes]]) -> bytes:
    rev = f"rev{seq}"
    signed = commit_block(DID, rev)
    body = {"seq": seq, "repo": DID, "rev": rev, "since": None, "time": NOW, "ops": ops,
            "blocks": car_bytes([cid_for(signed)], [(cid_for(signed), signed)] + blocks),
            "commit": cid_for(signed), "rebase": False, "tooBig": False, "blobs": [], "prevData": None}
    return frame("#commit", body)


def hostile_commit(seq: int, name: str) -> bytes:
    return commit(seq, *ops_and_blocks(seq, HOSTILE_RECORDS[name][0]))


def cid_mismatch_commit(seq: int) -> bytes:
    """The middle op names the CID of one record; the CAR holds other bytes under it."""
    claimed = dag_cbor({"$type": POST, "createdAt": NOW, "text": "what the cid says"})
    return commit(seq, *ops_and_blocks(seq, dag_cbor({"$type": POST, "text": "swapped"}), cid_for(claimed)))


def hostile_frames(seq: int) -> dict[str, bytes]:
    """Frames the decoder cannot use at all (libipld refuses them)."""
    header = dag_cbor({"op": 1, "t": "#commit"})
    return {
        "frame_duplicate_keys": header + b"\xa2" + (cbor_text(b"seq") + dag_cbor(seq)) * 2,
        "frame_unsorted_keys": header + b"\xa2" + cbor_text(b"repo") + cbor_text(DID.encode()) + cbor_text(b"seq")
                               + dag_cbor(seq),
        "frame_nesting_100k": header + b"\xa1" + cbor_text(b"ops") + b"\x81" * 100_000 + b"\x01",
        "frame_declared_2^62_bytes": header + b"\xa1" + cbor_text(b"blocks") + b"\x5b" + (1 << 62).to_bytes(8, "big"),
    }


def measured_decode(raw: bytes):
    """decode_frame's outcome (DecodedFrame or FrameError), seconds taken, tracemalloc peak bytes."""
    tracemalloc.start()
    started = time.perf_counter()
    try:
        outcome = decode_frame(raw)
    except FrameError as err:
        outcome = err
    finally:
        elapsed = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return outcome, elapsed, peak


def assert_bounded(name: str, raw: bytes, elapsed: float, peak: int) -> None:
    assert elapsed < SECONDS_PER_INPUT, f"{name}: {elapsed:.2f}s"
    assert peak < MEMORY_FACTOR * len(raw) + MEMORY_SLACK, f"{name}: peak {peak} for {len(raw)} bytes"


# --- decode_frame directly ------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(HOSTILE_RECORDS))
def test_hostile_record_drops_only_its_op_within_bounded_time_and_memory(name):
    raw = hostile_commit(500, name)
    decoded, elapsed, peak = measured_decode(raw)
    assert_bounded(name, raw, elapsed, peak)
    reason = HOSTILE_RECORDS[name][1]
    rkeys = [json.loads(b"{" + event.json_tail[1:])["commit"]["rkey"] for event in decoded.events]
    if reason is None:
        assert decoded.drops == [] and rkeys == ["500a", "500b", "500c"]
    else:
        assert [(drop, detail.rsplit("reason=", 1)[-1]) for drop, detail in decoded.drops] == [("bad_record", reason)]
        assert rkeys == ["500a", "500c"]


def test_emitted_hostile_records_carry_their_whole_content():
    def middle_record(name: str) -> dict:
        decoded = decode_frame(hostile_commit(1, name))
        return json.loads(b"{" + decoded.events[1].json_tail[1:])["commit"]["record"]

    assert middle_record("string_just_under_the_record_limit")["text"] == "x" * (MIB - 256)
    assert middle_record("array_of_131072")["text"] == [1] * 131_072
    assert middle_record("non_canonical") == NON_CANONICAL_EQUIVALENT


def test_cid_hash_mismatch_drops_only_its_op():
    decoded, elapsed, peak = measured_decode(cid_mismatch_commit(9))
    assert [drop for drop, _ in decoded.drops] == ["cid_mismatch"] and len(decoded.events) == 2


@pytest.mark.parametrize("name", sorted(hostile_frames(1)))
def test_hostile_frame_is_a_frame_error_within_bounded_time_and_memory(name):
    raw = hostile_frames(1)[name]
    outcome, elapsed, peak = measured_decode(raw)
    assert_bounded(name, raw, elapsed, peak)
    assert isinstance(outcome, FrameError) and outcome.reason == "undecodable"


# --- through a relay socket into the daemon -------------------------------------------------

def good_commit(seq: int) -> bytes:
    record = dag_cbor({"$type": POST, "createdAt": NOW, "text": f"plain {seq}"})
    return commit(seq, [{"action": "create", "path": f"{POST}/{seq}plain", "cid": cid_for(record), "prev": None}],
                  [(cid_for(record), record)])


def hostile_script(first_seq: int) -> tuple[list[bytes], list[str], dict[str, int], int]:
    """(frames, rkeys expected in the log in order, drops expected per reason, last seq)."""
    script, rkeys, drops = [], [], {}
    seq = first_seq
    for name, (_, reason) in sorted(HOSTILE_RECORDS.items()):
        script += [good_commit(seq), hostile_commit(seq + 1, name)]
        rkeys += [f"{seq}plain", f"{seq + 1}a"] + ([f"{seq + 1}b"] if reason is None else []) + [f"{seq + 1}c"]
        if reason is not None:
            drops["bad_record"] = drops.get("bad_record", 0) + 1
        seq += 2
    script += [good_commit(seq), cid_mismatch_commit(seq + 1)]
    rkeys += [f"{seq}plain", f"{seq + 1}a", f"{seq + 1}c"]
    drops["cid_mismatch"] = 1
    seq += 2
    for raw in hostile_frames(seq).values():
        script += [good_commit(seq), raw]
        rkeys.append(f"{seq}plain")
        drops["frame_undecodable"] = drops.get("frame_undecodable", 0) + 1
        seq += 1
    script.append(good_commit(seq))
    rkeys.append(f"{seq}plain")
    return script, rkeys, drops, seq


async def test_daemon_ingests_every_good_frame_around_hostile_ones(tmp_path):
    first_seq = 70_000
    script, rkeys, drops, last_seq = hostile_script(first_seq)
    relay = await ScriptedRelay([script]).start()
    before = {reason: counter("jetstream_ingest_drops_total", reason=reason) for reason in drops}
    daemon = Daemon(serve_config(tmp_path, relay.url, "--override-relay-cursor", str(first_seq - 1)))
    await daemon.start()
    try:
        await wait_until(lambda: daemon.event_log.relay_cursor() == last_seq, timeout=60)
        lines = [row.payload for row in daemon.event_log.read_after(0, 10_000, compressed=False)]
    finally:
        await daemon.stop()
        await relay.close()
    assert [json.loads(line)["commit"]["rkey"] for line in lines] == rkeys
    after = {reason: counter("jetstream_ingest_drops_total", reason=reason) for reason in drops}
    assert {reason: after[reason] - before[reason] for reason in drops} == drops
