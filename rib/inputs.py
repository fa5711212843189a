"""rib's own narrow, frozen inputs: pools, BGPFilter rules, node facts, per-peer policy.

Owned by rib/. The daemon (bgpd/) fills these from a config Snapshot and a
PeerSpec; rib never imports config/ so the two can change independently. Every
constructor validates and raises ``ValueError`` naming the field and the value,
so a bad value is caught where it is built, not deep inside best-path code.
"""

from __future__ import annotations

import enum
import ipaddress
import socket
from collections.abc import Hashable
from dataclasses import dataclass, field

from rib.path import PeerRef

NEXT_HOP_SELF = "self"  # ExaBGP's keyword; used when a session's local address is unknown


class EncapMode(enum.StrEnum):
    """Calico's ipipMode / vxlanMode."""

    NEVER = "Never"
    ALWAYS = "Always"
    CROSS_SUBNET = "CrossSubnet"


class MatchOperator(enum.StrEnum):
    EQUAL = "Equal"
    NOT_EQUAL = "NotEqual"
    IN = "In"
    NOT_IN = "NotIn"


class FilterAction(enum.StrEnum):
    ACCEPT = "Accept"
    REJECT = "Reject"


class FilterSource(enum.StrEnum):
    ANY = ""
    REMOTE_PEERS = "RemotePeers"  # learned from a BGP peer (not originated here)


class NextHopMode(enum.StrEnum):
    """Calico BGPPeer nextHopMode. Auto: eBGP self, iBGP keep (self for our own routes)."""

    AUTO = "Auto"
    SELF = "Self"
    KEEP = "Keep"


class MaxPrefixAction(enum.StrEnum):
    STOP = "stop"  # reject prefixes beyond the limit
    TEARDOWN = "teardown"  # also signal that the session should be torn down


# --- prefix arithmetic (hot path: no ipaddress objects per route) -----------------

_inet_pton = socket.inet_pton
_AF_INET = socket.AF_INET


# Canonical IPv4 prefix lengths ("0".."32": no sign, space, leading zero or non-ASCII
# digit) and the host-bit mask of each: one dict lookup instead of checking and int()-ing
# the text, and no shift per prefix (the speaker's parser runs this for every NLRI).
IPV4_LENGTHS: dict[str, int] = {str(n): n for n in range(33)}
IPV4_HOST_MASKS: tuple[int, ...] = tuple((1 << (32 - n)) - 1 for n in range(33))


def canonical_ipv4_len(prefix: str, _pton=_inet_pton, _af=_AF_INET, _len=IPV4_LENGTHS.get,
                       _host=IPV4_HOST_MASKS, _int=int.from_bytes) -> int:
    """The prefix length of ``prefix`` if it is canonical IPv4 CIDR text, else -1.

    Canonical: a dotted quad without leading zeros (inet_pton's rule), a length
    0..32 without leading zeros, no host bits. The hot-path test the speaker's
    event parser and the daemon's kernel-route builder share: text that passes
    is used as is, anything else takes the slow, validating path.
    """
    addr, _, plen_s = prefix.partition("/")
    plen = _len(plen_s)
    if plen is None:
        return -1
    try:
        packed = _pton(_af, addr)
    except OSError:
        return -1
    if _int(packed, "big") & _host[plen]:
        return -1
    return plen


