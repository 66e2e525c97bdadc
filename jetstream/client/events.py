"""Typed Jetstream v1 events, decoded from the JSON bytes of one websocket message.

Owns: the event classes a client user sees (CommitEvent, IdentityEvent, AccountEvent,
and UnknownEvent for kinds this version does not know) and `parse_event`, the one
place JSON becomes an event. Every event keeps `raw`, the exact bytes received (after
zstd decompression), so a consumer can forward or store them untouched.
It must never touch a socket or keep state between messages (sans-I/O).

JSON is decoded with orjson when it is installed (several times faster on these
small objects) and with the standard library otherwise; orjson stays optional.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Union

try:  # optional speed-up, never a hard dependency
    import orjson

    _loads = orjson.loads
    JSON_DECODE_ERRORS: tuple[type[Exception], ...] = (orjson.JSONDecodeError,)
except ImportError:  # pragma: no cover - exercised only where orjson is absent
    import json

    _loads = json.loads
    JSON_DECODE_ERRORS = (ValueError,)


class EventDecodeError(ValueError):
    """A message that is not a Jetstream v1 event (not JSON, or no did/time_us)."""


@dataclass(slots=True, frozen=True)
class CommitEvent:
    """One op of a repo commit. `record` and `cid` are None for deletes (v1 omits them)."""

    kind: ClassVar[str] = "commit"
    did: str
    time_us: int
    operation: str  # "create" | "update" | "delete"
    collection: str
    rkey: str
    rev: str
    record: dict[str, Any] | None
    cid: str | None
    raw: bytes = field(repr=False, compare=False)

    @property
    def uri(self) -> str:
        return f"at://{self.did}/{self.collection}/{self.rkey}"


@dataclass(slots=True, frozen=True)
class IdentityEvent:
    """A relay #identity event; `handle` is None when the relay did not send one."""

    kind: ClassVar[str] = "identity"
    did: str
    time_us: int
    handle: str | None
    seq: int
    time: str  # the relay's timestamp string, verbatim
    raw: bytes = field(repr=False, compare=False)


@dataclass(slots=True, frozen=True)
class AccountEvent:
    """A relay #account event; `status` is None when the relay did not send one."""

    kind: ClassVar[str] = "account"
    did: str
    time_us: int
    active: bool
    status: str | None
    seq: int
    time: str
    raw: bytes = field(repr=False, compare=False)


@dataclass(slots=True, frozen=True)
class UnknownEvent:
    """An event of a kind this client does not know; `data` is the decoded JSON object."""

    kind: str
    did: str
    time_us: int
    data: dict[str, Any] = field(repr=False)
    raw: bytes = field(repr=False, compare=False)


@dataclass(slots=True, frozen=True)
class HeartbeatEvent:
    """A cursor heartbeat (asked for with heartbeat_seconds; not a v1 message).

    Every event at or below `time_us` that the subscription's filters want has already been
    received, so `time_us + 1` is a safe cursor even when no event matched for a long time.
    """

    kind: ClassVar[str] = "heartbeat"
    time_us: int
    raw: bytes = field(repr=False, compare=False)


Event = Union[CommitEvent, IdentityEvent, AccountEvent, UnknownEvent, HeartbeatEvent]


def decode_json(raw: bytes) -> dict[str, Any]:
    try:
        data = _loads(raw)
    except JSON_DECODE_ERRORS as exc:
        raise EventDecodeError(f"message is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise EventDecodeError("message is not a JSON object")
    return data


def parse_event(raw: bytes) -> Event:
    """The typed event for one message's JSON bytes; EventDecodeError if it is not one."""
    data = decode_json(raw)
    did, time_us, kind = data.get("did"), data.get("time_us"), data.get("kind")
    if kind == "heartbeat" and isinstance(time_us, int) and not isinstance(time_us, bool):
        return HeartbeatEvent(time_us, raw)
    if not isinstance(did, str) or not isinstance(time_us, int) or isinstance(time_us, bool):
        raise EventDecodeError("event lacks a string did or an integer time_us")
    try:
        if kind == "commit":
            commit = data["commit"]
            return CommitEvent(did, time_us, commit["operation"], commit["collection"], commit["rkey"],
                               commit.get("rev", ""), commit.get("record"), commit.get("cid"), raw)
        if kind == "identity":
            identity = data["identity"]
            return IdentityEvent(did, time_us, identity.get("handle"), identity.get("seq", 0),
                                 identity.get("time", ""), raw)
        if kind == "account":
            account = data["account"]
            return AccountEvent(did, time_us, account.get("active", False), account.get("status"),
                                account.get("seq", 0), account.get("time", ""), raw)
    except (KeyError, TypeError, AttributeError) as exc:
        raise EventDecodeError(f"{kind} event lacks field {exc}") from exc
    return UnknownEvent(str(kind), did, time_us, data, raw)
