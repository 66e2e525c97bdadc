"""Deterministic synthetic subscribeRepos frames with a production-like mix.

Owns: generating frame n (seq = first_seq + n) from (seed, n) alone, so any seq can be
produced in any order (cursor resume needs no stored history) and the same seed always
gives the same bytes, plus `prerendered()`, which renders a stretch once and loops it
(byte-level seq patching) for benchmarks that need more than the ~10k frames/s live
generation manages.

The mix follows the production firehose: ops are 95.5% creates, 3.9% deletes, 0.6%
updates; creates are ~70% likes, then posts, reposts, follows, blocks, list items,
gates and a few non-bsky collections; updates are profiles (and chat declarations);
deletes remove a record an earlier frame created in the same repo; ~0.1% of frames are
#identity (with and without handle) or #account (active, or inactive with a status).
Posts carry unicode/emoji text, link/mention/tag facets with UTF-8 byte offsets, langs,
replies (root/parent strongRefs) and embeds (images with blobs, external with a thumb
blob, quote strongRefs, record-with-media).

Each #commit carries a CAR v1 whose root is a signed-commit-shaped block
{did, version:3, data, rev, prev:null, sig} and which holds a one-node MST and every
record block under its real CIDv1 (dag-cbor, sha2-256); ops reference them as tag-42 links.
The signed commit's `data` is that node, which holds exactly this commit's creates and
updates (sorted, prefix-compressed), so v1's MST lookup (`--verify-mst`) finds each op's
leaf. It must never claim to be a verifiable repo: the MST node lists only this commit's
writes, `prev`/`prevData` links are random, and the signature is random bytes.
"""
from __future__ import annotations

import base64
import bisect
import hashlib
import itertools
import random
from dataclasses import dataclass
from datetime import datetime, timezone

from jetstream.relaysim.cbor import Link, cid_for_block, encode
from jetstream.relaysim.filesource import FileSource

# 2024-01-01T00:00:00Z; frame n happens n milliseconds later.
BASE_TIME_US = 1_704_067_200_000_000
FRAME_INTERVAL_US = 1_000
TID_ALPHABET = "234567abcdefghijklmnopqrstuvwxyz"

# Frame kinds: identity and account together ~0.1% of frames.
IDENTITY_SHARE = 0.0005
ACCOUNT_SHARE = 0.0005
# Op-level targets (production firehose, 2024-2025).
CREATE_OP_SHARE, DELETE_OP_SHARE, UPDATE_OP_SHARE = 0.955, 0.039, 0.006
# Commits hold one op, except this share of creating commits (2..4 creates; mean 2 extra).
MULTI_CREATE_SHARE = 0.02
_EXTRA_CREATES = MULTI_CREATE_SHARE * 2
# Commit-level shares chosen so the op-level shares above come out despite multi-op commits.
_COMMIT_TOTAL = 1 / (CREATE_OP_SHARE / (1 + _EXTRA_CREATES) + DELETE_OP_SHARE + UPDATE_OP_SHARE)
DELETE_COMMIT_SHARE = DELETE_OP_SHARE * _COMMIT_TOTAL
UPDATE_COMMIT_SHARE = UPDATE_OP_SHARE * _COMMIT_TOTAL
DELETE_LOOKBACK = 1000  # a delete removes a record created at most this many frames earlier
DELETE_TRIES = 16  # earlier frames tried for a create to delete before creating instead

POST = "app.bsky.feed.post"
LIKE = "app.bsky.feed.like"
REPOST = "app.bsky.feed.repost"
FOLLOW = "app.bsky.graph.follow"
BLOCK = "app.bsky.graph.block"
LISTITEM = "app.bsky.graph.listitem"
THREADGATE = "app.bsky.feed.threadgate"
POSTGATE = "app.bsky.feed.postgate"
PROFILE = "app.bsky.actor.profile"
CHAT_DECLARATION = "chat.bsky.actor.declaration"
# Collections outside app.bsky that show up on the real firehose.
NON_BSKY = ("fyi.unravel.frontpage.vote", "com.whtwnd.blog.entry", "sh.tangled.feed.star",
            "events.smokesignal.calendar.rsvp", "xyz.statusphere.status")

