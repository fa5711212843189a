"""bgpd.node: the node core — every decision the daemon makes, and no I/O.

``Node`` is given inputs and returns actions; it never awaits, sleeps, reads a
clock of its own or touches a socket (faucet's ``valve.py`` is the model: a
controller handed ``now`` that returns messages). ``bgpd.daemon.Daemon`` is the
I/O shell around it: it owns the tasks, feeds every input in, one at a time,
and carries out the actions in order. Tests drive the same object in-process
(tests/unit/test_node*.py) with a fake speaker, kernel, datastore and clock.

Inputs (methods)                          Actions out (records below)
  start()                                   ArmTimer / CancelTimer
  snapshot_received(Snapshot)               FirstFibPass(routes): the first reconcile
  fib_synced(stale)  (first pass done)      Ready(status): sd_notify READY, /readyz
  speaker_event(bgpd.events.*)              StartSpeaker / StopSpeaker / SetPeers(specs)
  peers_accepted(specs) / peers_rejected()  Teardown(key): max-prefix
  timer_fired(name, at)                     Sweep(reason): convergence, delete stale
  swept(count)                              ResyncFib, Stop(exit_code)
  signal(name)
  dataplane_changed(ClusterRoutes)          (kernel changes in the outbox)

Two outputs are not actions but an outbox the shell's pumps drain whenever the
loop gets to them (``take_exports``, ``take_kernel``): exports per peer and
kernel route changes per prefix. A burst of UPDATEs piles up there, coalesced
(the last word per prefix wins), so 100k routes are a few fib_sync updates and
a few hundred speaker commands, not 100k of each.

State owned here, and only here: the planned sessions and their status
(``peers``: up/down, since, flaps, End-of-RIB, graceful-restart time), the RIB
(``rib``: Adj-RIBs, Loc-RIB, exports — the pure ``rib.Rib``), the timers, the
convergence state, readiness, the last snapshot and the rejection counters.
The speaker keeps only what its wire needs (its config, Paths' PeerRefs,
acknowledged exports); the FibSyncer keeps what the kernel should hold.

Start-up order (each step waits for the one before):
  kernel routes adopted as stale (shell, before ``start``) -> first snapshot
  (config, RIB with this node's own routes) -> first FIB pass with the whole
  RIB intent (ready) -> speaker and sessions -> End-of-RIB from every planned
  peer, or the convergence timer -> sweep of the adopted routes nobody
  re-confirmed. See docs/architecture.md ("Start-up and convergence").
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import structlog

import rib
from bgpd import events as ev
from bgpd.dataplane import DataplaneSettings, cluster_routes_for
from bgpd.peers import LocalNode, PasswordReader, PeerPlan, plan_peers
from bgpd.peerspec import PeerSpec
from bgpd.translate import FibRoutes, peer_policy, reachable_by_routes, rib_config
from rib.path import PeerRef

log = structlog.get_logger(__name__)

PeerKey = tuple[str, int]
MAX_LOGGED_REJECTIONS = 10_000  # distinct (peer, prefix, reason) logged once each
MAX_LOGGED_PROBLEMS = 1000
CONVERGENCE_TIMER = "convergence"


def gr_timer(key: PeerKey) -> tuple[str, PeerKey]:
    """The name of a restarting peer's stale-routes timer (RFC 4724 §4.2)."""
    return ("graceful-restart", key)


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def time(self) -> float: ...


# =================================================================== actions


@dataclass(frozen=True, slots=True)
class ArmTimer:
    """Call ``timer_fired(name, at)`` at monotonic time ``at`` (replaces a timer of that name)."""

    name: Hashable
    at: float


@dataclass(frozen=True, slots=True)
class CancelTimer:
    name: Hashable


@dataclass(frozen=True, slots=True)
class FirstFibPass:
    """Replace the FIB's whole desired set with ``routes`` and wait for the pass;
    then call ``fib_synced``. Adopted routes not in ``routes`` stay (stale)."""

    routes: tuple


@dataclass(frozen=True, slots=True)
class Ready:
    status: str


@dataclass(frozen=True, slots=True)
class StartSpeaker:
    """Create and start the speaker; its events go to ``speaker_event``."""

    router_id: str
    addresses: tuple[str, ...]
    listen_port: int


@dataclass(frozen=True, slots=True)
class StopSpeaker:
    """Stop the speaker the graceful-restart way (peers keep our routes); no kernel change."""


