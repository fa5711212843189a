"""bgpd.translate: what the daemon feeds rib (RibConfig, PeerPolicy) and fib_sync (Route)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fib_sync
import rib
from bgpd.peers import LocalNode
from bgpd.peerspec import NextHopMode, PeerSpec, PeerType
from bgpd.translate import (
    FibRoutes,
    fib_route,
    filter_rules,
    peer_policy,
    reachable_by_routes,
    rib_config,
)
from config.model import Affinity
from config.parse import parse_resource
from config.snapshot import Snapshot
from fib_sync.route import internal_key, route_of, spec_of

ME = LocalNode(name="n1", asn=64512, router_id="10.0.0.1", ipv4="10.0.0.1", ipv6="fd00::1",
               cluster_id="1.1.1.1")


def res(kind: str, name: str, spec: dict) -> object:
    return parse_resource({"apiVersion": "projectcalico.org/v3", "kind": kind,
                           "metadata": {"name": name}, "spec": spec})


def node_res(name: str, v4: str, v6: str | None = None) -> object:
    bgp = {"ipv4Address": v4}
    if v6:
        bgp["ipv6Address"] = v6
    return res("Node", name, {"bgp": bgp})


def snapshot(*extra, affinities=()) -> Snapshot:
    docs = [
        node_res("n1", "10.0.0.1/24", "fd00::1/64"),
        node_res("n2", "10.0.0.2/24"),
        res("IPPool", "b-pool", {"cidr": "10.244.0.0/16", "blockSize": 26,
                                 "ipipMode": "CrossSubnet", "vxlanMode": "Never"}),
        res("IPPool", "a-pool", {"cidr": "10.250.0.0/16", "blockSize": 28, "ipipMode": "Never",
                                 "vxlanMode": "Always", "disabled": True,
                                 "disableBGPExport": True}),
        *extra,
    ]
    return Snapshot.from_resources(docs, affinities)


AFFS = (Affinity("n1", "10.244.1.0/26", "confirmed"), Affinity("n1", "10.244.0.0/26"),
        Affinity("n1", "10.244.2.0/26", "pending"),  # not ours yet
        Affinity("n1", "10.244.3.0/26", "confirmed", deleted=True),
        Affinity("n2", "10.244.9.0/26", "confirmed"))


def test_rib_config_identity_pools_blocks_subnets() -> None:
    cfg = rib_config(snapshot(affinities=AFFS), ME, max_paths=4, node_cidrs=("192.168.5.0/24",))
    assert (cfg.local_asn, cfg.router_id, cfg.cluster_id) == (64512, "10.0.0.1", "1.1.1.1")
    assert cfg.node_addresses == frozenset({"10.0.0.1", "fd00::1"})
    # Only this node's confirmed / state-less, not deleted blocks, in address order.
    assert cfg.own_blocks == ("10.244.0.0/26", "10.244.1.0/26")
    assert cfg.node_subnets == ("192.168.5.0/24", "10.0.0.0/24", "fd00::/64")
    assert cfg.max_paths == 4
    pools = {p.cidr: p for p in cfg.pools}
    assert [p.cidr for p in cfg.pools] == ["10.250.0.0/16", "10.244.0.0/16"]  # by name
    b = pools["10.244.0.0/16"]
    assert (b.block_size, b.ipip_mode, b.vxlan_mode, b.disabled, b.disable_bgp_export) == (
        26, rib.EncapMode.CROSS_SUBNET, rib.EncapMode.NEVER, False, False)
    a = pools["10.250.0.0/16"]
    assert (a.block_size, a.vxlan_mode, a.disabled, a.disable_bgp_export) == (
        28, rib.EncapMode.ALWAYS, True, True)
    assert cfg.service_prefixes == () and cfg.prefix_advertisements == ()


def test_rib_config_other_node_and_no_node_resource() -> None:
    snap = snapshot(affinities=AFFS)
    n2 = LocalNode(name="n2", asn=64512, router_id="10.0.0.2", ipv4="10.0.0.2", ipv6=None,
                   cluster_id=None)
    assert rib_config(snap, n2).own_blocks == ("10.244.9.0/26",)
    ghost = LocalNode(name="ghost", asn=65000, router_id="10.0.0.9", ipv4="10.0.0.9",
                      ipv6=None, cluster_id=None)
    cfg = rib_config(snap, ghost)
    assert cfg.own_blocks == () and cfg.node_subnets == () and cfg.local_asn == 65000


def test_rib_config_services_deduplicated_and_canonical() -> None:
    conf = res("BGPConfiguration", "default", {
        "serviceClusterIPs": [{"cidr": "10.96.0.0/12"}, {}],
        "serviceExternalIPs": [{"cidr": "192.0.2.7/32"}, {"cidr": "10.96.0.0/12"}],
        "serviceLoadBalancerIPs": [{"cidr": "fd00:0:0:1::/64"}],
    })
    cfg = rib_config(snapshot(conf), ME)
    assert cfg.service_prefixes == ("10.96.0.0/12", "192.0.2.7/32", "fd00:0:0:1::/64")


def test_rib_config_per_node_configuration_only_where_calico_honours_it() -> None:
    # confd client.go updateBGPConfigCache: a node.<name> BGPConfiguration sets
    # prefixAdvertisements, listenPort and logSeverityScreen for its node; service
    # IPs come from the global resource only.
    glob = res("BGPConfiguration", "default", {"serviceClusterIPs": [{"cidr": "10.96.0.0/12"}]})
    mine = res("BGPConfiguration", "node.n1",
               {"serviceClusterIPs": [{"cidr": "10.100.0.0/16"}],
                "prefixAdvertisements": [{"cidr": "10.96.0.0/12", "communities": ["1:2"]}]})
    conf = rib_config(snapshot(glob, mine), ME)
    assert conf.service_prefixes == ("10.96.0.0/12",)
    assert conf.prefix_advertisements == (
        rib.PrefixAdvertisement("10.96.0.0/12", communities=((1, 2),)),)


def test_rib_config_prefix_advertisements_resolve_community_names() -> None:
    conf = res("BGPConfiguration", "default", {
        "communities": [{"name": "std", "value": "100:6532"},
                        {"name": "big", "value": "100:555:107"}],
        "prefixAdvertisements": [
            {"cidr": "192.168.0.0/16", "communities": ["std", "5663:12", "big"]},
            {"cidr": "fd00:96::/112", "communities": ["big"]},
        ],
    })
    advs = rib_config(snapshot(conf), ME).prefix_advertisements
    assert advs == (
        rib.PrefixAdvertisement("192.168.0.0/16", communities=((100, 6532), (5663, 12)),
                                large_communities=((100, 555, 107),)),
        rib.PrefixAdvertisement("fd00:96::/112", large_communities=((100, 555, 107),)),
    )


FILTER = res("BGPFilter", "f1", {
    "importV4": [{"action": "Accept", "matchOperator": "In", "cidr": "44.0.0.0/16",
                  "prefixLength": {"min": 24, "max": 28}},
                 {"action": "Reject", "source": "RemotePeers"}],
    "exportV4": [{"action": "Reject", "matchOperator": "Equal", "cidr": "77.0.0.0/16"}],
    "importV6": [{"action": "Accept", "matchOperator": "NotIn", "cidr": "5000::/64"}],
    "exportV6": [{"action": "Accept", "interface": "eth*"}],
})
FILTER2 = res("BGPFilter", "f2", {"importV4": [{"action": "Reject"}]})


def spec(**kw) -> PeerSpec:
    base = dict(address="10.0.0.2", peer_as=64512, local_address="10.0.0.1", local_as=64512,
                router_id="10.0.0.1", peer_type=PeerType.GLOBAL)
    base.update(kw)
    return PeerSpec(**base)


REF = rib.PeerRef(address="10.0.0.2", asn=64512, router_id="10.0.0.2", kind=rib.PeerKind.IBGP)


def test_filter_rules_in_order_with_versions() -> None:
    imp, exp, problems = filter_rules(snapshot(FILTER, FILTER2), ("f1", "f2"))
    assert problems == []
    assert [(r.action, r.cidr, r.ip_version) for r in imp] == [
        ("Accept", "44.0.0.0/16", 4), ("Reject", None, 4), ("Accept", "5000::/64", 6),
        ("Reject", None, 4)]
    assert (imp[0].match_operator, imp[0].prefix_length_min, imp[0].prefix_length_max) == (
        "In", 24, 28)
    assert imp[1].source == "RemotePeers"
    assert imp[2].match_operator == "NotIn"
    assert [(r.action, r.cidr, r.match_operator, r.ip_version) for r in exp] == [
        ("Reject", "77.0.0.0/16", "Equal", 4), ("Accept", None, None, 6)]
    assert exp[1].interface == "eth*"


def test_prefix_length_min_shorter_than_the_cidr_is_clamped() -> None:
    # confd template_funcs.go filterMatchPrefixLength renders [ cidr{max(len, min),max} ];
    # issue 13: podbgp rejected the whole filter for it.
    f = res("BGPFilter", "wide", {"importV4": [
        {"action": "Accept", "cidr": "10.0.0.0/16", "matchOperator": "In",
         "prefixLength": {"min": 8, "max": 24}}]})
    (rule,), _, problems = filter_rules(snapshot(f), ("wide",))
    assert problems == []
    assert (rule.prefix_length_min, rule.prefix_length_max) == (16, 24)
    assert rule.matches((4, 10 << 24, 16), False) and not rule.matches((4, 10 << 24, 8), False)


def test_peer_policy_from_spec_and_filters() -> None:
    s = spec(filters=("f2", "missing", "f1"), max_prefixes=100,
             max_prefix_action="teardown", next_hop_mode=NextHopMode.SELF,
             num_allowed_local_as=2, port=1790)
    policy, problems = peer_policy(s, REF, snapshot(FILTER, FILTER2))
    assert problems == ["BGPFilter 'missing' not found"]
    assert policy.key == ("10.0.0.2", 1790) and policy.peer is REF
    assert policy.local_address == "10.0.0.1"
    assert policy.max_prefixes == 100
    assert policy.max_prefix_action == rib.MaxPrefixAction.TEARDOWN
    assert policy.next_hop_mode == NextHopMode.SELF
    assert policy.num_allowed_local_as == 2
    # f2's reject-all first, then f1's rules: order is the BGPPeer's filter order.
    assert [r.action for r in policy.import_filters] == ["Reject", "Accept", "Reject", "Accept"]
    assert len(policy.export_filters) == 2


def test_peer_policy_without_filters() -> None:
    policy, problems = peer_policy(spec(), REF, snapshot())
    assert problems == [] and policy.import_filters == () and policy.export_filters == ()
    assert policy.max_prefixes is None and policy.max_prefix_action == rib.MaxPrefixAction.STOP


@pytest.mark.parametrize(("kr", "want"), [
    (rib.KernelRoute("10.244.1.0/26", rib.RouteKind.BLACKHOLE),
     fib_sync.Route("10.244.1.0/26", fib_sync.RouteKind.BLACKHOLE)),
    (rib.KernelRoute("10.244.2.0/26", next_hops=("10.0.0.2",)),
     fib_sync.Route("10.244.2.0/26", nexthops=(fib_sync.NextHop("10.0.0.2"),))),
    (rib.KernelRoute("10.244.3.0/26", next_hops=("10.0.0.3", "10.0.0.2")),
     fib_sync.Route("10.244.3.0/26", nexthops=(fib_sync.NextHop("10.0.0.2"),
                                              fib_sync.NextHop("10.0.0.3")))),
    (rib.KernelRoute("10.244.4.0/26", next_hops=("10.1.0.4",), device="tunl0", onlink=True),
     fib_sync.Route("10.244.4.0/26", nexthops=(fib_sync.NextHop("10.1.0.4", dev="tunl0",
                                                                onlink=True),))),
    (rib.KernelRoute("fd00:1::/122", next_hops=("fd00::2",)),
     fib_sync.Route("fd00:1::/122", nexthops=(fib_sync.NextHop("fd00::2"),))),
])
def test_fib_route(kr: rib.KernelRoute, want: fib_sync.Route) -> None:
    got = fib_route(kr)
    assert got == want
    assert got.table is None and got.metric is None  # the syncer's defaults apply
    if kr.kind == rib.RouteKind.BLACKHOLE:
        assert got.nexthops == ()
    assert len(got.nexthops) == len(kr.next_hops)
    assert all(nh.onlink == kr.onlink and nh.dev == kr.device for nh in got.nexthops)


KERNEL_ROUTES = [
    rib.KernelRoute("10.244.1.0/26", rib.RouteKind.BLACKHOLE),
    rib.KernelRoute("10.244.2.0/26", next_hops=("10.0.0.2",)),
    rib.KernelRoute("10.244.3.0/26", next_hops=("10.0.0.3", "10.0.0.2")),
    rib.KernelRoute("10.244.4.0/26", next_hops=("10.1.0.4",), device="tunl0", onlink=True),
    rib.KernelRoute("0.0.0.0/0", next_hops=("10.0.0.2",)),
    rib.KernelRoute("10.0.0.1/32", next_hops=("10.0.0.2",)),
    rib.KernelRoute("fd00:1::/122", next_hops=("fd00::2",)),
    rib.KernelRoute("fd00:1::/122", rib.RouteKind.BLACKHOLE),
]


@pytest.mark.parametrize("kr", KERNEL_ROUTES, ids=lambda kr: f"{kr.prefix}-{kr.kind}")
@pytest.mark.parametrize(("table", "metric"), [(254, 20), (100, 0)])
def test_fib_routes_fast_path_equals_validating_path(kr, table, metric) -> None:
    conv = FibRoutes(table, metric)
    got = conv.route(kr)
    want = fib_route(kr).with_defaults(table, metric)
    assert got == want
    assert (got.table, got.metric, got.key) == (want.table, want.metric, want.key)
    assert (got.family, got.dst_len, got.packed) == (want.family, want.dst_len, want.packed)
    # with_defaults must not build a second object: the syncer keeps this one
    assert got.with_defaults(table, metric) is got
    assert conv.key(kr.prefix) == want.key
    # the RIB's own intent (prefix not validated again) gives the same route
    trusted = conv.from_rib(kr)
    assert trusted == want
    assert (trusted.table, trusted.metric, trusted.key, trusted.family, trusted.dst_len,
            trusted.packed) == (want.table, want.metric, want.key, want.family,
                                want.dst_len, want.packed)
    assert trusted.with_defaults(table, metric) is trusted
    # what the node queues for the FIB: the internal key and the shared spec
    key, spec = conv.ikey(kr.prefix), conv.spec(kr)
    assert key == internal_key(want.key) and spec == spec_of(want)
    again = route_of(key, spec)
    assert again == want and (again.key, again.family, again.dst_len) == (
        want.key, want.family, want.dst_len)


HOPS = [("10.0.0.2",), ("10.0.0.3",), ("10.0.0.2", "10.0.0.3"), ("fd00::2",)]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.sampled_from([None, "tunl0"]), st.booleans(),
                          st.sampled_from([24, 26, 32]), st.booleans()), max_size=20))
def test_fib_routes_spec_over_runs_equals_the_validating_path(runs) -> None:
    """FibRoutes.spec remembers its last answer for a run of routes via one next-hop
    tuple (one UPDATE's): every route in any sequence still gets the spec of its own
    validated route — the memo never answers for another length, device, onlink or
    kind."""
    conv = FibRoutes(254, 20)
    shared = [tuple(h) for h in HOPS]  # one object per next-hop set, as KernelContext's
    for i, (h, dev, onlink, plen, blackhole) in enumerate(runs):
        prefix = f"10.{i}.0.0/{plen}"
        kr = (rib.KernelRoute(prefix, rib.RouteKind.BLACKHOLE) if blackhole else
              rib.KernelRoute(prefix, next_hops=shared[h], device=dev, onlink=onlink and
                              dev is not None))
        try:
            want = spec_of(conv.route(kr))
        except ValueError:
            with pytest.raises(ValueError):
                conv.spec(kr)
            continue
        assert conv.spec(kr) == want


BAD_NEXT_HOPS = [
    rib.KernelRoute("10.244.2.0/26", next_hops=("fd00::2",)),  # family differs
    rib.KernelRoute("10.244.2.0/26", next_hops=("10.0.0.300",)),
    rib.KernelRoute("10.244.2.0/26"),  # unicast without a next hop
]


@pytest.mark.parametrize("kr", [
    rib.KernelRoute("10.244.2.1/26", next_hops=("10.0.0.2",)),  # host bits
    rib.KernelRoute("10.244.2.0/33", next_hops=("10.0.0.2",)),
    *BAD_NEXT_HOPS,
])
def test_fib_routes_bad_intent_raises_naming_it(kr) -> None:
    with pytest.raises(ValueError, match=r"dst|gateway|next hop|family"):
        FibRoutes(254, 20).route(kr)


@pytest.mark.parametrize("kr", BAD_NEXT_HOPS)
def test_fib_routes_from_rib_still_validates_next_hops(kr) -> None:
    # from_rib and spec trust only the prefix (validated by the parser and rib import)
    with pytest.raises(ValueError, match=r"gateway|next hop|family"):
        FibRoutes(254, 20).from_rib(kr)
    with pytest.raises(ValueError, match=r"gateway|next hop|family"):
        FibRoutes(254, 20).spec(kr)


def test_reachable_by_gives_an_exact_route_to_the_peer_via_the_gateway() -> None:
    # BGPPeer reachableBy (Calico: a /32 static route toward the peer so the session
    # does not ride on routes learned over itself).
    peers = [spec(address="10.225.0.4", reachable_by="10.224.0.1"),
             spec(address="ffee::10", reachable_by="fd00::1"),
             spec(address="10.225.0.5")]
    routes = reachable_by_routes(peers)
    assert routes == {
        "10.225.0.4/32": rib.KernelRoute("10.225.0.4/32", rib.RouteKind.UNICAST,
                                         ("10.224.0.1",)),
        "ffee::10/128": rib.KernelRoute("ffee::10/128", rib.RouteKind.UNICAST, ("fd00::1",)),
    }
    fib_route(routes["10.225.0.4/32"])  # a route fib_sync takes
