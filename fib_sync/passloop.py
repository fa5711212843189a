"""`PassLoop`: the asyncio side FibSyncer and OverlaySyncer share.

Each runs reconcile passes one at a time in a dedicated executor thread; every
trigger (a new desired set, a netlink notification, the resync timer, a retry)
only marks state and wakes the loop. What is common lives here: request
generations and their waiters (a caller's `await` returns once a pass that saw
its request has finished), the monitor socket on the event loop, the periodic
resync, the loop's death (waiters released with the error) and `stop()`'s
teardown (the kernel keeps everything). The subclass has the pass itself
(``_sync_loop``), what a notification means (``_on_monitor``) and its kernel
handles (``_close``).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from concurrent.futures import ThreadPoolExecutor

import structlog

log = structlog.get_logger(__name__)


class PassLoop:
    _what = "syncer"  # the subclass's name, in errors

    def _init_loop(self, thread_name: str) -> None:
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=thread_name)
        self._gen = 0  # bumped by every request that must be reflected in a pass
        self._done_gen = 0
        self._waiters: list[tuple[int, asyncio.Future]] = []
        self._wake = asyncio.Event()
        self._need_full = False
        self._tasks: list[asyncio.Task] = []
        self._monitor: socket.socket | None = None
        self._retry_handle: asyncio.TimerHandle | None = None
        self._started = False
        self._error: BaseException | None = None

    # The subclass's parts.
    resync_interval: float

    async def _sync_loop(self) -> None:
        raise NotImplementedError

    def _on_monitor(self) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------ shared

    async def resync(self) -> None:
        """Re-read the kernel and repair now (what the periodic timer does)."""
        self._need_full = True
        await self._request()

    def _watch(self, mon: socket.socket) -> None:
        """Read ``mon`` (a netlink multicast socket) on the event loop."""
        mon.setblocking(False)
        self._monitor = mon
        asyncio.get_running_loop().add_reader(mon.fileno(), self._on_monitor)

    def _start_tasks(self, prefix: str) -> None:
        self._tasks.append(asyncio.create_task(self._sync_loop(), name=f"{prefix}_loop"))
        self._tasks.append(asyncio.create_task(self._resync_timer(), name=f"{prefix}_resync"))

    async def _request(self, wait: bool = True) -> None:
        if self._error is not None:
            raise RuntimeError(f"{self._what} sync loop died") from self._error
        self._gen += 1
        self._wake.set()
        if not wait:
            return
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append((self._gen, fut))
        await fut

    async def _resync_timer(self) -> None:
        while True:
            await asyncio.sleep(self.resync_interval)
            self._need_full = True
            self._wake.set()

    def _passed(self, gen: int) -> None:
        """A pass that saw every request up to ``gen`` finished: release their waiters."""
        self._done_gen = gen
        keep = []
        for g, fut in self._waiters:
            if g <= gen:
                if not fut.done():
                    fut.set_result(None)
            else:
                keep.append((g, fut))
        self._waiters = keep

    def _fail_waiters(self, why: str) -> None:
        for _, fut in self._waiters:
            if not fut.done():
                fut.set_exception(RuntimeError(f"{self._what} {why}"))
        self._waiters.clear()

    def _died(self, e: BaseException, event: str) -> None:
        """The sync loop raised (a bug): fail loudly and release the waiters."""
        self._error = e
        log.exception(event)
        self._fail_waiters("sync loop died")

    async def _stop_loop(self, *handles: asyncio.TimerHandle | None) -> None:
        """Stop the tasks, timers and monitor; close the kernel handles once an
        in-flight pass is done (the thread cannot be interrupted)."""
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks.clear()
        for h in (self._retry_handle, *handles):
            if h is not None:
                h.cancel()
        if self._monitor is not None:
            asyncio.get_running_loop().remove_reader(self._monitor.fileno())
            self._monitor.close()
            self._monitor = None
        await asyncio.get_running_loop().run_in_executor(self._executor, self._close)
        self._executor.shutdown(wait=True)
        self._fail_waiters("stopped")
        self._started = False
