"""The v2 frame encoder (jetstream/wire_v2.py), without sockets.

How the goldens were derived (bluesky-social/jetstream at the fetched HEAD, read, not run):
- The message frame is encoder.go's `messageFramePrefix` + the union's AppendJSON + `}`;
  the union (JetstreamSubscribeEvents_Message.AppendJSON) sets `$type` to
  "network.bsky.jetstream.subscribeEvents#<kind>" and calls the variant's AppendJSON.
- Each variant's AppendJSON (api/jetstream/jetstreamsubscribeevents.go) writes `$type`
  and then its fields in the order of its jsonKey_* table, which is bytewise name order:
  #commit: cid (if CID.HasVal), collection, did, operation, record (if Record != nil,
  appended verbatim), rev, rkey, seq, time; #identity: did, identity, seq, time;
  #account: account, did, seq, time; #sync: did, seq, sync, time; #info: message (if
  set), name. No field is ever written as null.
- The wrapped relay events are atmos's comatproto.SyncSubscribeRepos_* AppendJSON, same
  rule: identity {did, handle?, seq, time}, account {active, did, seq, status?, time},
  sync {blocks as AppendJSONBytes' {"$bytes":<RawStd base64>}, did, rev, seq, time};
  their `$type` is empty (the relay body has none), so it is left out.
- Strings go through atmos cbor.AppendJSONString: \\b \\f \\n \\r \\t, other controls as
  \\u00xx, < > & as \\u003c \\u003e \\u0026, U+2028/U+2029 raw, invalid UTF-8 -> \\ufffd.
- `time` is wireTime(us) = time.UnixMicro(us).UTC().Format("2006-01-02T15:04:05.000000Z");
  v2's own test pins 1_700_000_000_000_000 -> "2023-11-14T22:13:20.000000Z".
- EncodeV2Error: {"$type":"error","error":<code>[,"message":<message>]} (message omitted when
  empty); EncodeV2Info sets Message only when non-empty.
"""
from __future__ import annotations

import base64
import json
from datetime import datetime, timezone

import libipld
import pytest
from hypothesis import given
from hypothesis import strategies as st

from jetstream import wire_v2
from jetstream._core.record_json import record_to_json_v2
from jetstream.ingest.car import read_car
from jetstream.wire_v2 import V2Parts

T0 = 1_700_000_000_000_000  # v2's encoder_test: "2023-11-14T22:13:20.000000Z"
T0_TEXT = b"2023-11-14T22:13:20.000000Z"
PREFIX = b'{"$type":"message","payload":{"$type":"network.bsky.jetstream.subscribeEvents#'


# ---------------------------------------------------------------------------
# goldens
# ---------------------------------------------------------------------------

def test_commit_create_golden():
    block = b"\xa2\x64text\x62hi\x65$type\x6bapp.x.thing"  # {"text":"hi","$type":"app.x.thing"}
    record = record_to_json_v2(block)
    assert record == b'{"$type":"app.x.thing","text":"hi"}'
    cid = wire_v2.record_cid(block)
    parts = wire_v2.commit_parts("did:plc:test", "rev1", "create", "app.x.thing", "abc", cid, record)
    assert wire_v2.render(parts, 12345, T0) == (
        PREFIX + b'commit","cid":"' + cid.encode() + b'","collection":"app.x.thing","did":"did:plc:test",'
        b'"operation":"create","record":{"$type":"app.x.thing","text":"hi"},"rev":"rev1","rkey":"abc",'
        b'"seq":12345,"time":"2023-11-14T22:13:20.000000Z"}}')


def test_commit_delete_golden_has_no_cid_and_no_record():
    parts = wire_v2.commit_parts("did:plc:test", "rev1", "delete", "app.bsky.feed.post", "abc")
    assert wire_v2.render(parts, 9, 123) == (
        PREFIX + b'commit","collection":"app.bsky.feed.post","did":"did:plc:test","operation":"delete",'
        b'"rev":"rev1","rkey":"abc","seq":9,"time":"1970-01-01T00:00:00.000123Z"}}')


