"""The signature stage of ingest (`--verify-signatures`): frames go on in relay order, commits only once verified.

Owns: the order-keeping queue in front of the pipeline (a commit whose author's DID is being
resolved holds every later frame, within --verify-max-held frames and --unresolved-did-wait),
the --unresolved-did policy (pass with a metric, or drop), the stale-rev rule with its per-DID
memory (RevTracker: an LRU over the log's `did_revs` column family, whose updates the pipeline
writes in the same batch as the events), fetching a cached key again once before calling a
signature bad (keys rotate), and forgetting a DID's key on its #identity event.
Where each check runs: with --verify-processes 0 in this loop (verify.check_commit); otherwise
commits whose key is cached go to the verify pool (ingest/verifypool.py) as soon as they arrive,
and a commit waiting for its verdict is just another head of the queue that holds the frames
behind it. The loop checks a commit itself when the pool is full or given up, and for the head
when it has waited past the window (the pool is behind or stuck): a commit whose key is known
never gets --unresolved-did. Each dispatch is answered once: a verdict counts only for the key
it was asked under (a key that rotated meanwhile means asking again).
It must never write to the log, assign time_us or decode ops: a passing frame goes on to
IngestPipeline.submit_verified, a dropped commit to submit_dropped (its seq still moves the relay
cursor, in order). With the flag off this module is not used at all.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from typing import Callable

from jetstream import metrics
from jetstream.ingest.car import CarError, read_car
from jetstream.ingest.didres import DidResolver
from jetstream.ingest.frames import FrameError, split_frame
from jetstream.ingest.pipeline import relay_time_s
from jetstream.ingest.verify import PublicKey, check_commit
from jetstream.ingest.verifypool import VerifyPool

log = logging.getLogger(__name__)

POLICY_PASS = "pass"
POLICY_DROP = "drop"

KIND_OTHER = 0  # needs no check: #account, #sync, undecodable frames (the decoder counts those)
KIND_COMMIT = 1
KIND_IDENTITY = 2

# Bound once: labels() per commit costs a lock and a dict walk.
_VERIFIED = metrics.VERIFY_COMMITS.labels("verified")
_CHECKED_IN_LOOP = metrics.VERIFY_CHECKS.labels("loop")

AWAITING_VERDICT = object()  # _verdict's answer while the pool checks the commit

_TID_ALPHABET = "234567abcdefghijklmnopqrstuvwxyz"
_TID_VALUES = {char: index for index, char in enumerate(_TID_ALPHABET)}


def tid_time_us(rev: str) -> int | None:
    """Microseconds since the epoch encoded in a TID rev (https://atproto.com/specs/tid), or None."""
    if len(rev) != 13:
        return None
    number = 0
    for char in rev:
        value = _TID_VALUES.get(char)
        if value is None:
            return None
        number = (number << 5) | value
    return number >> 10  # the low 10 bits are the clock id


class RevTracker:
    """The newest commit rev accepted per DID: an LRU in memory over the log's did_revs rows.

    `record` marks a DID dirty; the pipeline takes the dirty revs with each write batch, so what
    is stored always matches the relay cursor stored beside it. After a failed write `reset`
    forgets everything not yet written (the relay resends those commits).
    """

    _UNKNOWN = object()

    def __init__(self, load: Callable[[str], str | None], capacity: int) -> None:
        self._load = load
        self.capacity = max(1, capacity)
        self._lru: OrderedDict[str, str | None] = OrderedDict()
        self._dirty: dict[str, str] = {}

    def last(self, did: str) -> str | None:
        rev = self._dirty.get(did)
        if rev is not None:
            return rev
        rev = self._lru.get(did, self._UNKNOWN)
        if rev is self._UNKNOWN:
            rev = self._load(did)
            self._remember(did, rev)
        else:
            self._lru.move_to_end(did)
        return rev

    def is_stale(self, did: str, rev: str) -> bool:
        """True when `rev` is not above the newest rev accepted for `did` (TIDs sort as strings)."""
        last = self.last(did)
        return last is not None and rev <= last

    def record(self, did: str, rev: str) -> None:
        self._dirty[did] = rev
        self._remember(did, rev)

    def _remember(self, did: str, rev: str | None) -> None:
        self._lru[did] = rev
        self._lru.move_to_end(did)
        if len(self._lru) > self.capacity:
            self._lru.popitem(last=False)

    def take_dirty(self) -> dict[str, str]:
        dirty, self._dirty = self._dirty, {}
        return dirty

    def reset(self) -> None:
        self._lru.clear()
        self._dirty.clear()


class HeldFrame:
    """A frame on its way through the stage, with what the check needs from it."""

    __slots__ = ("frame", "kind", "did", "rev", "block", "since", "retried", "looked_up", "verdict", "verdict_key",
                 "pending_key")

    def __init__(self, frame: bytes, kind: int, did: str = "", rev: str = "", block: bytes = b"") -> None:
        self.frame = frame
        self.kind = kind
        self.did = did
        self.rev = rev
        self.block = block  # the signed commit block (the CAR root)
        self.since = 0.0  # when it arrived (monotonic): the wait window starts here
        self.retried = False  # a bad signature under a cached key: the key is being fetched again
        self.looked_up = False  # the cache hit/miss of this commit is counted once
        self.verdict: tuple[str, str] | None = None  # check_commit's answer under verdict_key
        self.verdict_key: PublicKey | None = None  # None: not checked yet
        self.pending_key: PublicKey | None = None  # sent to the pool under this key, no answer yet


def classify(frame: bytes) -> HeldFrame:
    """What the stage needs of one frame; anything it cannot read passes as KIND_OTHER.

    Unreadable commits (bad CBOR, bad CAR, tooBig) carry no events, so they need no signature:
    the decoder downstream counts them under their own drop reasons.
    """
    try:
        header, body = split_frame(frame)
    except FrameError:
        return HeldFrame(frame, KIND_OTHER)
    if header.get("op") != 1:
        return HeldFrame(frame, KIND_OTHER)
    frame_type = header.get("t")
    if frame_type == "#commit":
        repo, rev, blocks = body.get("repo"), body.get("rev"), body.get("blocks")
        if type(repo) is not str or type(rev) is not str or type(blocks) is not bytes or body.get("tooBig") is True:
            return HeldFrame(frame, KIND_OTHER)
        try:
            car = read_car(blocks)
        except CarError:
            return HeldFrame(frame, KIND_OTHER)
        block = car.blocks.get(car.roots[0]) if car.roots else None
        if block is None:
            return HeldFrame(frame, KIND_OTHER)
        return HeldFrame(frame, KIND_COMMIT, repo, rev, bytes(block))
    if frame_type == "#identity" and type(body.get("did")) is str:
        return HeldFrame(frame, KIND_IDENTITY, body["did"])
    return HeldFrame(frame, KIND_OTHER)


class SignatureGate:
    """Sits between the relay client and IngestPipeline; see the module docstring."""

    def __init__(self, pipeline, resolver: DidResolver, revs: RevTracker, *, unresolved_policy: str = POLICY_PASS,
                 max_wait_s: float = 10.0, max_held: int = 10_000, verify_processes: int = 0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if unresolved_policy not in (POLICY_PASS, POLICY_DROP):
            raise ValueError(f"unresolved policy must be pass or drop, not {unresolved_policy!r}")
        self.pipeline = pipeline
        self.resolver = resolver
        self.revs = revs
        self.unresolved_policy = unresolved_policy
        self.max_wait_s = max_wait_s
        self.max_held = max(1, max_held)
        self.clock = clock
        self._held: deque[HeldFrame] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        # Plain counters for tests and the bench; `verdicts`: checks whose answer was taken.
        self.verified = self.dropped = self.passed_unresolved = self.verdicts = 0
        # --verify-processes N > 0: checks run in N other processes (started here, on the running loop).
        self.pool: VerifyPool | None = None
        if verify_processes > 0:
            self.pool = VerifyPool(verify_processes, self._on_verdicts)
            self.pool.start()
        # Read at each scrape: the hold is visible while it lasts, not only when it ends.
        metrics.VERIFY_OLDEST_HELD_SECONDS.set_function(self.oldest_held_age_s)

    # -- intake -----------------------------------------------------------------------------------
    def admit(self, frame: bytes) -> None:
        """The relay client's entry point: frames in relay order."""
        if self.pipeline.paused:
            return  # as IngestPipeline.submit: the relay is re-read from the durable cursor later
        item = classify(frame)
        item.since = self.clock()
        if self._held:
            self._hold(item)
            if item.kind == KIND_COMMIT:
                self._verify_ahead(item)
            if len(self._held) > self.max_held:
                self._advance()
            return
        if not self._settle(item):
            self._hold(item)
            self._arm_timer()

    def held_count(self) -> int:
        return len(self._held)

    def oldest_held_age_s(self) -> float:
        """How long the head of the queue has been held (0.0 when nothing is held)."""
        return max(0.0, self.clock() - self._held[0].since) if self._held else 0.0

    def held_lag_s(self) -> float | None:
        """Relay lag of the oldest held frame (now - its relay `time`), None when nothing is held.

        Held frames are not written yet, so the pipeline's lag (of the newest written frame) does
        not see them; this is the lag they add. Frames without a readable `time`: their hold.
        """
        if not self._held:
            return None
        created = relay_time_s(self._held[0].frame)
        return max(0.0, time.time() - created) if created is not None else self.oldest_held_age_s()

    def _hold(self, item: HeldFrame) -> None:
        self._held.append(item)
        metrics.VERIFY_HELD_FRAMES.set(len(self._held))

    # -- one frame --------------------------------------------------------------------------------
    def _settle(self, item: HeldFrame) -> bool:
        """Pass or drop `item` now and return True, or return False if it must wait for its DID."""
        if item.kind == KIND_OTHER:
            self.pipeline.submit_verified(item.frame)
            return True
        if item.kind == KIND_IDENTITY:
            self.resolver.invalidate(item.did)  # its handle or keys may have changed
            self.pipeline.submit_verified(item.frame)
            return True
        did, rev = item.did, item.rev
        if self.revs.is_stale(did, rev):
            self._drop(item, "stale_rev", f"rev={rev[:20]} last_rev={self.revs.last(did)}")
            return True
        entry = self.resolver.cached(did, count=not item.looked_up)
        item.looked_up = True
        if entry is None:
            item.pending_key = None  # a verdict under the key forgotten meanwhile is not waited for
            self._start_resolving(did)
            return False
        if entry.key is None:
            self._unresolved(item, entry.failure)
            return True
        verdict = self._verdict(item, entry.key)
        if verdict is AWAITING_VERDICT:
            return False
        if verdict is None:
            self._pass(item)
            return True
        reason, detail = verdict
        if reason == "bad_signature" and entry.fetched_at < item.since and not (item.retried or entry.refreshed):
            # The key was cached before this commit arrived and may have rotated since (an
            # #identity event can come after the first commit signed with the new key): fetch
            # the document again, once per cached key, so a stream of forged commits costs one
            # fetch, not one per commit.
            item.retried = True
            self.resolver.invalidate(did)
            self._start_resolving(did, refresh=True)
            return False
        self._drop(item, reason, f"{detail} rev={rev[:20]}")
        return True

    # -- the check itself: here or in the pool ------------------------------------------------------
    def _verdict(self, item: HeldFrame, key: PublicKey):
        """`item`'s verdict under `key`: known already, checked now, or AWAITING_VERDICT (sent to the pool)."""
        if item.verdict_key == key:
            return item.verdict
        if item.pending_key == key:
            return AWAITING_VERDICT
        pool = self.pool
        if pool is not None and pool.usable and not pool.saturated:
            self._send_to_pool(item, key)
            return AWAITING_VERDICT
        return self._verify_here(item, key)

    def _verify_here(self, item: HeldFrame, key: PublicKey):
        try:
            verdict = check_commit(item.block, item.did, item.rev, key)
        except Exception as exc:  # noqa: BLE001 - a checker bug on odd input must not stop ingest
            verdict = ("bad_signature", f"checker_error={exc!r:.100}")
        item.verdict, item.verdict_key, item.pending_key = verdict, key, None
        self.verdicts += 1
        _CHECKED_IN_LOOP.inc()
        return verdict

    def _send_to_pool(self, item: HeldFrame, key: PublicKey) -> None:
        item.pending_key = key
        self.pool.submit((item, key), item.block, item.did, item.rev, key.curve, key.point)

    def _verify_ahead(self, item: HeldFrame) -> None:
        """A held commit: resolve its DID meanwhile, or, its key cached, send it to the pool now,
        so the queue drains at once when it reaches the head."""
        entry = self.resolver.peek(item.did)
        if entry is None:
            if not self.resolver.resolving(item.did):
                self._start_resolving(item.did)
            return
        pool = self.pool
        if entry.key is None or pool is None or not pool.usable or pool.saturated:
            return
        if not self.revs.is_stale(item.did, item.rev):  # a stale commit is dropped unchecked
            self._send_to_pool(item, entry.key)

    def _send_ahead(self) -> None:
        """After the pool answered (or a DID resolved): held commits not sent yet go now, up to the pool's capacity.

        Looks at most a few pool capacities deep: the front of the queue is commits already sent
        or answered (the head waits on its own verdict), the ones not sent yet come right after.
        """
        pool = self.pool
        if pool is None or not pool.usable or pool.saturated:
            return
        depth = 3 * pool.capacity
        for item in self._held:
            depth -= 1
            if depth < 0 or pool.saturated:
                return
            if item.kind == KIND_COMMIT and item.pending_key is None and item.verdict_key is None:
                self._verify_ahead(item)

    def _on_verdicts(self, tags: list, verdicts: list) -> None:
        """The pool's answer to one batch: verdicts taken only for the dispatch still awaited."""
        for (item, key), verdict in zip(tags, verdicts):
            if item.pending_key is key:
                item.verdict, item.verdict_key, item.pending_key = verdict, key, None
                self.verdicts += 1
        if not self._closed:
            self._advance()

    def _pass(self, item: HeldFrame) -> None:
        self.revs.record(item.did, item.rev)
        self.verified += 1
        _VERIFIED.inc()
        self.pipeline.submit_verified(item.frame)

    def _drop(self, item: HeldFrame, reason: str, detail: str) -> None:
        self.dropped += 1
        self.pipeline.submit_dropped(item.frame, reason, f"did={item.did} {detail}")

    def _unresolved(self, item: HeldFrame, failure: str) -> None:
        if self.unresolved_policy == POLICY_DROP:
            self._drop(item, "unresolved_did", f"failure={failure}")
            return
        # Not recorded as the DID's last rev: an unverified commit naming a rev far ahead could
        # otherwise get the account's real commits dropped as stale.
        self.passed_unresolved += 1
        metrics.VERIFY_COMMITS.labels("unresolved_passed").inc()
        self.pipeline.submit_verified(item.frame)

    def _give_up(self, item: HeldFrame, why: str) -> None:
        """The head waited past the window (`why`: wait_exceeded or held_limit): apply the policy now."""
        if item.retried:
            self._drop(item, "bad_signature", f"rev={item.rev[:20]} key_refresh_unfinished={why}")
        else:
            self._unresolved(item, why)

    # -- waiting for DIDs -------------------------------------------------------------------------
    def _start_resolving(self, did: str, refresh: bool = False) -> None:
        if self.resolver.resolving(did):
            return
        future = self.resolver.resolve(did, refresh=refresh)
        future.add_done_callback(self._on_resolved)

    def _on_resolved(self, future: asyncio.Future) -> None:
        if not future.cancelled():
            future.exception()  # retrieved: _resolve only raises when cancelled
        if not self._closed:
            self._advance()

    def _advance(self) -> None:
        """Settle held frames from the head while they can be, applying the window to the head."""
        held = self._held
        now = self.clock()
        while held:
            head = held[0]
            if not self._settle(head):
                if head.pending_key is not None:  # its key is known, its verdict not back yet
                    if len(held) <= self.max_held and now - head.since < self.max_wait_s:
                        break
                    # The pool is behind or stuck: the loop checks the head itself (a commit whose
                    # key is known never gets --unresolved-did), then settles it on the next pass.
                    self._verify_here(head, head.pending_key)
                    continue
                if len(held) > self.max_held:
                    self._give_up(head, "held_limit")
                elif now - head.since >= self.max_wait_s:
                    self._give_up(head, "wait_exceeded")
                else:
                    break
            held.popleft()
        metrics.VERIFY_HELD_FRAMES.set(len(held))
        self._send_ahead()
        self._arm_timer()

    def _arm_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._held and not self._closed:
            delay = max(0.0, self._held[0].since + self.max_wait_s - self.clock())
            self._timer = asyncio.get_running_loop().call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._advance()

    # -- lifetime ---------------------------------------------------------------------------------
    def take_dirty_revs(self) -> dict[str, str]:
        """Revs accepted since the last call: written by the pipeline with the batch."""
        return self.revs.take_dirty()

    def discard_held(self) -> None:
        """Forget held frames (before a relay reconnect: the relay sends them again from the cursor)."""
        self._held.clear()
        metrics.VERIFY_HELD_FRAMES.set(0)
        self._arm_timer()

    def reset(self) -> None:
        """After a failed write: forget held frames and revs not yet stored."""
        self.discard_held()
        self.revs.reset()

    async def close(self) -> None:
        self._closed = True
        self.discard_held()
        metrics.VERIFY_OLDEST_HELD_SECONDS.set(0)  # drops the reference to this gate
        if self.pool is not None:
            await self.pool.close()
        await self.resolver.close()


def build_signature_gate(cfg, event_log, pipeline, problems=None) -> SignatureGate:
    """The stage as configured by --verify-signatures and its flags (daemon wiring); `problems`
    (jetstream.health.Problems) gets `plc_unreachable` while the directory cannot be reached."""
    resolver = DidResolver(
        plc_url=cfg.plc_url, cache_size=cfg.did_cache_size, cache_ttl_s=cfg.did_cache_ttl,
        negative_ttl_s=cfg.did_negative_ttl, timeout_s=cfg.did_resolve_timeout,
        max_concurrency=cfg.did_resolve_concurrency, max_doc_bytes=cfg.did_doc_max_bytes,
        problems=problems,
    )
    revs = RevTracker(event_log.last_rev, cfg.did_rev_cache_size)
    return SignatureGate(pipeline, resolver, revs, unresolved_policy=cfg.unresolved_did,
                         max_wait_s=cfg.unresolved_did_wait, max_held=cfg.verify_max_held,
                         verify_processes=cfg.verify_processes)


async def trim_did_revs_forever(event_log, retention_s: float, interval_s: float = 3600.0) -> None:
    """Every interval, delete did_revs rows whose rev is a TID older than `retention_s`.

    Walks the column family in slices, yielding to the loop between them. A DID silent for
    longer than the retention loses its row, and so its stale-rev protection, until it commits.
    """
    while True:
        await asyncio.sleep(interval_s)
        cutoff_us = int((time.time() - retention_s) * 1e6)

        def keep(rev: str, cutoff_us: int = cutoff_us) -> bool:
            written_us = tid_time_us(rev)
            return written_us is None or written_us >= cutoff_us

        start: bytes | None = b""
        while start is not None:
            start = event_log.trim_did_revs(keep, start)
            await asyncio.sleep(0)
        log.info("event=did_revs_trimmed retention_s=%g rows_estimate=%d", retention_s,
                 event_log.did_rev_count_estimate())
