"""Synthetic relay frames: deterministic, production-like in mix and content, consumable by the ingest."""
from __future__ import annotations

import hashlib
import re
from collections import Counter

import libipld
import pytest

from jetstream.ingest.decode import decode_frame
from jetstream.relaysim.seqpatch import find_seq_slot
from jetstream.relaysim.synthetic import NON_BSKY, SyntheticSource, prerendered

FRAMES = 20_000
TID = re.compile(r"[234567abcdefghij][234567abcdefghijklmnopqrstuvwxyz]{12}")
TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")
DAG_CBOR_CID_PREFIX = b"\x01\x71\x12\x20"  # CIDv1, dag-cbor, sha2-256, 32 bytes
RAW_CID_PREFIX = b"\x01\x55\x12\x20"  # CIDv1, raw, sha2-256: blobs
AT_URI = re.compile(r"at://did:plc:[a-z2-7]{24}/[a-zA-Z.]+/[a-z2-7]{13}")


@pytest.fixture(scope="module")
def synthetic_frames() -> list[bytes]:
    source = SyntheticSource(seed=42, dids=1000)
    return [source.frame(seq) for seq in range(1, FRAMES + 1)]


@pytest.fixture(scope="module")
def decoded(synthetic_frames) -> list[tuple[dict, dict]]:
    return [libipld.decode_dag_cbor_multi(frame) for frame in synthetic_frames]


@pytest.fixture(scope="module")
def ops(decoded) -> list[tuple[str, dict]]:
    """(repo, op) of every commit op, in stream order."""
    return [(body["repo"], op) for header, body in decoded if header["t"] == "#commit" for op in body["ops"]]


@pytest.fixture(scope="module")
def records(decoded) -> list[dict]:
    found = []
    for header, body in decoded:
        if header["t"] == "#commit":
            blocks = libipld.decode_car(body["blocks"])[1]
            found += [blocks[op["cid"]] for op in body["ops"] if op["cid"] is not None]
    return found


def test_same_seed_gives_the_same_bytes_in_any_access_order(synthetic_frames):
    again = SyntheticSource(seed=42, dids=1000)
    seqs = [19_999, 17, 2500, 1, 20_000, 17, 777]
    assert [again.frame(seq) for seq in seqs] == [synthetic_frames[seq - 1] for seq in seqs]


def test_another_seed_gives_other_frames(synthetic_frames):
    other = SyntheticSource(seed=43, dids=1000)
    assert sum(other.frame(seq) == synthetic_frames[seq - 1] for seq in range(1, 101)) == 0


def test_frames_carry_their_seq_and_well_formed_envelopes(decoded):
    assert [body["seq"] for _, body in decoded] == list(range(1, FRAMES + 1))
    for header, body in decoded:
        assert header["op"] == 1
        assert TIME.fullmatch(body["time"])
        assert body["repo" if header["t"] == "#commit" else "did"].startswith("did:plc:")
        if header["t"] == "#commit":
            assert TID.fullmatch(body["rev"])
            assert body["tooBig"] is False and body["blobs"] == [] and body["rebase"] is False


def test_op_mix_matches_production_shares(ops):
    actions = Counter(op["action"] for _, op in ops)
    total = sum(actions.values())
    assert actions["create"] / total == pytest.approx(0.955, abs=0.006)
    assert actions["delete"] / total == pytest.approx(0.039, abs=0.005)
    assert actions["update"] / total == pytest.approx(0.006, abs=0.002)


def test_creates_are_mostly_likes_then_posts_reposts_follows_blocks_and_other_collections(ops):
    creates = Counter(op["path"].split("/")[0] for _, op in ops if op["action"] == "create")
    total = sum(creates.values())
    assert creates["app.bsky.feed.like"] / total == pytest.approx(0.70, abs=0.02)
    ranked = [name for name, _ in creates.most_common()]
    assert ranked[:4] == ["app.bsky.feed.like", "app.bsky.feed.post", "app.bsky.feed.repost", "app.bsky.graph.follow"]
    assert creates["app.bsky.graph.block"] > 0
    non_bsky = sum(count for name, count in creates.items() if not name.startswith(("app.bsky.", "chat.bsky.")))
    assert 0.005 < non_bsky / total < 0.05
    assert set(NON_BSKY) <= set(creates)


