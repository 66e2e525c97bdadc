"""Waiting in async tests: poll a condition until it holds or a deadline passes."""
from __future__ import annotations

import asyncio
import inspect
import time


async def until(predicate, what: str = "", timeout: float = 30.0, interval: float = 0.05) -> None:
    """Return once `predicate()` (plain or async) is true; AssertionError naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        await asyncio.sleep(interval)
