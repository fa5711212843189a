"""Import and export policy: safety rules, BGPFilter rules, route reflection.

Owned by rib/; pure functions called by ``rib.table.Rib``. Import is safe by
default (stricter than Calico, which imports everything): only prefixes inside
an enabled IPPool, or ones a BGPFilter import rule explicitly accepts. Every
rejection has a ``RejectReason`` the daemon logs and counts.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from rib.bestpath import DEFAULT_LOCAL_PREF
from rib.inputs import (
    FilterAction,
    NextHopMode,
    PeerPolicy,
    RibConfig,
    contains,
    first_match,
    parse_prefix,
    pool_for,
)
from rib.path import Origin, Path, PeerKind


class RejectReason(enum.StrEnum):
    """Why import policy dropped a path (a label value for the rejection metric)."""

    INVALID_PREFIX = "invalid-prefix"
    DEFAULT_ROUTE = "default-route"
    OWN_BLOCK = "own-block"  # one of this node's blocks, or inside one
    OWN_NEXT_HOP = "own-next-hop"  # next hop is an address of this node
    AS_LOOP = "as-loop"  # our AS in AS_PATH of an eBGP path (RFC 4271 §9.1.2)
    ORIGINATOR_LOOP = "originator-loop"  # ORIGINATOR_ID is our router id (RFC 4456 §8)
    CLUSTER_LOOP = "cluster-loop"  # our cluster id in CLUSTER_LIST (RFC 4456 §8)
    FILTER_REJECT = "filter-reject"  # a BGPFilter import rule said Reject
    NOT_IN_POOL = "not-in-pool"  # inside no IPPool
    POOL_DISABLED = "pool-disabled"  # only inside disabled IPPools
    SHORTER_THAN_POOL = "shorter-than-pool"  # less specific than the pool's CIDR
    MAX_PREFIX = "max-prefix"  # the peer's prefix limit is reached


class ImportContext:
    """Per-config precomputation for ``import_reason`` (parsed own blocks, pools)."""

    __slots__ = ("cluster_id", "config", "enabled_pools", "own_blocks", "pools")

    def __init__(self, config: RibConfig) -> None:
        self.config = config
        self.own_blocks = tuple(parse_prefix(b) for b in config.own_blocks)
        self.pools = tuple(sorted(config.pools, key=lambda p: -p.parsed[2]))
        self.enabled_pools = tuple(p for p in self.pools if not p.disabled)
        self.cluster_id = config.cluster_id or config.router_id


def import_reason(path: Path, policy: PeerPolicy, ctx: ImportContext) -> RejectReason | None:
    """None if the path is accepted; otherwise the first rule that rejects it.

    Order: safety rules (never overridable), then BGPFilter import rules (first
    match wins; Accept admits a prefix outside the pools), then the pool rule.
    """
    try:
        parsed = parse_prefix(path.prefix)
    except ValueError:
        return RejectReason.INVALID_PREFIX
    if parsed[2] == 0:
        return RejectReason.DEFAULT_ROUTE
    for block in ctx.own_blocks:
        if contains(block, parsed):
            return RejectReason.OWN_BLOCK
    cfg = ctx.config
    if path.next_hop in cfg.node_addresses:
        return RejectReason.OWN_NEXT_HOP
    if path.peer.kind is PeerKind.EBGP and path.as_path:
        local_as = path.peer.local_asn or cfg.local_asn
        if path.as_path.count(local_as) > policy.num_allowed_local_as:
            return RejectReason.AS_LOOP
    if path.originator_id is not None and path.originator_id == cfg.router_id:
        return RejectReason.ORIGINATOR_LOOP
    if path.cluster_list and ctx.cluster_id in path.cluster_list:
        return RejectReason.CLUSTER_LOOP
    if policy.import_filters:
        action = first_match(policy.import_filters, parsed, False)
        if action is FilterAction.ACCEPT:
            return None
        if action is FilterAction.REJECT:
            return RejectReason.FILTER_REJECT
    for pool in ctx.enabled_pools:
        if contains(pool.parsed, parsed):
            return None
    # Not inside an enabled pool: say the most helpful reason.
    pool = pool_for(ctx.pools, parsed)
    if pool is not None:
        return RejectReason.POOL_DISABLED
    for pool in ctx.pools:
        if contains(parsed, pool.parsed):
            return RejectReason.SHORTER_THAN_POOL
    return RejectReason.NOT_IN_POOL


@dataclass(frozen=True, slots=True)
class ExportAttrs:
    """The attributes one prefix is announced with to one peer.

    Interned by ``rib.table.Rib`` so prefixes that share attributes share one
    object; the speaker batches ``announce attributes ... nlri P1 P2 ...`` per
    object.
    """

    next_hop: str
    origin: Origin = Origin.IGP
    as_path: tuple[int, ...] = ()
    local_pref: int | None = None
    med: int | None = None
    communities: tuple[tuple[int, int], ...] = ()
    large_communities: tuple[tuple[int, int, int], ...] = ()
    originator_id: str | None = None
    cluster_list: tuple[str, ...] = ()


class ExportContext:
    """Per-config precomputation for ``export_attrs``."""

    __slots__ = ("config", "no_export_pools")

    def __init__(self, config: RibConfig) -> None:
        self.config = config
        self.no_export_pools = tuple(p for p in config.pools if p.disable_bgp_export)


def export_key(path: Path, target: PeerPolicy, ctx: ExportContext) -> tuple | None:
    """The attributes ``path`` (a Loc-RIB best path) is sent to ``target`` with, as a
    plain tuple in ``ExportAttrs`` field order, or None if it must not be sent.

    A tuple (not an ExportAttrs) so the caller can intern without building an
    object per prefix and peer.
    """
    cfg = ctx.config
    source = path.peer
    tpeer = target.peer
    to_ebgp = tpeer.kind is PeerKind.EBGP
    originated = source.kind is PeerKind.LOCAL
    if not originated:
        # Never back to the peer it came from (split horizon for both kinds).
        if source.address == tpeer.address:
            return None
        if source.kind is PeerKind.IBGP and not to_ebgp:
            # RFC 4456 §6 / RFC 4271 §9.2: iBGP routes go to iBGP peers only via a reflector.
            if cfg.cluster_id is None:
                return None
            if not source.rr_client and not tpeer.rr_client:
                return None
    if ctx.no_export_pools or target.export_filters:
        parsed = parse_prefix(path.prefix)
        for pool in ctx.no_export_pools:
            if contains(pool.parsed, parsed):
                return None
        if target.export_filters and (
            first_match(target.export_filters, parsed, originated) is FilterAction.REJECT
        ):
            return None
    # Next hop (Calico nextHopMode): originated routes always carry ours.
    mode = target.next_hop_mode
    if originated or mode is NextHopMode.SELF or (mode is NextHopMode.AUTO and to_ebgp):
        next_hop = target.self_next_hop
    else:
        next_hop = path.next_hop
    if to_ebgp:
        # RFC 4271 §5.1.2: prepend our AS; LOCAL_PREF (§5.1.5), ORIGINATOR_ID and
        # CLUSTER_LIST (RFC 4456 §8) stay inside the AS; a learned MED is not passed
        # on to another AS (§5.1.4).
        local_as = tpeer.local_asn or cfg.local_asn
        return (
            next_hop,
            path.origin,
            (local_as, *path.as_path),
            None,
            path.med if originated else None,
            path.communities,
            path.large_communities,
            None,
            (),
        )
    local_pref = DEFAULT_LOCAL_PREF if path.local_pref is None else path.local_pref
    if originated or source.kind is PeerKind.EBGP:
        return (next_hop, path.origin, path.as_path, local_pref, path.med,
                path.communities, path.large_communities, None, ())
    # Reflecting an iBGP route (RFC 4456 §8): ORIGINATOR_ID = the route's originator,
    # our cluster id prepended to CLUSTER_LIST; next hop kept unless the mode says Self.
    return (
        next_hop,
        path.origin,
        path.as_path,
        local_pref,
        path.med,
        path.communities,
        path.large_communities,
        path.originator_id or source.router_id,
        (cfg.cluster_id, *path.cluster_list),
    )
