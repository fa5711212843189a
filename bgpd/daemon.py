"""bgpd: the daemon — the I/O shell around the node core (``bgpd.node``).

One asyncio process. The shell owns the tasks and the components that do I/O:
the datastore, the FibSyncer (kernel), the speaker (a ``bgpd.speaker``
backend), the HTTP server, sd_notify and the timers. It feeds every input to
``Node`` and carries out the actions it returns; it makes no decision itself.

    datastore snapshots --> config task  --> node.snapshot_received
    speaker events      --> event task   --> node.speaker_event
    timers (clock)      --> timer task   --> node.timer_fired
    signals             --> node.signal
    node actions        --> SetPeers/StartSpeaker/...: speaker; FirstFibPass/Sweep: fib
    node outbox         --> export pump  --> speaker.update_exports_many (+ End-of-RIB)
                        --> fib pump     --> FibSyncer.update

Inputs reach the node one at a time: each is fed, and its actions carried out,
under one lock, so an answer the node waits for (the speaker accepting a peer
set, the first FIB pass) arrives before the next input. Both pumps run
outside the lock: they drain the node's outbox whenever the loop gets to them,
so a burst of UPDATEs handled back to back is coalesced into one call each.

A failed task brings the daemon down (exit 1): never a silent half-dead
daemon; systemd or the kubelet restarts it and the kernel routes are adopted
again. SIGTERM stops sessions the graceful-restart way and leaves the kernel
as it is. See docs/architecture.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path as FsPath

import structlog

from bgpd import __version__
from bgpd import node as nd
from bgpd.dataplane import DataplaneSettings, cluster_route_policy
from bgpd.dataplane_io import DataplaneShell
from bgpd.node import Node
from bgpd.ops.http import HttpServer
from bgpd.ops.memory import Housekeeper
from bgpd.ops.metrics import Metrics
from bgpd.ops.sdnotify import Notifier
from bgpd.options import Options
from bgpd.peers import secret_file_reader
from bgpd.speaker import Backend, PeerConfigError, Speaker, SpeakerConfig
from fib_sync import FibSyncer

log = structlog.get_logger(__name__)

# /healthz fails once the event loop has not run its heartbeat for this long (a burst
# of 200,000 routes keeps it turning every few hundred ms on a loaded machine).
LOOP_STALL_SECONDS = 30.0

PeerKey = tuple[str, int]


class SystemClock:
    """The real clocks, and timers on the running event loop."""

    monotonic = staticmethod(time.monotonic)
    time = staticmethod(time.time)

    @staticmethod
    def call_at(at: float, callback: Callable[[], None]) -> asyncio.TimerHandle:
        # The default loop's clock is time.monotonic(); a delay keeps it independent.
        return asyncio.get_running_loop().call_later(max(0.0, at - time.monotonic()), callback)


def make_store(opts: Options):
    if opts.datastore == "file":
        from config.file_store import FileDatastore

        return FileDatastore(opts.config_file)
    from config.etcd_store import EtcdDatastore

    return EtcdDatastore(list(opts.etcd_endpoints), ca=opts.etcd_ca, cert=opts.etcd_cert,
                         key=opts.etcd_key)


class Daemon:
    """The shell. ``backend``: the BGP implementation (``bgpd.main`` picks it). Tests
    inject ``store``, ``kernel`` (a fib_sync kernel backend) and ``clock``, and
    ``dataplane=False`` keeps the data-plane shell out (no kernel of its own)."""

    WATCH_FIRST = 1.0  # seconds before the first datastore connectivity log
    WATCH_INTERVAL = 0.5

    def __init__(self, opts: Options, notifier: Notifier | None = None, *, backend: Backend,
                 store=None, kernel=None, clock=None, dataplane: bool = True) -> None:
        self.opts = opts
        self.notifier = notifier or Notifier()
        self.clock = clock or SystemClock()
        self.started = self.clock.monotonic()
        self.state_dir = FsPath(opts.state_dir)
        self.backend = backend
        self.store = store if store is not None else make_store(opts)
        self.fib = FibSyncer(protocol=opts.route_protocol, table=opts.route_table,
                             resync_interval=opts.resync_interval, stale_timeout=None,
                             on_pass=self._on_fib_pass, _kernel=kernel)
        settings = DataplaneSettings(
            manage=opts.dataplane, vxlan_vni=opts.vxlan_vni, vxlan_port=opts.vxlan_port,
            vxlan_mtu=opts.vxlan_mtu, ipip_mtu=opts.ipip_mtu)
        self.node = Node(opts.node, clock=self.clock,
                         read_password=secret_file_reader(opts.secrets_dir),
                         peer_ref=self._peer_ref, route_table=self.fib.table,
                         route_metric=self.fib.metric, max_paths=opts.max_paths,
                         convergence_timeout=opts.convergence_timeout, dataplane=settings)
        # Tunnels, VTEP entries, natOutgoing: ours when standalone (--dataplane on).
        self.dataplane: DataplaneShell | None = None
        if opts.dataplane and dataplane:
            etcd = None
            if opts.datastore == "etcdv3":
                from ipam.etcd import EtcdSettings

                etcd = EtcdSettings(",".join(opts.etcd_endpoints), opts.etcd_ca, opts.etcd_cert,
                                    opts.etcd_key)
            self.dataplane = DataplaneShell(
                opts.node, settings, store=self.store, etcd=etcd,
                protocol=opts.route_protocol, resync_interval=opts.resync_interval,
                state_dir=opts.state_dir, on_cluster_routes=self._cluster_routes_changed)
        # After a large withdrawal: compact the RIB's, the FIB's and the speaker's tables,
        # give the heap back (bgpd.ops.memory).
        self.housekeeper = Housekeeper(self.rib_path_count, (
            lambda: self.rib.compact() if self.rib is not None else None,
            self.fib.compact,
            # compact() is optional in the speaker interface (bgpd.speaker)
            lambda: getattr(self.speaker, "compact", lambda: None)()))
        self.metrics = Metrics(self)
        # Its own thread: scrapes and probes are answered while the loop works through
        # a burst; /healthz judges the loop by its heartbeat (bgpd.ops.http).
        self.http = HttpServer(opts.http_listen[0], opts.http_listen[1], {
            "/metrics": self._http_metrics, "/healthz": self._http_healthz,
            "/readyz": self._http_readyz, "/status": self._http_status,
        }, threaded=True)
        self._beat = time.monotonic()  # the event loop's heartbeat
        self.speaker: Speaker | None = None
        self._lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self._exit_code = 0
        self._tasks: list[asyncio.Task] = []
        self._event_task: asyncio.Task | None = None
        self._timers: dict[Hashable, object] = {}
        self._export_wake = asyncio.Event()
        self._fib_wake = asyncio.Event()

    # ======================================================== node's state
    @property
    def snapshot(self):
        return self.node.snapshot

    @property
    def rib(self):
        return self.node.rib

    @property
    def rejections(self):
        return self.node.rejections

    @property
    def convergence_seconds(self) -> float | None:
        return self.node.convergence_seconds

    @property
    def peers_not_configured_total(self) -> int:
        return self.node.peers_not_configured_total

    def is_ready(self) -> bool:
        return self.node.is_ready()

    def peer_states(self) -> list[dict]:
        return self.node.peer_states()

    def rib_prefix_count(self) -> int:
        return self.node.rib_prefix_count()

    def rib_path_count(self) -> int:
        return self.node.rib_path_count()

    def _peer_ref(self, address: str):
        return self.speaker.peer_ref(address) if self.speaker is not None else None

    # ================================================================ run
    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(sig, self.signal, sig.name)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        log.info("bgpd_starting", version=__version__, node=self.opts.node,
                 datastore=self.opts.datastore, route_protocol=self.opts.route_protocol,
                 route_table=self.opts.route_table)
        try:
            try:
                await self.http.start()
            except OSError as e:
                log.error("http_listen_failed", address=f"{self.http.host}:{self.http.port}",
                          error=str(e))
                return 1
            try:
                await self.fib.start()
            except Exception as e:
                log.error("fib_start_failed", error=str(e))
                await self.http.stop()
                return 1
            log.info("kernel_routes_adopted", stale=self.fib.stats.adopted)
            if self.dataplane is not None:
                try:
                    await self.dataplane.start()  # adopts devices, entries, the NAT table
                except Exception as e:
                    log.error("dataplane_start_failed", error=str(e))
                    await self.fib.stop()
                    await self.http.stop()
                    return 1
            await self.store.start()
            await self._carry_out(self.node.start())
            for coro, name in ((self._config_loop(), "config"), (self._fib_pump(), "fib-pump"),
                               (self._export_pump(), "export-pump"),
                               (self._datastore_watch(), "datastore-watch"),
                               (self._watchdog(), "watchdog"),
                               (self.housekeeper.run(), "housekeeping"),
                               (self._heartbeat(), "heartbeat")):
                self._spawn(coro, name)
            self.notifier.status("waiting for configuration")
            await self._stop.wait()
            await self._shutdown()
            return self._exit_code
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)

    def signal(self, name: str) -> None:
        """A signal arrived (also callable directly: tests, embedding)."""
        if name == "SIGHUP":
            self._spawn(self._feed(self.node.signal, name), "reload")
        else:
            # Stopping needs nothing from the node but its word: no lock to wait for.
            for action in self.node.signal(name):
                if isinstance(action, nd.Stop):
                    self._request_stop(action.exit_code)

    def request_stop(self) -> None:
        self.signal("SIGTERM")

    def _request_stop(self, exit_code: int) -> None:
        self._exit_code = max(self._exit_code, exit_code)
        self._stop.set()

    def _spawn(self, coro, name: str) -> asyncio.Task:
        task = asyncio.create_task(coro, name=name)
        self._tasks.append(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        with contextlib.suppress(ValueError):
            self._tasks.remove(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            # Never a silent half-dead daemon: a failed task brings it down (systemd or
            # the kubelet restarts it; kernel routes stay and are adopted on start).
            log.error("task_failed", task=task.get_name(), exc_info=exc)
            self._request_stop(1)

    async def _shutdown(self) -> None:
        self.notifier.stopping()
        for handle in self._timers.values():
            handle.cancel()  # type: ignore[attr-defined]
        self._timers.clear()
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            try:
                await t
            except asyncio.CancelledError:
                pass
            except Exception:
                log.exception("task_failed_on_shutdown", task=t.get_name())
        if self.speaker is not None:
            # No Cease: peers keep our routes under graceful restart.
            await self.speaker.stop(graceful_restart=True)
        await self.fib.stop()  # leaves every kernel route in place
        if self.dataplane is not None:
            await self.dataplane.stop()  # leaves devices, entries and the NAT table
        await self.store.close()
        await self.http.stop()
        log.info("bgpd_stopped", exit_code=self._exit_code)

    async def _heartbeat(self) -> None:
        while True:
            self._beat = time.monotonic()
            await asyncio.sleep(1.0)

    async def _watchdog(self) -> None:
        interval = self.notifier.watchdog_interval
        if not interval:
            return
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(interval)

    async def _datastore_watch(self) -> None:
        """Log datastore connectivity changes once each (etcd down/up)."""
        was = None
        await asyncio.sleep(self.WATCH_FIRST)  # the first load normally takes milliseconds
        while True:
            now = bool(self.store.connected)
            if now != was:
                if now:
                    log.info("datastore_connected", datastore=self.opts.datastore)
                elif was is None:
                    log.warning("datastore_waiting", datastore=self.opts.datastore,
                                endpoints=",".join(self.opts.etcd_endpoints))
                else:
                    log.warning("datastore_disconnected", datastore=self.opts.datastore,
                                note="keeping the last configuration and every route")
                was = now
            await asyncio.sleep(self.WATCH_INTERVAL)

    # ============================================================ feeding
    async def _config_loop(self) -> None:
        async for snap in self.store.snapshots():
            await self._feed(self.node.snapshot_received, snap)
            if self.dataplane is not None:
                self.dataplane.update(snap)

    def _cluster_routes_changed(self, cluster_routes) -> None:
        self._spawn(self._feed(self.node.dataplane_changed, cluster_routes), "dataplane")

    async def _event_loop(self, speaker: Speaker) -> None:
        node, lock = self.node, self._lock
        async for event in speaker.events():
            async with lock:
                actions = node.speaker_event(event)
                if actions:
                    await self._carry_out(actions)
            self._wake_pumps()

    async def _feed(self, handler: Callable, *args) -> None:
        async with self._lock:
            await self._carry_out(handler(*args))

    def _wake_pumps(self) -> None:
        # Exports first: the export pump's commands are out before the FIB pump's
        # netlink thread competes for the interpreter (a reflected withdrawal waits for
        # no kernel write; the kernel's turn comes while ExaBGP acknowledges).
        if self.node.exports_pending:
            self._export_wake.set()
        if self.node.kernel_pending:
            self._fib_wake.set()

    async def _carry_out(self, actions: Sequence[nd.Action]) -> None:
        """Do what the node asked, in order (called with the lock held, or before any
        other task runs)."""
        node = self.node
        for a in actions:
            if isinstance(a, nd.ArmTimer):
                old = self._timers.pop(a.name, None)
                if old is not None:
                    old.cancel()  # type: ignore[attr-defined]
                self._timers[a.name] = self.clock.call_at(
                    a.at, lambda name=a.name, at=a.at: self._timer_fired(name, at))
            elif isinstance(a, nd.CancelTimer):
                handle = self._timers.pop(a.name, None)
                if handle is not None:
                    handle.cancel()  # type: ignore[attr-defined]
            elif isinstance(a, nd.Teardown):
                self._spawn(self._teardown(a.key), "teardown")
            elif isinstance(a, nd.SetPeers):
                assert self.speaker is not None
                try:
                    left_out = await self.speaker.set_peers(a.specs)
                except PeerConfigError as e:
                    await self._carry_out(node.peers_rejected(str(e)))
                else:
                    await self._carry_out(node.peers_accepted(a.specs, left_out or ()))
            elif isinstance(a, nd.StartSpeaker):
                self.speaker = self.backend.new_speaker(SpeakerConfig(
                    node_name=self.opts.node, router_id=a.router_id, addresses=a.addresses,
                    listen_port=a.listen_port, state_dir=self.state_dir))
                await self.speaker.start()
                self._event_task = self._spawn(self._event_loop(self.speaker), "speaker-events")
            elif isinstance(a, nd.StopSpeaker):
                await self._stop_speaker()
            elif isinstance(a, nd.FirstFibPass):
                await self.fib.set_desired(a.routes, wait=True)
                await self._carry_out(node.fib_synced(stale=self.fib.stale_count))
            elif isinstance(a, nd.Sweep):
                # Every kernel change decided before convergence reaches the FIB before
                # converged() releases the stale routes: a route re-confirmed by the
                # last UPDATEs is never swept and re-added.
                adds, dels = node.take_kernel()
                if adds or dels:
                    await self.fib.update_specs(adds, dels, wait=False)
                await self.fib.converged()
                if self.dataplane is not None:
                    await self.dataplane.converged()
                await self._carry_out(node.swept(self.fib.stats.swept))
            elif isinstance(a, nd.ResyncFib):
                await self.fib.resync()
            elif isinstance(a, nd.Ready):
                self.notifier.ready(a.status)
            elif isinstance(a, nd.Stop):
                self._request_stop(a.exit_code)
            else:  # pragma: no cover - a new action without a case here is a bug
                raise TypeError(f"unknown action {a!r}")
        self._wake_pumps()

    def _timer_fired(self, name: Hashable, at: float) -> None:
        self._timers.pop(name, None)
        self._spawn(self._feed(self.node.timer_fired, name, at), "timer")

    async def _stop_speaker(self) -> None:
        if self._event_task is not None:
            self._event_task.cancel()
            self._event_task = None
        speaker, self.speaker = self.speaker, None
        if speaker is not None:
            await speaker.stop(graceful_restart=True)

    async def _teardown(self, key: PeerKey) -> None:
        speaker = self.speaker
        if speaker is None:
            return
        try:
            await speaker.teardown(key)
        except Exception as e:
            # The session may be gone already; say so instead of hiding it.
            log.warning("teardown_failed", peer=key[0], error=str(e))

    # ============================================================== pumps
    async def _fib_pump(self) -> None:
        while True:
            await self._fib_wake.wait()
            self._fib_wake.clear()
            adds, dels = self.node.take_kernel()
            if adds or dels:
                await self.fib.update_specs(adds, dels, wait=False)

    async def _export_pump(self) -> None:
        while True:
            await self._export_wake.wait()
            self._export_wake.clear()
            out = self.node.take_exports()
            speaker = self.speaker
            if speaker is None or not out.changes:
                continue
            try:
                # Every peer's changes in one flush: a route going to many peers is one
                # command, and no peer waits for another's acknowledgements.
                # End-of-RIB goes right behind each full set in the same stream, so a
                # restarting peer's GR helper never sweeps what we still send.
                await speaker.update_exports_many(out.changes, end_of_rib=out.end_of_rib)
            except Exception as e:
                # The speaker re-sends the whole desired set on reconnect/restart.
                log.warning("export_failed", peers=len(out.changes), error=str(e))

    def _on_fib_pass(self, report) -> None:
        self.metrics.fib_sync_seconds.observe(report.seconds)

    # ============================================================== views
    def kernel_route_counts(self) -> dict[str, int]:
        counts = {"unicast": 0, "multipath": 0, "blackhole": 0}
        for r in self.fib.desired_specs():
            if r.kind.value == "blackhole":
                counts["blackhole"] += 1
            elif len(r.nexthops) > 1:
                counts["multipath"] += 1
            else:
                counts["unicast"] += 1
        return counts

    def status(self) -> dict:
        node = self.node
        me = node.me
        snap = node.snapshot
        return {
            "node": self.opts.node, "version": __version__,
            "as": me.asn if me else None, "router_id": me.router_id if me else None,
            "addresses": list(me.addresses) if me else [],
            "route_reflector_cluster_id": me.cluster_id if me else None,
            "ready": node.is_ready(), "converged": node.convergence_seconds is not None,
            "uptime_seconds": round(self.clock.monotonic() - self.started, 3),
            "datastore": {
                "type": self.opts.datastore, "connected": bool(self.store.connected),
                "revision": snap.revision if snap else None,
                "config_stale": bool(snap and snap.rejected),
                "rejected": dict(snap.rejected) if snap else {},
            },
            "peers": node.peer_states(),
            "routes": {"loc_rib": node.rib_prefix_count(), "kernel": self.kernel_route_counts(),
                       "stale": self.fib.stale_count,
                       "failing": len(self.fib.failing_routes),
                       "conflicts": len(self.fib.conflicting_prefixes)},
            "dataplane": self.dataplane_status(),
        }

    def dataplane_status(self) -> dict:
        if self.dataplane is not None:
            return self.dataplane.status()
        snap = self.node.snapshot
        _no_encap, _ipip, value = cluster_route_policy(snap) if snap else (0, 0, None)
        return {"managed": False, "program_cluster_routes": value,
                "note": "tunnels, VXLAN routes and natOutgoing are another component's "
                        "(--dataplane off)"}

    # =============================================================== http
    def _http_metrics(self):
        return 200, "text/plain; version=0.0.4; charset=utf-8", self.metrics.render()

    def _http_healthz(self):
        stalled = time.monotonic() - self._beat
        if stalled > LOOP_STALL_SECONDS:
            return 503, "text/plain", f"event loop stalled for {stalled:.0f}s\n".encode()
        return 200, "text/plain", b"ok\n"

    def _http_readyz(self):
        if self.is_ready():
            return 200, "text/plain", b"ready\n"
        if self.snapshot is None:
            why = ("waiting for the datastore "
                   + ("(connected, loading)" if self.store.connected
                      else f"(not reachable: {','.join(self.opts.etcd_endpoints)})"
                      if self.opts.datastore == "etcdv3" else f"({self.opts.config_file})"))
        else:
            why = "waiting for the first FIB reconcile"
        return 503, "text/plain", f"not ready: {why}\n".encode()

    def _http_status(self):
        return 200, "application/json", (json.dumps(self.status(), indent=1) + "\n").encode()
