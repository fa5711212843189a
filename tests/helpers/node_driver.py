"""A synchronous driver for the node core alone (``bgpd.node.Node``), faucet's
valve_test_lib in spirit: it feeds inputs, carries out every action at once
against small models of the speaker, the FIB and the clock, and drains the
outbox after each input, so a test (or a hypothesis state machine) sees the
state a real daemon would reach once idle.

``FibModel`` keeps FibSyncer's contract (fib_sync/syncer.py): adopted routes are
stale until re-confirmed by a desired route or released by ``converged()``;
what the kernel holds is desired plus stale. It also logs every route the
kernel lost, and why, so invariants can be checked on it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from bgpd import events as ev
from bgpd import node as nd
from bgpd.peerspec import PeerSpec
from bgpd.speaker import default_peer_ref
from bgpd.translate import FibRoutes
from fib_sync import Route
from fib_sync.route import DEFAULT_METRIC, RT_TABLE_MAIN, IKey, RouteSpec, full_key, route_of
from rib.path import Path, PeerRef, Withdraw, paths_for

PeerKey = tuple[str, int]


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return 1_700_000_000.0 + self.now


@dataclass
class FibModel:
    desired: dict[str, Route] = field(default_factory=dict)
    stale: dict[str, Route] = field(default_factory=dict)
    lost: list[tuple[str, str]] = field(default_factory=list)  # (prefix, "withdrawn"|"swept")
    converged_calls: int = 0

    def kernel(self) -> dict[str, Route]:
        return {**self.stale, **self.desired}

    def set_desired(self, routes: Iterable[Route]) -> None:
        before = self.kernel()
        self.desired = {r.dst: r for r in routes}
        for p in list(self.stale):
            if p in self.desired:
                del self.stale[p]
        self._note_lost(before, "withdrawn")

    def update(self, adds: Mapping[IKey, RouteSpec], dels: Iterable[IKey]) -> None:
        """FibSyncer.update_specs's arguments (what Node.take_kernel hands over)."""
        before = self.kernel()
        for key in dels:
            self.desired.pop(full_key(key)[1], None)
        for key, spec in adds.items():
            r = route_of(key, spec)
            self.desired[r.dst] = r
            self.stale.pop(r.dst, None)
        self._note_lost(before, "withdrawn")

    def converged(self) -> int:
        self.converged_calls += 1
        before = self.kernel()
        n = len(self.stale)
        self.stale.clear()
        self._note_lost(before, "swept")
        return n

    def _note_lost(self, before: dict[str, Route], why: str) -> None:
        now = self.kernel()
        self.lost.extend((p, why) for p in before if p not in now)


class Speaker:
    """What the node's actions did to the speaker, and the PeerRefs it would tag Paths with."""

    def __init__(self) -> None:
        self.peers: dict[PeerKey, PeerSpec] = {}
        self.opens: dict[str, ev.Open] = {}
        self.exports: dict[PeerKey, dict[str, object]] = {}
        self.eor_sent: list[PeerKey] = []
        self.teardowns: list[PeerKey] = []
        self.stopped = False

    def peer_ref(self, address: str) -> PeerRef | None:
        for key, spec in self.peers.items():
            if key[0] == address:
                return default_peer_ref(spec, self.opens.get(address))
        return None


