"""Import and export policy: safety rules, BGPFilter rules, route reflection.

Owned by rib/; pure functions called by ``rib.table.Rib``. Import is safe by
default (stricter than Calico, which imports everything): only prefixes inside
an IPPool, or ones a BGPFilter import rule explicitly accepts. A *disabled*
pool still routes, as in Calico (``disabled`` only stops IPAM allocating from
it; its pods keep their addresses until recreated — Calico's documented pool
migration). Every rejection has a ``RejectReason`` the daemon logs and counts.

Export follows Calico's ``calico_export_to_bgp_peers`` (confd's
``bird_ipam.cfg.template``): a route learned from a peer is passed on only if
it lies inside an IPPool (not ``disableBGPExport``) or a service range, unless a
BGPFilter export rule explicitly accepts it. A prefix that only an import
filter let in is used on this node and never re-advertised: accepting a
route does not make the node a transit for it.
"""

from __future__ import annotations

import enum
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from rib.bestpath import DEFAULT_LOCAL_PREF
from rib.inputs import (
    IPV4_HOST_MASKS,
    IPV4_LENGTHS,
    FilterAction,
    NextHopMode,
    PeerPolicy,
    RibConfig,
    apply_operations,
    contains,
    first_match,
    first_rule,
    parse_prefix,
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
    POOL_DISABLED = "pool-disabled"  # (no longer returned: disabled pools route, as in Calico)
    SHORTER_THAN_POOL = "shorter-than-pool"  # less specific than the pool's CIDR
    MAX_PREFIX = "max-prefix"  # the peer's prefix limit is reached


class ImportContext:
    """Per-config precomputation for ``import_reason`` (parsed own blocks, pools)."""

    __slots__ = ("cluster_id", "config", "lent", "own_blocks", "own_v4", "pools", "pools_v4")

    def __init__(self, config: RibConfig) -> None:
        self.config = config
        self.own_blocks = tuple(parse_prefix(b) for b in config.own_blocks)
        self.lent = dict(config.lent)  # /32 of an own block -> the holder's address
        self.pools = tuple(sorted(config.pools, key=lambda p: -p.parsed[2]))
        self.cluster_id = config.cluster_id or config.router_id
        # ``contains`` for IPv4 prefixes, unrolled for import_reasons' loop: per IPv4
        # block/pool (length, host bits to shift out, network >> those bits)
        self.own_v4 = _v4_tests(self.own_blocks)
        self.pools_v4 = _v4_tests(p.parsed for p in self.pools)


def _v4_tests(parsed: Iterable[tuple[int, int, int]]) -> tuple[tuple[int, int, int], ...]:
    """(length, shift, network >> shift) of each IPv4 prefix: an IPv4 (net, plen) is
    inside it iff ``plen >= length and net >> shift == network >> shift``."""
    return tuple((plen, 32 - plen, net >> (32 - plen)) for v, net, plen in parsed if v == 4)


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
        if contains(block, parsed) and not _lent_from_holder(path, ctx):
            return RejectReason.OWN_BLOCK
    reason = _attr_reason(path, policy, ctx)
    if reason is not None:
        return reason
    if policy.import_filters:
        action = first_match(policy.import_filters, parsed, False, path)
        if action is FilterAction.ACCEPT:
            return None
        if action is FilterAction.REJECT:
            return RejectReason.FILTER_REJECT
    for pool in ctx.pools:
        if contains(pool.parsed, parsed):
            return None
    return _outside_pools(parsed, ctx)


def import_reasons(
    paths: Sequence[Path], policy: PeerPolicy, ctx: ImportContext,
    *, _pton=socket.inet_pton, _af=socket.AF_INET, _len=IPV4_LENGTHS.get,
    _host=IPV4_HOST_MASKS, _int=int.from_bytes,
) -> list[RejectReason | None]:
    """``[import_reason(p, policy, ctx) for p in paths]``, computed per UPDATE.

    The paths of one UPDATE share one ``PathAttrs`` (``rib.path.paths_for``), so the
    rules that read only attributes and the peer (own next hop, AS loop,
    originator and cluster loop) run once per run of paths with the same one,
    and IPv4 prefixes are parsed inline. Rule order and reasons are exactly
    ``import_reason``'s (tests/unit/test_rib_import.py checks the two agree).
    """
    out: list[RejectReason | None] = []
    append = out.append
    own_blocks = ctx.own_blocks
    filters = policy.import_filters
    enabled = ctx.pools  # disabled pools route too
    own_v4, pools_v4 = ctx.own_v4, ctx.pools_v4
    last = None  # the PathAttrs ``attr_reason`` was computed for
    attr_reason: RejectReason | None = None
    for path in paths:
        prefix = path.prefix
        # parse_prefix's IPv4 fast path, inline (anything else: the function itself).
        # A canonical length ("0".."32") is one dict lookup; any other text (e.g. "026")
        # goes to parse_prefix below, which decides as before.
        addr, _, plen_s = prefix.partition("/")
        parsed = None
        plen = _len(plen_s)
        if plen is not None and ":" not in addr:
            try:
                packed = _pton(_af, addr)
            except OSError:
                packed = None
            if packed is not None:
                net = _int(packed, "big")
                if net & _host[plen]:
                    append(RejectReason.INVALID_PREFIX)
                    continue
                parsed = (4, net, plen)
        if parsed is None:
            try:
                parsed = parse_prefix(prefix)
            except ValueError:
                append(RejectReason.INVALID_PREFIX)
                continue
        version, net, plen = parsed
        if plen == 0:
            append(RejectReason.DEFAULT_ROUTE)
            continue
        reason = None
        if version == 4:
            for length, shift, block_net in own_v4:
                if plen >= length and net >> shift == block_net:
                    if not _lent_from_holder(path, ctx):
                        reason = RejectReason.OWN_BLOCK
                    break
        else:
            for block in own_blocks:
                if contains(block, parsed):
                    if not _lent_from_holder(path, ctx):
                        reason = RejectReason.OWN_BLOCK
                    break
        if reason is not None:
            append(reason)
            continue
        if path.attrs is not last:
            attr_reason = _attr_reason(path, policy, ctx)
            last = path.attrs
        if attr_reason is not None:
            append(attr_reason)
            continue
        if filters:
            action = first_match(filters, parsed, False, path)
            if action is FilterAction.ACCEPT:
                append(None)
                continue
            if action is FilterAction.REJECT:
                append(RejectReason.FILTER_REJECT)
                continue
        if version == 4:
            for length, shift, pool_net in pools_v4:
                if plen >= length and net >> shift == pool_net:
                    break
            else:
                append(_outside_pools(parsed, ctx))
                continue
        else:
            for pool in enabled:
                if contains(pool.parsed, parsed):
                    break
            else:
                append(_outside_pools(parsed, ctx))
                continue
        append(None)
    return out


def _lent_from_holder(path: Path, ctx: ImportContext) -> bool:
    """A borrowed address of an own block, announced with the node holding it (IPAM's
    allocation attribute) as next hop: the one more-specific of an own block accepted."""
    return bool(ctx.lent) and ctx.lent.get(path.prefix) == path.next_hop


def _attr_reason(path: Path, policy: PeerPolicy, ctx: ImportContext) -> RejectReason | None:
    """The import rules that read only a path's attributes and peer, in order."""
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
    return None


def _outside_pools(parsed: tuple[int, int, int], ctx: ImportContext) -> RejectReason:
    """Not inside a pool: the most helpful reason."""
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
    # The hash, computed once: an ExportAttrs keys the per-peer announce groups of every
    # export delta, once per (route, peer) — a reflector hashes the same object 100k
    # times a second under churn.
    _hash: int = field(init=False, repr=False, compare=False, default=0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash((
            self.next_hop, self.origin, self.as_path, self.local_pref, self.med,
            self.communities, self.large_communities, self.originator_id,
            self.cluster_list)))

    def __hash__(self) -> int:
        return self._hash


class ExportContext:
    """Per-config precomputation for ``export_attrs``."""

    __slots__ = ("_passable", "config", "exportable", "no_export_pools")

    def __init__(self, config: RibConfig) -> None:
        self.config = config
        self.no_export_pools = tuple(p for p in config.pools if p.disable_bgp_export)
        # Where a learned route may be passed on (calico_export_to_bgp_peers): the
        # pools and the service ranges.
        self.exportable = tuple(parse_prefix(c) for c in (
            *(p.cidr for p in config.pools if not p.disable_bgp_export),
            *config.service_prefixes))
        self._passable: dict[str, bool] = {}

    def forget(self) -> None:
        """Drop the per-prefix cache (it only speeds ``passable`` up)."""
        self._passable = {}

    def passable(self, prefix: str) -> bool:
        """A learned ``prefix`` lies inside a pool or service range (cached per prefix)."""
        known = self._passable.get(prefix)
        if known is None:
            parsed = parse_prefix(prefix)
            known = any(contains(r, parsed) for r in self.exportable)
            if len(self._passable) > 200_000:
                self._passable.clear()
            self._passable[prefix] = known
        return known


def export_key(path: Path, target: PeerPolicy, ctx: ExportContext) -> tuple | None:
    """The attributes ``path`` (a Loc-RIB best path) is sent to ``target`` with, as a
    plain tuple in ``ExportAttrs`` field order, or None if it must not be sent.

    A tuple (not an ExportAttrs) so the caller can intern without building an
    object per prefix and peer.
    """
    cfg = ctx.config
    source = path.attrs.peer
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
    action = None
    rule = None
    if ctx.no_export_pools or target.export_filters:
        parsed = parse_prefix(path.prefix)
        for pool in ctx.no_export_pools:
            if contains(pool.parsed, parsed):
                return None
        if target.export_filters:
            rule = first_rule(target.export_filters, parsed, originated, path)
            action = None if rule is None else rule.action
            if action is FilterAction.REJECT:
                return None
    if not originated and action is not FilterAction.ACCEPT and not ctx.passable(path.prefix):
        return None  # not a transit for prefixes outside the pools
    if rule is not None and rule.operations:
        return _with_operations(_export_key(path, target, ctx, originated), rule, to_ebgp,
                                target.peer.local_asn or ctx.config.local_asn)
    return _export_key(path, target, ctx, originated)


def _with_operations(key: tuple | None, rule, to_ebgp: bool, local_as: int) -> tuple | None:
    """An export rule's operations on the attributes a route is sent with: communities
    added, AS path prepended (after our own AS toward eBGP, as BIRD prepends it after the
    filter ran), LOCAL_PREF set (iBGP only: it is not sent to eBGP peers)."""
    if key is None:
        return None
    nh, origin, as_path, lp, med, comms, large, oid, clusters = key
    body = as_path[1:] if to_ebgp else as_path
    comms, large, body, new_lp = apply_operations(rule.operations, comms, large, body,
                                                  lp)
    as_path = (local_as, *body) if to_ebgp else body
    return (nh, origin, as_path, None if to_ebgp else new_lp, med, comms, large, oid,
            clusters)


def _export_key(path: Path, target: PeerPolicy, ctx: ExportContext, originated: bool
                ) -> tuple | None:
    a = path.attrs  # the shared PathAttrs: plain slots (a Path reads through properties)
    cfg = ctx.config
    source = a.peer
    tpeer = target.peer
    to_ebgp = tpeer.kind is PeerKind.EBGP
    # Next hop (Calico nextHopMode): originated routes always carry ours.
    mode = target.next_hop_mode
    if originated or mode is NextHopMode.SELF or (mode is NextHopMode.AUTO and to_ebgp):
        next_hop = target.self_next_hop
    else:
        next_hop = a.next_hop
    if to_ebgp:
        # RFC 4271 §5.1.2: prepend our AS; LOCAL_PREF (§5.1.5), ORIGINATOR_ID and
        # CLUSTER_LIST (RFC 4456 §8) stay inside the AS; a learned MED is not passed
        # on to another AS (§5.1.4).
        local_as = tpeer.local_asn or cfg.local_asn
        return (
            next_hop,
            a.origin,
            (local_as, *a.as_path),
            None,
            a.med if originated else None,
            a.communities,
            a.large_communities,
            None,
            (),
        )
    local_pref = DEFAULT_LOCAL_PREF if a.local_pref is None else a.local_pref
    if originated or source.kind is PeerKind.EBGP:
        return (next_hop, a.origin, a.as_path, local_pref, a.med,
                a.communities, a.large_communities, None, ())
    # Reflecting an iBGP route (RFC 4456 §8): ORIGINATOR_ID = the route's originator,
    # our cluster id prepended to CLUSTER_LIST; next hop kept unless the mode says Self.
    return (
        next_hop,
        a.origin,
        a.as_path,
        local_pref,
        a.med,
        a.communities,
        a.large_communities,
        a.originator_id or source.router_id,
        (cfg.cluster_id, *a.cluster_list),
    )
