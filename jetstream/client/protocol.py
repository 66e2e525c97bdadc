"""The client side of Jetstream v1's wire, as plain functions and small state objects.

Owns: turning a URL or bare host into a /subscribe URL, the query string v1 reads
(repeated wantedCollections/wantedDids, cursor, compress, maxMessageSizeBytes,
requireHello), the options_update message, where /zstd-dictionary lives, the resume
rule across reconnects (cursor = last time_us minus a rewind, then drop every event
at or below the last one seen) and the reconnect backoff.
It must never touch a socket, a clock it was not given, or the event loop (sans-I/O):
every rule here is unit-testable without a server.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from urllib.parse import urlencode, urlsplit, urlunsplit

# v1's README recommends rewinding a few seconds on reconnect; one second covers the
# group-commit and network delay between an event being sequenced and reaching us.
DEFAULT_REWIND_US = 1_000_000
_LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1", "[::1]")
_SCHEMES = {"ws": "ws", "wss": "wss", "http": "ws", "https": "wss"}


def normalize_url(url_or_host: str) -> str:
    """A ws(s)://…/subscribe URL from a full URL, a host, or host:port.

    Without a scheme, loopback hosts get ws:// and everything else wss://. A URL without
    a path gets /subscribe; any query in the input is dropped (options are ours to set).
    """
    text = url_or_host.strip()
    if "://" not in text:
        host = text.split("/", 1)[0].rsplit(":", 1)[0] if not text.startswith("[") else text.split("]")[0] + "]"
        text = ("ws://" if host in _LOCAL_HOSTS else "wss://") + text
    parts = urlsplit(text)
    scheme = _SCHEMES.get(parts.scheme.lower())
    if scheme is None or not parts.netloc:
        raise ValueError(f"not a Jetstream URL: {url_or_host!r}")
    path = parts.path if parts.path not in ("", "/") else "/subscribe"
    return urlunsplit((scheme, parts.netloc, path, "", ""))


def dictionary_url(subscribe_url: str) -> str:
    """http(s)://…/zstd-dictionary beside the /subscribe path (keeps a proxy's path prefix)."""
    parts = urlsplit(subscribe_url)
    scheme = "https" if parts.scheme == "wss" else "http"
    prefix = parts.path.rsplit("/", 1)[0]
    return urlunsplit((scheme, parts.netloc, prefix + "/zstd-dictionary", "", ""))


@dataclass
class SubscribeOptions:
    """What the client asks the server for; None or [] filters mean 'everything'."""

    collections: list[str] | None = None
    dids: list[str] | None = None
    compress: bool = False
    max_message_size: int = 0
    require_hello: bool = False
    heartbeat_seconds: int = 0  # not v1: ask for cursor heartbeats (this project's servers)

    def query(self, cursor: int | None) -> str:
        """The /subscribe query string, parameter names and repetition exactly as v1 reads them."""
        pairs: list[tuple[str, str]] = []
        pairs += [("wantedCollections", c) for c in self.collections or ()]
        pairs += [("wantedDids", d) for d in self.dids or ()]
        if cursor is not None:
            pairs.append(("cursor", str(cursor)))
        if self.compress:
            pairs.append(("compress", "true"))
        if self.max_message_size > 0:
            pairs.append(("maxMessageSizeBytes", str(self.max_message_size)))
        if self.require_hello:
            pairs.append(("requireHello", "true"))
        if self.heartbeat_seconds > 0:
            pairs.append(("heartbeatSeconds", str(self.heartbeat_seconds)))
        return urlencode(pairs)

    def options_update(self) -> bytes:
        """The options_update message carrying these filters (also the requireHello 'hello').

        Empty filters are sent as [] (v1: empty means all). maxMessageSizeBytes is always
        sent; v1 ignores it in updates (its bug), this project's server honours it.
        """
        payload = {
            "wantedCollections": list(self.collections or []),
            "wantedDids": list(self.dids or []),
            "maxMessageSizeBytes": self.max_message_size,
        }
        return json.dumps({"type": "options_update", "payload": payload}, separators=(",", ":")).encode()


def subscribe_url(base_url: str, options: SubscribeOptions, cursor: int | None) -> str:
    query = options.query(cursor)
    return f"{base_url}?{query}" if query else base_url


@dataclass
class ResumeState:
    """Where to resume after a reconnect, and which events the rewind makes duplicates.

    Jetstream cursors are inclusive and time_us strictly increases per connection, so
    resuming from `last - rewind` and dropping every event with time_us <= last gives
    no gap and no duplicate, even if the server re-sequenced nothing and the last event
    sat in a buffer we never read.
    """

    initial_cursor: int | None
    rewind_us: int = DEFAULT_REWIND_US
    last_time_us: int | None = None
    duplicates_dropped: int = 0
    # Wall-clock µs of the first successful connection: for a live (no cursor) client that
    # is cut off before its first event, resuming there avoids losing the outage's events.
    first_connected_us: int | None = None

    def accept(self, time_us: int) -> bool:
        """True for an event to deliver; False (and counted) for one already delivered."""
        if self.last_time_us is not None and time_us <= self.last_time_us:
            self.duplicates_dropped += 1
            return False
        self.last_time_us = time_us
        return True

    def heartbeat(self, time_us: int) -> None:
        """A server heartbeat: every wanted event <= time_us has arrived, so resume after it."""
        if self.last_time_us is None or time_us > self.last_time_us:
            self.last_time_us = time_us

    def restart_at(self, cursor: int) -> None:
        """On another instance (its own time_us): accept everything from `cursor` on."""
        self.last_time_us = cursor - 1

    def cursor_for_next_connection(self) -> int | None:
        if self.last_time_us is not None:
            return max(self.last_time_us - self.rewind_us, 0)
        if self.initial_cursor is not None:
            return self.initial_cursor
        if self.first_connected_us is not None:
            return max(self.first_connected_us - self.rewind_us, 0)
        return None


@dataclass
class Backoff:
    """Exponential reconnect delays with jitter; reset once a connection delivered something."""

    initial_s: float = 0.5
    maximum_s: float = 30.0
    factor: float = 2.0
    jitter: float = 0.2  # +/- fraction, so many clients of one restarted server spread out
    attempt: int = 0
    _random: random.Random = field(default_factory=random.Random, repr=False)

    def next_delay(self) -> float:
        base = min(self.initial_s * self.factor ** self.attempt, self.maximum_s)
        self.attempt += 1
        return base * (1.0 + self._random.uniform(-self.jitter, self.jitter))

    def reset(self) -> None:
        self.attempt = 0


def is_fatal_close(code: int | None, reason: str) -> bool:
    """Closes that reconnecting cannot fix: v1 rejects our options with 1000 'failed to …'."""
    return code == 1000 and reason.startswith("failed to ")
