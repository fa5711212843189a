"""Translation between packages: config Snapshot -> rib inputs, rib intent -> fib routes.

Owned by bgpd/ (the daemon is the only place that knows all three packages);
pure functions, so what the daemon feeds rib and fib_sync is unit-tested here.
"""

from __future__ import annotations

import ipaddress
import socket
from functools import lru_cache

import structlog

import fib_sync
import rib
from bgpd.peers import LocalNode
from bgpd.peerspec import PeerSpec
from config.model import BGPFilterRule, community_value
from config.snapshot import Snapshot
from fib_sync.route import (
    IPV6_DEFAULT_METRIC,
    IKey,
    RouteSpec,
    ikey,
    route_spec,
    spec_of,
    trusted_route,
)
from rib.inputs import canonical_ipv4_len

log = structlog.get_logger(__name__)


def _communities(values) -> tuple[tuple, tuple]:
    std, large = [], []
    for v in values:
        parsed = community_value(v)
        if parsed is None:
            continue
        (large if len(parsed) == 3 else std).append(tuple(parsed))
    return tuple(std), tuple(large)


def rib_config(snap: Snapshot, me: LocalNode, *, max_paths: int = 1,
               node_cidrs: tuple[str, ...] = (),
               cluster_routes: rib.ClusterRoutes | None = None) -> rib.RibConfig:
    """The RibConfig for this node from a snapshot (pools, own blocks, services...).
    ``cluster_routes``: the data plane's word on which remote blocks to program
    and how (bgpd.dataplane); None: rib's default."""
    conf = snap.effective_bgp_config(me.name)
    pools = tuple(
        rib.Pool(cidr=p.spec.cidr, block_size=p.spec.block_size, ipip_mode=p.spec.ipip_mode,
                 vxlan_mode=p.spec.vxlan_mode, disabled=p.spec.disabled,
                 disable_bgp_export=p.spec.disable_bgp_export)
        for _, p in sorted(snap.ippools.items())
    )
    services: list[str] = []
    for lst in (conf.service_cluster_ips, conf.service_external_ips,
                conf.service_load_balancer_ips):
        services.extend(str(ipaddress.ip_network(s.cidr)) for s in (lst or ()) if s.cidr)
    named = {c.name: c.value for c in (conf.communities or ())}
    advs = []
    for pa in conf.prefix_advertisements or ():
        std, large = _communities(named.get(c, c) for c in pa.communities)
        advs.append(rib.PrefixAdvertisement(cidr=str(ipaddress.ip_network(pa.cidr)),
                                            communities=std, large_communities=large))
    node = snap.nodes.get(me.name)
    subnets = list(node_cidrs)
    bgp = node.spec.bgp if node is not None else None
    for addr in (bgp.ipv4_address, bgp.ipv6_address) if bgp else ():
        if addr:
            subnets.append(str(ipaddress.ip_interface(addr).network))
    held: list[str] = []
    lent: list[tuple[str, str]] = []
    for x in snap.lent:
        if x.holder == me.name:
            held.append(x.prefix)
        elif x.owner == me.name:
            holder = snap.node_bgp_addresses(x.holder)[1 if ":" in x.ip else 0]
            if holder:
                lent.append((x.prefix, holder))
    return rib.RibConfig(
        held=tuple(held), lent=tuple(lent),
        local_asn=me.asn, router_id=me.router_id, cluster_id=me.cluster_id,
        node_addresses=frozenset(me.addresses), own_blocks=snap.node_blocks(me.name),
        node_subnets=tuple(dict.fromkeys(subnets)), pools=pools,
        service_prefixes=tuple(dict.fromkeys(services)), prefix_advertisements=tuple(advs),
        max_paths=max_paths, cluster_routes=cluster_routes or rib.ClusterRoutes(),
    )


def _filter_rule(rule: BGPFilterRule, version: int) -> rib.FilterRule:
    pl = rule.prefix_length
    lo = pl.min if pl else None
    if lo is not None and rule.network is not None:
        # confd (template_funcs.go filterMatchPrefixLength): max(cidr length, min).
        lo = max(lo, rule.network.prefixlen)
    comms = tuple(community_value(v) for v in (rule.communities.values
                                               if rule.communities else ()))
    ops: list[tuple[str, object]] = []
    for op in rule.operations or ():
        if op.add_community is not None:
            ops.append(("community", community_value(op.add_community.value)))
        elif op.prepend_as_path is not None:
            ops.append(("prepend", tuple(op.prepend_as_path.prefix)))
        elif op.set_priority is not None:
            ops.append(("priority", op.set_priority.value))
    return rib.FilterRule(
        action=rule.action, cidr=str(rule.cidr) if rule.cidr else None,
        match_operator=rule.match_operator,
        prefix_length_min=lo, prefix_length_max=pl.max if pl else None,
        source=rule.source or "", interface=rule.interface, ip_version=version,
        communities=comms, as_path_prefix=tuple(rule.as_path_prefix or ()),
        priority=rule.priority, operations=tuple(ops),
    )