def parse_prefix(prefix: str, _pton=_inet_pton, _af=_AF_INET, _len=IPV4_LENGTHS.get,
                 _host=IPV4_HOST_MASKS, _int=int.from_bytes) -> tuple[int, int, int]:
    """``"10.0.0.0/26"`` -> (version, network as int, length). Raises ValueError.

    IPv4 is parsed by hand because ``ipaddress.ip_network`` costs several µs per
    call and import policy runs it for every received path. Canonical IPv4 text
    (what the RIB holds: the kernel-route builder parses every new prefix again)
    takes one dict lookup for the length and a precomputed host mask; any other
    text the general code below, which decides as before.
    """
    addr, sep, plen_s = prefix.partition("/")
    plen = _len(plen_s)
    if plen is not None:
        try:
            net = _int(_pton(_af, addr), "big")
        except OSError:
            pass
        else:
            if net & _host[plen]:
                raise ValueError(f"prefix {prefix!r}: host bits set")
            return 4, net, plen
    if not sep:
        raise ValueError(f"prefix {prefix!r}: missing /length")
    if ":" not in addr:
        if plen_s.isdigit():
            # inet_pton takes exactly a dotted quad (no leading zeros, signs or
            # spaces) at a third of the cost of splitting and int()-ing by hand.
            try:
                packed = _inet_pton(_AF_INET, addr)
            except OSError:
                packed = None
            plen = int(plen_s)
            if packed is not None and plen <= 32:
                net = int.from_bytes(packed, "big")
                if net & ((1 << (32 - plen)) - 1):
                    raise ValueError(f"prefix {prefix!r}: host bits set")
                return 4, net, plen
        raise ValueError(f"prefix {prefix!r}: not a valid IPv4 CIDR")
    try:
        n = ipaddress.IPv6Network(prefix)
    except ValueError as e:
        raise ValueError(f"prefix {prefix!r}: {e}") from None
    return 6, int(n.network_address), n.prefixlen


def canonical_prefix(prefix: str, what: str) -> str:
    """Validate a CIDR for a config field and return its canonical text."""
    try:
        return str(ipaddress.ip_network(prefix, strict=True))
    except (ValueError, TypeError) as e:
        raise ValueError(f"{what}: {prefix!r}: {e}") from None


def _bits(version: int) -> int:
    return 32 if version == 4 else 128


def contains(outer: tuple[int, int, int], inner: tuple[int, int, int]) -> bool:
    """Is prefix ``inner`` equal to or inside ``outer``? (parsed tuples)"""
    ov, onet, olen = outer
    iv, inet, ilen = inner
    if ov != iv or ilen < olen:
        return False
    shift = _bits(ov) - olen
    return (inet >> shift) == (onet >> shift)


def address_in(parsed: tuple[int, int, int], address: str) -> bool:
    try:
        a = ipaddress.ip_address(address)
    except ValueError:
        return False
    return contains(parsed, (a.version, int(a), _bits(a.version)))


# --- inputs ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pool:
    """An IPPool as rib needs it (Calico IPPool spec)."""

    cidr: str
    block_size: int = 26
    ipip_mode: EncapMode = EncapMode.NEVER
    vxlan_mode: EncapMode = EncapMode.NEVER
    disabled: bool = False
    disable_bgp_export: bool = False
    parsed: tuple[int, int, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "cidr", canonical_prefix(self.cidr, "Pool.cidr"))
        p = parse_prefix(self.cidr)
        object.__setattr__(self, "parsed", p)
        if not p[2] <= self.block_size <= _bits(p[0]):
            raise ValueError(f"Pool {self.cidr}: block_size {self.block_size} out of range")
        for name in ("ipip_mode", "vxlan_mode"):
            object.__setattr__(self, name, EncapMode(getattr(self, name)))


