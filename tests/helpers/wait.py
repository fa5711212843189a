"""Wait/poll helpers: the one way tests wait for a condition (no fixed sleeps).

``until`` (async) and ``until_sync`` poll ``condition`` until it returns
something truthy and return that value; on timeout they fail the test with
``what``, the last value (or retried error) seen and ``detail()`` (e.g. a
daemon's log tail), so the failure says what never happened. The timeout is a
ceiling for a slow, busy machine, never the expected time.

``retry`` names exceptions that mean "not yet" (a CLI not answering, a socket
not listening): they are retried and reported. An AssertionError raised by the
condition always fails at once: it is the condition saying "this can never
become true" (a peer process exited).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
Detail = Callable[[], str] | None


class WaitTimeout(AssertionError):
    pass


def _fail(what: str, timeout: float, last: Any, error: BaseException | None,
          detail: Detail) -> WaitTimeout:
    text = f"timed out after {timeout:g}s waiting for {what} (last: {last!r:.500})"
    if error is not None:
        text += f" (last error: {type(error).__name__}: {error})"
    if detail is not None:
        text += "\n" + detail()
    return WaitTimeout(text)


def _poll(condition: Callable[[], T], retry: tuple[type[BaseException], ...]):
    try:
        return condition(), None
    except AssertionError:
        raise
    except retry as e:
        return None, e


async def until(condition: Callable[[], T], timeout: float = 10.0, what: str = "the condition",
                interval: float = 0.001, retry: tuple[type[BaseException], ...] = (),
                detail: Detail = None) -> T:
    """Poll ``condition`` on the running loop (other tasks run between polls)."""
    deadline = time.monotonic() + timeout
    while True:
        value, error = _poll(condition, retry)
        if value:
            return value
        if time.monotonic() >= deadline:
            raise _fail(what, timeout, value, error, detail)
        await asyncio.sleep(interval)


def until_sync(condition: Callable[[], T], timeout: float = 10.0, what: str = "the condition",
               interval: float = 0.05, retry: tuple[type[BaseException], ...] = (),
               detail: Detail = None) -> T:
    """Poll ``condition`` from a plain (thread) test: labs, subprocesses, namespaces."""
    deadline = time.monotonic() + timeout
    while True:
        value, error = _poll(condition, retry)
        if value:
            return value
        if time.monotonic() >= deadline:
            raise _fail(what, timeout, value, error, detail)
        time.sleep(interval)
