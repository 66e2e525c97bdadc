"""Deterministic synthetic subscribeRepos frames: an endless, seq-addressable stream.

Owns: generating frame n (seq = first_seq + n) from (seed, n) alone, so any seq can be
produced in any order (cursor resume needs no stored history) and the same seed always
gives the same bytes. Commits create app.bsky.feed.post (unicode/emoji text),
app.bsky.feed.like and app.bsky.graph.follow records, and a few delete earlier creates;
about 0.1% of frames each are #identity and #account.
Each #commit carries a CAR v1 whose root is a signed-commit-shaped block
{did, version:3, data, rev, prev:null, sig} and which holds a one-node MST and every
record block under its real CIDv1 (dag-cbor, sha2-256); ops reference them as tag-42 links.
It must never claim to be a verifiable repo: the MST node lists only this commit's
creates and the signature is random bytes.
"""
from __future__ import annotations

import base64
import random
from dataclasses import dataclass
from datetime import datetime, timezone

from jetstream.relaysim.cbor import Link, cid_for_block, encode

# 2024-01-01T00:00:00Z; frame n happens n milliseconds later.
BASE_TIME_US = 1_704_067_200_000_000
FRAME_INTERVAL_US = 1_000
TID_ALPHABET = "234567abcdefghijklmnopqrstuvwxyz"
IDENTITY_SHARE = 0.001
ACCOUNT_SHARE = 0.001
DELETE_SHARE = 0.03
DELETE_LOOKBACK = 1000  # a delete removes a record created at most this many frames earlier

_WORDS = (
    "hello", "world", "firehose", "jetstream", "bluesky", "atproto", "relay", "sky",
    "café", "naïve", "über", "日本語", "こんにちは", "中文", "한국어", "Ωmega", "Ελληνικά",
    "русский", "עברית", "العربية", "हिन्दी", "🦋", "🎉", "👩‍💻", "🏳️‍🌈", "👍🏽", "e\u0301",
    "tab\there", "line\nbreak", "<b>&amp;</b>", "\u2028sep", "quote\"d", "back\\slash",
)
_COLLECTION_WEIGHTS = (("app.bsky.feed.post", 5), ("app.bsky.feed.like", 4), ("app.bsky.graph.follow", 1))
_COLLECTIONS = tuple(name for name, weight in _COLLECTION_WEIGHTS for _ in range(weight))
_COMMIT_HEADER = encode({"op": 1, "t": "#commit"})
_IDENTITY_HEADER = encode({"op": 1, "t": "#identity"})
_ACCOUNT_HEADER = encode({"op": 1, "t": "#account"})