def filter_rules(snap: Snapshot, names: tuple[str, ...], same_as: bool | None = None
                 ) -> tuple[tuple, tuple, list[str]]:
    """(import rules, export rules, problems) of the named BGPFilters, in order.

    A filter that does not exist is a problem the daemon reports; Calico would
    also skip it. Unknown-but-named filters never widen import: the safety
    rules and pool rule still apply. ``same_as``: the session is iBGP (peer AS =
    the local AS, Calico's ``is_same_as``); rules with a ``peerType`` for the other
    kind are left out (None: all kept).
    """
    imp: list[rib.FilterRule] = []
    exp: list[rib.FilterRule] = []
    problems: list[str] = []
    for name in names:
        f = snap.bgp_filters.get(name)
        if f is None:
            problems.append(f"BGPFilter {name!r} not found")
            continue
        for rules, version, out in ((f.spec.import_v4, 4, imp), (f.spec.import_v6, 6, imp),
                                    (f.spec.export_v4, 4, exp), (f.spec.export_v6, 6, exp)):
            for r in rules:
                if same_as is not None and r.peer_type is not None and (
                        (r.peer_type == "iBGP") != same_as):
                    continue
                try:
                    out.append(_filter_rule(r, version))
                except ValueError as e:
                    problems.append(f"BGPFilter {name!r}: {e}")
    return tuple(imp), tuple(exp), problems


def peer_policy(spec: PeerSpec, ref: rib.PeerRef, snap: Snapshot) -> tuple[rib.PeerPolicy,
                                                                           list[str]]:
    imp, exp, problems = filter_rules(snap, spec.filters, spec.peer_as == spec.local_as)
    return rib.PeerPolicy(
        key=spec.key, peer=ref, local_address=spec.local_address, import_filters=imp,
        export_filters=exp, max_prefixes=spec.max_prefixes,
        max_prefix_action=rib.MaxPrefixAction(spec.max_prefix_action),
        next_hop_mode=spec.next_hop_mode,
        num_allowed_local_as=spec.num_allowed_local_as,
    ), problems


def reachable_by_routes(peers) -> dict[str, rib.KernelRoute]:
    """BGPPeer ``reachableBy``: an exact route to the peer via the given gateway, so the
    session does not depend on (and flap with) routes learned over it (Calico adds the
    same /32 or /128, confd bird.cfg.template). Keyed by prefix; podbgp owns them."""
    out: dict[str, rib.KernelRoute] = {}
    for spec in peers:
        gw = getattr(spec, "reachable_by", None)
        if not gw:
            continue
        ip = ipaddress.ip_address(spec.address)
        prefix = f"{ip}/{ip.max_prefixlen}"
        out.setdefault(prefix, rib.KernelRoute(prefix, rib.RouteKind.UNICAST, (str(gw),)))
    return out


def fib_route(kr: rib.KernelRoute) -> fib_sync.Route:
    """rib's kernel intent as a fib_sync route (table/metric: the syncer's defaults)."""
    if kr.kind == rib.RouteKind.BLACKHOLE:
        return fib_sync.Route(kr.prefix, fib_sync.RouteKind.BLACKHOLE)
    return fib_sync.Route(kr.prefix, nexthops=_nexthops(tuple(kr.next_hops), kr.device,
                                                        kr.onlink))


@lru_cache(maxsize=4096)
def _nexthops(gateways: tuple[str, ...], dev: str | None, onlink: bool) -> tuple:
    # Thousands of routes share a handful of next-hop sets; building and validating
    # NextHops per route was ~15% of the daemon's time in a 100k burst (bench.convergence).
    return tuple(fib_sync.NextHop(gw, dev=dev, onlink=onlink) for gw in gateways)


@lru_cache(maxsize=4096)
def _v4_nexthops(gateways: tuple[str, ...], dev: str | None, onlink: bool) -> tuple | None:
    """Validated, sorted NextHops of an all-IPv4 next-hop set (None: not all IPv4)."""
    if any(":" in gw for gw in gateways):
        return None
    nhs = _nexthops(gateways, dev, onlink)
    return tuple(sorted(nhs, key=lambda n: (n.gateway or "", n.dev or "")))


