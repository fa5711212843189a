"""Kernel intent: blackholes for own blocks, via next hop(s), IPIP/CrossSubnet, VXLAN."""

from __future__ import annotations

import dataclasses

import pytest

import rib
from rib import (
    EncapMode,
    KernelRoute,
    PeerKind,
    PeerPolicy,
    PeerRef,
    Pool,
    Rib,
    RibConfig,
    RouteKind,
)
from rib.kernel import KernelContext, unprogrammable
from rib.path import Path

A = PeerRef("192.168.1.11", 64512, "192.168.1.11", PeerKind.IBGP)  # same subnet
B = PeerRef("192.168.1.12", 64512, "192.168.1.12", PeerKind.IBGP)  # same subnet
FAR = PeerRef("172.16.0.5", 64512, "172.16.0.5", PeerKind.IBGP)  # another subnet
CONFIG = RibConfig(
    local_asn=64512,
    router_id="192.168.1.1",
    node_addresses=frozenset({"192.168.1.1"}),
    own_blocks=("10.10.0.0/26", "10.20.0.0/26"),
    node_subnets=("192.168.1.0/24",),
    pools=(
        Pool("10.10.0.0/16"),
        Pool("10.20.0.0/16", ipip_mode=EncapMode.ALWAYS),
        Pool("10.30.0.0/16", ipip_mode=EncapMode.CROSS_SUBNET),
        Pool("10.40.0.0/16", vxlan_mode=EncapMode.ALWAYS),
        Pool("10.50.0.0/16", vxlan_mode=EncapMode.CROSS_SUBNET),
    ),
    service_prefixes=("10.96.0.0/12",),
    route_metric=7,
    max_paths=4,
)


def rib_for(config=CONFIG) -> Rib:
    rib = Rib(config)
    for peer in (A, B, FAR):
        rib.peer_up(PeerPolicy(key=peer.address, peer=peer))
    return rib


def test_own_blocks_blackholed_services_not_programmed():
    routes = Rib(CONFIG).desired_routes()
    assert routes == {
        b: KernelRoute(b, RouteKind.BLACKHOLE, (), None, False, 7) for b in CONFIG.own_blocks
    }


@pytest.mark.parametrize(
    ("prefix", "peer", "expected"),
    [
        ("10.10.1.0/26", A, KernelRoute("10.10.1.0/26", next_hops=(A.address,), metric=7)),
        ("10.20.1.0/26", A, KernelRoute("10.20.1.0/26", next_hops=(A.address,),
                                         device="tunl0", onlink=True, metric=7)),
        # CrossSubnet: same subnet -> plain, other subnet -> tunnel
        ("10.30.1.0/26", A, KernelRoute("10.30.1.0/26", next_hops=(A.address,), metric=7)),
        ("10.30.1.0/26", FAR, KernelRoute("10.30.1.0/26", next_hops=(FAR.address,),
                                           device="tunl0", onlink=True, metric=7)),
        ("10.40.1.0/26", A, None),  # VXLAN: Felix programs it
        ("10.50.1.0/26", FAR, None),
    ],
)
def test_remote_route_intent(prefix, peer, expected):
    rib = rib_for()
    ch = rib.announce(peer.address, [Path(prefix, peer.address, peer)])
    assert rib.best(prefix) is not None
    assert rib.desired_routes().get(prefix) == expected
    assert ch.kernel_add == ([expected] if expected else [])


def test_ecmp_multipath_route_and_shrink():
    rib = rib_for()
    p = "10.10.1.0/26"
    rib.announce(B.address, [Path(p, B.address, B)])
    ch = rib.announce(A.address, [Path(p, A.address, A)])
    assert ch.kernel_add == [KernelRoute(p, next_hops=(A.address, B.address), metric=7)]
    ch = rib.withdraw(A.address, [p])
    assert ch.kernel_add == [KernelRoute(p, next_hops=(B.address,), metric=7)]
    assert ch.kernel_remove == []  # a replace, not delete+add
    ch = rib.withdraw(B.address, [p])
    assert ch.kernel_remove == [KernelRoute(p, next_hops=(B.address,), metric=7)]
    assert p not in rib.desired_routes()


def test_ecmp_bounded_by_max_paths_and_cross_subnet_mixed_uses_tunnel():
    rib = rib_for(dataclasses.replace(CONFIG, max_paths=2))
    p = "10.30.1.0/26"
    for peer in (A, B, FAR):
        rib.announce(peer.address, [Path(p, peer.address, peer)])
    # Lowest router ids win: FAR (172.16.0.5) and A; FAR is off-subnet -> tunnel for both.
    assert rib.desired_routes()[p] == KernelRoute(
        p, next_hops=tuple(sorted((A.address, FAR.address))), device="tunl0", onlink=True,
        metric=7,
    )


def test_unequal_paths_do_not_multipath():
    rib = rib_for()
    p = "10.10.1.0/26"
    rib.announce(A.address, [Path(p, A.address, A, local_pref=200)])
    rib.announce(B.address, [Path(p, B.address, B)])
    assert rib.desired_routes()[p].next_hops == (A.address,)