def tid(time_us: int, clock_id: int) -> str:
    """atproto TID: 13 base32-sortable chars of (time_us << 10 | clock_id)."""
    value = ((time_us & ((1 << 53) - 1)) << 10) | (clock_id & 0x3FF)
    chars = []
    for _ in range(13):
        chars.append(TID_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def rfc3339_ms(time_us: int) -> str:
    moment = datetime.fromtimestamp(time_us // 1_000_000, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + f".{(time_us // 1000) % 1000:03d}Z"


def cid_string(cid: bytes) -> str:
    """Multibase base32 (lowercase, no padding) text form, as used in strongRefs."""
    return "b" + base64.b32encode(cid).decode().lower().rstrip("=")


def encode_car(root: bytes, blocks: list[tuple[bytes, bytes]]) -> bytes:
    """CAR v1: varint-prefixed header {roots, version:1}, then varint-prefixed cid+block."""
    header = encode({"roots": [Link(root)], "version": 1})
    parts = [_uvarint(len(header)), header]
    for cid, block in blocks:
        parts += [_uvarint(len(cid) + len(block)), cid, block]
    return b"".join(parts)


def _uvarint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


@dataclass(frozen=True)
class _Create:
    """What frame n creates, derivable from (seed, n) alone (deletes look these up)."""

    repo_index: int
    collection: str
    rkey: str


class SyntheticSource:
    """Endless synthetic relay stream; frame(seq) depends only on (seed, dids, seq)."""

    def __init__(self, seed: int = 1, dids: int = 1000, first_seq: int = 1) -> None:
        if dids < 2:
            raise ValueError(f"dids must be >= 2 (follows need a subject), got {dids}")
        self.seed = seed
        self.dids = dids
        self.first_seq = first_seq
        self._did_cache: dict[int, str] = {}

    @property
    def last_seq(self) -> None:
        return None

    def next_seq_after(self, seq: int) -> int:
        return max(seq + 1, self.first_seq)

    def last_seq_at_or_before(self, seq: int) -> int | None:
        return seq if seq >= self.first_seq else None

    def frame(self, seq: int) -> bytes:
        n = seq - self.first_seq
        if n < 0:
            raise KeyError(seq)
        rng = self._rng(n)
        roll = rng.random()
        if roll < IDENTITY_SHARE:
            return self._identity_frame(rng, seq, n)
        if roll < IDENTITY_SHARE + ACCOUNT_SHARE:
            return self._account_frame(rng, seq, n)
        return self._commit_frame(rng, seq, n)

    def did(self, repo_index: int) -> str:
        did = self._did_cache.get(repo_index)
        if did is None:
            suffix = random.Random(self.seed * 7_919 + repo_index * 104_729 + 17).getrandbits(120)
            did = "did:plc:" + base64.b32encode(suffix.to_bytes(15, "big")).decode().lower()[:24]
            self._did_cache[repo_index] = did
        return did

    def _rng(self, n: int) -> random.Random:
        # Integer seeding is stable across runs and Python versions (no hash randomization).
        return random.Random((self.seed << 64) + n)

    # -- planning: which record frame n creates, or which earlier create it deletes --------

    def _planned_create(self, n: int) -> _Create | None:
        """The first create of frame n, or None if frame n is not a creating commit."""
        rng = self._rng(n)
        if rng.random() < IDENTITY_SHARE + ACCOUNT_SHARE:
            return None
        if rng.random() < DELETE_SHARE:
            return None
        return _Create(rng.randrange(self.dids), rng.choice(_COLLECTIONS), tid(self._time_us(n), 0))

    def _time_us(self, n: int) -> int:
        return BASE_TIME_US + n * FRAME_INTERVAL_US

    # -- frames ---------------------------------------------------------------------------

    def _commit_frame(self, rng: random.Random, seq: int, n: int) -> bytes:
        wants_delete = rng.random() < DELETE_SHARE
        repo_index = rng.randrange(self.dids)
        first_collection = rng.choice(_COLLECTIONS)
        target = self._delete_target(rng, n) if wants_delete else None
        time_us = self._time_us(n)
        if target is not None:
            repo_index = target.repo_index
            ops, record_blocks = [{"action": "delete", "path": f"{target.collection}/{target.rkey}", "cid": None}], []
        else:
            ops, record_blocks = self._creates(rng, repo_index, first_collection, time_us)
        did = self.did(repo_index)
        rev = tid(time_us, repo_index)
        commit_cid, car = self._car(rng, did, rev, ops, record_blocks)
        since = None if rng.random() < 0.05 else tid(time_us - rng.randrange(1, 10**9), repo_index)
        body = {
            "ops": ops, "rev": rev, "seq": seq, "repo": did, "time": rfc3339_ms(time_us),
            "blobs": [], "since": since, "blocks": car, "commit": Link(commit_cid),
            "rebase": False, "tooBig": False,
        }
        return _COMMIT_HEADER + encode(body)

    def _delete_target(self, rng: random.Random, n: int) -> _Create | None:
        if n == 0:
            return None
        return self._planned_create(n - rng.randint(1, min(n, DELETE_LOOKBACK)))

    def _creates(self, rng: random.Random, repo_index: int, first_collection: str,
                 time_us: int) -> tuple[list[dict], list[tuple[bytes, bytes]]]:
        """One create mostly; sometimes a few in one commit (multi-op commits exist)."""
        count = 1 if rng.random() < 0.9 else rng.randint(2, 4)
        ops, blocks = [], []
        for clock_id in range(count):
            collection = first_collection if clock_id == 0 else rng.choice(_COLLECTIONS)
            record = self._record(rng, collection, repo_index, time_us)
            block = encode(record)
            cid = cid_for_block(block)
            blocks.append((cid, block))
            ops.append({"action": "create", "path": f"{collection}/{tid(time_us, clock_id)}", "cid": Link(cid)})
        return ops, blocks

    def _record(self, rng: random.Random, collection: str, repo_index: int, time_us: int) -> dict:
        created_at = rfc3339_ms(time_us - rng.randrange(0, 5_000_000))
        if collection == "app.bsky.feed.post":
            text = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 12)))
            record = {"$type": collection, "text": text, "createdAt": created_at}
            if rng.random() < 0.7:
                record["langs"] = [rng.choice(("en", "ja", "pt", "de"))]
            return record
        other = (repo_index + rng.randrange(1, self.dids)) % self.dids
        if collection == "app.bsky.graph.follow":
            return {"$type": collection, "subject": self.did(other), "createdAt": created_at}
        subject_cid = cid_for_block(rng.randbytes(32))
        subject_uri = f"at://{self.did(other)}/app.bsky.feed.post/{tid(time_us - rng.randrange(10**6, 10**12), 0)}"
        return {"$type": collection, "subject": {"cid": cid_string(subject_cid), "uri": subject_uri},
                "createdAt": created_at}

    def _car(self, rng: random.Random, did: str, rev: str, ops: list[dict],
             record_blocks: list[tuple[bytes, bytes]]) -> tuple[bytes, bytes]:
        mst_block = encode({"l": None, "e": _mst_entries(ops)})
        mst_cid = cid_for_block(mst_block)
        commit_block = encode({"did": did, "version": 3, "data": Link(mst_cid), "rev": rev,
                               "prev": None, "sig": rng.randbytes(64)})
        commit_cid = cid_for_block(commit_block)
        blocks = [(commit_cid, commit_block), (mst_cid, mst_block), *record_blocks]
        return commit_cid, encode_car(commit_cid, blocks)

    def _identity_frame(self, rng: random.Random, seq: int, n: int) -> bytes:
        repo_index = rng.randrange(self.dids)
        body = {"did": self.did(repo_index), "seq": seq, "time": rfc3339_ms(self._time_us(n)),
                "handle": f"user{repo_index}.synthetic.test"}
        return _IDENTITY_HEADER + encode(body)

    def _account_frame(self, rng: random.Random, seq: int, n: int) -> bytes:
        repo_index = rng.randrange(self.dids)
        active = rng.random() < 0.5
        body = {"did": self.did(repo_index), "seq": seq, "time": rfc3339_ms(self._time_us(n)), "active": active}
        if not active:
            body["status"] = "deactivated"
        return _ACCOUNT_HEADER + encode(body)


def _mst_entries(ops: list[dict]) -> list[dict]:
    """MST node entries for the created paths, sorted, with prefix compression."""
    entries, previous = [], b""
    for op in sorted((op for op in ops if op["cid"] is not None), key=lambda op: op["path"].encode()):
        key = op["path"].encode()
        shared = _common_prefix_length(previous, key)
        entries.append({"p": shared, "k": key[shared:], "v": op["cid"], "t": None})
        previous = key
    return entries


def _common_prefix_length(a: bytes, b: bytes) -> int:
    length = 0
    for x, y in zip(a, b):
        if x != y:
            break
        length += 1
    return length