# Create collections per 10,000 creates.
CREATE_WEIGHTS = ((LIKE, 7000), (POST, 1200), (REPOST, 700), (FOLLOW, 600), (BLOCK, 100),
                  (LISTITEM, 80), (THREADGATE, 50), (POSTGATE, 30),
                  *((name, 48) for name in NON_BSKY))
UPDATE_WEIGHTS = ((PROFILE, 8), (CHAT_DECLARATION, 2))

_WORDS = (
    "the", "a", "is", "this", "just", "my", "so", "and", "today", "love", "new", "post",
    "hello", "world", "firehose", "jetstream", "bluesky", "atproto", "relay", "sky",
    "café", "naïve", "über", "日本語", "こんにちは", "中文", "한국어", "Ωmega", "Ελληνικά",
    "русский", "עברית", "العربية", "हिन्दी", "🦋", "🎉", "👩‍💻", "🏳️‍🌈", "👍🏽", "e\u0301",
    "tab\there", "line\nbreak", "<b>&amp;</b>", "\u2028sep", "quote\"d", "back\\slash",
)
_TAGS = ("art", "photography", "bluesky", "atproto", "日本", "news", "dev", "music")
_LANGS = ("en", "ja", "pt", "de", "es", "ko", "fr")
_IMAGE_MIME = ("image/jpeg", "image/jpeg", "image/png", "image/webp")
_STATUSES = ("deactivated", "takendown", "suspended", "deleted")
_COMMIT_HEADER = encode({"op": 1, "t": "#commit"})
_IDENTITY_HEADER = encode({"op": 1, "t": "#identity"})
_ACCOUNT_HEADER = encode({"op": 1, "t": "#account"})
_FACET = "app.bsky.richtext.facet"

KIND_COMMIT, KIND_IDENTITY, KIND_ACCOUNT = "#commit", "#identity", "#account"
ACTION_CREATE, ACTION_DELETE, ACTION_UPDATE = "create", "delete", "update"


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


def raw_cid(data: bytes) -> bytes:
    """CIDv1, raw codec, sha2-256: how blobs (images) are addressed."""
    return bytes((0x01, 0x55, 0x12, 0x20)) + hashlib.sha256(data).digest()


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


def _cumulative(weights) -> tuple[tuple[str, ...], list[float]]:
    names = tuple(name for name, _ in weights)
    totals = list(itertools.accumulate(weight for _, weight in weights))
    return names, [total / totals[-1] for total in totals]


_CREATE_NAMES, _CREATE_CUMULATIVE = _cumulative(CREATE_WEIGHTS)
_UPDATE_NAMES, _UPDATE_CUMULATIVE = _cumulative(UPDATE_WEIGHTS)


def _pick(rng: random.Random, names: tuple[str, ...], cumulative: list[float]) -> str:
    return names[min(bisect.bisect_right(cumulative, rng.random()), len(names) - 1)]


