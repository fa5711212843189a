"""`Path`: one route to one prefix as learned from (or originated for) one peer.

Owned by rib/. The speaker backend (bgpd/) builds Paths from its peers' UPDATEs; the
RIB stores them in Adj-RIB-In and Loc-RIB and never mutates one: policy makes a
new record with ``Path.replace``. A withdraw is a fact about a prefix
from a peer (``Withdraw``), not a change to a Path.

Memory matters (100k+ paths): prefixes and next hops are canonical strings
(interned by the producer), a `Path` is its prefix and a `PathAttrs` shared by
every path of one UPDATE, and ``PeerRef`` is one object per session.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import FrozenInstanceError, dataclass, fields, replace
from operator import attrgetter


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
class PathAttrs:
    """Everything of a `Path` but its prefix: one object per UPDATE, shared by the
    paths of all its NLRI (``paths_for``)."""

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


ATTR_FIELDS = tuple(f.name for f in fields(PathAttrs))
FIELDS = ("prefix", *ATTR_FIELDS)  # a Path's fields, in constructor order


class Path:
    """One route to one prefix: the prefix and the shared `PathAttrs` of its UPDATE.

    Reads as the frozen record it was (``path.next_hop``, ``path.as_path``, ...:
    every `PathAttrs` field is a read-only property), compares and hashes by value,
    and changes only by ``replace``. Two slots instead of fourteen: 48 bytes a
    path instead of 144, the attributes stored once per UPDATE (issue 17).
    """

    __slots__ = ("attrs", "prefix")
    prefix: str  # canonical CIDR, e.g. "10.244.1.0/26", "fd00::/122"
    attrs: PathAttrs

    def __init__(
        self,
        prefix: str,
        next_hop: str,
        peer: PeerRef,
        origin: Origin = Origin.IGP,
        as_path: tuple[int, ...] = (),
        local_pref: int | None = None,
        med: int | None = None,
        communities: tuple[tuple[int, int], ...] = (),
        large_communities: tuple[tuple[int, int, int], ...] = (),
        originator_id: str | None = None,
        cluster_list: tuple[str, ...] = (),
        stale: bool = False,
        as_set_len: int = 0,
        path_id: int = 0,
    ) -> None:
        _SET_PREFIX(self, prefix)
        _SET_ATTRS(self, PathAttrs(next_hop, peer, origin, as_path, local_pref, med,
                                   communities, large_communities, originator_id,
                                   cluster_list, stale, as_set_len, path_id))

    @classmethod
    def of(cls, prefix: str, attrs: PathAttrs) -> Path:
        """The path to ``prefix`` with ``attrs`` (shared, not copied)."""
        o = _new(cls)
        _SET_PREFIX(o, prefix)
        _SET_ATTRS(o, attrs)
        return o

    def replace(self, **changes) -> Path:
        """A copy with ``changes`` (field=value) applied; the attributes object is
        shared when only the prefix changes."""
        prefix = changes.pop("prefix", self.prefix)
        attrs = self.attrs
        if changes:
            attrs = replace(attrs, **changes)
        return Path.of(prefix, attrs)

    def __setattr__(self, name, value) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")

    def __eq__(self, other) -> bool:
        if other.__class__ is not Path:
            return NotImplemented
        return self.prefix == other.prefix and (
            self.attrs is other.attrs or self.attrs == other.attrs)

    def __hash__(self) -> int:
        return hash((self.prefix, self.attrs))

    def __repr__(self) -> str:
        body = ", ".join(f"{name}={getattr(self, name)!r}" for name in FIELDS)
        return f"Path({body})"

    def __reduce__(self):
        return (Path.of, (self.prefix, self.attrs))

    def astuple(self) -> tuple:
        """Every field's value, in ``FIELDS`` order."""
        return tuple(getattr(self, name) for name in FIELDS)


_new = object.__new__
_SET_PREFIX = Path.__dict__["prefix"].__set__
_SET_ATTRS = Path.__dict__["attrs"].__set__


def _reader(name: str) -> property:
    # ~100 ns a read (a slot: ~12): hot loops read ``path.attrs`` once instead.
    get = attrgetter(name)
    return property(lambda self: get(self.attrs),
                    doc=f"PathAttrs.{name} (shared by the paths of one UPDATE)")


for _name in ATTR_FIELDS:  # path.next_hop etc.: read through to the shared attributes
    setattr(Path, _name, _reader(_name))
del _name


@dataclass(frozen=True, slots=True)
class Withdraw:
    prefix: str
    peer: PeerRef
    path_id: int = 0  # RFC 7911: withdraws only the path with this identifier


def paths_for(prefixes: Iterable[str], template: Path) -> list[Path]:
    """One Path per prefix, each equal to ``template`` but for its prefix.

    For producers of many paths with one attribute set (one UPDATE: one set of
    path attributes, hundreds of NLRI): every path shares the template's
    `PathAttrs`. Prefixes must be canonical, as for ``Path`` itself.
    """
    attrs = template.attrs
    out = []
    append = out.append
    new, sp, sa = _new, _SET_PREFIX, _SET_ATTRS
    for prefix in prefixes:
        o = new(Path)
        sp(o, prefix)
        sa(o, attrs)
        append(o)
    return out