@dataclass(frozen=True, slots=True)
class FilterRule:
    """One BGPFilter rule (importV4/importV6/exportV4/exportV6 entry), Calico semantics.

    Matches when every given condition holds: ``cidr`` with ``match_operator``
    (Equal: the prefix is the CIDR; In: inside it, with the length range from
    ``prefix_length_min``/``max``, defaulting to the CIDR's length .. the family
    maximum, as Calico renders ``net ~ [ cidr{min,max} ]``; NotEqual/NotIn their
    negation) and ``source``. A rule with ``interface`` matches only routes from
    kernel interfaces, which rib never sees, so it never matches here.
    ``ip_version`` is the list the rule came from (V4/V6); 0 = both.

    Calico v3.32's route conditions (confd template_funcs.go ``filterStatement``):
    ``communities`` (the route carries that community: a pair is a standard one, a
    triple a large one), ``as_path_prefix`` (the AS path begins with it) and
    ``priority`` (LOCAL_PREF = 2^31-1 - priority, as Calico converts). An Accept
    rule's ``operations`` change the route before it is accepted: ``("community",
    value)`` adds a community, ``("prepend", (as, ...))`` prepends to the AS path,
    ``("priority", n)`` sets LOCAL_PREF to 2^31-1 - n. ``peerType`` is resolved
    when a peer's policy is built (bgpd.translate): its rules are dropped for the
    other kind of peer.
    """

    action: FilterAction
    cidr: str | None = None
    match_operator: MatchOperator | None = None
    prefix_length_min: int | None = None
    prefix_length_max: int | None = None
    source: FilterSource = FilterSource.ANY
    interface: str | None = None
    ip_version: int = 0
    communities: tuple[tuple[int, ...], ...] = ()
    as_path_prefix: tuple[int, ...] = ()
    priority: int | None = None
    operations: tuple[tuple[str, object], ...] = ()
    parsed: tuple[int, int, int] | None = field(init=False, repr=False, compare=False)
    needs_path: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "action", FilterAction(self.action))
        object.__setattr__(self, "source", FilterSource(self.source))
        if (self.cidr is None) != (self.match_operator is None):
            raise ValueError("FilterRule: cidr and match_operator must be given together")
        parsed = None
        if self.cidr is not None:
            object.__setattr__(self, "cidr", canonical_prefix(self.cidr, "FilterRule.cidr"))
            object.__setattr__(self, "match_operator", MatchOperator(self.match_operator))
            parsed = parse_prefix(self.cidr)
            if self.ip_version and self.ip_version != parsed[0]:
                raise ValueError(f"FilterRule.cidr {self.cidr}: not IPv{self.ip_version}")
            object.__setattr__(self, "ip_version", parsed[0])
        object.__setattr__(self, "parsed", parsed)
        object.__setattr__(self, "needs_path", bool(
            self.communities or self.as_path_prefix or self.priority is not None))
        for op, _ in self.operations:
            if op not in ("community", "prepend", "priority"):
                raise ValueError(f"FilterRule.operations: {op!r}: not community/prepend/priority")
        if self.operations and self.action is not FilterAction.ACCEPT:
            raise ValueError("FilterRule.operations: only with action Accept")
        if self.ip_version not in (0, 4, 6):
            raise ValueError(f"FilterRule.ip_version: {self.ip_version!r}: must be 0, 4 or 6")
        has_len = self.prefix_length_min is not None or self.prefix_length_max is not None
        if has_len and self.match_operator not in (MatchOperator.IN, MatchOperator.NOT_IN):
            raise ValueError("FilterRule.prefix_length: only valid with matchOperator In/NotIn")
        if parsed is not None:
            lo = parsed[2] if self.prefix_length_min is None else self.prefix_length_min
            hi = _bits(parsed[0]) if self.prefix_length_max is None else self.prefix_length_max
            if not parsed[2] <= lo <= hi <= _bits(parsed[0]):
                raise ValueError(
                    f"FilterRule.prefix_length: min {lo} max {hi} invalid for {self.cidr}"
                )
            object.__setattr__(self, "prefix_length_min", lo)
            object.__setattr__(self, "prefix_length_max", hi)

    def matches(self, parsed: tuple[int, int, int], originated: bool,
                path: object = None) -> bool:
        if self.interface is not None:
            return False
        if self.needs_path and not self._path_matches(path):
            return False
        if self.ip_version and parsed[0] != self.ip_version:
            return False
        if self.source is FilterSource.REMOTE_PEERS and originated:
            return False
        rp = self.parsed
        if rp is None:
            return True
        op = self.match_operator
        if op is MatchOperator.EQUAL:
            return parsed == rp
        if op is MatchOperator.NOT_EQUAL:
            return parsed != rp
        inside = contains(rp, parsed) and (
            self.prefix_length_min <= parsed[2] <= self.prefix_length_max  # type: ignore[operator]
        )
        return inside if op is MatchOperator.IN else not inside


    def _path_matches(self, path) -> bool:
        if path is None:
            return False
        for c in self.communities:
            if c not in (path.communities if len(c) == 2 else path.large_communities):
                return False
        n = len(self.as_path_prefix)
        if n and tuple(path.as_path[:n]) != self.as_path_prefix:
            return False
        if self.priority is not None:
            lp = path.local_pref
            if lp is None or lp != PRIORITY_LOCAL_PREF - self.priority:
                return False
        return True


# Calico converts a route priority to LOCAL_PREF as 2^31-1 - priority (confd
# template_funcs.go BirdIntMaxValue).
PRIORITY_LOCAL_PREF = 2147483647


