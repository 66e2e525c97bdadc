"""Which relay the stored relay cursor belongs to, and what to do when the relay changes.

Owns: the relay's identity (the host of --ws-url: a relay's seqs are its own, so a cursor
means nothing to another host; the port is left out, so a relay moved to another port of
the same host keeps its cursor), the start-up decision "resume from the stored
cursor, or start live because --ws-url now names a different relay", and what a relay's
cursor complaints mean: an error frame `FutureCursor` (the relay has never reached our
cursor: it was reset, or is another relay behind the same name) drops the cursor and
starts live; an `#info OutdatedCursor` (the relay no longer holds everything after our
cursor) is logged as a possible gap while the relay carries on from its oldest frame.
Each decision is one log line that keeps the old cursor, so an operator can go back.
It must never pick a cursor silently, and never send one relay's cursor to another.
"""
from __future__ import annotations

import logging
from urllib.parse import urlsplit

log = logging.getLogger(__name__)


def relay_identity(ws_url: str) -> str:
    """'wss://Bsky.Network:443/xrpc/…' -> 'bsky.network' (the host, lower-cased, no port)."""
    return (urlsplit(ws_url.strip()).hostname or "").lower()


def resume_cursor_for(event_log, ws_url: str) -> int | None:
    """The cursor to dial `ws_url` with; records which relay the log follows from now on.

    Same relay: the stored cursor. A data dir from before relays were recorded: its cursor
    is kept (it can only have come from this --ws-url or an operator's deliberate move).
    A different relay: None (live), durably, with one line naming both relays and the old cursor.
    """
    relay = relay_identity(ws_url)
    stored_relay, cursor = event_log.relay(), event_log.relay_cursor()
    if stored_relay == relay:
        return cursor
    if stored_relay is None or cursor is None:
        event_log.switch_relay(relay, keep_cursor=True)
        return cursor
    log.warning("event=relay_changed old_relay=%s new_relay=%s old_cursor=%d action=start_live "
                "hint=%s", stored_relay, relay, cursor,
                "the old cursor belongs to the old relay; --override-relay-cursor sets one for the new relay")
    event_log.switch_relay(relay, keep_cursor=False)
    return None


def is_future_cursor(error_detail: str) -> bool:
    """An error frame saying our cursor is ahead of the relay (indigo's `FutureCursor`)."""
    return "'FutureCursor'" in error_detail


def is_outdated_cursor(info_detail: str) -> bool:
    return "'OutdatedCursor'" in info_detail
