"""bgpd: the daemon that wires config, rib, speaker and fib_sync together.

One asyncio process. The daemon owns the task graph and the state that crosses
packages; routing decisions stay in rib/ (pure), kernel programming in
fib_sync/, BGP sessions in the speaker (ExaBGP child).

    datastore snapshots --> _on_snapshot: plan peers -> speaker.set_peers
                                          rib.set_config / set_peer_policy
    speaker events      --> _on_event:    rib.update / peer_up / peer_down / EoR
    rib Changes         --> _apply:       exports -> export pump -> speaker
                                          kernel  -> fib pump    -> FibSyncer
                                          rejections -> log once + counter

The two pumps coalesce: while the event task works through a burst of
UPDATEs, changes pile up in per-peer / per-prefix maps and go out in one call
when the loop gets to the pump, so a 100k-route burst is not 100k syscalls
or 100k ExaBGP commands.

Lifecycle: adopt kernel routes as stale -> load config (waiting, not failing,
while etcd is away) -> FIB reconciled once (ready) -> sessions -> End-of-RIB
from every planned peer or --convergence-timeout -> sweep stale routes.
SIGTERM stops sessions the graceful-restart way and leaves the kernel as it
is; SIGHUP re-plans (re-reads password files) and resyncs the FIB.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import signal
import time
from collections import Counter
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path as FsPath

import structlog

import rib
from bgpd import __version__
from bgpd import events as ev
from bgpd.exabgp.conf import ExaBGPConfigError
from bgpd.exabgp.speaker import Speaker
from bgpd.ops.http import HttpServer
from bgpd.ops.metrics import Metrics
from bgpd.ops.sdnotify import Notifier
from bgpd.options import Options
from bgpd.peers import LocalNode, PeerPlan, plan_peers, secret_file_reader
from bgpd.peerspec import PeerSpec
from bgpd.translate import FibRoutes, peer_policy, reachable_by_routes, rib_config
from fib_sync import FibSyncer

log = structlog.get_logger(__name__)

PeerKey = tuple[str, int]
MAX_LOGGED_REJECTIONS = 10_000  # distinct (peer, prefix, reason) logged once each


@dataclass
class PeerStatus:
    """What /status, metrics and convergence know about one planned session."""

    spec: PeerSpec
    state: str = "start"  # up | start (configured, not Established)
    since_epoch: float = 0.0
    info: str = "Connect"
    flaps: int = 0
    eor: bool = False
    gr_time: int = 0  # the peer's graceful-restart time (from its OPEN), 0 = none
    stale_timer: asyncio.TimerHandle | None = None


def _tune_gc() -> None:
    """The RIB holds several small container objects per route and none of them is in
    a reference cycle, yet with the default thresholds (a young collection every 700
    allocations, full ones as the heap grows) the collector kept rescanning them:
    ~30% of the daemon's time in a 100k-route burst (bench.convergence). Collect
    rarely, and keep start-up objects (modules, config) out of every scan."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 10)


def make_store(opts: Options):
    if opts.datastore == "file":
        from config.file_store import FileDatastore

        return FileDatastore(opts.config_file)
    from config.etcd_store import EtcdDatastore

    return EtcdDatastore(list(opts.etcd_endpoints), ca=opts.etcd_ca, cert=opts.etcd_cert,
                         key=opts.etcd_key)


