"""The daemon's whole lifecycle in-process (tests/helpers/node_lab.py): the real shell,
node core, RIB and FibSyncer against a fake speaker, kernel, datastore and clock.

Each scenario is one a user meets: a restart with routes already in the kernel,
convergence by End-of-RIB or by the timer, a flapping peer, a peer restarting
with graceful restart (RFC 4724), configuration changes, a failing FIB, bad
events, signals. Every assertion is on what a user sees: the kernel's routes,
what the peers were sent, readiness and /status.
"""

from __future__ import annotations

import errno
import json

import pytest
from structlog.testing import capture_logs

from fib_sync import NextHop, Route, RouteKind
from tests.helpers.cluster import bgp_config, bgp_filter, bgp_peer, node, pool, snapshot
from tests.helpers.node_lab import NodeLab

N1, N2, N3 = "10.0.0.1", "10.0.0.2", "10.0.0.3"
OWN = "10.244.1.0/26"  # n1's block
B2 = "10.244.2.0/26"  # n2's block
B3 = "10.244.3.0/26"  # n3's block
BOGUS = "10.244.9.0/26"  # in the kernel from a previous run; nobody announces it


def cluster(*extra, nodes=(("n1", N1), ("n2", N2)), revision=1, **kw):
    blocks = {"n1": [OWN], "n2": [B2], "n3": [B3]}
    return snapshot(*(node(n, a) for n, a in nodes), pool("default", "10.244.0.0/16"), *extra,
                    blocks=blocks, revision=revision, **kw)


def via(dst: str, gw: str) -> Route:
    return Route(dst, RouteKind.UNICAST, nexthops=(NextHop(gw),))


def events(logs, name):
    return [e for e in logs if e["event"] == name]


async def up_with_routes(lab: NodeLab, peer: str, prefixes, gr_time: int = 0, eor=True):
    lab.speaker.session_up(peer, gr_time=gr_time)
    lab.speaker.announce(peer, prefixes)
    if eor:
        lab.speaker.peer_end_of_rib(peer)
    await lab.settle()


# ------------------------------------------------------------------ start-up


async def test_restart_keeps_adopted_routes_until_end_of_rib_then_sweeps_only_unwanted(
        tmp_path) -> None:
    adopted = [via(B2, N2), via(BOGUS, N2)]
    with capture_logs() as logs:
        async with NodeLab(tmp_path, adopted=adopted) as lab:
            assert not lab.daemon.is_ready()
            lab.publish(cluster())
            await lab.settle()
            # First pass done: own block in, adopted routes kept, ready, then sessions.
            assert lab.kernel_routes()[OWN].kind is RouteKind.BLACKHOLE
            assert {B2, BOGUS} <= set(lab.kernel_routes())
            assert lab.daemon.is_ready() and "READY=1" in lab.notifier.sent
            assert lab.speaker.started and list(lab.speaker.peers) == [(N2, 179)]
            assert lab.daemon.convergence_seconds is None

            await lab.advance(3)
            await up_with_routes(lab, N2, [B2])
            assert lab.daemon.convergence_seconds == 3  # at End-of-RIB, long before the timer
            assert set(lab.kernel_routes()) == {OWN, B2}
            assert lab.kernel_routes()[B2].nexthops[0].gateway == N2
            # The re-announced route was never taken out of the kernel on the way.
            assert lab.kernel.deleted() == [BOGUS], lab.kernel.ops
            # n2 got our block, then End-of-RIB once the whole set was out.
            assert set(lab.speaker.exports[(N2, 179)]) == {OWN}
            assert lab.speaker.eor_sent == [(N2, 179)]
    conv = events(logs, "converged")
    assert [(c["reason"], c["swept"]) for c in conv] == [("end-of-rib", 1)]
    order = [e["event"] for e in logs if e["event"] in (
        "fib_reconciled", "bgp_started", "bgp_end_of_rib", "converged")]
    assert order == ["fib_reconciled", "bgp_started", "bgp_end_of_rib", "converged"]


