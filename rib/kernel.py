"""Kernel intent: which routes the FIB should hold, derived from Loc-RIB best paths.

Owned by rib/. ``KernelRoute`` is rib's own type; the daemon converts it to
``fib_sync.Route`` and hands fib_sync whole desired sets. Rules (Calico's
BIRD config for the BGP half, Felix's route managers for the tunnel half):
- a blackhole for each of this node's blocks;
- remote prefixes via the next hop(s) of the best path / ECMP set;
- a remote block of a pool ("cluster route") only when this node programs
  that kind of pool (``RibConfig.cluster_routes``: Calico's
  ``programClusterRoutes`` split, or all of them when podbgp runs the data
  plane itself);
- IPIP pools via ``tunl0`` onlink (CrossSubnet: only when a next hop is off
  this node's subnets), none while ``tunl0`` is not usable;
- VXLAN pools via the next hop's VTEP on the VXLAN device, onlink (Felix's
  vxlan_mgr.go ``tunnelRoute``); CrossSubnet: a plain route when every next
  hop is on this node's subnets (Felix's ``noEncapRoute``); none while a
  next hop's VTEP is unknown;
- service prefixes are kube-proxy's and not programmed.
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

    __slots__ = ("cluster", "config", "nh1_cache", "nh_cache", "own_blocks", "pools",
                 "subnets", "tunnel_cache", "vteps")

    def __init__(self, config: RibConfig) -> None:
        self.config = config
        self.cluster = config.cluster_routes
        self.vteps = dict(self.cluster.vteps)
        self.own_blocks = frozenset(config.own_blocks)
        # Only pools with an encapsulation (or a kind of pool this node does not
        # program) change a route; skip the per-route pool lookup (a prefix parse)
        # when there are none.
        pools = tuple(sorted(config.pools, key=lambda p: -p.parsed[2]))
        encap = any(
            p.ipip_mode is not EncapMode.NEVER or p.vxlan_mode is not EncapMode.NEVER
            for p in pools
        )
        self.pools = pools if encap or not self.cluster.no_encap else ()
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
    best = members[0].attrs  # one read of the shared attributes, then plain slots
    if best.peer.kind is PeerKind.LOCAL:
        if prefix in ctx.own_blocks:
            return KernelRoute(prefix, RouteKind.BLACKHOLE, (), None, False, cfg.route_metric)
        return None  # service prefixes: kube-proxy's business
    pool = pool_for(ctx.pools, parse_prefix(prefix)) if ctx.pools else None
    return _pool_route(prefix, members, pool, ctx)


def lone_kernel_route(prefix: str, path: Path, ctx: KernelContext,
                      memo: list) -> KernelRoute | None:
    """``kernel_route(prefix, (path,), ctx)`` for a run of prefixes that each have one
    candidate (a burst of new prefixes, one UPDATE's paths sharing one PathAttrs).

    For a peer's path the route depends on the prefix only through its pool (and
    the pool's family): the answer for the previous prefix with the same
    attributes object and pool is reused with this prefix (``memo``: the caller's
    empty list, kept for one RIB operation under one ``ctx``). A local path
    (own blocks) takes ``kernel_route``."""
    attrs = path.attrs
    if attrs.peer.kind is PeerKind.LOCAL:
        return kernel_route(prefix, (path,), ctx)
    pool = pool_for(ctx.pools, parse_prefix(prefix)) if ctx.pools else None
    if memo and memo[0] is attrs and memo[1] is pool:
        fields_ = memo[2]
        return None if fields_ is None else _kernel_route(prefix, *fields_)
    route = _pool_route(prefix, (path,), pool, ctx)
    memo[:] = (attrs, pool, None if route is None else (
        route.kind, route.next_hops, route.device, route.onlink, route.metric))
    return route


def _pool_route(prefix: str, members: Sequence[Path], pool, ctx: KernelContext
                ) -> KernelRoute | None:
    """``kernel_route`` once the pool of a peer's ``prefix`` is known (None: none)."""
    cfg = ctx.config
    best = members[0].attrs
    cluster = ctx.cluster
    if pool is not None:
        if pool.vxlan_mode is not EncapMode.NEVER:
            if not cluster.vxlan:
                return None  # Felix's, or VXLAN not usable on this node
            return _vxlan_route(prefix, members, pool.vxlan_mode, ctx)
        if pool.ipip_mode is not EncapMode.NEVER:
            if not cluster.ipip:
                return None
        elif not cluster.no_encap:
            return None
    if len(members) == 1:
        # Keyed by the next hop itself: no tuple built per route.
        nh = best.next_hop
        hops: tuple[str, ...] | None = ctx.nh1_cache.get(nh)
        if hops is None:
            hops = (nh,)
            hops = ctx.nh1_cache[nh] = ctx.nh_cache.setdefault(hops, hops)
    else:
        hops = tuple(sorted({p.attrs.next_hop for p in members}))
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
        if not cluster.ipip_ready:
            return None  # tunl0 is not usable here: the route would fail
        return _kernel_route(prefix, RouteKind.UNICAST, hops, cfg.tunnel_device, True,
                             cfg.route_metric)
    return _kernel_route(prefix, RouteKind.UNICAST, hops, None, False, cfg.route_metric)


def _vxlan_route(prefix: str, members: Sequence[Path], mode: EncapMode,
                 ctx: KernelContext) -> KernelRoute | None:
    """A remote block of a VXLAN pool: via each next hop's VTEP on the VXLAN
    device, onlink; CrossSubnet with every next hop on this node's subnets: a
    plain route via the next hops. None while a next hop's VTEP is unknown."""
    cfg = ctx.config
    nhs = tuple(sorted({p.next_hop for p in members}))
    if mode is EncapMode.CROSS_SUBNET and not any(ctx.off_subnet(h) for h in nhs):
        hops = ctx.nh_cache.setdefault(nhs, nhs)
        return _kernel_route(prefix, RouteKind.UNICAST, hops, None, False, cfg.route_metric)
    vteps = []
    for h in nhs:
        vtep = ctx.vteps.get(h)
        if vtep is None:
            return None
        vteps.append(vtep)
    hops = tuple(sorted(vteps))
    hops = ctx.nh_cache.setdefault(hops, hops)
    device = ctx.cluster.vxlan6_device if ":" in prefix else ctx.cluster.vxlan_device
    return _kernel_route(prefix, RouteKind.UNICAST, hops, device, True, cfg.route_metric)


def unprogrammable(prefix: str, members: Sequence[Path], ctx: KernelContext) -> str | None:
    """Why the remote ``prefix`` of a tunnelled pool this node should program
    has no kernel route (``kernel_route`` returned None), or None when that is
    not the reason (no pool, another component's job, a local prefix)."""
    if not members or members[0].peer.kind is PeerKind.LOCAL or not ctx.pools:
        return None
    pool = pool_for(ctx.pools, parse_prefix(prefix))
    if pool is None:
        return None
    cluster = ctx.cluster
    if pool.vxlan_mode is not EncapMode.NEVER:
        if not cluster.vxlan:
            return None
        missing = sorted({p.next_hop for p in members if p.next_hop not in ctx.vteps})
        if missing:
            return f"no VTEP known for next hop {', '.join(missing)} (its Node resource has none)"
        return None
    if pool.ipip_mode is not EncapMode.NEVER and cluster.ipip and not cluster.ipip_ready:
        return f"pool {pool.cidr} needs IPIP and tunl0 is not usable"
    return None


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
