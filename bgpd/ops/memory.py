"""Housekeeping after a large withdrawal: give the memory a flood took back.

Owned by the daemon (one ``Housekeeper`` task). CPython keeps what a burst of
routes made it allocate: a dict never shrinks after deletions (the RIB's,
the speaker's export tables sized for the flood's 200,000 prefixes stay that
size), caches keyed by prefix keep their entries, and freed heap stays in the
process unless asked back. So once the number of routes has fallen by half or
more from its peak (and by at least ``min_drop``) and stayed there for a
sample, the housekeeper rebuilds those tables at their current size (each
component's ``compact``), runs a full garbage collection and asks the C
allocator to return free pages (glibc ``malloc_trim``). It logs what it gave
back (``memory_compacted``) and counts it (``podbgp_memory_compactions_total``).

After start-up and after a large *growth* (a flood of routes coming in) it only
asks for the free heap back, once the count has not changed for two samples: the burst's transient
objects (parsed UPDATEs, the kernel's netlink batches) leave freed pages in the C
heap that nothing else returns (``memory_trimmed``; issue 17 measured 2-9 MiB of
bgpd's RSS at idle and at 100k routes).

Under steady churn (a reflector whose clients reset in turn while a peer flaps
a thousand routes every second: bench/soak) neither a large drop nor a large
growth happens, yet the C heap fills with free pages: every ``churn_every``
seconds ``run`` collects the young generations of cyclic garbage (bgpd.main's
collector thresholds count allocations less deallocations, which churn keeps
level: no collection ran in issue 16's 10-minute soak) and trims the heap if
it holds ``churn_free`` bytes or more free (glibc's ``mallinfo2``; issue 16).

What it cannot give back (docs/reliability.md): CPython's small-object
allocator returns a 1 MiB arena only when every object in it is gone, so free
room inside arenas that still hold a few live objects stays resident.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import inspect
import time
from collections.abc import Awaitable, Callable, Iterable

import structlog

log = structlog.get_logger(__name__)

Compactor = Callable[[], Awaitable[None] | None]


def rss_bytes() -> int:
    """This process's resident set (0 if /proc cannot tell)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


try:
    import resource

    _PAGE = resource.getpagesize()
except (ImportError, OSError):  # pragma: no cover - not Linux
    _PAGE = 4096


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def _libc(name: str) -> Callable | None:
    """The C library's function ``name`` (None where there is no such function: not
    glibc, or an older one)."""
    try:
        return getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        return None


def heap_free_bytes() -> int:
    """Free bytes inside the C heap (glibc 2.33+ ``mallinfo2().fordblks``; -1 elsewhere)."""
    fn = _libc("mallinfo2")
    if fn is None:
        return -1
    fn.restype = _Mallinfo2
    return int(fn().fordblks)


def trim_heap() -> bool:
    """glibc's malloc_trim(0): free heap pages go back to the kernel (False elsewhere)."""
    fn = _libc("malloc_trim")
    return fn is not None and bool(fn(0))


# glibc's mallopt(3) parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8
# What bgpd sets, unless the environment sets it (glibc reads MALLOC_*_ and
# GLIBC_TUNABLES itself, at exec) or PODBGP_MALLOC_DEFAULTS=1 keeps glibc's defaults:
# - two arenas: the kernel-sync threads (fib_sync's sender, the pass executor) each got
#   an arena of their own (glibc allows 8 per core), whose freed pages stay resident;
# - blocks of 256 KiB and up always mmap'ed, and the heap trimmed above 512 KiB free:
#   glibc's dynamic threshold rose to the largest block freed (a RIB-sized dict table,
#   an UPDATE's JSON line of several MiB), after which such blocks came from the heap
#   and left it fragmented.
# Measured in one run (issue 17, bench.memory, 100k routes): tree PSS 93.6 -> 90.0 MiB
# with two arenas, -> 89.7 with the thresholds.
MALLOC_SETTINGS = (
    (M_ARENA_MAX, 2, ("MALLOC_ARENA_MAX", "glibc.malloc.arena_max")),
    (M_MMAP_THRESHOLD, 256 * 1024, ("MALLOC_MMAP_THRESHOLD_", "glibc.malloc.mmap_threshold")),
    (M_TRIM_THRESHOLD, 512 * 1024, ("MALLOC_TRIM_THRESHOLD_", "glibc.malloc.trim_threshold")),
)
DEFAULTS_ENV = "PODBGP_MALLOC_DEFAULTS"