def test_updates_rewrite_profiles_and_declarations_at_self(ops):
    updated = Counter(op["path"] for _, op in ops if op["action"] == "update")
    assert set(updated) == {"app.bsky.actor.profile/self", "chat.bsky.actor.declaration/self"}
    assert updated["app.bsky.actor.profile/self"] > updated["chat.bsky.actor.declaration/self"]


def test_identity_and_account_frames_are_about_a_tenth_of_a_percent(decoded):
    kinds = Counter(header["t"] for header, _ in decoded)
    assert set(kinds) == {"#commit", "#identity", "#account"}
    assert 0.0003 < (kinds["#identity"] + kinds["#account"]) / FRAMES < 0.003


def test_identity_comes_with_and_without_handle_and_account_inactive_with_a_status():
    source = SyntheticSource(seed=42, dids=1000)
    # Planning is cheap: find the rare kinds over many seqs, render only those.
    rare = [seq for seq in range(1, 200_001) if source.plan(seq).kind != "#commit"]
    bodies = [libipld.decode_dag_cbor_multi(source.frame(seq)) for seq in rare]
    identities = [body for header, body in bodies if header["t"] == "#identity"]
    accounts = [body for header, body in bodies if header["t"] == "#account"]
    assert any("handle" in body for body in identities) and any("handle" not in body for body in identities)
    assert all(body["handle"] == f"user{_index(source, body['did'])}.synthetic.test"
               for body in identities if "handle" in body)
    assert any(body["active"] and "status" not in body for body in accounts)
    inactive = [body for body in accounts if not body["active"]]
    assert inactive and all(body["status"] in ("deactivated", "takendown", "suspended", "deleted") for body in inactive)


def test_post_text_is_unicode_with_facets_at_utf8_byte_offsets(records):
    posts = [record for record in records if record["$type"] == "app.bsky.feed.post"]
    assert any(any(ord(ch) > 0xFFFF for ch in post["text"]) for post in posts), "astral-plane emoji"
    features = Counter()
    for post in posts:
        raw = post["text"].encode("utf-8")
        for facet in post.get("facets", ()):
            (feature,) = facet["features"]
            span = raw[facet["index"]["byteStart"]:facet["index"]["byteEnd"]].decode("utf-8")
            kind = feature["$type"].rsplit("#", 1)[1]
            features[kind] += 1
            if kind == "link":
                assert span == feature["uri"] and span.startswith("https://")
            elif kind == "tag":
                assert span == "#" + feature["tag"]
            else:
                assert span.startswith("@") and feature["did"].startswith("did:plc:")
    assert set(features) == {"link", "mention", "tag"}
    assert any(post.get("langs") for post in posts) and any("langs" not in post for post in posts)


def test_posts_have_replies_and_every_kind_of_embed_with_well_formed_refs_and_blobs(records):
    posts = [record for record in records if record["$type"] == "app.bsky.feed.post"]
    embeds = Counter(post["embed"]["$type"] for post in posts if "embed" in post)
    assert set(embeds) == {"app.bsky.embed.images", "app.bsky.embed.external", "app.bsky.embed.record",
                           "app.bsky.embed.recordWithMedia"}
    replies = [post["reply"] for post in posts if "reply" in post]
    assert 0.2 < len(replies) / len(posts) < 0.5
    for reply in replies:
        _check_strong_ref(reply["root"])
        _check_strong_ref(reply["parent"])
    for post in posts:
        embed = post.get("embed", {})
        for image in [*embed.get("images", ()), *embed.get("media", {}).get("images", ())]:
            _check_blob(image["image"])
        if "thumb" in embed.get("external", {}):
            _check_blob(embed["external"]["thumb"])
        if embed.get("$type") == "app.bsky.embed.record":
            _check_strong_ref(embed["record"])


def test_likes_and_reposts_point_at_posts_by_strong_ref(records):
    subjects = [record["subject"] for record in records if record["$type"] in ("app.bsky.feed.like", "app.bsky.feed.repost")]
    assert subjects
    for subject in subjects:
        _check_strong_ref(subject)
        assert "/app.bsky.feed.post/" in subject["uri"]


