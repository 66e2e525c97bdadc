"""The event values that flow between stages.

Owns: the two shapes an event has on its way through the daemon, and the kind
codes. It must never do I/O; stages exchange these values and nothing else.

  ingest  ->  PendingEvent   (JSON bytes around a missing time_us)
  sequencer -> Event         (time_us and seq assigned, JSON and zstd bytes final; the v2
                              frame and its zstd form rendered from the v2 record)
"""
from __future__ import annotations

from typing import NamedTuple

KIND_COMMIT = 0
KIND_IDENTITY = 1
KIND_ACCOUNT = 2
# Stored for clients that ask with includeSync=true; every reader skips it otherwise, so a
# v1 client never sees one (it is not a v1 kind).
KIND_SYNC = 3
KIND_NAMES = ("commit", "identity", "account", "sync")


class PendingEvent(NamedTuple):
    """An event decoded from the relay, waiting for its time_us.

    The wire JSON is ``json_head + str(time_us) + json_tail``: v1's envelope puts
    time_us second (after did), so ingest renders everything else once, up front.
    """

    did: str
    kind: int
    collection: str  # "" for identity/account/sync: they bypass collection filters (v1 d420dfe)
    json_head: bytes  # b'{"did":"did:plc:...","time_us":'
    json_tail: bytes  # b',"kind":"commit","commit":{...}}'
    # The event's stored v2 record (jetstream/wire_v2.py pack_record): its v2 frame around
    # seq and time, and the raw archive payload. b"": none was made (tools, tests): stored as a
    # record without a frame, which v2 readers skip.
    v2_record: bytes = b""


class Event(NamedTuple):
    """A sequenced event: what the log stores and subscribers receive.

    `seq` is the instance's event number (1, 2, 3, ... with no gap in what the log stores;
    the v2 wire's cursor). It comes last so code that builds an Event from its first six
    fields keeps working; 0 means "not numbered" (never stored).
    """

    time_us: int
    did: str
    kind: int
    collection: str
    json: bytes
    zstd: bytes
    seq: int = 0
    # The v2 wire (subscribeEvents): the final text frame (b"": this event has no v2 frame, v2
    # readers skip it), its zstd form (v2 dictionary), and the stored record it was rendered from.
    v2: bytes = b""
    v2_zstd: bytes = b""
    v2_record: bytes = b""


def render_json(pending: PendingEvent, time_us: int) -> bytes:
    """The event's final JSON bytes with its time_us filled in."""
    return b"%s%d%s" % (pending.json_head, time_us, pending.json_tail)