async def test_own_blocks_reach_the_kernel_at_start_with_an_empty_rib(tmp_path) -> None:
    """The empty-Rib bug: a Rib with no paths is falsy; the first FIB pass must still
    carry this node's own blocks (found late in the first wave, end-to-end only)."""
    async with NodeLab(tmp_path) as lab:
        lab.publish(cluster())
        await lab.settle()
        assert lab.daemon.node.rib is not None and len(lab.daemon.node.rib) == 0
        assert lab.kernel_routes() == {OWN: lab.kernel_routes()[OWN]}
        assert lab.kernel_routes()[OWN].kind is RouteKind.BLACKHOLE


async def test_converges_by_timer_when_a_peer_never_comes(tmp_path) -> None:
    with capture_logs() as logs:
        async with NodeLab(tmp_path, adopted=[via(BOGUS, N2)], convergence_timeout=30) as lab:
            lab.publish(cluster())
            await lab.settle()
            await lab.advance(29)
            assert BOGUS in lab.kernel_routes() and lab.daemon.convergence_seconds is None
            await lab.advance(1)
            assert BOGUS not in lab.kernel_routes()
            assert lab.daemon.convergence_seconds == 30
    assert [c["reason"] for c in events(logs, "converged")] == ["timer"]


async def test_timer_before_the_first_reconcile_waits_for_it(tmp_path) -> None:
    """No snapshot yet when the timer fires: nothing is swept until the FIB is reconciled."""
    async with NodeLab(tmp_path, adopted=[via(B2, N2)], convergence_timeout=5) as lab:
        await lab.advance(6)
        assert B2 in lab.kernel_routes() and lab.daemon.convergence_seconds is None
        lab.publish(cluster())
        await lab.settle()
        # Converged by the (earlier) timer right after the first pass: B2 was not
        # re-confirmed by anybody, so it goes.
        assert lab.daemon.convergence_seconds == 6
        assert set(lab.kernel_routes()) == {OWN}


async def test_no_peers_converges_at_once(tmp_path) -> None:
    with capture_logs() as logs:
        async with NodeLab(tmp_path, adopted=[via(BOGUS, N2)]) as lab:
            lab.publish(cluster(bgp_config(nodeToNodeMeshEnabled=False)))
            await lab.settle()
            assert set(lab.kernel_routes()) == {OWN}
    assert [c["reason"] for c in events(logs, "converged")] == ["no peers"]


async def test_no_node_resource_keeps_everything_and_says_why(tmp_path) -> None:
    with capture_logs() as logs:
        async with NodeLab(tmp_path, node="n9", adopted=[via(B2, N2)]) as lab:
            lab.publish(cluster())
            await lab.settle()
            assert lab.daemon.is_ready()
            assert not lab.backend.speakers  # no identity, no sessions
            assert set(lab.kernel_routes()) == {B2}
            # Then the Node appears: sessions start, its block goes in.
            lab.publish(cluster(nodes=(("n1", N1), ("n2", N2), ("n9", "10.0.0.9")),
                                revision=2))
            await lab.settle()
            assert lab.speaker.started
    assert any("n9" in e["problem"] for e in events(logs, "config_problem"))


# ------------------------------------------------------------------ sessions


async def test_flapping_peer_withdraws_and_reinstalls_its_routes(tmp_path) -> None:
    async with NodeLab(tmp_path) as lab:
        lab.publish(cluster())
        await lab.settle()
        await up_with_routes(lab, N2, [B2])
        assert B2 in lab.kernel_routes()
        for flap in range(1, 4):
            lab.speaker.session_down(N2, "hold timer expired")
            await lab.settle()
            assert B2 not in lab.kernel_routes()
            peer = lab.daemon.peer_states()[0]
            assert (peer["state"], peer["info"], peer["flaps"]) == (
                "start", "hold timer expired", flap)
            await up_with_routes(lab, N2, [B2])
            assert B2 in lab.kernel_routes()
            assert lab.daemon.peer_states()[0]["state"] == "up"
        # Every session start got the full export set and its own End-of-RIB.
        assert lab.speaker.eor_sent == [(N2, 179)] * 4


