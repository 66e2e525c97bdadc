"""The live fast path: when a batch lands, one C pass serves every caught-up reader.

Owns: the server's LiveFanout (jetstream/_core/fanout.pyx, or its _py twin), the slot of
each connection, and when a pass runs. A reader whose own step (server/subscriber.py)
finds it caught up joins the fan-out instead of the server's waiting set; each new batch
then costs one pass over all joined readers (scan, frame, one write each) instead of one
Python pump per reader. Readers the pass cannot finish (out of tokens, below the ring,
more than a step's worth behind) are handed back and woken; paused or closed ones leave.

Coalescing: with at least COALESCE_MIN_READERS joined, passes run at most every
`coalesce_s` (`--live-coalesce-ms`); a batch landing sooner is served by a pass at the
end of that interval, together with whatever lands meanwhile. Each pass costs a write
per reader however few events it carries, so fewer, fuller passes are what keeps CPU per
delivered event low under live traffic; the interval is the latency it may add.
With few readers a pass runs at once.

On by default (`--live-fastpath=false` turns it off: every reader then waits in the server's
waiting set and takes its own steps). The slot holds the reader's own Position object, so
anything that moves a reader (its step, the pass, the cluster's cursor gate) moves that one
object by compare-and-set, never a copy.
It must never hold events for a reader, and never let a reader be served by the pass
and by its own step at once: a slot is live only while the reader's own step is idle.
"""
from __future__ import annotations

import asyncio
import logging
import os

from jetstream.config import parse_bool
from jetstream.implementation import LiveFanout, LiveSlot

log = logging.getLogger(__name__)

FASTPATH_ENV = "JETSTREAM_LIVE_FASTPATH"
DEFAULT_COALESCE_MS = 2.0
# Below this many joined readers a pass is cheap enough to run for every batch.
COALESCE_MIN_READERS = 32


def fastpath_from_env(environ=None) -> bool:
    """ServerSettings' default, so a server built without the daemon's flags (tests, benches) follows it."""
    return parse_bool((os.environ if environ is None else environ).get(FASTPATH_ENV, "true"))


class LiveFastPath:
    """The server's fan-out of caught-up readers, and the timing of its passes."""

    def __init__(self, ring, enabled: bool | None = None, coalesce_s: float = DEFAULT_COALESCE_MS / 1000) -> None:
        if coalesce_s < 0:
            raise ValueError(f"coalesce_s must be >= 0, got {coalesce_s}")
        self.ring = ring
        self.enabled = fastpath_from_env() if enabled is None else bool(enabled)
        self.coalesce_s = float(coalesce_s)
        self._fanout = LiveFanout()
        self._pending: asyncio.TimerHandle | None = None
        self._last_pass = float("-inf")
        self.handed_back = 0  # readers the passes handed back to their own step

    def new_slot(self, owner, position, transport, bucket, compressed: bool, v2: bool = False) -> LiveSlot:
        return LiveSlot(owner, position, transport, bucket, compressed, v2)

    def join(self, slot: LiveSlot) -> bool:
        """Take a caught-up reader into the fan-out; False when the fast path is off."""
        if not self.enabled:
            return False
        self._fanout.join(slot)
        return True

    @property
    def joined(self) -> int:
        return self._fanout.listed

    @property
    def passes(self) -> int:
        return self._fanout.passes

    def on_new_events(self) -> None:
        """A batch is in the ring: serve the joined readers now, or at the end of the interval."""
        if not self.enabled or self._pending is not None or not self._fanout.listed:
            return
        loop = asyncio.get_running_loop()
        due = self._last_pass + self.coalesce_s
        if self._fanout.listed >= COALESCE_MIN_READERS and loop.time() < due:
            self._pending = loop.call_at(due, self.run_pass)
            return
        self.run_pass()

    def run_pass(self) -> None:
        self._pending = None
        self._last_pass = asyncio.get_running_loop().time()
        handed_back = self._fanout.step(self.ring)
        self.handed_back += len(handed_back)
        for owner in handed_back:
            owner.wake()

    def close(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