def tune_malloc(environ: dict[str, str] | None = None) -> list[int]:
    """Apply MALLOC_SETTINGS with mallopt(3); call before any thread starts. Returns the
    parameters set (none where the environment set its own, or off glibc)."""
    import os

    env = os.environ if environ is None else environ
    if env.get(DEFAULTS_ENV, "") not in ("", "0"):
        return []
    tunables = env.get("GLIBC_TUNABLES", "")
    mallopt = _libc("mallopt")
    if mallopt is None:
        return []
    done = []
    for param, value, (variable, tunable) in MALLOC_SETTINGS:
        if variable in env or tunable in tunables:
            continue  # the operator's choice, applied by glibc itself
        if mallopt(param, value) == 1:
            done.append(param)
    return done


class Housekeeper:
    """Samples ``size()`` (e.g. the RIB's path count) every ``interval`` seconds and
    compacts once it has dropped to ``ratio`` of its peak or below, by at least
    ``min_drop``, and did not change over the last sample."""

    def __init__(self, size: Callable[[], int], compactors: Iterable[Compactor], *,
                 interval: float = 1.0, min_drop: int = 10_000, ratio: float = 0.5,
                 churn_every: float = 60.0, churn_free: int = 2 << 20) -> None:
        self.size = size
        self.compactors = list(compactors)
        self.interval, self.min_drop, self.ratio = interval, min_drop, ratio
        # every this many samples: trim if the heap holds churn_free bytes free or more
        self.churn_samples = max(1, round(churn_every / interval))
        self.churn_free = churn_free
        self._samples = 0
        self.compactions = 0
        self.trims = 0
        self.peak = 0
        self.trimmed_at = 0  # the size when the heap was last trimmed
        self._steady = 0  # samples the size has not changed for

    def due(self, now: int, previous: int) -> bool:
        return (now == previous and self.peak - now >= self.min_drop
                and now <= self.peak * self.ratio)

    def trim_due(self, now: int, previous: int) -> bool:
        """Grown by ``min_drop`` or more since the last trim and unchanged for two samples."""
        self._steady = self._steady + 1 if now == previous else 0
        return self._steady >= 2 and now - self.trimmed_at >= self.min_drop

    async def run(self) -> None:
        previous = self.peak = self.size()
        # Start-up counts as a growth: imports, the first configuration load and the
        # sessions' set-up leave freed heap behind (issue 17: ~2.5 MiB of an idle node).
        self.trimmed_at = previous - self.min_drop
        while True:
            await asyncio.sleep(self.interval)
            now = self.size()
            self.peak = max(self.peak, now)
            trim = self.trim_due(now, previous)
            self._samples += 1
            if self.due(now, previous):
                await self.compact(now)
            elif trim:
                self.trim(now)
            else:
                if now < self.trimmed_at:
                    self.trimmed_at = now  # a later growth counts from the lowest point
                if self._samples >= self.churn_samples:
                    self._samples = 0
                    # Cyclic garbage: bgpd.main's thresholds count allocations less
                    # deallocations, which steady churn keeps level, so no collection
                    # may run for hours (issue 16's soak: none in 10 minutes). The
                    # young generations only: what lives on is the RIB, not rescanned.
                    gc.collect(1)
                    if heap_free_bytes() >= self.churn_free:
                        self.trim(now, "churn")
            previous = now

    def trim(self, now: int, reason: str = "growth") -> None:
        """Give the C heap's free pages back after a growth or under churn (no tables
        rebuilt)."""
        t0 = time.monotonic()
        before = rss_bytes()
        trimmed = trim_heap()
        after = rss_bytes()
        self.trims += 1
        self.trimmed_at = now
        self._samples = 0
        log.info("memory_trimmed", reason=reason, now=now, trimmed=trimmed,
                 rss_before_mib=round(before / 2**20, 1), rss_after_mib=round(after / 2**20, 1),
                 seconds=round(time.monotonic() - t0, 3))

    async def compact(self, now: int | None = None) -> None:
        t0 = time.monotonic()
        before = rss_bytes()
        for compactor in self.compactors:
            result = compactor()
            if inspect.isawaitable(result):
                await result
        collected = gc.collect()
        trimmed = trim_heap()
        after = rss_bytes()
        self.compactions += 1
        self._samples = 0
        self.trimmed_at = self.size() if now is None else now
        log.info("memory_compacted", peak=self.peak, now=now, collected=collected,
                 trimmed=trimmed, rss_before_mib=round(before / 2**20, 1),
                 rss_after_mib=round(after / 2**20, 1),
                 seconds=round(time.monotonic() - t0, 3))
        self.peak = self.size() if now is None else now
