"""Kernel intent: blackholes for own blocks, via next hop(s), IPIP/CrossSubnet, VXLAN."""

from __future__ import annotations

import dataclasses

import pytest

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
