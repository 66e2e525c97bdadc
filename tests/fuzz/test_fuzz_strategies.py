"""Seeds and mutators shared by the fuzz tests, and tests that pin them as non-vacuous.

Seeds are real relay frames (the corpus, read in place), relay-sim synthetic frames and
relay-sim fault frames. The mutators are hypothesis strategies, so failures shrink to a
small diff against a real frame. The tests here prove the seeds exercise the deep paths
(events come out of them) and that mutation really changes them: a fuzz test built on
seeds that never decode would pass while testing nothing.
"""
from __future__ import annotations

import random

import libipld
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st

from jetstream.ingest.decode import decode_frame
from jetstream.relaysim.cbor import cid_for_block, encode
from jetstream.relaysim.faults import error_frame, garbage_frame, info_frame, sync_frame, too_big_frame
from jetstream.relaysim.synthetic import SyntheticSource, encode_car

# Generous: the machine is shared; the pytest-timeout per test guards against hangs.
# No explain phase: it re-runs a failure hundreds of times just to annotate it.
_FUZZ_BASE = settings(
    deadline=None,
    phases=(Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


def fuzz_settings(max_examples: int) -> settings:
    """Hypothesis settings for a bounded fuzz run of `max_examples` inputs."""
    return settings(_FUZZ_BASE, max_examples=max_examples)
SYNTHETIC_SEED_COUNT = 60


def synthetic_frames(count: int = SYNTHETIC_SEED_COUNT, seed: int = 7) -> list[bytes]:
    source = SyntheticSource(seed=seed, dids=50)
    return [source.frame(seq) for seq in range(source.first_seq, source.first_seq + count)]


def fault_frames(seed: int = 3) -> list[bytes]:
    rng = random.Random(seed)
    did = "did:plc:fuzzfuzzfuzzfuzzfuzzfuzz"
    return [garbage_frame(rng), too_big_frame(rng, 10, did, 1_700_000_000_000_000),
            sync_frame(rng, 11, did, 1_700_000_000_000_000), error_frame("ConsumerTooSlow", "slow"),
            info_frame("OutdatedCursor", "old")]


def seed_frames(corpus_frames: list[bytes]) -> list[bytes]:
    return list(corpus_frames) + synthetic_frames() + fault_frames()


def record_blocks(frames: list[bytes]) -> list[bytes]:
    """Every record block the commits' ops point at (raw DAG-CBOR, as the emitter gets it)."""
    from jetstream.ingest.car import read_car

    blocks = []
    for frame in frames:
        header, body = libipld.decode_dag_cbor_multi(frame)
        if header.get("t") != "#commit" or not body.get("blocks"):
            continue
        car = read_car(body["blocks"])
        for op in body["ops"]:
            if op.get("cid") is not None and op["cid"] in car.blocks:
                blocks.append(bytes(car.blocks[op["cid"]]))
    return blocks


def car_of(frame: bytes) -> bytes | None:
    header, body = libipld.decode_dag_cbor_multi(frame)
    blocks = body.get("blocks") if isinstance(body, dict) else None
    return blocks or None


@st.composite
def mutated(draw, seed: bytes, max_edits: int = 4) -> bytes:
    """`seed` with 1..max_edits byte-level edits: overwrite, delete, insert, truncate, splice."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, max_edits))):
        kind = draw(st.sampled_from(("overwrite", "delete", "insert", "truncate", "duplicate")))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "overwrite" and data:
            data[at] = draw(st.integers(0, 255))
        elif kind == "delete":
            del data[at:at + draw(st.integers(1, 16))]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "truncate":
            del data[at:]
        else:
            data[at:at] = data[at:at + draw(st.integers(1, 64))]
    return bytes(data)


def with_record_block(frame: bytes, op_index: int, block: bytes) -> bytes:
    """The commit `frame` with op `op_index`'s record replaced by `block`, CID and CAR kept
    consistent, so the new bytes get past the hash check and reach the record emitter."""
    header, body = libipld.decode_dag_cbor_multi(frame)
    from jetstream.ingest.car import read_car
    from jetstream.relaysim.cbor import Link

    car = read_car(body["blocks"])
    ops = [dict(op) for op in body["ops"]]
    creates = [i for i, op in enumerate(ops) if op.get("cid") is not None]
    target = creates[op_index % len(creates)]
    new_cid = cid_for_block(block)
    old_cid = ops[target]["cid"]
    blocks = [(cid, bytes(b)) for cid, b in car.blocks.items() if cid != old_cid] + [(new_cid, block)]
    ops[target]["cid"] = new_cid
    for op in ops:
        for field in ("cid", "prev"):
            if isinstance(op.get(field), bytes):
                op[field] = Link(op[field])
    body = dict(body)
    body["ops"] = ops
    body["blocks"] = encode_car(car.roots[0], blocks)
    for field in ("commit", "prevData"):
        if isinstance(body.get(field), bytes):
            body[field] = Link(body[field])
    return encode(header) + encode(body)


def commit_frames_with_records(frames: list[bytes]) -> list[bytes]:
    """Seed commits that have at least one create/update (a record to replace)."""
    out = []
    for frame in frames:
        header, body = libipld.decode_dag_cbor_multi(frame)
        if header.get("t") == "#commit" and any(op.get("cid") for op in body.get("ops", [])):
            out.append(frame)
    return out


# ---------------------------------------------------------------------------
# The seeds and mutators are what they claim to be
# ---------------------------------------------------------------------------

def test_every_seed_kind_is_present_and_seed_commits_yield_events(corpus_frames):
    seeds = seed_frames(corpus_frames)
    kinds = {}
    events = 0
    for frame in seeds:
        try:
            decoded = decode_frame(frame)
        except Exception as exc:  # noqa: BLE001 - the garbage seed must fail, tallied below
            kinds.setdefault(type(exc).__name__, 0)
            kinds[type(exc).__name__] += 1
            continue
        kinds[decoded.frame_type] = kinds.get(decoded.frame_type, 0) + 1
        events += len(decoded.events)
    assert {"#commit", "#identity", "#account", "#sync", "#info", "error", "FrameError"} <= set(kinds)
    assert events > len(corpus_frames)  # corpus alone gives 152 events from 150 frames


def test_record_seeds_cover_corpus_and_synthetic_records(corpus_frames):
    assert len(record_blocks(corpus_frames)) >= 100
    assert len(record_blocks(synthetic_frames())) >= 30


def test_replacing_a_record_block_keeps_the_commit_valid(corpus_frames):
    frame = commit_frames_with_records(corpus_frames)[0]
    block = encode({"$type": "app.bsky.feed.like", "createdAt": "2024-01-01T00:00:00Z", "n": 7})
    decoded = decode_frame(with_record_block(frame, 0, block))
    assert decoded.drops == []
    assert any(b'"n":7' in event.json_tail for event in decoded.events)
