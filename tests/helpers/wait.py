"""Wait/poll helpers: the one way tests wait for a condition (no fixed sleeps).

``until`` (async) and ``until_sync`` poll ``condition`` until it returns
something truthy and return that value; on timeout they fail the test with
``what`` and the last value seen, so the failure says what never happened.
The timeout is a ceiling for a slow, busy machine, never the expected time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class WaitTimeout(AssertionError):
    pass


def _fail(what: str, timeout: float, last: Any) -> WaitTimeout:
    return WaitTimeout(f"timed out after {timeout:g}s waiting for {what} (last: {last!r:.500})")


async def until(condition: Callable[[], T], timeout: float = 10.0, what: str = "the condition",
                interval: float = 0.001) -> T:
    """Poll ``condition`` on the running loop (other tasks run between polls)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise _fail(what, timeout, value)
        await asyncio.sleep(interval)


def until_sync(condition: Callable[[], T], timeout: float = 10.0, what: str = "the condition",
               interval: float = 0.05) -> T:
    """Poll ``condition`` from a plain (thread) test: labs, subprocesses, namespaces."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise _fail(what, timeout, value)
        time.sleep(interval)