class FibRoutes:
    """rib KernelRoutes -> fib_sync Routes already carrying the syncer's table and metric.

    Owned by the daemon (one per FibSyncer). The hot path of a route burst: rib's
    prefixes are canonical (events and RibConfig canonicalise them) and next-hop
    sets are validated once per set, so an IPv4 route is built with
    ``trusted_route`` instead of re-validating every field (~3 µs a route, ~15% of
    the daemon's time in a 100k burst). Anything else takes the validating
    ``fib_route`` path, which raises ValueError naming the bad value.
    """

    __slots__ = ("_memo", "metric", "metric6", "table")

    def __init__(self, table: int, metric: int) -> None:
        self.table = table
        self.metric = metric
        self.metric6 = metric or IPV6_DEFAULT_METRIC  # the kernel stores IPv6 metric 0 as 1024
        # spec()'s last answer: (next hops, device, onlink, prefix length, RouteSpec)
        self._memo: tuple = (None, None, None, None, None)

    def key(self, prefix: str) -> fib_sync.RouteKey:
        """The fib_sync key of the route for ``prefix``: what a withdrawal names."""
        return (self.table, prefix, self.metric6 if ":" in prefix else self.metric)

    def ikey(self, prefix: str) -> IKey:
        """``key(prefix)`` as fib_sync keeps it (the prefix itself for the main table
        and the default metric)."""
        return ikey(self.table, prefix, self.metric6 if ":" in prefix else self.metric)

    def spec(self, kr: rib.KernelRoute, *, _unicast=rib.RouteKind.UNICAST,
             _fib_unicast=fib_sync.RouteKind.UNICAST, _af=socket.AF_INET) -> RouteSpec:
        """``spec_of(from_rib(kr))`` without the Route: what the daemon queues for the
        FIB per route (fib_sync keeps a prefix's key and its shared spec, issue 17).
        A run of routes via one next-hop set (one UPDATE's) gets the previous answer
        back after an identity check; the RIB's prefixes are trusted as in
        ``from_rib``."""
        prefix = kr.prefix
        hops = kr.next_hops
        if type(hops) is tuple and hops and kr.kind is _unicast and ":" not in prefix:
            plen = int(prefix[prefix.index("/") + 1:])
            m_hops, m_dev, m_onlink, m_plen, m_spec = self._memo
            if hops is m_hops and plen == m_plen and kr.device == m_dev and (
                    kr.onlink == m_onlink):
                return m_spec
            nhs = _v4_nexthops(hops, kr.device, kr.onlink)
            if nhs is not None:
                spec = route_spec(_fib_unicast, nhs, self.table, self.metric, _af, plen)
                self._memo = (hops, kr.device, kr.onlink, plen, spec)
                return spec
        return spec_of(self.route(kr))

    def route(self, kr: rib.KernelRoute) -> fib_sync.Route:
        prefix = kr.prefix
        plen = canonical_ipv4_len(prefix)
        if plen >= 0:
            if kr.kind == rib.RouteKind.BLACKHOLE:
                return trusted_route(prefix, fib_sync.RouteKind.BLACKHOLE, (), self.table,
                                     self.metric, socket.AF_INET, plen)
            nhs = _v4_nexthops(tuple(kr.next_hops), kr.device, kr.onlink) \
                if kr.next_hops else None
            if nhs is not None:
                return trusted_route(prefix, fib_sync.RouteKind.UNICAST, nhs, self.table,
                                     self.metric, socket.AF_INET, plen)
        return fib_route(kr).with_defaults(self.table, self.metric)

    def from_rib(self, kr: rib.KernelRoute, *, _unicast=rib.RouteKind.UNICAST,
                 _fib_unicast=fib_sync.RouteKind.UNICAST, _af=socket.AF_INET) -> fib_sync.Route:
        """``route(kr)`` for the RIB's own kernel intent, whose prefixes were validated
        on their way in (bgpd.exabgp.parse canonicalises every NLRI, rib import rejects
        host bits and bad text, RibConfig canonicalises blocks): an IPv4 unicast
        route's prefix length is read, not validated a second time (~2.5 µs a route in
        a 100k burst, issue 17). Next hops are still validated (cached per set);
        anything else takes ``route``."""
        prefix = kr.prefix
        hops = kr.next_hops
        if type(hops) is tuple and hops and kr.kind is _unicast and ":" not in prefix:
            nhs = _v4_nexthops(hops, kr.device, kr.onlink)
            if nhs is not None:
                return trusted_route(prefix, _fib_unicast, nhs, self.table, self.metric, _af,
                                     int(prefix[prefix.index("/") + 1:]))
        return self.route(kr)
