"""A Python client for Jetstream v1 endpoints (this daemon or any other).

    async for event in Jetstream("ws://localhost:6008", collections=["app.bsky.feed.post"]):
        if isinstance(event, CommitEvent) and event.operation == "create":
            print(event.did, event.record.get("text"))

Owns: nothing itself; it re-exports the public names of events.py, protocol.py,
zstd.py and stream.py. It must never import server or ingest code: the client has to
work standalone against any Jetstream v1 endpoint.
"""
from jetstream.client.events import (
    AccountEvent,
    CommitEvent,
    Event,
    EventDecodeError,
    HeartbeatEvent,
    IdentityEvent,
    UnknownEvent,
    parse_event,
)
from jetstream.client.protocol import DEFAULT_REWIND_US, Backoff, ResumeState, SubscribeOptions, normalize_url
from jetstream.client.stream import ConnectionLost, Jetstream, JetstreamError
from jetstream.client.zstd import DictionaryMismatch, ZstdFrameDecoder

__all__ = [
    "AccountEvent", "Backoff", "CommitEvent", "ConnectionLost", "DEFAULT_REWIND_US", "DictionaryMismatch",
    "Event", "EventDecodeError", "HeartbeatEvent", "IdentityEvent", "Jetstream", "JetstreamError", "ResumeState",
    "SubscribeOptions", "UnknownEvent", "ZstdFrameDecoder", "normalize_url", "parse_event",
]