def test_metric_change_replaces_every_route():
    rib = rib_for()
    rib.announce(A.address, [Path("10.10.1.0/26", A.address, A)])
    ch = rib.set_config(dataclasses.replace(CONFIG, route_metric=9))
    assert {(r.prefix, r.metric) for r in ch.kernel_add} == {
        ("10.10.1.0/26", 9), ("10.10.0.0/26", 9), ("10.20.0.0/26", 9)
    }
    assert all(r.metric == 9 for r in rib.desired_routes().values())


def test_pool_mode_change_reprograms():
    rib = rib_for()
    rib.announce(A.address, [Path("10.10.1.0/26", A.address, A)])
    pools = tuple(dataclasses.replace(p, vxlan_mode=EncapMode.ALWAYS)
                  if p.cidr == "10.10.0.0/16" else p for p in CONFIG.pools)
    ch = rib.set_config(dataclasses.replace(CONFIG, pools=pools))
    assert [r.prefix for r in ch.kernel_remove] == ["10.10.1.0/26"]
    assert "10.10.1.0/26" not in rib.desired_routes()


# ---------------------------------------------------------------- cluster routes
# Which remote blocks this node programs and through which tunnel (rib.ClusterRoutes):
# Felix's vxlan_mgr.go tunnelRoute (via the VTEP, dev vxlan.calico, onlink) and
# noEncapRoute (CrossSubnet, same subnet), confd's programClusterRoutes split
# (confd/pkg/backends/calico/bgp_processor.go processIPPool).

VTEPS = ((A.address, "10.40.7.0"), (FAR.address, "10.40.9.0"))
STANDALONE = rib.ClusterRoutes(vxlan=True, vteps=VTEPS)


def _with(cluster) -> RibConfig:
    return dataclasses.replace(CONFIG, cluster_routes=cluster)


@pytest.mark.parametrize(
    ("prefix", "peer", "expected"),
    [
        ("10.40.1.0/26", A, KernelRoute("10.40.1.0/26", next_hops=("10.40.7.0",),
                                         device="vxlan.calico", onlink=True, metric=7)),
        ("10.40.1.0/26", FAR, KernelRoute("10.40.1.0/26", next_hops=("10.40.9.0",),
                                           device="vxlan.calico", onlink=True, metric=7)),
        # CrossSubnet: same subnet -> plain via the node, other subnet -> its VTEP
        ("10.50.1.0/26", A, KernelRoute("10.50.1.0/26", next_hops=(A.address,), metric=7)),
        ("10.50.1.0/26", FAR, KernelRoute("10.50.1.0/26", next_hops=("10.40.9.0",),
                                           device="vxlan.calico", onlink=True, metric=7)),
        # No VTEP known for B: not programmable (not a wrong route)
        ("10.40.1.0/26", B, None),
        # Plain and IPIP pools unchanged
        ("10.10.1.0/26", B, KernelRoute("10.10.1.0/26", next_hops=(B.address,), metric=7)),
        ("10.20.1.0/26", B, KernelRoute("10.20.1.0/26", next_hops=(B.address,),
                                         device="tunl0", onlink=True, metric=7)),
    ],
)
def test_vxlan_cluster_routes(prefix, peer, expected):
    r = rib_for(_with(STANDALONE))
    r.announce(peer.address, [Path(prefix, peer.address, peer)])
    assert r.desired_routes().get(prefix) == expected


def test_vxlan_ecmp_goes_via_every_vtep():
    r = rib_for(_with(STANDALONE))
    for peer in (A, FAR):
        r.announce(peer.address, [Path("10.40.1.0/26", peer.address, peer)])
    assert r.desired_routes()["10.40.1.0/26"] == KernelRoute(
        "10.40.1.0/26", next_hops=("10.40.7.0", "10.40.9.0"), device="vxlan.calico",
        onlink=True, metric=7)


def test_vtep_appearing_programs_the_route_and_changing_replaces_it():
    r = rib_for(_with(rib.ClusterRoutes(vxlan=True)))
    r.announce(A.address, [Path("10.40.1.0/26", A.address, A)])
    assert "10.40.1.0/26" not in r.desired_routes()
    ch = r.set_config(_with(rib.ClusterRoutes(vxlan=True, vteps=((A.address, "10.40.7.0"),))))
    assert [k.next_hops for k in ch.kernel_add] == [("10.40.7.0",)]
    ch = r.set_config(_with(rib.ClusterRoutes(vxlan=True, vteps=((A.address, "10.40.8.0"),))))
    assert [k.next_hops for k in ch.kernel_add] == [("10.40.8.0",)] and not ch.kernel_remove
    ch = r.set_config(_with(rib.ClusterRoutes(vxlan=True)))
    assert [k.prefix for k in ch.kernel_remove] == ["10.40.1.0/26"]