def test_identity_golden_with_and_without_handle():
    parts = wire_v2.identity_parts("did:plc:test", 99, "2026-05-25T00:00:00Z")
    assert wire_v2.render(parts, 123, T0) == (
        PREFIX + b'identity","did":"did:plc:test","identity":{"did":"did:plc:test","seq":99,'
        b'"time":"2026-05-25T00:00:00Z"},"seq":123,"time":"2023-11-14T22:13:20.000000Z"}}')
    parts = wire_v2.identity_parts("did:plc:test", 99, "2026-05-25T00:00:00Z", handle="a.test")
    assert b'"identity":{"did":"did:plc:test","handle":"a.test","seq":99,' in wire_v2.render(parts, 1, T0)


def test_account_golden_with_and_without_status():
    parts = wire_v2.account_parts("did:plc:test", True, 100, "2026-05-25T00:00:01Z")
    assert wire_v2.render(parts, 123, T0) == (
        PREFIX + b'account","account":{"active":true,"did":"did:plc:test","seq":100,'
        b'"time":"2026-05-25T00:00:01Z"},"did":"did:plc:test","seq":123,"time":"2023-11-14T22:13:20.000000Z"}}')
    parts = wire_v2.account_parts("did:plc:test", False, 100, "2026-05-25T00:00:01Z", status="takendown")
    assert b'"account":{"active":false,"did":"did:plc:test","seq":100,"status":"takendown","time":' \
        in wire_v2.render(parts, 1, T0)


def test_sync_golden_seq_comes_before_the_wrapped_event():
    parts = wire_v2.sync_parts("did:plc:test", "rev-sync", 444, "2026-05-25T00:00:00Z", b"\x01\x02\x03")
    assert wire_v2.render(parts, 77, T0) == (
        PREFIX + b'sync","did":"did:plc:test","seq":77,"sync":{"blocks":{"$bytes":"AQID"},"did":"did:plc:test",'
        b'"rev":"rev-sync","seq":444,"time":"2026-05-25T00:00:00Z"},"time":"2023-11-14T22:13:20.000000Z"}}')


def test_info_and_error_goldens():
    assert wire_v2.info_frame("OutdatedCursor", "starting at seq 42") == (
        PREFIX + b'info","message":"starting at seq 42","name":"OutdatedCursor"}}')
    assert wire_v2.info_frame("OutdatedCursor") == PREFIX + b'info","name":"OutdatedCursor"}}'
    assert wire_v2.error_frame("ConsumerTooSlow", "reader below floor rate") == (
        b'{"$type":"error","error":"ConsumerTooSlow","message":"reader below floor rate"}')
    assert wire_v2.error_frame("ConsumerTooSlow") == b'{"$type":"error","error":"ConsumerTooSlow"}'


def test_strings_are_escaped_as_atmos_append_json_string():
    assert wire_v2.json_string("a<b>&\"\\\b\f\n\r\t\x01\x7f\u2028\u2029é") == (
        '"a\\u003cb\\u003e\\u0026\\"\\\\\\b\\f\\n\\r\\t\\u0001\x7f\u2028\u2029é"'.encode())
    assert wire_v2.json_string(b"a\xe2\x82b\xff") == b'"a\\ufffd\\ufffdb\\ufffd"'
    assert wire_v2.json_string(b"\xef\xbf\xbd") == b'"\xef\xbf\xbd"'  # a real U+FFFD stays


# ---------------------------------------------------------------------------
# time, parts storage, argument checks
# ---------------------------------------------------------------------------

def test_wire_time_pins():
    assert wire_v2.wire_time(T0) == T0_TEXT
    assert wire_v2.wire_time(0) == b"1970-01-01T00:00:00.000000Z"
    assert wire_v2.wire_time(999_999) == b"1970-01-01T00:00:00.999999Z"
    assert wire_v2.wire_time(1_700_000_000_123_456) == b"2023-11-14T22:13:20.123456Z"
    assert wire_v2.wire_time(951_782_400_000_000) == b"2000-02-29T00:00:00.000000Z"
    assert wire_v2.wire_time(253_402_300_800_000_000) == b"10000-01-01T00:00:00.000000Z"  # Go writes 5 digits
    for bad in (-1, 1 << 63):
        with pytest.raises(ValueError):
            wire_v2.wire_time(bad)