def first_rule(rules: tuple[FilterRule, ...], parsed, originated: bool,
               path: object = None) -> FilterRule | None:
    """Calico: rules are ordered, the first that matches decides; None: no rule matched."""
    for rule in rules:
        if rule.matches(parsed, originated, path):
            return rule
    return None


def first_match(rules: tuple[FilterRule, ...], parsed, originated: bool,
                path: object = None) -> FilterAction | None:
    """The action of `first_rule` (None: no rule matched)."""
    rule = first_rule(rules, parsed, originated, path)
    return None if rule is None else rule.action


def apply_operations(ops: tuple[tuple[str, object], ...], communities: tuple,
                     large: tuple, as_path: tuple, local_pref: int | None
                     ) -> tuple[tuple, tuple, tuple, int | None]:
    """An Accept rule's operations on (communities, large communities, AS path,
    LOCAL_PREF), in order, as BIRD runs Calico's filter statements."""
    for op, value in ops:
        if op == "community":
            if len(value) == 2:  # type: ignore[arg-type]
                if value not in communities:
                    communities = (*communities, value)
            elif value not in large:
                large = (*large, value)
        elif op == "prepend":
            as_path = (*value, *as_path)  # type: ignore[misc]
        elif op == "priority":
            local_pref = PRIORITY_LOCAL_PREF - value  # type: ignore[operator]
    return communities, large, as_path, local_pref


@dataclass(frozen=True, slots=True)
class PrefixAdvertisement:
    """BGPConfiguration prefixAdvertisements entry, names already resolved to values."""

    cidr: str
    communities: tuple[tuple[int, int], ...] = ()
    large_communities: tuple[tuple[int, int, int], ...] = ()
    parsed: tuple[int, int, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "cidr", canonical_prefix(self.cidr, "PrefixAdvertisement.cidr")
        )
        object.__setattr__(self, "parsed", parse_prefix(self.cidr))


@dataclass(frozen=True, slots=True)
class ClusterRoutes:
    """Which cluster routes (remote blocks of a pool) this node programs, and
    through which tunnel: the daemon's data-plane decisions, as plain facts.

    ``no_encap``/``ipip``/``vxlan``: whether podbgp programs the cluster routes
    of unencapsulated, IPIP and VXLAN pools (Calico splits them between BIRD
    and Felix with ``programClusterRoutes``; standalone, podbgp is both).
    ``ipip_ready``: ``tunl0`` exists and is configured (False on a kernel
    without IPIP: an IPIP route would fail). ``vteps``: remote node address ->
    that node's VTEP address (from its Node resource); a VXLAN route needs the
    VTEP of its next hop. The default is the behaviour before tunnels were
    managed: plain and IPIP routes, no VXLAN ones.
    """

    no_encap: bool = True
    ipip: bool = True
    vxlan: bool = False
    ipip_ready: bool = True
    vxlan_device: str = "vxlan.calico"
    vxlan6_device: str = "vxlan-v6.calico"
    vteps: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "vteps", tuple(sorted(dict(self.vteps).items())))