def test_ipip_not_ready_drops_tunnel_routes_only():
    cluster = rib.ClusterRoutes(ipip_ready=False)
    r = rib_for(_with(cluster))
    for prefix, peer in (("10.20.1.0/26", A), ("10.30.1.0/26", A), ("10.30.2.0/26", FAR),
                         ("10.10.1.0/26", A)):
        r.announce(peer.address, [Path(prefix, peer.address, peer)])
    routes = r.desired_routes()
    assert "10.20.1.0/26" not in routes  # IPIP Always: needs tunl0
    assert "10.30.2.0/26" not in routes  # CrossSubnet, off subnet: needs tunl0
    assert routes["10.30.1.0/26"].device is None  # CrossSubnet, same subnet: plain
    assert routes["10.10.1.0/26"].next_hops == (A.address,)
    ctx = KernelContext(_with(cluster))
    why = unprogrammable("10.20.1.0/26", (Path("10.20.1.0/26", A.address, A),), ctx)
    assert why == "pool 10.20.0.0/16 needs IPIP and tunl0 is not usable"
    assert unprogrammable("10.10.1.0/26", (Path("10.10.1.0/26", A.address, A),), ctx) is None
    vx = KernelContext(_with(rib.ClusterRoutes(vxlan=True)))
    assert "no VTEP known for next hop 192.168.1.11" in unprogrammable(
        "10.40.1.0/26", (Path("10.40.1.0/26", A.address, A),), vx)


@pytest.mark.parametrize(
    ("cluster", "programmed"),
    [
        # confd's programClusterRoutes values, BIRD's share (the sidecar layout)
        (rib.ClusterRoutes(no_encap=True, ipip=False), {"10.10.1.0/26"}),  # EnabledNoEncapOnly
        (rib.ClusterRoutes(no_encap=True, ipip=True), {"10.10.1.0/26", "10.20.1.0/26"}),
        (rib.ClusterRoutes(no_encap=False, ipip=True), {"10.20.1.0/26"}),  # EnabledIPIPOnly
        (rib.ClusterRoutes(no_encap=False, ipip=False), set()),  # Disabled
    ],
)
def test_program_cluster_routes_split(cluster, programmed):
    r = rib_for(_with(cluster))
    for prefix in ("10.10.1.0/26", "10.20.1.0/26", "10.40.1.0/26"):
        r.announce(A.address, [Path(prefix, A.address, A)])
    remote = {p for p, kr in r.desired_routes().items() if kr.kind is RouteKind.UNICAST}
    assert remote == programmed  # and never the VXLAN pool's: Felix's in that layout


def test_ipv6_vxlan_route_uses_the_v6_device():
    v6 = PeerRef("fd00::12", 64512, "fd00::12", PeerKind.IBGP)
    cfg = dataclasses.replace(
        CONFIG, node_subnets=("192.168.1.0/24", "fd00::/64"),
        pools=(*CONFIG.pools, Pool("fd10::/48", block_size=122, vxlan_mode=EncapMode.ALWAYS)),
        cluster_routes=rib.ClusterRoutes(vxlan=True, vteps=(("fd00::12", "fd10::41"),)))
    r = Rib(cfg)
    r.peer_up(PeerPolicy(key=v6.address, peer=v6))
    r.announce(v6.address, [Path("fd10::40/122", v6.address, v6)])
    assert r.desired_routes()["fd10::40/122"] == KernelRoute(
        "fd10::40/122", next_hops=("fd10::41",), device="vxlan-v6.calico", onlink=True,
        metric=7)


@pytest.mark.parametrize("cluster", [rib.ClusterRoutes(), STANDALONE,
                                     rib.ClusterRoutes(ipip_ready=False),
                                     rib.ClusterRoutes(no_encap=False, ipip=True)])
def test_lone_kernel_route_reuses_only_what_the_prefix_cannot_change(cluster):
    # A run of prefixes with one candidate each (an UPDATE's burst): the memo reuses
    # the route built for the previous prefix with the same PathAttrs and pool. Every
    # answer must be kernel_route's, whatever the pools (plain, IPIP always/
    # CrossSubnet, VXLAN always/CrossSubnet, outside every pool), the peer (on/off
    # subnet, no VTEP) and local paths (own block: blackhole; service: none).
    from rib.kernel import kernel_route, lone_kernel_route

    ctx = KernelContext(_with(cluster))
    templates = {peer: Path("10.10.1.0/26", peer.address, peer) for peer in (A, B, FAR)}
    local = Path("10.10.0.0/26", "", rib.LOCAL_PEER)
    prefixes = [f"10.{p}.{i}.0/26" for i in range(1, 4) for p in (10, 20, 30, 40, 50, 60)]
    memo: list = []
    checked = 0
    for order in (prefixes, sorted(prefixes), list(reversed(prefixes))):
        for peer in (A, A, FAR, B, A):  # runs of one attrs object, then a change
            for prefix in order:
                path = templates[peer].replace(prefix=prefix)
                assert path.attrs is templates[peer].attrs
                got = lone_kernel_route(prefix, path, ctx, memo)
                assert got == kernel_route(prefix, (path,), ctx), (prefix, peer)
                checked += 1
            for prefix in ("10.10.0.0/26", "10.20.0.0/26", "10.96.0.0/12"):
                lp = local.replace(prefix=prefix)
                assert lone_kernel_route(prefix, lp, ctx, memo) == kernel_route(
                    prefix, (lp,), ctx)
    assert checked == 3 * 5 * len(prefixes)