@dataclass(frozen=True)
class FramePlan:
    """What frame n is, from the first draws of its rng (deletes look earlier plans up)."""

    kind: str  # "#commit", "#identity" or "#account"
    repo_index: int
    action: str = ""  # first op's action, for commits
    collection: str = ""  # first op's collection, for commits
    rkey: str = ""  # first op's rkey, for commits


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
        plan = self._plan(rng, n)
        if plan.kind == KIND_IDENTITY:
            return self._identity_frame(rng, plan, seq, n)
        if plan.kind == KIND_ACCOUNT:
            return self._account_frame(rng, plan, seq, n)
        return self._commit_frame(rng, plan, seq, n)

    def plan(self, seq: int) -> FramePlan:
        """What the frame at `seq` is (kind, repo, first op), without rendering it."""
        n = seq - self.first_seq
        if n < 0:
            raise KeyError(seq)
        return self._plan(self._rng(n), n)

    def did(self, repo_index: int) -> str:
        did = self._did_cache.get(repo_index)
        if did is None:
            suffix = random.Random(self.seed * 7_919 + repo_index * 104_729 + 17).getrandbits(120)
            did = "did:plc:" + base64.b32encode(suffix.to_bytes(15, "big")).decode().lower()[:24]
            self._did_cache[repo_index] = did
        return did

    def handle(self, repo_index: int) -> str:
        return f"user{repo_index}.synthetic.test"

    def _rng(self, n: int) -> random.Random:
        # Integer seeding is stable across runs and Python versions (no hash randomization).
        return random.Random((self.seed << 64) + n)

    def _time_us(self, n: int) -> int:
        return BASE_TIME_US + n * FRAME_INTERVAL_US

    # -- planning: the first draws of frame n's rng ----------------------------------------

    def _plan(self, rng: random.Random, n: int) -> FramePlan:
        roll = rng.random()
        repo_index = rng.randrange(self.dids)
        if roll < IDENTITY_SHARE:
            return FramePlan(KIND_IDENTITY, repo_index)
        if roll < IDENTITY_SHARE + ACCOUNT_SHARE:
            return FramePlan(KIND_ACCOUNT, repo_index)
        roll = rng.random()
        if roll < DELETE_COMMIT_SHARE:
            target = self._delete_target(rng, n)
            if target is not None:
                return FramePlan(KIND_COMMIT, target.repo_index, ACTION_DELETE, target.collection, target.rkey)
        elif roll < DELETE_COMMIT_SHARE + UPDATE_COMMIT_SHARE:
            collection = _pick(rng, _UPDATE_NAMES, _UPDATE_CUMULATIVE)
            return FramePlan(KIND_COMMIT, repo_index, ACTION_UPDATE, collection, "self")
        collection = _pick(rng, _CREATE_NAMES, _CREATE_CUMULATIVE)
        return FramePlan(KIND_COMMIT, repo_index, ACTION_CREATE, collection, tid(self._time_us(n), 0))

    def _planned_create(self, n: int) -> FramePlan | None:
        """Frame n's first create, or None if frame n creates nothing."""
        rng = self._rng(n)
        # A delete's own lookup never recurses: only creates are returned, and planning a
        # create draws no delete target.
        roll = rng.random()
        repo_index = rng.randrange(self.dids)
        if roll < IDENTITY_SHARE + ACCOUNT_SHARE:
            return None
        if rng.random() < DELETE_COMMIT_SHARE + UPDATE_COMMIT_SHARE:
            return None
        return FramePlan(KIND_COMMIT, repo_index, ACTION_CREATE, _pick(rng, _CREATE_NAMES, _CREATE_CUMULATIVE),
                         tid(self._time_us(n), 0))

    def _delete_target(self, rng: random.Random, n: int) -> FramePlan | None:
        for _ in range(DELETE_TRIES):
            if n == 0:
                return None
            target = self._planned_create(n - rng.randint(1, min(n, DELETE_LOOKBACK)))
            if target is not None:
                return target
        return None

    # -- frames ---------------------------------------------------------------------------

    def _commit_frame(self, rng: random.Random, plan: FramePlan, seq: int, n: int) -> bytes:
        time_us = self._time_us(n)
        did = self.did(plan.repo_index)
        if plan.action == ACTION_DELETE:
            ops, record_blocks = [_op(ACTION_DELETE, plan.collection, plan.rkey, None, _random_cid(rng))], []
        elif plan.action == ACTION_UPDATE:
            ops, record_blocks = self._update(rng, plan, time_us)
        else:
            ops, record_blocks = self._creates(rng, plan, time_us)
        rev = tid(time_us, plan.repo_index)
        commit_cid, car = self._car(rng, did, rev, ops, record_blocks)
        since = None if rng.random() < 0.05 else tid(time_us - rng.randrange(1, 10**9), plan.repo_index)
        body = {
            "ops": ops, "rev": rev, "seq": seq, "repo": did, "time": rfc3339_ms(time_us),
            "blobs": [], "since": since, "blocks": car, "commit": Link(commit_cid),
            "rebase": False, "tooBig": False, "prevData": Link(_random_cid(rng)),
        }
        return _COMMIT_HEADER + encode(body)

    def _creates(self, rng: random.Random, plan: FramePlan,
                 time_us: int) -> tuple[list[dict], list[tuple[bytes, bytes]]]:
        """One create mostly; sometimes a few in one commit (multi-op commits exist)."""
        count = rng.randint(2, 4) if rng.random() < MULTI_CREATE_SHARE else 1
        ops, blocks = [], []
        for clock_id in range(count):
            collection = plan.collection if clock_id == 0 else _pick(rng, _CREATE_NAMES, _CREATE_CUMULATIVE)
            block = encode(self._record(rng, collection, plan.repo_index, time_us))
            cid = cid_for_block(block)
            blocks.append((cid, block))
            ops.append(_op(ACTION_CREATE, collection, tid(time_us, clock_id), cid, None))
        return ops, blocks

    def _update(self, rng: random.Random, plan: FramePlan,
                time_us: int) -> tuple[list[dict], list[tuple[bytes, bytes]]]:
        block = encode(self._record(rng, plan.collection, plan.repo_index, time_us))
        cid = cid_for_block(block)
        return [_op(ACTION_UPDATE, plan.collection, plan.rkey, cid, _random_cid(rng))], [(cid, block)]

    def _car(self, rng: random.Random, did: str, rev: str, ops: list[dict],
             record_blocks: list[tuple[bytes, bytes]]) -> tuple[bytes, bytes]:
        mst_block = encode({"l": None, "e": _mst_entries(ops)})
        mst_cid = cid_for_block(mst_block)
        commit_block = encode({"did": did, "version": 3, "data": Link(mst_cid), "rev": rev,
                               "prev": None, "sig": rng.randbytes(64)})
        commit_cid = cid_for_block(commit_block)
        blocks = [(commit_cid, commit_block), (mst_cid, mst_block), *record_blocks]
        return commit_cid, encode_car(commit_cid, blocks)

    def _identity_frame(self, rng: random.Random, plan: FramePlan, seq: int, n: int) -> bytes:
        body = {"did": self.did(plan.repo_index), "seq": seq, "time": rfc3339_ms(self._time_us(n))}
        if rng.random() < 0.8:
            body["handle"] = self.handle(plan.repo_index)
        return _IDENTITY_HEADER + encode(body)

    def _account_frame(self, rng: random.Random, plan: FramePlan, seq: int, n: int) -> bytes:
        active = rng.random() < 0.5
        body = {"did": self.did(plan.repo_index), "seq": seq, "time": rfc3339_ms(self._time_us(n)),
                "active": active}
        if not active:
            body["status"] = rng.choice(_STATUSES)
        return _ACCOUNT_HEADER + encode(body)

    # -- records --------------------------------------------------------------------------

    def _record(self, rng: random.Random, collection: str, repo_index: int, time_us: int) -> dict:
        created_at = rfc3339_ms(time_us - rng.randrange(0, 5_000_000))
        if collection == POST:
            return self._post(rng, repo_index, time_us, created_at)
        if collection in (LIKE, REPOST):
            record = {"$type": collection, "subject": self._strong_ref(rng, repo_index, time_us),
                      "createdAt": created_at}
            if rng.random() < 0.1:  # liked or reposted via a repost
                record["via"] = self._strong_ref(rng, repo_index, time_us, REPOST)
            return record
        if collection in (FOLLOW, BLOCK):
            return {"$type": collection, "subject": self.did(self._other(rng, repo_index)), "createdAt": created_at}
        if collection == LISTITEM:
            return {"$type": collection, "subject": self.did(self._other(rng, repo_index)), "createdAt": created_at,
                    "list": f"at://{self.did(repo_index)}/app.bsky.graph.list/{tid(time_us - 10**9, 0)}"}
        if collection == THREADGATE:
            return {"$type": collection, "post": self._uri(repo_index, time_us - 1000, POST), "createdAt": created_at,
                    "allow": [{"$type": "app.bsky.feed.threadgate#followingRule"}], "hiddenReplies": []}
        if collection == POSTGATE:
            return {"$type": collection, "post": self._uri(repo_index, time_us - 1000, POST), "createdAt": created_at,
                    "embeddingRules": [{"$type": "app.bsky.feed.postgate#disableRule"}], "detachedEmbeddingUris": []}
        if collection == PROFILE:
            return self._profile(rng, created_at)
        if collection == CHAT_DECLARATION:
            return {"$type": collection, "allowIncoming": rng.choice(("all", "following", "none"))}
        return self._non_bsky(rng, collection, repo_index, time_us, created_at)

    def _post(self, rng: random.Random, repo_index: int, time_us: int, created_at: str) -> dict:
        text, facets = self._rich_text(rng)
        record = {"$type": POST, "text": text, "createdAt": created_at}
        if facets:
            record["facets"] = facets
        if rng.random() < 0.8:
            record["langs"] = [rng.choice(_LANGS)]
        if rng.random() < 0.35:
            root = self._strong_ref(rng, repo_index, time_us)
            parent = root if rng.random() < 0.4 else self._strong_ref(rng, repo_index, time_us)
            record["reply"] = {"root": root, "parent": parent}
        embed = self._embed(rng, repo_index, time_us)
        if embed is not None:
            record["embed"] = embed
        return record

    def _rich_text(self, rng: random.Random) -> tuple[str, list[dict]]:
        """Text of words with links, mentions and tags; facets index UTF-8 *byte* offsets."""
        pieces: list[str] = []
        facets: list[dict] = []
        length = 0  # bytes so far
        for index in range(rng.randint(1, 40)):
            if index:
                pieces.append(" ")
                length += 1
            roll = rng.random()
            if roll < 0.03:
                piece = f"https://example.com/{rng.choice(_WORDS).encode().hex()[:8]}/{rng.randrange(10**6)}"
                feature = {"$type": f"{_FACET}#link", "uri": piece}
            elif roll < 0.05:
                other = rng.randrange(self.dids)
                piece = "@" + self.handle(other)
                feature = {"$type": f"{_FACET}#mention", "did": self.did(other)}
            elif roll < 0.07:
                tag = rng.choice(_TAGS)
                piece = "#" + tag
                feature = {"$type": f"{_FACET}#tag", "tag": tag}
            else:
                piece, feature = rng.choice(_WORDS), None
            size = len(piece.encode("utf-8"))
            if feature is not None:
                facets.append({"$type": _FACET, "index": {"byteStart": length, "byteEnd": length + size},
                               "features": [feature]})
            pieces.append(piece)
            length += size
        return "".join(pieces), facets

    def _embed(self, rng: random.Random, repo_index: int, time_us: int) -> dict | None:
        roll = rng.random()
        if roll < 0.18:
            return self._images(rng)
        if roll < 0.26:
            external = {"uri": f"https://news.example.org/{rng.randrange(10**9)}", "title": self._words(rng, 8),
                        "description": self._words(rng, 25)}
            if rng.random() < 0.7:
                external["thumb"] = _blob(rng, "image/jpeg")
            return {"$type": "app.bsky.embed.external", "external": external}
        if roll < 0.31:
            return {"$type": "app.bsky.embed.record", "record": self._strong_ref(rng, repo_index, time_us)}
        if roll < 0.33:
            return {"$type": "app.bsky.embed.recordWithMedia", "media": self._images(rng),
                    "record": {"$type": "app.bsky.embed.record", "record": self._strong_ref(rng, repo_index, time_us)}}
        return None

    def _images(self, rng: random.Random) -> dict:
        images = []
        for _ in range(rng.choice((1, 1, 1, 2, 3, 4))):
            image = {"alt": self._words(rng, 12) if rng.random() < 0.4 else "",
                     "image": _blob(rng, rng.choice(_IMAGE_MIME))}
            if rng.random() < 0.9:
                image["aspectRatio"] = {"width": rng.randint(200, 4000), "height": rng.randint(200, 4000)}
            images.append(image)
        return {"$type": "app.bsky.embed.images", "images": images}

    def _profile(self, rng: random.Random, created_at: str) -> dict:
        record = {"$type": PROFILE, "displayName": self._words(rng, 3), "description": self._words(rng, 30)}
        if rng.random() < 0.9:
            record["avatar"] = _blob(rng, "image/jpeg")
        if rng.random() < 0.6:
            record["banner"] = _blob(rng, "image/jpeg")
        if rng.random() < 0.5:
            record["createdAt"] = created_at
        return record

    def _non_bsky(self, rng: random.Random, collection: str, repo_index: int, time_us: int,
                  created_at: str) -> dict:
        if collection == "com.whtwnd.blog.entry":
            paragraphs = "\n\n".join(self._words(rng, 60) for _ in range(rng.randint(2, 12)))
            return {"$type": collection, "title": self._words(rng, 6), "content": "# " + paragraphs,
                    "createdAt": created_at, "visibility": "public"}
        if collection == "xyz.statusphere.status":
            return {"$type": collection, "status": rng.choice(("👍", "🦋", "🥳", "😴", "🤔")), "createdAt": created_at}
        if collection == "events.smokesignal.calendar.rsvp":
            return {"$type": collection, "subject": self._strong_ref(rng, repo_index, time_us, collection),
                    "status": "events.smokesignal.calendar.rsvp#going", "createdAt": created_at}
        return {"$type": collection, "subject": self._strong_ref(rng, repo_index, time_us, collection),
                "createdAt": created_at}

    def _strong_ref(self, rng: random.Random, repo_index: int, time_us: int, collection: str = POST) -> dict:
        uri = self._uri(self._other(rng, repo_index), time_us - rng.randrange(10**6, 10**12), collection)
        return {"cid": cid_string(_random_cid(rng)), "uri": uri}

    def _uri(self, repo_index: int, time_us: int, collection: str) -> str:
        return f"at://{self.did(repo_index)}/{collection}/{tid(time_us, 0)}"

    def _other(self, rng: random.Random, repo_index: int) -> int:
        return (repo_index + rng.randrange(1, self.dids)) % self.dids

    @staticmethod
    def _words(rng: random.Random, most: int) -> str:
        return " ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, most)))


def prerendered(source: SyntheticSource, count: int) -> FileSource:
    """`count` frames of `source` rendered once, then served in an endless loop.

    Play k of frame i is served as seq first_seq + k*count + i, with its seq spliced in
    (so the stream stays contiguous); the frames' content repeats every `count` seqs.
    """
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    first = source.first_seq
    return FileSource([source.frame(seq) for seq in range(first, first + count)], loops=0)


def _op(action: str, collection: str, rkey: str, cid: bytes | None, prev: bytes | None) -> dict:
    return {"action": action, "path": f"{collection}/{rkey}", "cid": None if cid is None else Link(cid),
            "prev": None if prev is None else Link(prev)}


def _random_cid(rng: random.Random) -> bytes:
    return cid_for_block(rng.randbytes(32))


def _blob(rng: random.Random, mime_type: str) -> dict:
    return {"$type": "blob", "ref": Link(raw_cid(rng.randbytes(32))), "mimeType": mime_type,
            "size": rng.randint(20_000, 1_000_000)}


def _mst_entries(ops: list[dict]) -> list[dict]:
    """MST node entries for the written paths, sorted, with prefix compression."""
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