@given(st.integers(0, 253_402_300_799_999_999))
def test_wire_time_agrees_with_datetime(time_us):
    moment = datetime.fromtimestamp(time_us // 1_000_000, timezone.utc).replace(microsecond=time_us % 1_000_000)
    assert wire_v2.wire_time(time_us) == moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ").encode()


def test_parts_survive_packing_and_bad_stored_parts_are_refused():
    parts = wire_v2.sync_parts("did:plc:x", "r", 1, "t", b"car")
    assert wire_v2.unpack_parts(wire_v2.pack_parts(parts)) == parts
    assert wire_v2.unpack_parts(memoryview(wire_v2.pack_parts(parts))) == parts
    for bad in (b"", b"\x00\x00\x00", b"\x00\x00\x00\x09head"):
        with pytest.raises(ValueError):
            wire_v2.unpack_parts(bad)


def test_commit_parts_refuse_inconsistent_fields():
    with pytest.raises(ValueError):
        wire_v2.commit_parts("did:plc:x", "r", "erase", "a.b.c", "k")
    with pytest.raises(ValueError):
        wire_v2.commit_parts("did:plc:x", "r", "create", "a.b.c", "k")  # create without a record
    with pytest.raises(ValueError):
        wire_v2.commit_parts("did:plc:x", "r", "delete", "a.b.c", "k", "bafy", b"{}")


# ---------------------------------------------------------------------------
# every corpus event through the encoder
# ---------------------------------------------------------------------------

def v2_parts_of_frame(raw: bytes) -> list[tuple[V2Parts, str]]:
    """What ingest would render for one relay frame: (parts, the record CID or "") per event."""
    header, body = libipld.decode_dag_cbor_multi(raw)
    kind = header["t"]
    if kind == "#identity":
        return [(wire_v2.identity_parts(body["did"], body["seq"], body["time"], body.get("handle")), "")]
    if kind == "#account":
        return [(wire_v2.account_parts(body["did"], body.get("active") or False, body["seq"], body["time"],
                                       body.get("status")), "")]
    out = []
    car = read_car(body["blocks"])
    for op in body["ops"]:
        collection, rkey = op["path"].split("/", 1)
        if op["action"] == "delete":
            out.append((wire_v2.commit_parts(body["repo"], body["rev"], "delete", collection, rkey), ""))
            continue
        block = bytes(car.blocks[op["cid"]])
        cid = wire_v2.record_cid(block)
        out.append((wire_v2.commit_parts(body["repo"], body["rev"], op["action"], collection, rkey, cid,
                                         record_to_json_v2(block)), cid))
    return out


def test_every_corpus_event_renders_a_frame_carrying_what_v1_carries(corpus_frames, corpus_dir):
    v1_lines = [json.loads(line) for line in (corpus_dir / "expected_v1.jsonl").read_bytes().splitlines()]
    parts = [item for raw in corpus_frames for item in v2_parts_of_frame(raw)]
    assert len(parts) == len(v1_lines) == 152
    kinds = set()
    for seq, ((event_parts, cid), v1) in enumerate(zip(parts, v1_lines), start=1):
        frame = wire_v2.render(event_parts, seq, v1["time_us"])
        envelope = json.loads(frame, object_pairs_hook=assert_sorted_keys)
        assert list(envelope) == ["$type", "payload"] and envelope["$type"] == "message"
        payload = envelope["payload"]
        kind = payload["$type"].rsplit("#", 1)[1]
        kinds.add(kind)
        assert (kind, payload["did"], payload["seq"]) == (v1["kind"], v1["did"], seq)
        moment = datetime.strptime(payload["time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
        assert round(moment.timestamp() * 1_000_000) == v1["time_us"]
        if kind == "commit":
            commit = v1["commit"]
            assert {k: payload.get(k) for k in ("rev", "operation", "collection", "rkey", "cid", "record")} == \
                {k: commit.get(k) for k in ("rev", "operation", "collection", "rkey", "cid", "record")}
            assert (cid or None) == commit.get("cid")
        else:
            assert payload[kind] == v1[kind]  # the wrapped relay event: same fields as v1's
    assert kinds == {"commit", "identity", "account"}


def assert_sorted_keys(pairs):
    keys = [key for key, _ in pairs]
    assert keys == sorted(keys, key=lambda key: key.encode()), keys
    return dict(pairs)


def test_bytes_in_the_sync_frame_decode_to_the_blocks():
    blocks = bytes(range(256)) * 3
    frame = wire_v2.render(wire_v2.sync_parts("did:plc:x", "r", 5, "2026-01-01T00:00:00Z", blocks), 1, T0)
    text = json.loads(frame)["payload"]["sync"]["blocks"]["$bytes"]
    assert "=" not in text and base64.b64decode(text + "=" * (-len(text) % 4)) == blocks
