"""The node core under random event sequences (hypothesis RuleBasedStateMachine).

Peers come up (with or without graceful restart, RFC 4724), announce, withdraw,
send End-of-RIB and drop; the configuration changes; time passes; the daemon
itself restarts and adopts the kernel it left; garbage arrives. After every
step (tests/helpers/node_driver.py carries out the node's actions and drains
its outbox) the invariants below must hold:

- the kernel's desired routes are exactly what the RIB says (once the first
  FIB pass is done), and nothing stale is left after convergence;
- nothing is swept before convergence: a sweep happens only once every planned
  peer has sent End-of-RIB since it came up, or the convergence timer ran out,
  and before it every adopted route the RIB never wanted is still in the kernel;
- no route of a live peer is withdrawn from the kernel by a restart: a graceful
  restart of a peer leaves the kernel as it was, and a daemon restart loses no
  route the kernel held.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from bgpd import events as ev
from fib_sync import NextHop, Route, RouteKind
from fib_sync.route import DEFAULT_METRIC, RT_TABLE_MAIN
from tests.helpers.cluster import node, pool, snapshot
from tests.helpers.node_driver import NodeDriver

N1, N2, N3 = "10.0.0.1", "10.0.0.2", "10.0.0.3"
OWN = "10.244.1.0/26"
PREFIXES = [f"10.244.{i}.0/26" for i in range(20, 26)]
TIMEOUT = 120.0


def adopted_route(prefix: str) -> Route:
    return Route(prefix, RouteKind.UNICAST, nexthops=(NextHop(N2),)).with_defaults(
        RT_TABLE_MAIN, DEFAULT_METRIC)


class NodeMachine(RuleBasedStateMachine):
    # ------------------------------------------------------------ set-up
    @initialize(adopted=st.sets(st.sampled_from(PREFIXES)))
    def start(self, adopted) -> None:
        self.with_n3 = True
        self.pool_disabled = False
        self.revision = 0
        self._boot([adopted_route(p) for p in sorted(adopted)])

    def _boot(self, adopted) -> None:
        self.d = NodeDriver(adopted=adopted, convergence_timeout=TIMEOUT)
        self.started = self.d.clock.now
        self.up: dict[str, int] = {}  # address -> graceful-restart time
        self.restarting: dict[str, float] = {}  # address -> end of its restart window
        self.eor: set[str] = set()  # End-of-RIB since the session came up
        self.ever_intent: set[str] = set()
        self.sweeps_checked = 0
        self._publish()

    def _snap(self):
        self.revision += 1
        nodes = [node("n1", N1), node("n2", N2)] + ([node("n3", N3)] if self.with_n3 else [])
        return snapshot(*nodes, pool("default", "10.244.0.0/16", disabled=self.pool_disabled),
                        blocks={"n1": [OWN]}, revision=self.revision)

    def _publish(self) -> None:
        self.d.snapshot(self._snap())

    def planned(self) -> set[str]:
        return {N2, N3} if self.with_n3 else {N2}

    # ------------------------------------------------------------- rules
    @rule(with_n3=st.booleans(), pool_disabled=st.booleans())
    def configure(self, with_n3, pool_disabled) -> None:
        if not with_n3:
            self.up.pop(N3, None)
            self.restarting.pop(N3, None)
            self.eor.discard(N3)
        self.with_n3, self.pool_disabled = with_n3, pool_disabled
        self._publish()

    @rule(peer=st.sampled_from([N2, N3]), gr_time=st.sampled_from([0, 60]))
    def session_up(self, peer, gr_time) -> None:
        if peer not in self.planned() or peer in self.up:
            return
        self.up[peer] = gr_time
        self.restarting.pop(peer, None)
        self.eor.discard(peer)
        self.d.session_up(peer, gr_time=gr_time)

    @rule(peer=st.sampled_from([N2, N3]), prefixes=st.sets(st.sampled_from(PREFIXES), min_size=1))
    def announce(self, peer, prefixes) -> None:
        if peer in self.up:
            self.d.announce(peer, sorted(prefixes))

    @rule(peer=st.sampled_from([N2, N3]), prefixes=st.sets(st.sampled_from(PREFIXES), min_size=1))
    def withdraw(self, peer, prefixes) -> None:
        if peer in self.up:
            self.d.withdraw(peer, sorted(prefixes))

    @rule(peer=st.sampled_from([N2, N3]))
    def end_of_rib(self, peer) -> None:
        if peer in self.up:
            self.eor.add(peer)
            self.d.end_of_rib(peer)

    @rule(peer=st.sampled_from([N2, N3]))
    def session_down(self, peer) -> None:
        if peer not in self.up:
            return
        gr = self.up.pop(peer)
        before = set(self.d.fib.kernel())
        self.d.session_down(peer)
        if gr:
            self.restarting[peer] = self.d.clock.now + gr
            # A peer restarting with graceful restart: forwarding carries on unchanged.
            assert set(self.d.fib.kernel()) == before

    @rule(peer=st.sampled_from([N2, N3]))
    def connect_fails(self, peer) -> None:
        """A connection attempt to a peer that is not up fails (the speaker says "down")."""
        if peer not in self.up:
            before = set(self.d.fib.kernel())
            self.d.session_down(peer, "closing connection")
            assert set(self.d.fib.kernel()) == before

    @rule(seconds=st.sampled_from([1, 30, 61, 130]))
    def time_passes(self, seconds) -> None:
        self.d.advance(seconds)
        rib = self.d.node.rib
        for peer, deadline in list(self.restarting.items()):
            if self.d.clock.now >= deadline and peer not in self.up and rib is not None:
                # Its restart time is over: nothing of it may be left (RFC 4724 §4.2).
                assert rib.counts((peer, 179))[0] == 0, peer
                del self.restarting[peer]

    @rule()
    def daemon_restarts(self) -> None:
        """kill -9 and start again: the new daemon adopts what the kernel holds."""
        before = self.d.fib.kernel()
        self._boot(list(before.values()))
        assert set(before) <= set(self.d.fib.kernel()), "a restart lost kernel routes"

    @rule()
    def garbage(self) -> None:
        self.d.event(ev.Garbage("{", "not JSON"))
        self.d.event(ev.EndOfRib("10.9.9.9", "ipv4", "unicast"))  # nobody we know

    @rule()
    def sighup(self) -> None:
        self.d.signal("SIGHUP")

    # -------------------------------------------------------- invariants
    @invariant()
    def kernel_intent_is_what_the_rib_says(self) -> None:
        node = self.d.node
        if not node.fib_ready:
            return
        intent = self.d.intent()
        assert self.d.fib.desired == intent
        self.ever_intent |= set(intent)
        if node.convergence_seconds is not None:
            assert self.d.fib.stale == {}, "stale routes left after convergence"

    @invariant()
    def nothing_is_swept_before_convergence(self) -> None:
        for reason, now in self.d.swept_at[self.sweeps_checked:]:
            timer = now - self.started >= TIMEOUT
            by_eor = self.planned() <= self.eor
            assert (reason == "timer" and timer) or (reason != "timer" and by_eor), (
                reason, now - self.started, self.planned(), self.eor)
            self.sweeps_checked += 1
        if not self.d.swept_at:
            kernel = self.d.fib.kernel()
            never_wanted = self.d.adopted - self.ever_intent
            assert never_wanted <= set(kernel), never_wanted - set(kernel)

    @invariant()
    def own_block_is_always_in_the_kernel(self) -> None:
        if self.d.node.fib_ready:
            assert OWN in self.d.fib.kernel()


NodeMachine.TestCase.settings = settings(
    max_examples=60, stateful_step_count=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
TestNodeMachine = NodeMachine.TestCase
