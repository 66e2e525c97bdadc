"""The ingest leader's lease: one key in a replicated NATS key-value bucket.

Owns: taking the lease (create: only if the key is absent or expired), renewing it
(update with the revision we last wrote: fails if anyone else wrote since), releasing
it, and reading who holds it. The bucket's TTL is the lease TTL, so a leader that stops
renewing loses the key within that time and another node can create it.
It must never be what keeps two writers apart: the lease only says who should ingest;
the stream's expected-last-sequence fence on every publish is what makes a deposed
leader's writes fail (publisher.py).
"""
from __future__ import annotations

import asyncio
import json
import logging
import time

log = logging.getLogger(__name__)

LEASE_KEY = "leader"


class Lease:
    def __init__(self, kv, node_name: str, ttl_s: float) -> None:
        self._kv = kv
        self.node_name = node_name
        self.ttl_s = ttl_s
        self.revision: int | None = None  # of our last successful write; None: not held
        self.renewed_at = 0.0  # monotonic time the last successful write was *sent*

    @property
    def held(self) -> bool:
        return self.revision is not None

    def _value(self) -> bytes:
        return json.dumps({"node": self.node_name, "at": time.time()}).encode()

    async def try_acquire(self, timeout_s: float) -> bool:
        """Take the lease if nobody holds it; True when we now hold it."""
        import nats.js.errors

        sent = time.monotonic()
        try:
            self.revision = await asyncio.wait_for(self._kv.create(LEASE_KEY, self._value()), timeout_s)
        except nats.js.errors.KeyWrongLastSequenceError:
            return False  # held by someone (maybe a previous life of ours: it expires)
        self.renewed_at = sent
        return True

    async def renew(self, timeout_s: float) -> bool:
        """Extend our lease; False (and no longer held) if someone else wrote it since."""
        import nats.js.errors

        if self.revision is None:
            return False
        sent = time.monotonic()
        try:
            self.revision = await asyncio.wait_for(
                self._kv.update(LEASE_KEY, self._value(), last=self.revision), timeout_s)
        except nats.js.errors.KeyWrongLastSequenceError:
            self.revision = None
            return False
        self.renewed_at = sent
        return True

    def expired_locally(self) -> bool:
        """True once a full TTL has passed since our last successful renewal was sent.

        From then on another node may hold the key; we must behave as a follower even if
        NATS is unreachable and we never heard the answer.
        """
        return self.revision is not None and time.monotonic() - self.renewed_at >= self.ttl_s

    def forget(self) -> None:
        self.revision = None

    async def release(self, timeout_s: float) -> None:
        """Delete the key if it is still ours, so a successor need not wait for the TTL."""
        revision, self.revision = self.revision, None
        if revision is None:
            return
        try:
            await asyncio.wait_for(self._kv.delete(LEASE_KEY, last=revision), timeout_s)
        except Exception as exc:  # noqa: BLE001 - someone else's now, or NATS unreachable: TTL ends it
            log.info("event=cluster_lease_release_skipped error=%r", exc)

    async def holder(self, timeout_s: float) -> str | None:
        """The node name in the key, or None when nobody holds the lease."""
        import nats.js.errors

        try:
            entry = await asyncio.wait_for(self._kv.get(LEASE_KEY), timeout_s)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return None
        try:
            return json.loads(entry.value)["node"]
        except (ValueError, KeyError, TypeError):
            return None
