"""A minimal websocket test client: collects every message of one connection.

Tests use it to talk to the real server (and the real fake relay) over loopback.
"""
from __future__ import annotations

import asyncio

from picows import WSListener, WSMsgType, ws_connect


class CollectingListener(WSListener):
    def __init__(self) -> None:
        self.messages: list[tuple[WSMsgType, bytes]] = []
        self.close_code = None
        self.close_reason = None
        self.changed = asyncio.Event()

    def on_ws_frame(self, transport, frame) -> None:
        if frame.msg_type == WSMsgType.CLOSE:
            self.close_code = frame.get_close_code()
            self.close_reason = frame.get_close_reason()
            transport.disconnect()
        elif frame.msg_type in (WSMsgType.TEXT, WSMsgType.BINARY):
            self.messages.append((frame.msg_type, frame.get_payload_as_bytes()))
        self.changed.set()

    def on_ws_disconnected(self, transport) -> None:
        self.changed.set()

    @property
    def payloads(self) -> list[bytes]:
        return [payload for _, payload in self.messages]

    async def wait_for_count(self, count: int, timeout: float = 10.0) -> list[bytes]:
        async def _wait() -> None:
            while len(self.messages) < count:
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(_wait(), timeout)
        return self.payloads


async def connect(url: str, **kwargs):
    """Open a connection; returns (transport, CollectingListener)."""
    return await ws_connect(CollectingListener, url, **kwargs)