@dataclass(frozen=True, slots=True)
class RibConfig:
    """Node-wide facts and policy. Built by the daemon; replaced whole on a change."""

    local_asn: int
    router_id: str
    cluster_id: str | None = None  # routeReflectorClusterID: this node reflects
    node_addresses: frozenset[str] = frozenset()  # next hops that are ours
    own_blocks: tuple[str, ...] = ()  # confirmed block affinities of this node
    node_subnets: tuple[str, ...] = ()  # CIDRs of this node's interfaces (CrossSubnet)
    pools: tuple[Pool, ...] = ()
    service_prefixes: tuple[str, ...] = ()  # serviceClusterIPs/ExternalIPs/LoadBalancerIPs
    prefix_advertisements: tuple[PrefixAdvertisement, ...] = ()
    max_paths: int = 1  # ECMP multipath bound; 1 = no multipath
    route_metric: int = 0  # kernel route metric (priority)
    tunnel_device: str = "tunl0"
    cluster_routes: ClusterRoutes = ClusterRoutes()
    # Borrowed addresses (IPAM allocated an address of one node's block to a pod on
    # another): ``held`` are the /32s (/128s) this node's pods hold in other nodes'
    # blocks, originated and advertised like blocks; ``lent`` are (/32, the holder's
    # address) of this node's blocks, the only more-specifics of an own block that
    # import accepts, and only with the holder as next hop.
    held: tuple[str, ...] = ()
    lent: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if not 0 < self.local_asn < 2**32:
            raise ValueError(f"RibConfig.local_asn: {self.local_asn!r}: not a valid AS number")
        try:
            ipaddress.IPv4Address(self.router_id)
        except ValueError:
            raise ValueError(f"RibConfig.router_id: {self.router_id!r}: not a dotted quad") from None
        if self.cluster_id is not None:
            try:
                ipaddress.IPv4Address(self.cluster_id)
            except ValueError:
                raise ValueError(
                    f"RibConfig.cluster_id: {self.cluster_id!r}: not a dotted quad"
                ) from None
        if self.max_paths < 1:
            raise ValueError(f"RibConfig.max_paths: {self.max_paths!r}: must be >= 1")
        if not 0 <= self.route_metric < 2**32:
            raise ValueError(f"RibConfig.route_metric: {self.route_metric!r}: out of range")
        object.__setattr__(self, "node_addresses", frozenset(self.node_addresses))
        for name in ("own_blocks", "node_subnets", "service_prefixes", "held"):
            vals = tuple(canonical_prefix(p, f"RibConfig.{name}") for p in getattr(self, name))
            object.__setattr__(self, name, vals)


@dataclass(frozen=True, slots=True)
class PeerPolicy:
    """Per-session policy. ``key`` is the daemon's session id (e.g. ``PeerSpec.key``)."""

    key: Hashable
    peer: PeerRef
    local_address: str = ""  # our address on the session: the next hop when we set self
    import_filters: tuple[FilterRule, ...] = ()
    export_filters: tuple[FilterRule, ...] = ()
    max_prefixes: int | None = None
    max_prefix_action: MaxPrefixAction = MaxPrefixAction.STOP
    next_hop_mode: NextHopMode = NextHopMode.AUTO
    num_allowed_local_as: int = 0  # occurrences of our AS tolerated in AS_PATH (eBGP)
    # An import rule changes the routes it accepts (BGPFilter operations).
    import_ops: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "import_ops", any(r.operations for r in self.import_filters))
        object.__setattr__(self, "next_hop_mode", NextHopMode(self.next_hop_mode))
        object.__setattr__(self, "max_prefix_action", MaxPrefixAction(self.max_prefix_action))
        if self.max_prefixes is not None and self.max_prefixes < 0:
            raise ValueError(f"PeerPolicy.max_prefixes: {self.max_prefixes!r}: must be >= 0")

    @property
    def rr_client(self) -> bool:
        return self.peer.rr_client

    @property
    def self_next_hop(self) -> str:
        return self.local_address or NEXT_HOP_SELF


def pools_by_specificity(pools: tuple[Pool, ...]) -> tuple[Pool, ...]:
    """Longest pool first, so the first containing pool is the most specific."""
    return tuple(sorted(pools, key=lambda p: -p.parsed[2]))


def pool_for(pools: tuple[Pool, ...], parsed: tuple[int, int, int]) -> Pool | None:
    for pool in pools:
        if contains(pool.parsed, parsed):
            return pool
    return None


def communities_for(
    ads: tuple[PrefixAdvertisement, ...], parsed: tuple[int, int, int]
) -> tuple[tuple[tuple[int, int], ...], tuple[tuple[int, int, int], ...]]:
    std: dict[tuple[int, int], None] = {}
    large: dict[tuple[int, int, int], None] = {}
    for ad in ads:
        if contains(ad.parsed, parsed):
            std.update(dict.fromkeys(ad.communities))
            large.update(dict.fromkeys(ad.large_communities))
    return tuple(std), tuple(large)


__all__ = [
    "NEXT_HOP_SELF",
    "ClusterRoutes",
    "EncapMode",
    "FilterAction",
    "FilterRule",
    "FilterSource",
    "MatchOperator",
    "MaxPrefixAction",
    "NextHopMode",
    "PeerPolicy",
    "Pool",
    "PrefixAdvertisement",
    "RibConfig",
]
