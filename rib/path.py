"""`Path`: one route to one prefix as learned from (or originated for) one peer.

Owned by rib/. The speaker backend (bgpd/) builds Paths from its peers' UPDATEs; the
RIB stores them in Adj-RIB-In and Loc-RIB and never mutates one: policy makes a
new record with ``dataclasses.replace``. A withdraw is a fact about a prefix
from a peer (``Withdraw``), not a change to a Path.

Memory matters (100k+ paths): prefixes and next hops are canonical strings
(interned by the producer), attribute tuples are shared between paths of one
UPDATE, and ``PeerRef`` is one object per session.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, fields


class PeerKind(enum.IntEnum):
    LOCAL = 0  # originated by this node
    IBGP = 1
    EBGP = 2


class Origin(enum.IntEnum):
    """ORIGIN attribute (RFC 4271 §5.1.1); lower is preferred."""

    IGP = 0
    EGP = 1
    INCOMPLETE = 2


@dataclass(frozen=True, slots=True)
class PeerRef:
    """The session a path came from. One instance per session, shared by its paths."""

    address: str  # peer IP ("" for LOCAL)
    asn: int  # the peer's AS
    router_id: str  # the peer's BGP identifier (dotted quad)
    kind: PeerKind
    rr_client: bool = False  # we reflect for this peer (RFC 4456)
    local_asn: int = 0  # our AS on this session (0: the node's AS)


LOCAL_PEER = PeerRef(address="", asn=0, router_id="0.0.0.0", kind=PeerKind.LOCAL)


@dataclass(frozen=True, slots=True)
class Path:
    prefix: str  # canonical CIDR, e.g. "10.244.1.0/26", "fd00::/122"
    next_hop: str  # IP address
    peer: PeerRef
    origin: Origin = Origin.IGP
    as_path: tuple[int, ...] = ()  # AS_SEQUENCE flattened (AS_SET counts as 1 for length)
    local_pref: int | None = None  # None: not sent (eBGP); treated as 100
    med: int | None = None  # None: not sent; treated as 0
    communities: tuple[tuple[int, int], ...] = ()
    large_communities: tuple[tuple[int, int, int], ...] = ()
    originator_id: str | None = None
    cluster_list: tuple[str, ...] = ()
    stale: bool = False  # kept under graceful restart, not yet re-announced
    as_set_len: int = 0  # number of AS_SET segments (each counts 1 in path length)
    # RFC 7911 ADD-PATH path identifier (0: none). A peer's paths with different ids
    # are different candidates for the prefix, each replaced or withdrawn on its own.
    path_id: int = 0


@dataclass(frozen=True, slots=True)
class Withdraw:
    prefix: str
    peer: PeerRef
    path_id: int = 0  # RFC 7911: withdraws only the path with this identifier


_FIELDS = (
    "prefix", "next_hop", "peer", "origin", "as_path", "local_pref", "med", "communities",
    "large_communities", "originator_id", "cluster_list", "stale", "as_set_len", "path_id",
)
# paths_for below sets every field by hand: a field added to Path must be added there.
assert tuple(f.name for f in fields(Path)) == _FIELDS, "update rib.path.paths_for"
_SET = {name: Path.__dict__[name].__set__ for name in _FIELDS}


def paths_for(
    prefixes: Iterable[str],
    template: Path,
    *,
    _new=object.__new__,
    _p=_SET["prefix"], _nh=_SET["next_hop"], _pe=_SET["peer"], _o=_SET["origin"],
    _ap=_SET["as_path"], _lp=_SET["local_pref"], _med=_SET["med"], _c=_SET["communities"],
    _lc=_SET["large_communities"], _oid=_SET["originator_id"], _cl=_SET["cluster_list"],
    _st=_SET["stale"], _asl=_SET["as_set_len"], _pid=_SET["path_id"],
) -> list[Path]:
    """One Path per prefix, each equal to ``template`` but for its prefix.

    For producers of many paths with one attribute set (one UPDATE: one set of
    path attributes, hundreds of NLRI): the attribute objects are shared, and
    each path costs a third of what the keyword constructor does (the frozen
    dataclass sets its 13 fields through ``object.__setattr__``). Prefixes must be
    canonical, as for ``Path`` itself.
    """
    t = template
    nh, peer, origin, as_path, lp, med = (t.next_hop, t.peer, t.origin, t.as_path,
                                          t.local_pref, t.med)
    comms, large, oid, clusters, stale, asl, pid = (t.communities, t.large_communities,
                                                    t.originator_id, t.cluster_list, t.stale,
                                                    t.as_set_len, t.path_id)
    out = []
    append = out.append
    for prefix in prefixes:
        o = _new(Path)
        _p(o, prefix)
        _nh(o, nh)
        _pe(o, peer)
        _o(o, origin)
        _ap(o, as_path)
        _lp(o, lp)
        _med(o, med)
        _c(o, comms)
        _lc(o, large)
        _oid(o, oid)
        _cl(o, clusters)
        _st(o, stale)
        _asl(o, asl)
        _pid(o, pid)
        append(o)
    return out
