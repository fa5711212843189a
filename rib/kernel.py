"""Kernel intent: which routes the FIB should hold, derived from Loc-RIB best paths.

Owned by rib/. ``KernelRoute`` is rib's own type; the daemon converts it to
``fib_sync.Route`` and hands fib_sync whole desired sets. Rules (as Calico's
BIRD config does): a blackhole for each of this node's blocks; remote prefixes
via the next hop(s) of the best path / ECMP set; IPIP pools via ``tunl0``
onlink (CrossSubnet: only when a next hop is outside this node's subnets);
VXLAN pools are Felix's job and not programmed here; service prefixes are
kube-proxy's and not programmed either.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, fields

from rib.inputs import EncapMode, RibConfig, address_in, parse_prefix, pool_for
from rib.path import Path, PeerKind


class RouteKind(enum.StrEnum):
    UNICAST = "unicast"
    BLACKHOLE = "blackhole"


@dataclass(frozen=True, slots=True)
class KernelRoute:
    """One desired kernel route. Next hops are sorted, so equal intent compares equal."""

    prefix: str
    kind: RouteKind = RouteKind.UNICAST
    next_hops: tuple[str, ...] = ()
    device: str | None = None
    onlink: bool = False
    metric: int = 0


class KernelContext:
    """Per-config precomputation for ``kernel_route``."""

    __slots__ = ("config", "nh1_cache", "nh_cache", "own_blocks", "pools", "subnets",
                 "tunnel_cache")

    def __init__(self, config: RibConfig) -> None:
        self.config = config
        self.own_blocks = frozenset(config.own_blocks)
        # Only pools with an encapsulation change a route; skip the per-route pool
        # lookup (a prefix parse) when there are none.
        pools = tuple(sorted(config.pools, key=lambda p: -p.parsed[2]))
        encap = any(
            p.ipip_mode is not EncapMode.NEVER or p.vxlan_mode is not EncapMode.NEVER
            for p in pools
        )
        self.pools = pools if encap else ()
        self.subnets = tuple(parse_prefix(s) for s in config.node_subnets)
        # Shared next-hop tuples and "is this next hop off-subnet" answers: few
        # distinct next hops (one per node), many routes.
        self.nh_cache: dict[tuple[str, ...], tuple[str, ...]] = {}
        self.nh1_cache: dict[str, tuple[str, ...]] = {}  # next hop -> its shared 1-tuple
        self.tunnel_cache: dict[str, bool] = {}

    def off_subnet(self, next_hop: str) -> bool:
        v = self.tunnel_cache.get(next_hop)
        if v is None:
            v = not any(address_in(s, next_hop) for s in self.subnets)
            self.tunnel_cache[next_hop] = v
        return v


def kernel_route(prefix: str, members: Sequence[Path], ctx: KernelContext) -> KernelRoute | None:
    """The desired route for ``prefix`` given its best path + ECMP members, or None."""
    if not members:
        return None
    cfg = ctx.config
    best = members[0]
    if best.peer.kind is PeerKind.LOCAL:
        if prefix in ctx.own_blocks:
            return KernelRoute(prefix, RouteKind.BLACKHOLE, (), None, False, cfg.route_metric)
        return None  # service prefixes: kube-proxy's business
    pool = pool_for(ctx.pools, parse_prefix(prefix)) if ctx.pools else None
    if pool is not None and pool.vxlan_mode is not EncapMode.NEVER:
        return None
    if len(members) == 1:
        # Keyed by the next hop itself: no tuple built per route.
        nh = best.next_hop
        hops: tuple[str, ...] | None = ctx.nh1_cache.get(nh)
        if hops is None:
            hops = (nh,)
            hops = ctx.nh1_cache[nh] = ctx.nh_cache.setdefault(hops, hops)
    else:
        hops = tuple(sorted({p.next_hop for p in members}))
        hops = ctx.nh_cache.setdefault(hops, hops)
    tunnel = False
    if pool is not None:
        if pool.ipip_mode is EncapMode.ALWAYS:
            tunnel = True
        elif pool.ipip_mode is EncapMode.CROSS_SUBNET:
            # One route, one device: if any next hop needs the tunnel, all use it
            # (IPIP to an on-subnet host works; plain routing to an off-subnet one does not).
            tunnel = any(ctx.off_subnet(h) for h in hops)
    if tunnel:
        return _kernel_route(prefix, RouteKind.UNICAST, hops, cfg.tunnel_device, True,
                             cfg.route_metric)
    return _kernel_route(prefix, RouteKind.UNICAST, hops, None, False, cfg.route_metric)


_SET = {name: KernelRoute.__dict__[name].__set__
        for name in ("prefix", "kind", "next_hops", "device", "onlink", "metric")}
assert tuple(f.name for f in fields(KernelRoute)) == tuple(_SET), "update rib.kernel._kernel_route"


def _kernel_route(
    prefix: str, kind: RouteKind, hops: tuple[str, ...], device: str | None, onlink: bool,
    metric: int, *, _new=object.__new__, _p=_SET["prefix"], _k=_SET["kind"],
    _h=_SET["next_hops"], _d=_SET["device"], _o=_SET["onlink"], _m=_SET["metric"],
) -> KernelRoute:
    # ``KernelRoute(...)`` with arguments already checked by ``kernel_route``, without
    # the frozen dataclass's object.__setattr__ per field (one per route in a burst).
    r = _new(KernelRoute)
    _p(r, prefix)
    _k(r, kind)
    _h(r, hops)
    _d(r, device)
    _o(r, onlink)
    _m(r, metric)
    return r