async def test_graceful_restart_peer_keeps_routes_while_away_then_refreshes(tmp_path) -> None:
    async with NodeLab(tmp_path) as lab:
        lab.publish(cluster(node("n3", N3)))
        await lab.settle()
        await up_with_routes(lab, N2, [B2, "10.244.12.0/26"], gr_time=120)
        lab.speaker.session_down(N2, "peer restarting")
        await lab.settle()
        # RFC 4724 §4.2: forwarding carries on over the stale routes.
        assert {B2, "10.244.12.0/26"} <= set(lab.kernel_routes())
        await lab.advance(100)
        assert {B2, "10.244.12.0/26"} <= set(lab.kernel_routes())
        # Back within its restart time: re-announces one, End-of-RIB drops the other.
        lab.speaker.session_up(N2, gr_time=120)
        lab.speaker.announce(N2, [B2])
        await lab.settle()
        assert "10.244.12.0/26" in lab.kernel_routes()  # still stale, not yet swept
        lab.speaker.peer_end_of_rib(N2)
        await lab.settle()
        assert B2 in lab.kernel_routes() and "10.244.12.0/26" not in lab.kernel_routes()
        assert ("delete", B2) not in lab.kernel.ops
        # The restart timer was stopped by the new session: nothing more happens later.
        await lab.advance(500)
        assert B2 in lab.kernel_routes()


async def test_graceful_restart_peer_that_never_returns_loses_its_routes_at_its_time(
        tmp_path) -> None:
    with capture_logs() as logs:
        async with NodeLab(tmp_path) as lab:
            lab.publish(cluster())
            await lab.settle()
            await up_with_routes(lab, N2, [B2], gr_time=90)
            lab.speaker.session_down(N2)
            await lab.settle()
            await lab.advance(89)
            assert B2 in lab.kernel_routes()
            await lab.advance(1)
            assert B2 not in lab.kernel_routes()
    assert events(logs, "bgp_stale_routes_expired")[0]["peer"] == N2


async def test_second_drop_while_restarting_restarts_the_stale_window(tmp_path) -> None:
    async with NodeLab(tmp_path) as lab:
        lab.publish(cluster())
        await lab.settle()
        await up_with_routes(lab, N2, [B2], gr_time=60)
        lab.speaker.session_down(N2)
        await lab.settle()
        await lab.advance(50)
        lab.speaker.session_up(N2, gr_time=60)  # up, but drops again before any UPDATE
        lab.speaker.session_down(N2)
        await lab.settle()
        await lab.advance(20)  # 70 s after the first drop, 20 s after the second
        assert B2 in lab.kernel_routes()
        await lab.advance(40)
        assert B2 not in lab.kernel_routes()


async def test_failed_reconnects_do_not_extend_the_restart_window(tmp_path) -> None:
    """The speaker reports every failed connection attempt to a dead peer as a session
    down (ExaBGP: "closing connection" every few seconds). Only a session that was up
    starts a restart window: the dead peer's routes still go at its restart time."""
    async with NodeLab(tmp_path) as lab:
        lab.publish(cluster())
        await lab.settle()
        await up_with_routes(lab, N2, [B2], gr_time=10)
        lab.speaker.session_down(N2, "lost TCP session with peer")
        await lab.settle()
        for _ in range(4):
            await lab.advance(2)
            lab.speaker.session_down(N2, "closing connection")
            await lab.settle()
        assert B2 in lab.kernel_routes()  # 8 s: still within the window
        await lab.advance(2)
        assert B2 not in lab.kernel_routes()
        assert lab.daemon.peer_states()[0]["flaps"] == 1


async def test_peer_without_graceful_restart_is_forgotten_at_once(tmp_path) -> None:
    async with NodeLab(tmp_path) as lab:
        lab.publish(cluster())
        await lab.settle()
        await up_with_routes(lab, N2, [B2], gr_time=0)
        lab.speaker.session_down(N2)
        await lab.settle()
        assert B2 not in lab.kernel_routes()
        assert lab.daemon.peer_states()[0]["prefixes_received"] == 0


# -------------------------------------------------------------------- config