class Daemon:
    def __init__(self, opts: Options, notifier: Notifier | None = None) -> None:
        self.opts = opts
        self.notifier = notifier or Notifier()
        self.started_wall = time.time()
        self.started = time.monotonic()
        self.state_dir = FsPath(opts.state_dir)
        self.store = make_store(opts)
        self.fib = FibSyncer(protocol=opts.route_protocol, table=opts.route_table,
                             resync_interval=opts.resync_interval, stale_timeout=None,
                             on_pass=self._on_fib_pass)
        self.metrics = Metrics(self)
        self.http = HttpServer(opts.http_listen[0], opts.http_listen[1], {
            "/metrics": self._http_metrics, "/healthz": self._http_healthz,
            "/readyz": self._http_readyz, "/status": self._http_status,
        })
        self.read_password = secret_file_reader(opts.secrets_dir)
        self.snapshot = None
        self.plan: PeerPlan | None = None
        self.me: LocalNode | None = None
        self.rib: rib.Rib | None = None
        self.speaker: Speaker | None = None
        self.peers: dict[PeerKey, PeerStatus] = {}
        # Sessions Calico would configure that podbgp does not run, with the reason
        # (plan.rejected, or the speaker could not render them): one bad peer is one
        # bad peer. Shown in /status and `bgpctl node status` as "not configured".
        self.unconfigured: dict[PeerKey, tuple[PeerSpec, str]] = {}
        self.peers_not_configured_total = 0
        self._reachable: dict[str, rib.KernelRoute] = {}  # BGPPeer reachableBy routes
        self.rejections: Counter[tuple[str, str]] = Counter()
        self._logged_rejections: set[tuple] = set()
        self._logged_problems: set[str] = set()
        self.convergence_seconds: float | None = None
        self.fib_ready = False
        self._stop = asyncio.Event()
        self._exit_code = 0
        self._tasks: list[asyncio.Task] = []
        self._event_task: asyncio.Task | None = None
        self._check_convergence = asyncio.Event()
        # pumps: coalesced work for the speaker and fib_sync
        self._export_pending: dict[PeerKey, tuple[bool, dict[str, object]]] = {}
        self._export_wake = asyncio.Event()
        # prefix -> fib Route to install / key to remove; a prefix is in at most one.
        # What the kernel should hold lives in FibSyncer alone (no copy here).
        self._fib_routes = FibRoutes(self.fib.table, self.fib.metric)
        self._fib_add: dict[str, object] = {}
        self._fib_del: dict[str, tuple] = {}
        self._fib_wake = asyncio.Event()
        self._last_stale_keys: frozenset[str] = frozenset()

    # ================================================================ run
    async def run(self) -> int:
        _tune_gc()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.request_stop)
        loop.add_signal_handler(signal.SIGINT, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, lambda: self._spawn(self._reload(), "reload"))
        self.state_dir.mkdir(parents=True, exist_ok=True)
        log.info("bgpd_starting", version=__version__, node=self.opts.node,
                 datastore=self.opts.datastore, route_protocol=self.opts.route_protocol,
                 route_table=self.opts.route_table)
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
        await self.store.start()
        for coro, name in ((self._config_loop(), "config"), (self._fib_pump(), "fib-pump"),
                           (self._export_pump(), "export-pump"),
                           (self._convergence(), "convergence"),
                           (self._datastore_watch(), "datastore-watch"),
                           (self._watchdog(), "watchdog")):
            self._spawn(coro, name)
        self.notifier.status("waiting for configuration")
        await self._stop.wait()
        await self._shutdown()
        return self._exit_code

    def request_stop(self) -> None:
        log.info("bgpd_stopping")
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
            self._exit_code = 1
            self._stop.set()

    async def _shutdown(self) -> None:
        self.notifier.stopping()
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self.speaker is not None:
            # SIGKILL to ExaBGP: no Cease, so peers keep our routes under graceful restart.
            await self.speaker.stop(graceful_restart=True)
        await self.fib.stop()  # leaves every kernel route in place
        await self.store.close()
        await self.http.stop()
        log.info("bgpd_stopped", exit_code=self._exit_code)

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
        await asyncio.sleep(1.0)  # the first load normally takes milliseconds
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
            await asyncio.sleep(0.5)

    # ============================================================= config
    async def _config_loop(self) -> None:
        async for snap in self.store.snapshots():
            await self._on_snapshot(snap)

    def _problem(self, text: str, **kw) -> None:
        if text not in self._logged_problems:
            if len(self._logged_problems) > 1000:
                self._logged_problems.clear()
            self._logged_problems.add(text)
            log.warning("config_problem", problem=text, **kw)

    async def _on_snapshot(self, snap) -> None:
        first = self.snapshot is None
        self.snapshot = snap
        stale = frozenset(snap.rejected)
        if stale != self._last_stale_keys:
            for key in sorted(stale - self._last_stale_keys):
                log.error("config_rejected", key=key, reason=snap.rejected[key],
                          note="the last good version stays in use")
            if not stale:
                log.info("config_stale_cleared")
            self._last_stale_keys = stale
        plan = plan_peers(snap, self.opts.node, self.read_password)
        for p in plan.problems:
            self._problem(p)
        me = plan.node
        if me is None:
            if self.me is None:
                self._problem(f"node {self.opts.node!r}: no Node resource with a BGP address "
                              "yet; advertising nothing, keeping kernel routes")
            # A Node that vanished keeps the last plan: never drop routes on a hiccup.
        else:
            if self.me is not None and (me.addresses, me.router_id, me.asn) != (
                    self.me.addresses, self.me.router_id, self.me.asn):
                log.warning("node_identity_changed", old=self.me.addresses, new=me.addresses,
                            asn=me.asn)
                await self._stop_bgp()
            if self.rib is None:
                await self._start_bgp(snap, me)
            else:
                self._apply(self.rib.set_config(self._rib_config(snap, me)))
            self.me = me
            await self._set_peers(snap, plan)
            self.plan = plan
        if first or not self.fib_ready:
            await self._first_fib_sync()
        self._check_convergence.set()

    def _rib_config(self, snap, me: LocalNode) -> rib.RibConfig:
        return rib_config(snap, me, max_paths=self.opts.max_paths)

    async def _start_bgp(self, snap, me: LocalNode) -> None:
        self.rib = rib.Rib(self._rib_config(snap, me))
        # Originated routes (own blocks as blackholes...) come from set_config on a
        # fresh table; hand all of them to the fib pump.
        self._queue_kernel(self.rib.desired_routes().values(), ())
        self.speaker = Speaker(self.opts.node, me.router_id, me.addresses,
                               self.state_dir / "exabgp",
                               listen_port=snap.effective_bgp_config(me.name).listen_port or 179)
        await self.speaker.start()
        self._event_task = self._spawn(self._event_loop(self.speaker), "speaker-events")
        log.info("bgp_started", router_id=me.router_id, asn=me.asn, addresses=me.addresses,
                 cluster_id=me.cluster_id)

    async def _stop_bgp(self) -> None:
        if self._event_task:
            self._event_task.cancel()
        if self.speaker:
            await self.speaker.stop(graceful_restart=True)
        for st in self.peers.values():
            if st.stale_timer:
                st.stale_timer.cancel()
        self.peers.clear()
        self.speaker = None
        self.rib = None  # kernel routes stay: the next rib re-confirms them

    async def _set_peers(self, snap, plan: PeerPlan) -> None:
        assert self.speaker is not None and self.rib is not None
        try:
            unrendered = await self.speaker.set_peers(plan.peers)
        except ExaBGPConfigError as e:  # the node itself cannot be rendered (router id...)
            log.error("peers_rejected", error=str(e), note="keeping the running sessions")
            return
        self._set_unconfigured([*plan.rejected, *unrendered])
        self._set_reachable_by(reachable_by_routes(plan.peers))
        bad = {spec.key for spec, _ in unrendered}
        wanted = {s.key: s for s in plan.peers if s.key not in bad}
        # A running session whose new settings were refused keeps its old ones (speaker).
        for key in [k for k in self.peers if k not in wanted and k not in bad]:
            st = self.peers.pop(key)
            if st.stale_timer:
                st.stale_timer.cancel()
            self._apply(self.rib.peer_down(key))
            log.info("peer_removed", peer=key[0])
        for key, spec in wanted.items():
            st = self.peers.get(key)
            if st is None:
                self.peers[key] = PeerStatus(spec=spec, since_epoch=time.time())
                continue
            st.spec = spec
            if st.state == "up":
                ref = self.speaker.peer_ref(spec.address)
                if ref is not None:
                    policy, problems = peer_policy(spec, ref, snap)
                    for p in problems:
                        self._problem(p, peer=spec.address)
                    self._apply(self.rib.set_peer_policy(policy))

    def _set_reachable_by(self, routes: dict[str, rib.KernelRoute]) -> None:
        old, self._reachable = self._reachable, routes
        gone = [kr for p, kr in old.items() if p not in routes]
        new = [kr for p, kr in routes.items() if old.get(p) != kr]
        if gone or new:
            log.info("reachable_by_routes", routes=sorted(routes))
            self._queue_kernel(new, gone)

    def _set_unconfigured(self, rejected: list[tuple[PeerSpec, str]]) -> None:
        new = {spec.key: (spec, why) for spec, why in rejected}
        for key, (spec, why) in new.items():
            if self.unconfigured.get(key, (None, None))[1] != why:
                self.peers_not_configured_total += 1
                log.error("peer_not_configured", peer=spec.address, port=spec.port,
                          name=spec.name, reason=why, note="every other session is unaffected")
        self.unconfigured = new

    async def _first_fib_sync(self) -> None:
        """The first reconcile: desired = what rib wants now; adopted stale routes stay
        until convergence. Readiness waits for it."""
        # `is not None`: a Rib's len() is its path count, 0 before any peer sent routes.
        desired = []
        if self.rib is not None:
            for kr in (*self.rib.desired_routes().values(), *self._reachable.values()):
                try:
                    desired.append(self._fib_routes.route(kr))
                except ValueError as e:
                    log.error("kernel_route_invalid", prefix=kr.prefix, error=str(e))
        self._fib_add.clear()
        self._fib_del.clear()
        await self.fib.set_desired(desired, wait=True)
        if not self.fib_ready:
            self.fib_ready = True
            log.info("fib_reconciled", routes=len(desired), stale=len(self.fib.stale_routes))
            self.notifier.ready("running")

    async def _reload(self) -> None:
        log.info("reload_requested")
        if self.snapshot is not None:
            self._logged_problems.clear()
            await self._on_snapshot(self.snapshot)
        await self.fib.resync()

    # ============================================================= events
    async def _event_loop(self, speaker: Speaker) -> None:
        async for event in speaker.events():
            try:
                self._on_event(event)
            except Exception:
                # One bad event must not take the daemon down: log it with the traceback.
                log.exception("event_failed", event=type(event).__name__)

    def _key(self, address: str) -> PeerKey | None:
        for key in self.peers:
            if key[0] == address:
                return key
        return None

    def _on_event(self, e) -> None:
        r = self.rib
        if r is None:
            return
        if isinstance(e, ev.Update):
            key = self._key(e.neighbor)
            if key is not None:
                self._apply(r.update(key, e.announced, e.withdrawn))
            return
        if isinstance(e, ev.EndOfRib):
            key = self._key(e.neighbor)
            if key is not None:
                self._apply(r.end_of_rib(key))
                st = self.peers[key]
                if not st.eor:
                    st.eor = True
                    log.info("bgp_end_of_rib", peer=e.neighbor, afi=e.afi)
                    self._check_convergence.set()
            return
        key = self._key(getattr(e, "neighbor", ""))
        st = self.peers.get(key) if key else None
        if isinstance(e, ev.Open) and st is not None and e.direction == "receive":
            st.gr_time = e.graceful_restart.time if e.graceful_restart else 0
        elif isinstance(e, ev.SessionUp) and st is not None:
            ref = self.speaker.peer_ref(e.neighbor) if self.speaker else None
            if ref is None:
                return
            if st.stale_timer:
                st.stale_timer.cancel()
                st.stale_timer = None
            st.state, st.since_epoch, st.info, st.eor = "up", time.time(), "Established", False
            policy, problems = peer_policy(st.spec, ref, self.snapshot)
            for p in problems:
                self._problem(p, peer=e.neighbor)
            changes = r.peer_up(policy)
            if key not in changes.exports:  # nothing to send: still a full set (and EoR)
                changes.exports[key] = rib.ExportDelta(full=True)
            self._apply(changes)
        elif isinstance(e, ev.SessionDown) and st is not None:
            was_up = st.state == "up"
            st.state, st.since_epoch, st.info = "start", time.time(), e.reason or "down"
            if was_up:
                st.flaps += 1
            if st.gr_time > 0 and r.counts(key)[0]:
                # RFC 4724 receiving side: keep its routes as stale for its restart time.
                self._apply(r.mark_stale(key))
                loop = asyncio.get_running_loop()
                st.stale_timer = loop.call_later(st.gr_time, self._gr_expired, key)
                log.info("bgp_peer_restarting", peer=e.neighbor, keep_seconds=st.gr_time)
            else:
                self._apply(r.peer_down(key))
        elif isinstance(e, ev.Notification):
            log.warning("bgp_notification", peer=e.neighbor, direction=e.direction,
                        code=e.code, subcode=e.subcode, data=e.data[:200])
        elif isinstance(e, ev.Shutdown):
            log.warning("exabgp_shutdown_notice")

    def _gr_expired(self, key: PeerKey) -> None:
        st = self.peers.get(key)
        if st is not None:
            st.stale_timer = None
        if self.rib is not None:
            log.info("bgp_stale_routes_expired", peer=key[0])
            self._apply(self.rib.sweep_stale(key))

    # ============================================================= apply
    def _apply(self, changes: rib.Changes) -> None:
        if not changes:
            return
        for key, delta in changes.exports.items():
            full, pending = self._export_pending.get(key, (False, {}))
            if delta.full:
                full, pending = True, {}
            for p in delta.withdraw:
                pending[p] = None
            for attrs, prefixes in delta.announce.items():
                for p in prefixes:
                    pending[p] = attrs
            self._export_pending[key] = (full, pending)
            self._export_wake.set()
        if changes.kernel_add or changes.kernel_remove:
            self._queue_kernel(changes.kernel_add, changes.kernel_remove)
        for rej in changes.rejected:
            peer = rej.peer_key[0] if isinstance(rej.peer_key, tuple) else str(rej.peer_key)
            reason = str(rej.reason)
            self.rejections[(peer, reason)] += 1
            mark = (peer, rej.prefix, reason)
            if mark not in self._logged_rejections and \
                    len(self._logged_rejections) < MAX_LOGGED_REJECTIONS:
                self._logged_rejections.add(mark)
                log.warning("route_rejected", peer=peer, prefix=rej.prefix, reason=reason)
        for key in changes.teardown:
            log.error("max_prefix_exceeded", peer=key[0], action="teardown")
            if self.speaker is not None:
                self._spawn(self._teardown(key), "teardown")

    async def _teardown(self, key: Hashable) -> None:
        with contextlib.suppress(Exception):
            await self.speaker.command(f"neighbor {key[0]} teardown 1")

    def _queue_kernel(self, add, remove) -> None:
        adds, dels, conv = self._fib_add, self._fib_del, self._fib_routes
        for kr in remove:
            prefix = kr.prefix
            adds.pop(prefix, None)
            dels[prefix] = conv.key(prefix)
        for kr in add:
            prefix = kr.prefix
            try:
                route = conv.route(kr)
            except ValueError as e:
                log.error("kernel_route_invalid", prefix=prefix, error=str(e))
                continue
            dels.pop(prefix, None)
            adds[prefix] = route
        self._fib_wake.set()

    async def _fib_pump(self) -> None:
        while True:
            await self._fib_wake.wait()
            self._fib_wake.clear()
            if not (self._fib_add or self._fib_del) or not self.fib_ready:
                continue
            adds, self._fib_add = self._fib_add, {}
            dels, self._fib_del = self._fib_del, {}
            # Keys: a withdrawal needs no Route; the syncer ignores keys it does not hold.
            await self.fib.update(adds.values(), dels.values(), wait=False)

    async def _export_pump(self) -> None:
        while True:
            await self._export_wake.wait()
            self._export_wake.clear()
            speaker = self.speaker
            if speaker is None:
                self._export_pending.clear()
                continue
            pending, self._export_pending = self._export_pending, {}
            try:
                # Every peer's changes in one flush: a route going to many peers is one
                # ExaBGP command, and no peer waits for another's acknowledgements.
                await speaker.update_exports_many(pending)
                # manual-eor: End-of-RIB only once the whole initial set is out, so a
                # restarting peer's GR helper never sweeps what we still send.
                await speaker.end_of_rib([k for k, (full, _) in pending.items() if full])
            except Exception as e:
                # The speaker re-sends the whole desired set on reconnect/restart.
                log.warning("export_failed", peers=len(pending), error=str(e))

    def _on_fib_pass(self, report) -> None:
        self.metrics.fib_sync_seconds.observe(report.seconds)

    # ======================================================== convergence
    async def _convergence(self) -> None:
        deadline = self.started + self.opts.convergence_timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                reason = "timer"
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._check_convergence.wait(), remaining)
            self._check_convergence.clear()
            if self.fib_ready and self.plan is not None and all(
                    st.eor for st in self.peers.values()):
                reason = "end-of-rib" if self.peers else "no peers"
                break
        while not self.fib_ready:  # never sweep before the first reconcile
            await asyncio.sleep(0.1)
        # Let the pump hand over what the last End-of-RIB brought before sweeping.
        await asyncio.sleep(0.05)
        self._fib_wake.set()
        await asyncio.sleep(0.05)
        await self.fib.converged()
        self.convergence_seconds = time.monotonic() - self.started
        log.info("converged", reason=reason, seconds=round(self.convergence_seconds, 3),
                 swept=self.fib.stats.swept)

    # ============================================================== views
    def is_ready(self) -> bool:
        return self.snapshot is not None and self.fib_ready

    def peer_states(self) -> list[dict]:
        out = []
        sp = self.speaker
        for key, st in sorted(self.peers.items()):
            received = accepted = advertised = 0
            if self.rib is not None and key in self.rib.peer_keys():
                received, accepted, advertised = self.rib.counts(key)
            elif sp is not None:
                advertised = len(sp.exports(key))
            out.append({
                "address": st.spec.address, "port": st.spec.port, "name": st.spec.name,
                "type": str(st.spec.peer_type), "asn": st.spec.peer_as,
                "local_as": st.spec.local_as, "passive": st.spec.passive,
                "rr_client": st.spec.rr_client, "state": st.state,
                "since": time.strftime("%H:%M:%S", time.localtime(st.since_epoch)),
                "since_epoch": st.since_epoch, "info": st.info, "flaps": st.flaps,
                "end_of_rib": st.eor, "prefixes_received": received,
                "prefixes_accepted": accepted, "prefixes_advertised": advertised,
            })
        for spec, why in self.unconfigured.values():
            out.append({
                "address": spec.address, "port": spec.port, "name": spec.name,
                "type": str(spec.peer_type), "asn": spec.peer_as, "local_as": spec.local_as,
                "passive": spec.passive, "rr_client": spec.rr_client,
                "state": "not configured", "since": "", "since_epoch": 0.0,
                "info": why, "flaps": 0, "end_of_rib": False, "prefixes_received": 0,
                "prefixes_accepted": 0, "prefixes_advertised": 0,
            })
        return out

    def rib_prefix_count(self) -> int:
        return self.rib.prefix_count() if self.rib is not None else 0

    def rib_path_count(self) -> int:
        if self.rib is None:
            return 0
        return self.rib.path_count()

    def kernel_route_counts(self) -> dict[str, int]:
        counts = {"unicast": 0, "multipath": 0, "blackhole": 0}
        for r in self.fib.desired_values():
            if r.kind.value == "blackhole":
                counts["blackhole"] += 1
            elif len(r.nexthops) > 1:
                counts["multipath"] += 1
            else:
                counts["unicast"] += 1
        return counts

    def status(self) -> dict:
        me = self.me
        return {
            "node": self.opts.node, "version": __version__,
            "as": me.asn if me else None, "router_id": me.router_id if me else None,
            "addresses": list(me.addresses) if me else [],
            "route_reflector_cluster_id": me.cluster_id if me else None,
            "ready": self.is_ready(), "converged": self.convergence_seconds is not None,
            "uptime_seconds": round(time.monotonic() - self.started, 3),
            "datastore": {
                "type": self.opts.datastore, "connected": bool(self.store.connected),
                "revision": self.snapshot.revision if self.snapshot else None,
                "config_stale": bool(self.snapshot and self.snapshot.rejected),
                "rejected": dict(self.snapshot.rejected) if self.snapshot else {},
            },
            "peers": self.peer_states(),
            "routes": {"loc_rib": self.rib_prefix_count(), "kernel": self.kernel_route_counts(),
                       "stale": len(self.fib.stale_routes),
                       "failing": len(self.fib.failing_routes),
                       "conflicts": len(self.fib.conflicting_prefixes)},
        }

    # =============================================================== http
    def _http_metrics(self):
        return 200, "text/plain; version=0.0.4; charset=utf-8", self.metrics.render()

    def _http_healthz(self):
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
