"""Best-path selection: RFC 4271 §9.1.2.2 with RFC 4456 §9, as a ladder of rules.

Owned by rib/; called by ``rib.table.Rib`` for each prefix whose candidate set
changed. Each ``_by_<rule>(a, b)`` returns <0 when ``a`` is better, >0 when ``b``
is better and 0 for a tie, so every rule is testable on its own.

MED is only comparable between paths from the same neighbouring AS (§9.1.2.2
c), which makes a pairwise fold order-dependent. ``select_best`` therefore does
"deterministic MED": best within each neighbour-AS group first, then the group
winners are compared with the MED rule skipped. Both stages are lexicographic
orders with a unique last tie-breaker (peer address, then the ADD-PATH
identifier), so the result does not depend on the order paths arrived in.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Callable, Sequence

from rib.path import Path, PeerKind

DEFAULT_LOCAL_PREF = 100


class BestReason(enum.StrEnum):
    """Why the best path won over the runner-up (the rule that decided)."""

    ONLY_PATH = "only-path"
    LOCAL_PREF = "local-pref"  # RFC 4271 §9.1.1 degree of preference
    LOCAL_ORIGIN = "local-origin"  # locally originated wins (common practice; GoBGP, BIRD)
    AS_PATH = "as-path"  # RFC 4271 §9.1.2.2 a
    ORIGIN = "origin"  # RFC 4271 §9.1.2.2 b
    MED = "med"  # RFC 4271 §9.1.2.2 c
    EBGP_OVER_IBGP = "ebgp-over-ibgp"  # RFC 4271 §9.1.2.2 d
    CLUSTER_LIST = "cluster-list"  # RFC 4456 §9 b
    ROUTER_ID = "router-id"  # RFC 4271 §9.1.2.2 f, ORIGINATOR_ID per RFC 4456 §9 a
    PEER_ADDRESS = "peer-address"  # RFC 4271 §9.1.2.2 g
    PATH_ID = "path-id"  # two ADD-PATH paths of one peer: the lower identifier (RFC 7911)


def _local_pref(p: Path) -> int:
    return DEFAULT_LOCAL_PREF if p.local_pref is None else p.local_pref


def _as_path_len(p: Path) -> int:
    # RFC 4271 §9.1.2.2 a: an AS_SET counts as 1, whatever its size; as_path holds
    # the AS_SEQUENCE members and as_set_len the number of AS_SET segments.
    return len(p.as_path) + p.as_set_len


def neighbour_as(p: Path) -> int:
    """First AS in AS_PATH; 0 for paths from our own AS (RFC 4271 §9.1.2.2 c)."""
    return p.as_path[0] if p.as_path else 0


def _router_id(p: Path) -> int:
    # RFC 4456 §9 a: ORIGINATOR_ID stands in for the BGP identifier when present.
    rid = p.originator_id or p.peer.router_id
    return _ip_int(rid)


_ip_cache: dict[str, int] = {}


def _ip_int(text: str) -> int:
    v = _ip_cache.get(text)
    if v is None:
        try:
            v = int(ipaddress.ip_address(text)) if text else -1
        except ValueError:
            v = -1
        if len(_ip_cache) > 65536:  # peers and router ids are few; bound it anyway
            _ip_cache.clear()
        _ip_cache[text] = v
    return v


def _by_local_pref(a: Path, b: Path) -> int:
    """RFC 4271 §9.1.1: highest LOCAL_PREF (100 when absent)."""
    return _local_pref(b) - _local_pref(a)


def _by_local_origin(a: Path, b: Path) -> int:
    """Not in RFC 4271: a route this node originates beats a learned one (GoBGP, BIRD)."""
    return (b.peer.kind is PeerKind.LOCAL) - (a.peer.kind is PeerKind.LOCAL)


def _by_as_path(a: Path, b: Path) -> int:
    """RFC 4271 §9.1.2.2 a: shortest AS_PATH (an AS_SET counts 1)."""
    return _as_path_len(a) - _as_path_len(b)


def _by_origin(a: Path, b: Path) -> int:
    """RFC 4271 §9.1.2.2 b: lowest ORIGIN (IGP < EGP < INCOMPLETE)."""
    return a.origin - b.origin


def _by_med(a: Path, b: Path) -> int:
    """RFC 4271 §9.1.2.2 c: lowest MED, only between paths from the same neighbour AS."""
    if neighbour_as(a) != neighbour_as(b):
        return 0
    return (a.med or 0) - (b.med or 0)


def _by_ebgp(a: Path, b: Path) -> int:
    """RFC 4271 §9.1.2.2 d: eBGP-learned over iBGP-learned."""
    return (b.peer.kind is PeerKind.EBGP) - (a.peer.kind is PeerKind.EBGP)


def _by_cluster_list(a: Path, b: Path) -> int:
    """RFC 4456 §9 b: shortest CLUSTER_LIST."""
    return len(a.cluster_list) - len(b.cluster_list)


def _by_router_id(a: Path, b: Path) -> int:
    """RFC 4271 §9.1.2.2 f (+ RFC 4456 §9 a): lowest BGP identifier / ORIGINATOR_ID."""
    ra, rb = _router_id(a), _router_id(b)
    return (ra > rb) - (ra < rb)


def _by_peer_address(a: Path, b: Path) -> int:
    """RFC 4271 §9.1.2.2 g: lowest peer address."""
    ra, rb = _ip_int(a.peer.address), _ip_int(b.peer.address)
    return (ra > rb) - (ra < rb)


def _by_path_id(a: Path, b: Path) -> int:
    """ADD-PATH (RFC 7911) paths of one peer tie on every rule above: lowest identifier,
    so the choice never depends on the order they arrived in."""
    return (a.path_id > b.path_id) - (a.path_id < b.path_id)


Rule = Callable[[Path, Path], int]

# §9.1.2.2 e (IGP cost to the next hop) is omitted: pod networks have no IGP,
# every next hop is on a connected or statically routed network.
LADDER: tuple[tuple[Rule, BestReason], ...] = (
    (_by_local_pref, BestReason.LOCAL_PREF),
    (_by_local_origin, BestReason.LOCAL_ORIGIN),
    (_by_as_path, BestReason.AS_PATH),
    (_by_origin, BestReason.ORIGIN),
    (_by_med, BestReason.MED),
    (_by_ebgp, BestReason.EBGP_OVER_IBGP),
    (_by_cluster_list, BestReason.CLUSTER_LIST),
    (_by_router_id, BestReason.ROUTER_ID),
    (_by_peer_address, BestReason.PEER_ADDRESS),
    (_by_path_id, BestReason.PATH_ID),
)
_NO_MED = tuple(r for r in LADDER if r[1] is not BestReason.MED)
# ECMP: equal on every rule before the router id (the definition).
_MULTIPATH_RULES = tuple(r for r, reason in LADDER[: LADDER.index((_by_router_id, BestReason.ROUTER_ID))])


def compare(a: Path, b: Path, ladder=LADDER) -> tuple[int, BestReason | None]:
    """(<0 a better | >0 b better | 0 equal, the deciding rule)."""
    for rule, reason in ladder:
        c = rule(a, b)
        if c:
            return c, reason
    return 0, None


def _best_of(paths: Sequence[Path], ladder) -> Path:
    best = paths[0]
    for p in paths[1:]:
        for rule, _ in ladder:
            c = rule(p, best)
            if c:
                if c < 0:
                    best = p
                break
    return best


def _equal_for_multipath(a: Path, b: Path) -> bool:
    return all(not rule(a, b) for rule in _MULTIPATH_RULES)


def select_best(
    paths: Sequence[Path], max_paths: int = 1
) -> tuple[tuple[Path, ...], BestReason]:
    """The winner first, then the other ECMP members (at most ``max_paths`` in all).

    Returns ``((), ONLY_PATH)`` for no paths. The reason is the rule that beat
    the runner-up (for a multipath set, the rule against the best non-member).
    """
    n = len(paths)
    if n == 0:
        return (), BestReason.ONLY_PATH
    if n == 1:
        return (paths[0],), BestReason.ONLY_PATH
    # The rules read attributes only (never the prefix, which all candidates share):
    # run them on each path's PathAttrs, whose fields are plain slots, and map the
    # answer back (a Path reads each attribute through a property, ~8x slower).
    atts = [p.attrs for p in paths]
    back = {id(a): p for a, p in zip(atts, paths, strict=True)}
    members, reason = _select(atts, max_paths)
    return tuple(back[id(a)] for a in members), reason


def _select(paths: Sequence, max_paths: int) -> tuple[list, BestReason]:
    best = _deterministic_best(paths)
    rest = [p for p in paths if p is not best]
    members = [best]
    if max_paths > 1:
        eq = [p for p in rest if _equal_for_multipath(best, p)]
        eq.sort(key=lambda p: (_router_id(p), _ip_int(p.peer.address), p.path_id))
        members.extend(eq[: max_paths - 1])
    others = [p for p in rest if p not in members]
    if not others:
        reason = BestReason.ROUTER_ID if len(members) > 1 else BestReason.ONLY_PATH
        return members, reason
    runner = _deterministic_best(others)
    ladder = LADDER if neighbour_as(runner) == neighbour_as(best) else _NO_MED
    _, reason = compare(best, runner, ladder)
    return members, reason or BestReason.PEER_ADDRESS


def _deterministic_best(paths: Sequence[Path]) -> Path:
    """Best per neighbour AS with MED, then the group winners without MED."""
    groups: dict[int, list[Path]] = {}
    for p in paths:
        groups.setdefault(neighbour_as(p), []).append(p)
    if len(groups) == 1:
        return _best_of(paths, LADDER)
    return _best_of([_best_of(g, LADDER) for g in groups.values()], _NO_MED)