async def test_peer_added_and_removed_by_config(tmp_path) -> None:
    async with NodeLab(tmp_path) as lab:
        lab.publish(cluster())
        await lab.settle()
        await up_with_routes(lab, N2, [B2])
        tor = bgp_peer("tor", peerIP="10.0.0.100", asNumber=65001)
        lab.publish(cluster(tor, revision=2))
        await lab.settle()
        assert set(lab.speaker.peers) == {(N2, 179), ("10.0.0.100", 179)}
        await up_with_routes(lab, "10.0.0.100", ["10.244.50.0/26"])
        assert "10.244.50.0/26" in lab.kernel_routes()
        # The ToR goes from the config: its session and its routes go with it.
        lab.publish(cluster(revision=3))
        await lab.settle()
        assert set(lab.speaker.peers) == {(N2, 179)}
        assert "10.244.50.0/26" not in lab.kernel_routes()
        assert [p["address"] for p in lab.daemon.peer_states()] == [N2]


async def test_pool_disabled_keeps_routing_pool_removed_drops_its_routes(tmp_path) -> None:
    """A disabled pool still routes (Calico's pool migration: no new blocks, existing ones
    keep working); a pool that is gone takes the routes inside it with it (import accepts
    only prefixes of a pool)."""
    async with NodeLab(tmp_path) as lab:
        lab.publish(cluster())
        await lab.settle()
        await up_with_routes(lab, N2, [B2])
        assert {OWN, B2} <= set(lab.kernel_routes())
        lab.publish(snapshot(node("n1", N1), node("n2", N2),
                             pool("default", "10.244.0.0/16", disabled=True),
                             blocks={"n1": [OWN], "n2": [B2]}, revision=2))
        await lab.settle()
        assert {OWN, B2} <= set(lab.kernel_routes())
        lab.publish(snapshot(node("n1", N1), node("n2", N2), pool("other", "10.250.0.0/16"),
                             blocks={"n1": [OWN], "n2": [B2]}, revision=3))
        await lab.settle()
        assert B2 not in lab.kernel_routes()
        assert lab.intent() == lab.kernel_routes()
        peer = lab.daemon.peer_states()[0]
        assert (peer["prefixes_received"], peer["prefixes_accepted"]) == (1, 0)


async def test_filter_change_rejects_then_accepts_again(tmp_path) -> None:
    reject = bgp_filter("no-b2", importV4=[{"action": "Reject", "cidr": B2,
                                            "matchOperator": "Equal"}])
    tor = {"peerIP": N2, "asNumber": 64512, "filters": ["no-b2"]}
    base = (bgp_config(nodeToNodeMeshEnabled=False), reject)
    async with NodeLab(tmp_path) as lab:
        lab.publish(cluster(*base, bgp_peer("n2", **{**tor, "filters": []})))
        await lab.settle()
        await up_with_routes(lab, N2, [B2])
        assert B2 in lab.kernel_routes()
        lab.publish(cluster(*base, bgp_peer("n2", **tor), revision=2))
        await lab.settle()
        assert B2 not in lab.kernel_routes()
        lab.publish(cluster(*base, bgp_peer("n2", **{**tor, "filters": []}), revision=3))
        await lab.settle()
        assert B2 in lab.kernel_routes()


async def test_rejected_peer_set_keeps_the_running_sessions(tmp_path) -> None:
    with capture_logs() as logs:
        async with NodeLab(tmp_path) as lab:
            lab.publish(cluster())
            await lab.settle()
            await up_with_routes(lab, N2, [B2])
            lab.speaker.reject = "session '10.0.0.3': password: contains a NUL byte"
            lab.publish(cluster(node("n3", N3), revision=2))
            await lab.settle()
            assert set(lab.speaker.peers) == {(N2, 179)}
            assert B2 in lab.kernel_routes()
            assert [p["address"] for p in lab.daemon.peer_states()] == [N2]
    assert "NUL byte" in events(logs, "peers_rejected")[0]["error"]


