"""A fake clock for in-process tests: time moves only when the test says so.

It is what ``bgpd.node.Node`` reads (``monotonic``, ``time``) and what the
daemon's shell arms timers on (``call_at``), so a test can jump over a
120-second graceful-restart window in microseconds: ``advance(121)`` runs every
callback due by then, in deadline order.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable


class Handle:
    __slots__ = ("callback", "cancelled")

    def __init__(self, callback: Callable[[], None]) -> None:
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    def __init__(self, start: float = 1000.0, wall_offset: float = 1_700_000_000.0) -> None:
        self.now = start
        self.wall_offset = wall_offset
        self._due: list[tuple[float, int, Handle]] = []
        self._seq = itertools.count()

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.wall_offset + self.now

    def call_at(self, at: float, callback: Callable[[], None]) -> Handle:
        handle = Handle(callback)
        heapq.heappush(self._due, (at, next(self._seq), handle))
        return handle

    def pending(self) -> list[float]:
        """Deadlines of the timers still armed, soonest first."""
        return sorted(at for at, _, h in self._due if not h.cancelled)

    def advance(self, seconds: float) -> int:
        """Move time on; run the callbacks now due. Returns how many ran."""
        self.now += seconds
        ran = 0
        while self._due and self._due[0][0] <= self.now:
            _, _, handle = heapq.heappop(self._due)
            if not handle.cancelled:
                handle.callback()
                ran += 1
        return ran