@dataclass(frozen=True, slots=True)
class SetPeers:
    """``speaker.set_peers(specs)``; then ``peers_accepted(specs, left_out)`` with the
    sessions it could not configure, or ``peers_rejected(error)`` on
    ``bgpd.speaker.PeerConfigError`` (the node itself cannot be configured)."""

    specs: tuple[PeerSpec, ...]


@dataclass(frozen=True, slots=True)
class Teardown:
    key: PeerKey


@dataclass(frozen=True, slots=True)
class Sweep:
    """Converged: hand the FIB every pending kernel change (``take_kernel``), then
    ``converged()`` (delete adopted routes nobody re-confirmed); then ``swept(n)``."""

    reason: str


@dataclass(frozen=True, slots=True)
class ResyncFib:
    """Re-read the kernel and repair (SIGHUP)."""


@dataclass(frozen=True, slots=True)
class Stop:
    exit_code: int


Action = (ArmTimer | CancelTimer | FirstFibPass | Ready | StartSpeaker | StopSpeaker | SetPeers
          | Teardown | Sweep | ResyncFib | Stop)
NO_ACTIONS: tuple[Action, ...] = ()


@dataclass(slots=True)
class Exports:
    """What to send peers now. ``changes``: peer -> (full, {prefix: attributes, or None
    to withdraw}), ``full`` meaning the peer's whole export set (session start) — the
    shape ``Speaker.update_exports_many`` takes. ``end_of_rib``: peers to send
    End-of-RIB once the changes are out, so a restarting peer never sweeps what is
    still coming."""

    changes: dict[PeerKey, tuple[bool, dict[str, object]]]
    end_of_rib: list[PeerKey]


@dataclass
class PeerStatus:
    """One planned session as /status, metrics and convergence see it. Owned by ``Node``."""

    spec: PeerSpec
    state: str = "start"  # up | start (configured, not Established)
    since_epoch: float = 0.0
    info: str = "Connect"
    flaps: int = 0
    eor: bool = False  # End-of-RIB received since the session came up
    gr_time: int = 0  # the peer's graceful-restart time (from its OPEN), 0 = none
    policy: rib.PeerPolicy | None = field(default=None, repr=False)  # while up


# ====================================================================== core