async def test_reachable_by_routes_follow_the_planned_peers(tmp_path) -> None:
    """BGPPeer reachableBy: an exact route to the peer via the gateway, podbgp's own,
    there while the peer is planned (Calico's bird.cfg.template adds the same)."""
    tor = bgp_peer("tor", peerIP="192.168.7.1", asNumber=65001, reachableBy=N2)
    async with NodeLab(tmp_path) as lab:
        lab.publish(cluster(tor))
        await lab.settle()
        route = lab.kernel_routes()["192.168.7.1/32"]
        assert route.nexthops[0].gateway == N2
        lab.publish(cluster(revision=2))
        await lab.settle()
        assert "192.168.7.1/32" not in lab.kernel_routes()
        assert lab.intent() == lab.kernel_routes()


async def test_one_unconfigurable_peer_is_one_bad_peer(tmp_path) -> None:
    """The speaker cannot configure n3's session: n3 is shown "not configured" with the
    reason, counted once, and n2's session and routes carry on."""
    with capture_logs() as logs:
        async with NodeLab(tmp_path) as lab:
            lab.publish(cluster())
            await lab.settle()
            await up_with_routes(lab, N2, [B2])
            lab.speaker.unconfigurable[N3] = "ttl_security: 300: out of range 0..255"
            lab.publish(cluster(node("n3", N3), revision=2))
            await lab.settle()
            lab.publish(cluster(node("n3", N3), revision=3))  # same reason: not counted again
            await lab.settle()
            states = {p["address"]: (p["state"], p["info"]) for p in lab.daemon.peer_states()}
            assert states == {N2: ("up", "Established"),
                              N3: ("not configured", "ttl_security: 300: out of range 0..255")}
            assert B2 in lab.kernel_routes()
            text = lab.daemon._http_metrics()[2].decode()
            assert "podbgp_bgp_peers_not_configured 1.0" in text
            assert "podbgp_bgp_peers_rejected_total 1.0" in text
            # Fixed: it runs like any other peer, and the row goes.
            del lab.speaker.unconfigurable[N3]
            lab.publish(cluster(node("n3", N3), revision=4))
            await lab.settle()
            assert [p["state"] for p in lab.daemon.peer_states()] == ["up", "start"]
    assert len(events(logs, "peer_not_configured")) == 1


async def test_rejected_resources_are_logged_once_and_cleared(tmp_path) -> None:
    with capture_logs() as logs:
        async with NodeLab(tmp_path) as lab:
            bad = {"/calico/resources/v3/projectcalico.org/bgppeers/x": "spec.peerIP: bad"}
            lab.publish(cluster(rejected=bad))
            await lab.settle()
            lab.publish(cluster(rejected=bad, revision=2))
            await lab.settle()
            assert lab.daemon.status()["datastore"]["config_stale"] is True
            lab.publish(cluster(revision=3))
            await lab.settle()
            assert lab.daemon.status()["datastore"]["config_stale"] is False
    assert len(events(logs, "config_rejected")) == 1
    assert len(events(logs, "config_stale_cleared")) == 1


async def test_node_identity_change_restarts_bgp_keeping_kernel_routes(tmp_path) -> None:
    async with NodeLab(tmp_path) as lab:
        lab.publish(cluster())
        await lab.settle()
        await up_with_routes(lab, N2, [B2])
        first = lab.speaker
        lab.publish(cluster(nodes=(("n1", "10.0.0.11"), ("n2", N2)), revision=2))
        await lab.settle()
        assert first.stopped is True  # graceful: no Cease, peers keep our routes
        assert lab.speaker is not first and lab.speaker.config.router_id == "10.0.0.11"
        assert B2 in lab.kernel_routes() and OWN in lab.kernel_routes()


# --------------------------------------------------------------- bad things


async def test_fib_failure_is_reported_and_retried(tmp_path) -> None:
    async with NodeLab(tmp_path) as lab:
        lab.publish(cluster())
        await lab.settle()
        lab.kernel.fail[B2] = errno.ENETUNREACH
        await up_with_routes(lab, N2, [B2])
        assert B2 not in lab.kernel_routes()
        assert lab.daemon.status()["routes"]["failing"] == 1
        assert lab.daemon.peer_states()[0]["state"] == "up"  # nothing else suffers
        del lab.kernel.fail[B2]
        lab.daemon.signal("SIGHUP")  # a resync retries at once
        await lab.settle()
        assert B2 in lab.kernel_routes()
        assert lab.daemon.status()["routes"]["failing"] == 0