def test_record_sizes_vary_like_production(records):
    sizes = sorted(len(libipld.encode_dag_cbor(record)) for record in records)
    median, top = sizes[len(sizes) // 2], sizes[int(len(sizes) * 0.999)]
    assert 150 < median < 400, "likes dominate: small records"
    assert top > 2000, "long posts, blog entries and image embeds make a tail"


def test_every_block_hashes_to_its_cid_and_the_car_root_is_the_commit(decoded):
    checked = 0
    for header, body in decoded:
        if header["t"] != "#commit":
            continue
        car_header, blocks = libipld.decode_car(body["blocks"])
        raw_blocks = _raw_car_blocks(body["blocks"])
        assert car_header["roots"] == [body["commit"]]
        commit = blocks[body["commit"]]
        assert set(commit) == {"did", "version", "data", "rev", "prev", "sig"}
        assert (commit["did"], commit["version"], commit["rev"], commit["prev"]) == (body["repo"], 3, body["rev"], None)
        assert commit["data"] in blocks
        for cid, raw in raw_blocks.items():
            assert cid == DAG_CBOR_CID_PREFIX + hashlib.sha256(raw).digest()
        for op in body["ops"]:
            if op["action"] == "delete":
                assert op["cid"] is None
                continue
            assert op["cid"].startswith(DAG_CBOR_CID_PREFIX)
            assert blocks[op["cid"]]["$type"] == op["path"].split("/")[0]
            checked += 1
    assert checked > 0.9 * FRAMES


def test_deletes_remove_records_created_earlier_in_the_same_repo(ops):
    created: set[tuple[str, str]] = set()
    deletes = 0
    for repo, op in ops:
        key = (repo, op["path"])
        if op["action"] == "create":
            created.add(key)
        elif op["action"] == "delete":
            assert key in created, key
            deletes += 1
    assert deletes > 0.03 * FRAMES


def test_ingest_decodes_every_frame_into_events_with_no_drops(synthetic_frames, decoded):
    expected_events = sum(len(body["ops"]) if header["t"] == "#commit" else 1 for header, body in decoded)
    events = 0
    for frame in synthetic_frames:
        result = decode_frame(frame, verify_all_blocks=True)
        assert result.drops == [], result.drops
        events += len(result.events)
    assert events == expected_events


def test_prerendered_loops_the_rendered_frames_with_contiguous_seqs(synthetic_frames):
    source = prerendered(SyntheticSource(seed=42, dids=1000), 50)
    assert [source.frame(seq) for seq in range(1, 51)] == synthetic_frames[:50]
    for seq in (51, 100, 101, 10_007):
        slot, original = find_seq_slot(source.frame(seq)), find_seq_slot(synthetic_frames[(seq - 1) % 50])
        assert slot.seq == seq
        assert (slot.prefix, slot.suffix) == (original.prefix, original.suffix)
    assert source.next_seq_after(50) == 51 and source.last_seq is None


def _check_strong_ref(ref: dict) -> None:
    assert set(ref) == {"cid", "uri"}
    assert ref["cid"].startswith("bafyrei") and AT_URI.fullmatch(ref["uri"]), ref


def _check_blob(blob: dict) -> None:
    assert set(blob) == {"$type", "ref", "mimeType", "size"}
    assert blob["$type"] == "blob" and blob["mimeType"].startswith("image/") and blob["size"] > 0
    assert blob["ref"].startswith(RAW_CID_PREFIX)


def _index(source: SyntheticSource, did: str) -> int:
    return next(index for index in range(source.dids) if source.did(index) == did)


def _raw_car_blocks(car: bytes) -> dict[bytes, bytes]:
    """Independent CAR v1 walk (varint sections), so hashes are checked on the raw bytes."""
    def uvarint(pos: int) -> tuple[int, int]:
        value = shift = 0
        while True:
            byte = car[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                return value, pos
            shift += 7

    header_len, pos = uvarint(0)
    pos += header_len
    blocks = {}
    while pos < len(car):
        section_len, pos = uvarint(pos)
        blocks[car[pos:pos + 36]] = car[pos + 36:pos + section_len]
        pos += section_len
    return blocks