class NodeDriver:
    def __init__(self, node_name: str = "n1", adopted: Iterable[Route] = (),
                 convergence_timeout: float = 120.0, max_paths: int = 1) -> None:
        self.clock = Clock()
        self.fib = FibModel(stale={r.dst: r for r in adopted})
        self.adopted = frozenset(self.fib.stale)
        self.speakers: list[Speaker] = []
        self.timers: dict[object, float] = {}
        self.actions: list[nd.Action] = []  # everything the node asked for, in order
        self.reject_next: str | None = None  # the next SetPeers is refused with this error
        self.stopped: int | None = None
        self.ready: list[str] = []
        self.swept_at: list[tuple[str, float]] = []  # (reason, now) of each Sweep
        self.node = nd.Node(node_name, clock=self.clock, read_password=lambda n, k: None,
                            peer_ref=self._peer_ref, route_table=RT_TABLE_MAIN,
                            route_metric=DEFAULT_METRIC, max_paths=max_paths,
                            convergence_timeout=convergence_timeout)
        self.routes = FibRoutes(RT_TABLE_MAIN, DEFAULT_METRIC)
        self.run(self.node.start())

    # ------------------------------------------------------------ feeding
    @property
    def speaker(self) -> Speaker:
        assert self.speakers, "no speaker started"
        return self.speakers[-1]

    def _peer_ref(self, address: str) -> PeerRef | None:
        if not self.speakers or self.speaker.stopped:
            return None
        return self.speaker.peer_ref(address)

    def run(self, actions) -> None:
        for a in actions:
            self.actions.append(a)
            self._do(a)
        self._drain()

    def _do(self, a) -> None:
        node = self.node
        if isinstance(a, nd.ArmTimer):
            self.timers[a.name] = a.at
        elif isinstance(a, nd.CancelTimer):
            self.timers.pop(a.name, None)
        elif isinstance(a, nd.FirstFibPass):
            self.fib.set_desired(a.routes)
            self.run(node.fib_synced(stale=len(self.fib.stale)))
        elif isinstance(a, nd.StartSpeaker):
            self.speakers.append(Speaker())
        elif isinstance(a, nd.StopSpeaker):
            self.speaker.stopped = True
        elif isinstance(a, nd.SetPeers):
            if self.reject_next is not None:
                why, self.reject_next = self.reject_next, None
                self.run(node.peers_rejected(why))
            else:
                self.speaker.peers = {s.key: s for s in a.specs}
                self.run(node.peers_accepted(a.specs))
        elif isinstance(a, nd.Teardown):
            self.speaker.teardowns.append(a.key)
        elif isinstance(a, nd.Sweep):
            self.swept_at.append((a.reason, self.clock.now))
            adds, dels = node.take_kernel()
            self.fib.update(adds, dels)
            n = self.fib.converged()
            self.run(node.swept(n))
        elif isinstance(a, nd.Ready):
            self.ready.append(a.status)
        elif isinstance(a, nd.Stop):
            self.stopped = a.exit_code
        elif isinstance(a, nd.ResyncFib):
            pass
        else:  # pragma: no cover
            raise TypeError(a)

    def _drain(self) -> None:
        adds, dels = self.node.take_kernel()
        if adds or dels:
            self.fib.update(adds, dels)
        out = self.node.take_exports()
        if not self.speakers:
            return
        for key, (full, routes) in out.changes.items():
            desired = self.speaker.exports.setdefault(key, {})
            if full:
                desired.clear()
            for p, attrs in routes.items():
                if attrs is None:
                    desired.pop(p, None)
                else:
                    desired[p] = attrs
        self.speaker.eor_sent.extend(out.end_of_rib)

    # ------------------------------------------------------------- inputs
    def snapshot(self, snap) -> None:
        self.run(self.node.snapshot_received(snap))

    def event(self, e: ev.Event) -> None:
        self.run(self.node.speaker_event(e))

    def advance(self, seconds: float) -> None:
        self.clock.now += seconds
        for name, at in sorted(self.timers.items(), key=lambda t: t[1]):
            if at <= self.clock.now and self.timers.get(name) == at:
                del self.timers[name]
                self.run(self.node.timer_fired(name, at))

    def signal(self, name: str) -> None:
        self.run(self.node.signal(name))

    # ---------------------------------------------------- peer behaviours
    def session_up(self, address: str, gr_time: int = 0) -> None:
        spec = next(s for k, s in self.speaker.peers.items() if k[0] == address)
        gr = ev.GracefulRestartCap(gr_time, False, (("ipv4", "unicast"),), ()) if gr_time else None
        op = ev.Open(address, "receive", spec.peer_as, 90, address, (("ipv4", "unicast"),), gr,
                     True)
        self.speaker.opens[address] = op
        self.event(op)
        self.event(ev.SessionUp(address, spec.local_address, spec.peer_as, spec.local_as))

    def paths(self, address: str, prefixes: Iterable[str]) -> list[Path]:
        ref = self.speaker.peer_ref(address)
        assert ref is not None
        return paths_for(list(prefixes), Path(prefix="0.0.0.0/0", next_hop=address, peer=ref))

    def announce(self, address: str, prefixes: Iterable[str]) -> None:
        self.event(ev.Update(address, self.paths(address, prefixes), []))

    def withdraw(self, address: str, prefixes: Iterable[str]) -> None:
        ref = self.speaker.peer_ref(address)
        assert ref is not None
        self.event(ev.Update(address, [], [Withdraw(p, ref) for p in prefixes]))

    def end_of_rib(self, address: str) -> None:
        self.event(ev.EndOfRib(address, "ipv4", "unicast"))

    def session_down(self, address: str, reason: str = "down") -> None:
        self.event(ev.SessionDown(address, reason))

    # -------------------------------------------------------------- views
    def intent(self) -> dict[str, Route]:
        """What the RIB says the kernel should hold."""
        return {p: self.routes.route(kr) for p, kr in self.node.kernel_intent().items()}