async def test_bad_events_are_logged_and_the_node_goes_on(tmp_path) -> None:
    from bgpd import events as ev

    with capture_logs() as logs:
        async with NodeLab(tmp_path) as lab:
            lab.publish(cluster())
            await lab.settle()
            lab.speaker.announce(N2, [B2])  # UPDATE before the session is up: a bug upstream
            lab.speaker.emit(ev.Garbage("{", "not JSON"), ev.EndOfRib("10.9.9.9", "ipv4", "x"),
                             ev.Notification(N2, "receive", 6, 2, "admin shutdown"))
            await up_with_routes(lab, N2, [B2])
            assert B2 in lab.kernel_routes()
    failed = events(logs, "event_failed")
    assert [f["event_type"] for f in failed] == ["Update"] and failed[0]["exc_info"]
    assert events(logs, "bgp_notification")[0]["code"] == 6


async def test_max_prefix_teardown_ends_the_session(tmp_path) -> None:
    tor = bgp_peer("tor", peerIP="10.0.0.100", asNumber=65001)
    tor["metadata"]["annotations"] = {"podbgp.io/max-prefixes": "2",
                                      "podbgp.io/max-prefix-action": "teardown"}
    with capture_logs() as logs:
        async with NodeLab(tmp_path) as lab:
            lab.publish(cluster(tor))
            await lab.settle()
            lab.speaker.fail_teardown = RuntimeError("session already gone")
            await up_with_routes(lab, "10.0.0.100",
                                 [f"10.244.{i}.0/26" for i in range(50, 53)], eor=False)
            assert lab.speaker.teardowns == [("10.0.0.100", 179)]
    assert events(logs, "max_prefix_exceeded")[0]["peer"] == "10.0.0.100"
    assert "already gone" in events(logs, "teardown_failed")[0]["error"]


async def test_export_failure_is_logged_not_fatal(tmp_path) -> None:
    with capture_logs() as logs:
        async with NodeLab(tmp_path) as lab:
            lab.publish(cluster())
            await lab.settle()
            lab.speaker.fail_exports = ConnectionError("channel closed")
            await up_with_routes(lab, N2, [B2])
            assert B2 in lab.kernel_routes()
    assert events(logs, "export_failed")[0]["peers"] == 1


# ------------------------------------------------------------------ signals


async def test_sigterm_stops_gracefully_and_leaves_the_kernel(tmp_path) -> None:
    async with NodeLab(tmp_path) as lab:
        lab.publish(cluster())
        await lab.settle()
        await up_with_routes(lab, N2, [B2])
        before = lab.kernel_routes()
        lab.daemon.signal("SIGTERM")
        assert await lab.stopped() == 0
        assert lab.speaker.stopped is True  # graceful restart: killed, no Cease
        assert lab.kernel_routes() == before and lab.store.closed
        assert "STOPPING=1" in lab.notifier.sent


async def test_sighup_replans_with_new_passwords_and_resyncs(tmp_path) -> None:
    secret = tmp_path / "secrets" / "bgp" / "pw"
    secret.parent.mkdir(parents=True)
    secret.write_text("one")
    tor = bgp_peer("tor", peerIP="10.0.0.100", asNumber=65001,
                   password={"secretKeyRef": {"name": "bgp", "key": "pw"}})
    async with NodeLab(tmp_path) as lab:
        lab.publish(cluster(tor))
        await lab.settle()
        assert lab.speaker.peers[("10.0.0.100", 179)].password == "one"
        secret.write_text("two")
        lab.kernel.routes.clear()  # someone flushed the table meanwhile
        lab.daemon.signal("SIGHUP")
        await lab.settle()
        assert lab.speaker.peers[("10.0.0.100", 179)].password == "two"
        assert OWN in lab.kernel_routes()  # the resync repaired it