class Node:
    """The node's decisions. See the module docstring; every method is synchronous."""

    def __init__(self, node_name: str, *, clock: Clock, read_password: PasswordReader,
                 peer_ref: Callable[[str], PeerRef | None], route_table: int,
                 route_metric: int, max_paths: int = 1,
                 convergence_timeout: float = 120.0,
                 dataplane: DataplaneSettings | None = None) -> None:
        self.node_name = node_name
        self.dataplane = dataplane or DataplaneSettings()
        # The data plane's last word on cluster routes (``dataplane_changed``); None
        # until it speaks: then they are planned from the snapshot alone.
        self.cluster_routes: rib.ClusterRoutes | None = None
        self.clock = clock
        self.read_password = read_password
        self.peer_ref = peer_ref  # the speaker's PeerRef for a neighbor (Paths carry it)
        self.max_paths = max_paths
        self.convergence_timeout = convergence_timeout
        self.started = clock.monotonic()

        self.snapshot = None
        self.plan: PeerPlan | None = None
        self.me: LocalNode | None = None
        self.rib: rib.Rib | None = None
        self.peers: dict[PeerKey, PeerStatus] = {}
        self._by_address: dict[str, PeerKey] = {}
        # Sessions Calico would configure that podbgp does not run, with the reason
        # (plan.rejected, or the speaker could not configure them): one bad peer is one
        # bad peer. Shown in /status and `bgpctl node status` as "not configured".
        self.unconfigured: dict[PeerKey, tuple[PeerSpec, str]] = {}
        self.peers_not_configured_total = 0
        self._reachable: dict[str, rib.KernelRoute] = {}  # BGPPeer reachableBy routes
        self.rejections: Counter[tuple[str, str]] = Counter()
        self._logged_rejections: set[tuple] = set()
        self._logged_problems: set[str] = set()
        self._last_stale_keys: frozenset[str] = frozenset()

        self.speaker_running = False  # StartSpeaker sent, no StopSpeaker since
        self._peers_pending = False  # SetPeers sent, no answer yet
        self.fib_started = False  # FirstFibPass sent
        self.fib_ready = False  # ... and its pass done
        self._first_pass_routes = 0
        self._timer_expired = False  # the convergence timer fired
        self.converging: str | None = None  # Sweep sent (its reason)
        self.convergence_seconds: float | None = None  # start -> sweep done
        self._timers: dict[Hashable, float] = {}

        # The outbox (see the module docstring).
        self._export_pending: dict[PeerKey, tuple[bool, dict[str, object]]] = {}
        self._fib_routes = FibRoutes(route_table, route_metric)
        # By fib_sync internal key (FibRoutes.ikey: the prefix itself by default): what
        # to install (the route's shared fib_sync RouteSpec), what to remove.
        self._fib_add: dict[object, object] = {}
        self._fib_del: dict[object, None] = {}

    # ================================================================ inputs
    def start(self) -> list[Action]:
        """The kernel's routes are adopted: arm the convergence timer."""
        return [self._arm(CONVERGENCE_TIMER, self.started + self.convergence_timeout)]

    def snapshot_received(self, snap) -> list[Action]:
        """A datastore snapshot (the whole configuration, last good version of each key)."""
        acts: list[Action] = []
        self.snapshot = snap
        stale = frozenset(snap.rejected)
        if stale != self._last_stale_keys:
            for key in sorted(stale - self._last_stale_keys):
                log.error("config_rejected", key=key, reason=snap.rejected[key],
                          note="the last good version stays in use")
            if not stale:
                log.info("config_stale_cleared")
            self._last_stale_keys = stale
        plan = plan_peers(snap, self.node_name, self.read_password)
        for p in plan.problems:
            self._problem(p)
        me = plan.node
        if me is None:
            if self.me is None:
                self._problem(f"node {self.node_name!r}: no Node resource with a BGP address "
                              "yet; advertising nothing, keeping kernel routes")
            # A Node that vanished keeps the last plan: never drop routes on a hiccup.
        else:
            if self.me is not None and (me.addresses, me.router_id, me.asn) != (
                    self.me.addresses, self.me.router_id, self.me.asn):
                log.warning("node_identity_changed", old=self.me.addresses, new=me.addresses,
                            asn=me.asn)
                acts += self._stop_bgp()
            if self.rib is None:
                self._start_rib(snap, me)
            else:
                acts += self._apply(self.rib.set_config(self._rib_config(snap, me)))
            self.me = me
            self.plan = plan
            if self.speaker_running:
                acts.append(self._set_peers())
            elif self.fib_ready:
                acts += self._start_speaker()
        if not self.fib_started:
            acts.append(self._first_fib_pass())
        acts += self._check_convergence()
        return acts

    def fib_synced(self, stale: int) -> list[Action]:
        """The first FIB pass is done (``stale``: adopted routes still waiting)."""
        acts: list[Action] = []
        if not self.fib_ready:
            self.fib_ready = True
            log.info("fib_reconciled", routes=self._first_pass_routes, stale=stale)
            acts.append(Ready("running"))
        if self.rib is not None and not self.speaker_running:
            acts += self._start_speaker()
        acts += self._check_convergence()
        return acts

    def peers_accepted(self, specs: Sequence[PeerSpec],
                       unconfigured: Sequence[tuple[PeerSpec, str]] = ()) -> list[Action]:
        """The speaker runs ``specs`` now, less ``unconfigured`` (the ones it could not
        configure, each with the reason; a running one among them keeps its old settings)."""
        self._peers_pending = False
        acts: list[Action] = []
        r = self.rib
        if r is None:
            return acts
        planned_out = self.plan.rejected if self.plan is not None else ()
        self._set_unconfigured([*planned_out, *unconfigured])
        self._set_reachable_by(reachable_by_routes(specs))
        bad = {spec.key for spec, _ in unconfigured}
        wanted = {s.key: s for s in specs if s.key not in bad}
        for key in [k for k in self.peers if k not in wanted and k not in bad]:
            self.peers.pop(key)
            self._by_address.pop(key[0], None)
            self._export_pending.pop(key, None)
            acts += self._cancel(gr_timer(key))
            acts += self._apply(r.peer_down(key))
            log.info("peer_removed", peer=key[0])
        for key, spec in wanted.items():
            st = self.peers.get(key)
            if st is None:
                self.peers[key] = PeerStatus(spec=spec, since_epoch=self.clock.time())
                self._by_address[key[0]] = key
                continue
            st.spec = spec
            if st.state == "up":
                ref = self.peer_ref(spec.address)
                if ref is not None:
                    policy = self._policy(spec, ref)
                    if policy != st.policy:
                        st.policy = policy
                        acts += self._apply(r.set_peer_policy(policy))
        acts += self._check_convergence()
        return acts

    def _set_reachable_by(self, routes: dict[str, rib.KernelRoute]) -> None:
        """BGPPeer reachableBy: an exact route to each such peer, podbgp-owned, added and
        removed with the planned peers."""
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

    def peers_rejected(self, error: str) -> list[Action]:
        """The speaker refused the planned sessions; it runs the previous ones still."""
        self._peers_pending = False
        log.error("peers_rejected", error=error, note="keeping the running sessions")
        return self._check_convergence()

    def speaker_event(self, event: ev.Event) -> Sequence[Action]:
        """One event from the speaker. A bad one is logged with its traceback and dropped:
        it must not take the node down."""
        try:
            return self._on_event(event)
        except Exception:
            log.exception("event_failed", event_type=type(event).__name__)
            return NO_ACTIONS

    def timer_fired(self, name: Hashable, at: float) -> list[Action]:
        """A timer armed for ``at`` fired (ignored if cancelled or re-armed since)."""
        if self._timers.get(name) != at:
            return []
        del self._timers[name]
        if name == CONVERGENCE_TIMER:
            self._timer_expired = True
            return self._check_convergence()
        key = name[1]  # type: ignore[index]
        r = self.rib
        if r is None or key not in r.peer_keys():
            return []
        log.info("bgp_stale_routes_expired", peer=key[0])
        return self._apply(r.sweep_stale(key))

    def dataplane_changed(self, cluster_routes: rib.ClusterRoutes) -> list[Action]:
        """The data plane (tunnel devices, VTEPs) changes which remote blocks this
        node can program and how (bgpd.dataplane_io): re-derive the kernel intent."""
        self.cluster_routes = cluster_routes
        if self.rib is None or self.snapshot is None or self.me is None:
            return []
        return self._apply(self.rib.set_config(self._rib_config(self.snapshot, self.me)))

    def swept(self, swept: int) -> list[Action]:
        """The sweep after convergence is done (``swept``: routes the FIB deleted)."""
        self.convergence_seconds = self.clock.monotonic() - self.started
        log.info("converged", reason=self.converging, seconds=round(self.convergence_seconds, 3),
                 swept=swept)
        return []

    def signal(self, name: str) -> list[Action]:
        """SIGTERM/SIGINT: stop (sessions the graceful-restart way, kernel untouched).
        SIGHUP: re-plan from the last snapshot (re-reads password files), resync the FIB."""
        if name == "SIGHUP":
            log.info("reload_requested")
            acts: list[Action] = []
            if self.snapshot is not None:
                self._logged_problems.clear()
                acts += self.snapshot_received(self.snapshot)
            acts.append(ResyncFib())
            return acts
        log.info("bgpd_stopping", signal=name)
        return [Stop(0)]

    # ================================================================ outbox
    @property
    def exports_pending(self) -> bool:
        return bool(self._export_pending)

    @property
    def kernel_pending(self) -> bool:
        return self.fib_ready and bool(self._fib_add or self._fib_del)

    def take_exports(self) -> Exports:
        """Everything to send to peers now (the pending map is handed over, not copied)."""
        pending, self._export_pending = self._export_pending, {}
        return Exports(pending, [k for k, (full, _) in pending.items() if full])

    def take_kernel(self) -> tuple[dict, list]:
        """({fib internal key: RouteSpec} to install or replace, [fib internal keys] to
        remove): FibSyncer.update_specs's arguments, handed over, not copied — none
        before the first FIB pass, which takes the RIB's whole intent instead."""
        if not self.fib_ready or not (self._fib_add or self._fib_del):
            return {}, []
        adds, self._fib_add = self._fib_add, {}
        dels, self._fib_del = self._fib_del, {}
        # Keys: a withdrawal needs no route; the syncer ignores keys it does not hold.
        return adds, list(dels)

    # ================================================================= views
    def is_ready(self) -> bool:
        return self.snapshot is not None and self.fib_ready

    def kernel_intent(self) -> dict[str, rib.KernelRoute]:
        """Everything the kernel should hold: the RIB's routes and the reachableBy routes."""
        out = dict(self._reachable)
        if self.rib is not None:
            out.update(self.rib.desired_routes())
        return out

    def rib_prefix_count(self) -> int:
        return self.rib.prefix_count() if self.rib is not None else 0

    def rib_path_count(self) -> int:
        return self.rib.path_count() if self.rib is not None else 0

    def peer_states(self) -> list[dict]:
        out = []
        r = self.rib
        for key, st in sorted(self.peers.items()):
            received, accepted, advertised = r.counts(key) if r is not None else (0, 0, 0)
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

    # ============================================================= internals
    def _problem(self, text: str, **kw) -> None:
        if text not in self._logged_problems:
            if len(self._logged_problems) > MAX_LOGGED_PROBLEMS:
                self._logged_problems.clear()
            self._logged_problems.add(text)
            log.warning("config_problem", problem=text, **kw)

    def _arm(self, name: Hashable, at: float) -> ArmTimer:
        self._timers[name] = at
        return ArmTimer(name, at)

    def _cancel(self, name: Hashable) -> list[Action]:
        if self._timers.pop(name, None) is None:
            return []
        return [CancelTimer(name)]

    def _rib_config(self, snap, me: LocalNode) -> rib.RibConfig:
        cluster = cluster_routes_for(snap, self.node_name, self.dataplane, self.cluster_routes)
        return rib_config(snap, me, max_paths=self.max_paths, cluster_routes=cluster)

    def _policy(self, spec: PeerSpec, ref: PeerRef) -> rib.PeerPolicy:
        policy, problems = peer_policy(spec, ref, self.snapshot)
        for p in problems:
            self._problem(p, peer=spec.address)
        return policy

    def _start_rib(self, snap, me: LocalNode) -> None:
        self.rib = rib.Rib(self._rib_config(snap, me), record_best=False)  # nothing reads them
        if self.fib_started:
            # Originated routes (own blocks as blackholes...) of a fresh table; before
            # the first pass they go with it instead.
            self._queue_kernel(self.rib.desired_routes().values(), ())

    def _start_speaker(self) -> list[Action]:
        me, snap = self.me, self.snapshot
        assert me is not None and snap is not None
        self.speaker_running = True
        port = snap.effective_bgp_config(me.name).listen_port or 179
        log.info("bgp_started", router_id=me.router_id, asn=me.asn, addresses=me.addresses,
                 cluster_id=me.cluster_id)
        return [StartSpeaker(me.router_id, tuple(me.addresses), port), self._set_peers()]

    def _set_peers(self) -> SetPeers:
        assert self.plan is not None
        self._peers_pending = True
        return SetPeers(tuple(self.plan.peers))

    def _stop_bgp(self) -> list[Action]:
        """This node's identity changed: a new speaker and RIB. Kernel routes stay; the
        new RIB re-confirms them."""
        acts: list[Action] = []
        for key in self.peers:
            acts += self._cancel(gr_timer(key))
        if self.speaker_running:
            acts.append(StopSpeaker())
        self.speaker_running = False
        self._peers_pending = False
        self.unconfigured = {}
        self.peers.clear()
        self._by_address.clear()
        self._export_pending.clear()
        self.rib = None
        return acts

    def _first_fib_pass(self) -> FirstFibPass:
        """The first reconcile: desired = what the RIB wants now; adopted stale routes
        stay until convergence. Readiness waits for it."""
        self.fib_started = True
        desired = []
        # `is not None`, never `if self.rib`: a Rib's len() is its path count, 0 before
        # any peer sent routes, and this node's own blocks must still go in.
        if self.rib is not None:
            for kr in self.kernel_intent().values():
                try:
                    desired.append(self._fib_routes.from_rib(kr))
                except ValueError as e:
                    log.error("kernel_route_invalid", prefix=kr.prefix, error=str(e))
        self._fib_add.clear()
        self._fib_del.clear()
        self._first_pass_routes = len(desired)
        return FirstFibPass(tuple(desired))

    def _converged_by_eor(self) -> bool:
        """Every planned peer sent End-of-RIB since it came up (and the RIB agrees)."""
        return (self.plan is not None and self.rib is not None and not self._peers_pending
                and all(st.eor for st in self.peers.values()) and self.rib.all_end_of_rib())

    def _check_convergence(self) -> list[Action]:
        if self.converging is not None or not self.fib_ready:
            return []  # never sweep before the first reconcile
        if self._converged_by_eor():
            reason = "end-of-rib" if self.peers else "no peers"
        elif self._timer_expired:
            reason = "timer"
        else:
            return []
        self.converging = reason
        return [*self._cancel(CONVERGENCE_TIMER), Sweep(reason)]

    # ---------------------------------------------------------------- events
    def _on_event(self, e: ev.Event) -> Sequence[Action]:
        r = self.rib
        if r is None:
            return NO_ACTIONS
        t = type(e)
        if t is ev.Update:
            key = self._by_address.get(e.neighbor)  # type: ignore[union-attr]
            if key is None:
                return NO_ACTIONS
            return self._apply(r.update(key, e.announced, e.withdrawn))  # type: ignore[union-attr]
        key = self._by_address.get(getattr(e, "neighbor", ""))
        st = self.peers.get(key) if key is not None else None
        if st is None or key is None:
            if t is ev.Notification:
                self._log_notification(e)  # type: ignore[arg-type]
            return NO_ACTIONS
        if t is ev.EndOfRib:
            acts = self._apply(r.end_of_rib(key))
            if not st.eor:
                st.eor = True
                log.info("bgp_end_of_rib", peer=e.neighbor, afi=e.afi)  # type: ignore[union-attr]
                acts += self._check_convergence()
            return acts
        if t is ev.Open:
            if e.direction == "receive":  # type: ignore[union-attr]
                gr = e.graceful_restart  # type: ignore[union-attr]
                st.gr_time = gr.time if gr else 0
            return NO_ACTIONS
        if t is ev.SessionUp:
            ref = self.peer_ref(e.neighbor)  # type: ignore[union-attr]
            if ref is None:
                return NO_ACTIONS
            acts = self._cancel(gr_timer(key))
            st.state, st.since_epoch, st.info, st.eor = "up", self.clock.time(), "Established", \
                False
            st.policy = self._policy(st.spec, ref)
            changes = r.peer_up(st.policy)
            if key not in changes.exports:  # nothing to send: still a full set (and EoR)
                changes.exports[key] = rib.ExportDelta(full=True)
            return acts + self._apply(changes)
        if t is ev.SessionDown:
            was_up = st.state == "up"
            st.state, st.since_epoch, st.info = "start", self.clock.time(), \
                e.reason or "down"  # type: ignore[union-attr]
            if not was_up:
                # A connection attempt that failed (the speaker reports each one): the
                # peer did not come back, so a restart window running stays as it is.
                return NO_ACTIONS
            st.policy = None
            st.flaps += 1
            if st.gr_time > 0 and r.counts(key)[0]:
                # RFC 4724 §4.2 receiving side: keep its routes as stale for its restart time.
                acts = self._apply(r.mark_stale(key))
                acts.append(self._arm(gr_timer(key), self.clock.monotonic() + st.gr_time))
                log.info("bgp_peer_restarting", peer=key[0], keep_seconds=st.gr_time)
                return acts
            return self._apply(r.peer_down(key))
        if t is ev.Notification:
            self._log_notification(e)  # type: ignore[arg-type]
        return NO_ACTIONS

    @staticmethod
    def _log_notification(e: ev.Notification) -> None:
        log.warning("bgp_notification", peer=e.neighbor, direction=e.direction,
                    code=e.code, subcode=e.subcode, data=e.data[:200])

    # ----------------------------------------------------------------- apply
    def _apply(self, changes: rib.Changes) -> list[Action]:
        """Move one RIB result into the outbox; max-prefix teardowns become actions."""
        acts: list[Action] = []
        if not changes:
            return acts
        pending_all = self._export_pending
        for key, delta in changes.exports.items():
            full, pending = pending_all.get(key, (False, {}))
            if delta.full:
                full, pending = True, {}
            for p in delta.withdraw:
                pending[p] = None
            for attrs, prefixes in delta.announce.items():
                for p in prefixes:
                    pending[p] = attrs
            pending_all[key] = (full, pending)
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
            if self.speaker_running:
                acts.append(Teardown(key))
        return acts

    def _queue_kernel(self, add, remove) -> None:
        if not self.fib_started:
            return  # the first pass takes the RIB's whole intent
        adds, dels, conv = self._fib_add, self._fib_del, self._fib_routes
        spec, ikey = conv.spec, conv.ikey
        for kr in remove:
            key = ikey(kr.prefix)
            adds.pop(key, None)
            dels[key] = None
        for kr in add:
            prefix = kr.prefix
            try:
                s = spec(kr)
            except ValueError as e:
                log.error("kernel_route_invalid", prefix=prefix, error=str(e))
                continue
            key = ikey(prefix)
            dels.pop(key, None)
            adds[key] = s
