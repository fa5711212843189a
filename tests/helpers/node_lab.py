"""The whole daemon in-process: real Daemon shell, Node core, Rib and FibSyncer,
with a fake speaker, kernel, datastore and clock. No root, no sockets but the
HTTP listener on a loopback port the kernel picks; a test runs in milliseconds.

    async with NodeLab(tmp_path, adopted=[...]) as lab:
        lab.publish(snapshot(...))
        await lab.settle()
        lab.speaker.session_up("10.0.0.2"); lab.speaker.announce("10.0.0.2", [...])
        await lab.settle()
        assert lab.kernel_routes() == {...}

``settle()`` returns once every input given so far has been handled and every
resulting kernel change is in the fake kernel (the FIB's own wait is the
barrier, no sleeps). Timers run on the fake clock: ``await lab.advance(121)``.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

from bgpd.daemon import Daemon
from bgpd.ops.sdnotify import Notifier
from bgpd.options import parse_options
from fib_sync import Route
from fib_sync.route import DEFAULT_METRIC, RT_TABLE_MAIN
from tests.helpers.clock import FakeClock
from tests.helpers.fake_datastore import FakeDatastore
from tests.helpers.fake_kernel import FakeKernel
from tests.helpers.fake_speaker import FakeBackend, FakeSpeaker
from tests.helpers.wait import until

PROTO = 201


class RecordingNotifier(Notifier):
    """sd_notify without a socket: what the daemon told systemd, in order."""

    def __init__(self) -> None:
        super().__init__(env={})
        self.sent: list[str] = []

    def notify(self, *fields: str) -> bool:
        self.sent.extend(fields)
        return True


class RecordingKernel(FakeKernel):
    """The fake kernel, plus a log of every (op, dst) applied to our routes."""

    def __init__(self, protocol: int) -> None:
        super().__init__(protocol)
        self.ops: list[tuple[str, str]] = []

    def apply(self, ops):
        self.ops.extend((op, r.dst) for op, r in ops)
        return super().apply(ops)

    def deleted(self) -> list[str]:
        return [dst for op, dst in self.ops if op == "delete"]


class NodeLab:
    def __init__(self, tmp_path: Path, *, node: str = "n1", convergence_timeout: float = 60,
                 adopted: tuple[Route, ...] | list[Route] = (), args: tuple[str, ...] = (),
                 start: bool = True) -> None:
        self.clock = FakeClock()
        self.store = FakeDatastore()
        self.backend = FakeBackend()
        self.kernel = RecordingKernel(PROTO)
        for route in adopted:
            self.kernel.put(route.with_defaults(RT_TABLE_MAIN, DEFAULT_METRIC), PROTO)
        self.notifier = RecordingNotifier()
        opts = parse_options(["--node", node, "--datastore", "file", "--config-file",
                              str(tmp_path / "unused.yaml"), "--state-dir", str(tmp_path / "st"),
                              "--route-protocol", str(PROTO), "--secrets-dir",
                              str(tmp_path / "secrets"), "--convergence-timeout",
                              str(convergence_timeout), *args])
        self.opts = dataclasses.replace(opts, http_listen=("127.0.0.1", 0))
        # No data-plane shell: it would program the test process's own namespace.
        self.daemon = Daemon(self.opts, notifier=self.notifier, backend=self.backend,
                             store=self.store, kernel=self.kernel, clock=self.clock,
                             dataplane=False)
        self._start = start
        self.task: asyncio.Task | None = None
        self.exit_code: int | None = None

    # ------------------------------------------------------------ lifecycle
    async def __aenter__(self) -> NodeLab:
        if self._start:
            await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        if self.task is not None and not self.task.done():
            self.daemon.request_stop()
        await self.stopped()

    async def start(self) -> None:
        self.task = asyncio.create_task(self.daemon.run(), name="daemon")
        await until(lambda: self.store.started or self.task.done(), what="the daemon to start")

    async def stopped(self, timeout: float = 10.0) -> int:
        """Wait for ``run()`` to return; its exit code."""
        assert self.task is not None
        self.exit_code = await asyncio.wait_for(self.task, timeout)
        return self.exit_code

    # ---------------------------------------------------------------- inputs
    def publish(self, snap) -> None:
        self.store.publish(snap)

    @property
    def speaker(self) -> FakeSpeaker:
        return self.backend.speaker

    async def advance(self, seconds: float) -> None:
        """Move the fake clock on and let the daemon handle the timers that fired."""
        self.clock.advance(seconds)
        await self.settle()

    # ---------------------------------------------------------------- settle
    def _quiet(self) -> bool:
        d = self.daemon
        busy = {t.get_name() for t in d._tasks if not t.done()} & {"timer", "reload", "teardown"}
        latest = self.store._channel.latest
        return (d.node.snapshot is latest and all(sp.idle() for sp in self.backend.speakers)
                and not d._lock.locked()
                and not busy and not d.node.exports_pending and not d.node.kernel_pending
                and not d._fib_wake.is_set() and not d._export_wake.is_set())

    async def settle(self, timeout: float = 10.0) -> None:
        """Every input so far handled, every kernel change it caused in the fake kernel."""
        for _ in range(3):  # a settled FIB pass may not wake anything; twice to be sure
            await until(self._quiet, timeout, "the daemon to be idle")
            if self.daemon.node.fib_started and self.daemon.fib._started:
                await asyncio.wait_for(self.daemon.fib.update((), (), wait=True), timeout)
        await until(self._quiet, timeout, "the daemon to be idle")

    # ---------------------------------------------------------------- views
    def kernel_routes(self) -> dict[str, Route]:
        """dst -> our route in the fake kernel."""
        return {r.dst: r for r in self.kernel.ours().values()}

    def intent(self) -> dict[str, Route]:
        """What the RIB says the kernel should hold (dst -> route), plus nothing else."""
        node = self.daemon.node
        if node.rib is None:
            return {}
        conv = node._fib_routes
        return {p: conv.route(kr) for p, kr in node.kernel_intent().items()}