async def test_a_failing_task_brings_the_daemon_down(tmp_path) -> None:
    with capture_logs() as logs:
        async with NodeLab(tmp_path) as lab:
            lab.backend.start_error = FileNotFoundError("speaker binary missing")
            lab.publish(cluster())
            assert await lab.stopped() == 1
            assert lab.speaker.stopped is True  # what did start is still stopped
    assert events(logs, "task_failed")[0]["task"] == "config"


# --------------------------------------------------------------------- http


async def test_http_views_follow_the_lifecycle(tmp_path) -> None:
    async with NodeLab(tmp_path) as lab:
        d = lab.daemon
        code, _, body = d._http_readyz()
        assert code == 503 and b"waiting for the datastore" in body
        lab.publish(cluster())
        await lab.settle()
        assert d._http_readyz()[0] == 200 and d._http_healthz()[0] == 200
        await up_with_routes(lab, N2, [B2])
        status = json.loads(d._http_status()[2])
        assert status["ready"] and status["converged"] and status["router_id"] == N1
        assert status["routes"]["kernel"] == {"unicast": 1, "multipath": 0, "blackhole": 1}
        assert [(p["address"], p["state"], p["end_of_rib"], p["prefixes_received"])
                for p in status["peers"]] == [(N2, "up", True, 1)]
        text = d._http_metrics()[2].decode()
        assert f'podbgp_bgp_session_up{{peer="{N2}",peer_type="node-to-node mesh"}} 1.0' in text
        assert "podbgp_ready 1.0" in text


@pytest.mark.parametrize("what", ["http", "fib"])
async def test_start_failures_exit_1(tmp_path, what) -> None:
    lab = NodeLab(tmp_path, start=False)
    if what == "http":
        lab.daemon.http.host = "192.0.2.1"  # not an address of this machine: bind fails
    else:
        lab.daemon.fib._started = True  # a second start() raises
    await lab.start()
    assert await lab.stopped() == 1


# ----------------------------------------------------------------- ops tasks


async def test_datastore_connectivity_is_logged_once_per_change(tmp_path) -> None:
    from tests.helpers.wait import until

    with capture_logs() as logs:
        lab = NodeLab(tmp_path, start=False)
        lab.daemon.WATCH_FIRST = lab.daemon.WATCH_INTERVAL = 0.001
        lab.store.connected = False
        async with lab:
            await lab.start()
            await until(lambda: events(logs, "datastore_waiting"), what="datastore_waiting")
            lab.store.connected = True
            await until(lambda: events(logs, "datastore_connected"), what="datastore_connected")
            lab.store.connected = False
            await until(lambda: events(logs, "datastore_disconnected"),
                        what="datastore_disconnected")
    names = [e["event"] for e in logs if e["event"].startswith("datastore_")]
    assert names == ["datastore_waiting", "datastore_connected", "datastore_disconnected"]


async def test_watchdog_pings_while_running(tmp_path) -> None:
    from tests.helpers.wait import until

    lab = NodeLab(tmp_path, start=False)
    lab.notifier.watchdog_interval = 0.001
    async with lab:
        await lab.start()
        await until(lambda: lab.notifier.sent.count("WATCHDOG=1") >= 3, what="3 watchdog pings")


def test_daemon_builds_the_datastore_from_options(tmp_path) -> None:
    from bgpd.daemon import Daemon, SystemClock
    from config.etcd_store import EtcdDatastore
    from config.file_store import FileDatastore
    from tests.helpers.fake_speaker import FakeBackend

    lab = NodeLab(tmp_path, start=False)
    d = Daemon(lab.opts, backend=FakeBackend())
    assert isinstance(d.store, FileDatastore) and isinstance(d.clock, SystemClock)
    import dataclasses
    etcd = dataclasses.replace(lab.opts, datastore="etcdv3")
    assert isinstance(Daemon(etcd, backend=FakeBackend()).store, EtcdDatastore)


async def test_system_clock_timers_fire_on_the_loop() -> None:
    import asyncio

    from bgpd.daemon import SystemClock

    fired = asyncio.Event()
    clock = SystemClock()
    clock.call_at(clock.monotonic() + 0.001, fired.set)
    await asyncio.wait_for(fired.wait(), 5)
    assert abs(clock.time() - __import__("time").time()) < 5
