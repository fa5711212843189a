"""Kernel route records and the pure diff between desired and actual routes.

Owned by fib_sync/. The daemon builds `Route`s (desired routes, from rib's
FIB intent) and hands whole sets to `FibSyncer.set_desired`; the syncer builds
`Route`s from kernel dumps. Both are frozen: a change is a new record.

A route is identified in the kernel by (table, dst, metric) — the same key the
kernel uses to decide "exists" (EEXIST) and what NLM_F_REPLACE replaces — so
`RouteKey` is that triple. Everything else (kind, next hops) is what `diff`
compares to decide between "leave", "replace" and "add".

Inside fib_sync (the syncer's desired set, the reconciler's view, kernel dumps)
routes are keyed by `Route._key`, the *internal key*: the dst string itself for
the common (main table, DEFAULT_METRIC) pair, the triple otherwise. A 3-tuple per
route cost 64 bytes at 100k routes; the dst string is shared with rib and the
kernel-facing code anyway. Everything public (`Route.key`, `FibSyncer`'s
properties, `diff`) speaks `RouteKey` triples; `internal_key`/`full_key` convert.

Construction validates cheaply (inet_pton, no `ipaddress` objects): building
100k routes must not cost more than installing them.

What fib_sync *keeps* per route (the syncer's desired set, the reconciler's view,
adopted stale routes) is not a `Route` but its internal key and a `RouteSpec`:
everything of the route but its destination address, interned, so the 100k
routes via one gateway share one spec (a `Route` cost 96 bytes a route, twice
held: issue 17). `spec_of` / `route_of` convert; `Route`s exist only on the way
in (the daemon's updates), on the way out (the kernel backend's parts, the
public views) and in kernel dumps.
"""

from __future__ import annotations

import enum
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

RT_TABLE_MAIN = 254
DEFAULT_METRIC = 20  # FibSyncer's default route metric
IPV6_DEFAULT_METRIC = 1024  # the kernel stores IPv6 metric 0 as 1024

RouteKey = tuple[int, str, int]  # (table, dst, metric)
IKey = str | RouteKey  # internal key: dst alone for (RT_TABLE_MAIN, DEFAULT_METRIC)


def ikey(table: int, dst: str, metric: int) -> IKey:
    """The internal key of (table, dst, metric)."""
    if table == RT_TABLE_MAIN and metric == DEFAULT_METRIC:
        return dst
    return (table, dst, metric)


def internal_key(key: IKey) -> IKey:
    """`key` (a RouteKey triple, any sequence of three, or already internal) as
    an internal key."""
    if type(key) is str:
        return key
    table, dst, metric = key
    return ikey(table, dst, metric)


def full_key(key: IKey) -> RouteKey:
    """The RouteKey triple of an internal key."""
    if type(key) is str:
        return (RT_TABLE_MAIN, key, DEFAULT_METRIC)
    return key  # type: ignore[return-value]


class RouteKind(enum.Enum):
    UNICAST = "unicast"
    BLACKHOLE = "blackhole"


def _parse_addr(text: str, what: str) -> tuple[int, bytes]:
    """(family, packed) of an IP address; ValueError naming `what` if invalid."""
    if not isinstance(text, str):
        raise ValueError(f"{what}: {text!r}: not a string")
    fam = socket.AF_INET6 if ":" in text else socket.AF_INET
    try:
        return fam, socket.inet_pton(fam, text)
    except OSError:
        raise ValueError(f"{what}: {text!r}: not an IP address") from None


def canonical_cidr(text: str) -> tuple[str, int, int, bytes]:
    """(canonical text, family, prefix length, packed network) of a CIDR.

    Raises ValueError naming the value when it is not a CIDR or has host bits set.
    """
    if not isinstance(text, str) or "/" not in text:
        raise ValueError(f"dst: {text!r}: not a CIDR (expected address/length)")
    addr, _, plen_s = text.partition("/")
    fam, packed = _parse_addr(addr, "dst")
    bits = len(packed) * 8
    if not plen_s.isdigit() or not 0 <= int(plen_s) <= bits:
        raise ValueError(f"dst: {text!r}: prefix length must be 0..{bits}")
    plen = int(plen_s)
    value = int.from_bytes(packed, "big")
    if value & ((1 << (bits - plen)) - 1):
        raise ValueError(f"dst: {text!r}: host bits set")
    return f"{socket.inet_ntop(fam, packed)}/{plen}", fam, plen, packed


@dataclass(frozen=True, slots=True)
class NextHop:
    """One next hop: a gateway (or None for a directly connected route on `dev`),
    an optional device name, the onlink flag (gateway reachable on `dev` without
    a connected route, as Calico's IPIP `via X dev tunl0 onlink`), and an ECMP
    weight (1..256; only meaningful in a multipath route)."""

    gateway: str | None
    dev: str | None = None
    onlink: bool = False
    weight: int = 1

    def __post_init__(self) -> None:
        if self.gateway is not None:
            fam, packed = _parse_addr(self.gateway, "gateway")
            object.__setattr__(self, "gateway", socket.inet_ntop(fam, packed))
        elif self.dev is None:
            raise ValueError("next hop: needs a gateway or a dev")
        if self.dev is not None and (not isinstance(self.dev, str) or not 0 < len(self.dev) < 16):
            raise ValueError(f"dev: {self.dev!r}: not an interface name (1..15 characters)")
        if self.onlink and self.dev is None:
            raise ValueError(f"next hop {self.gateway}: onlink needs a dev")
        if not isinstance(self.weight, int) or not 1 <= self.weight <= 256:
            raise ValueError(f"weight: {self.weight!r}: must be an integer 1..256")

    def _sort_key(self) -> tuple[str, str]:
        return (self.gateway or "", self.dev or "")


@dataclass(frozen=True, slots=True)
class Route:
    """One kernel route podbgp wants (or found tagged with its protocol).

    `table`/`metric` None means "the syncer's default"; `FibSyncer` fills them
    in (`with_defaults`) before diffing. Next hops are kept sorted (ECMP order
    does not matter) and a lone next hop has weight 1 (the kernel stores no
    weight without multipath), so equal routes compare equal.
    """

    dst: str
    kind: RouteKind = RouteKind.UNICAST
    nexthops: tuple[NextHop, ...] = ()
    table: int | None = None
    metric: int | None = None
    family: int = field(default=0, compare=False, repr=False)
    dst_len: int = field(default=0, compare=False, repr=False)
    _key: IKey | None = field(default=None, init=False, compare=False, repr=False)

    # No stored packed address: at 100k routes its bytes object cost ~64 bytes a
    # route (with the slot), while the netlink encoder re-packs a run of
    # destinations in ~0.2 µs each.

    def __post_init__(self) -> None:
        dst, fam, plen, _packed = canonical_cidr(self.dst)
        set_ = object.__setattr__
        set_(self, "dst", dst)
        set_(self, "family", fam)
        set_(self, "dst_len", plen)
        if isinstance(self.kind, str):
            try:
                set_(self, "kind", RouteKind(self.kind))
            except ValueError:
                raise ValueError(
                    f"route {dst}: kind {self.kind!r}: not unicast/blackhole"
                ) from None
        nhs = tuple(self.nexthops)
        for nh in nhs:
            if not isinstance(nh, NextHop):
                raise ValueError(f"route {dst}: next hop {nh!r}: not a NextHop")
            if nh.gateway is not None and (":" in nh.gateway) != (fam == socket.AF_INET6):
                raise ValueError(f"route {dst}: gateway {nh.gateway}: address family differs")
        if self.kind is RouteKind.BLACKHOLE and nhs:
            raise ValueError(f"route {dst}: a blackhole route has no next hops")
        if self.kind is RouteKind.UNICAST and not nhs:
            raise ValueError(f"route {dst}: a unicast route needs at least one next hop")
        if len(nhs) == 1 and nhs[0].weight != 1:
            n = nhs[0]
            nhs = (NextHop(n.gateway, n.dev, n.onlink, 1),)
        elif len(nhs) > 1:
            nhs = tuple(sorted(nhs, key=NextHop._sort_key))
        set_(self, "nexthops", intern_nexthops(nhs))
        if self.table is not None and (
            not isinstance(self.table, int) or not 1 <= self.table < 2**32
        ):
            raise ValueError(f"route {dst}: table {self.table!r}: must be 1..2^32-1")
        metric = self.metric
        if metric is not None:
            if not isinstance(metric, int) or not 0 <= metric < 2**32:
                raise ValueError(f"route {dst}: metric {metric!r}: must be 0..2^32-1")
            if metric == 0 and fam == socket.AF_INET6:
                set_(self, "metric", IPV6_DEFAULT_METRIC)
        set_(self, "_key", ikey(self.table or RT_TABLE_MAIN, dst, self.metric or 0))

    @property
    def packed(self) -> bytes:
        """The destination network address, packed (4 or 16 bytes)."""
        return socket.inet_pton(self.family, self.dst.partition("/")[0])

    @property
    def key(self) -> RouteKey:
        """(table, dst, metric): what the kernel treats as the same route."""
        k = self._key
        if type(k) is str:
            return (RT_TABLE_MAIN, k, DEFAULT_METRIC)
        return k  # type: ignore[return-value]

    def with_defaults(self, table: int, metric: int) -> Route:
        if self.table is not None and self.metric is not None:
            return self
        m = self.metric if self.metric is not None else metric
        if m == 0 and self.family == socket.AF_INET6:
            m = IPV6_DEFAULT_METRIC
        return trusted_route(
            self.dst,
            self.kind,
            self.nexthops,
            self.table if self.table is not None else table,
            m,
            self.family,
            self.dst_len,
        )


_new = object.__new__
_set = object.__setattr__

# Equal next-hop tuples shared by every route using them: routes via one gateway
# then cost one tuple, and `diff` compares next hops by identity (and remembers
# the answer per pair) instead of calling NextHop.__eq__ per route. Sharing is an
# optimisation only: an unshared equal tuple still compares equal.
_NEXTHOPS: dict[tuple[NextHop, ...], tuple[NextHop, ...]] = {}
_NEXTHOPS_MAX = 1 << 16


def intern_nexthops(nhs: tuple[NextHop, ...]) -> tuple[NextHop, ...]:
    """The shared tuple equal to `nhs` (bounded: a flood of distinct next-hop
    sets clears the table rather than growing it without end)."""
    if not nhs:
        return ()
    shared = _NEXTHOPS.get(nhs)
    if shared is None:
        if len(_NEXTHOPS) >= _NEXTHOPS_MAX:
            _NEXTHOPS.clear()
        shared = _NEXTHOPS[nhs] = nhs
    return shared


def trusted_route(
    dst: str,
    kind: RouteKind,
    nexthops: tuple[NextHop, ...],
    table: int,
    metric: int,
    family: int,
    dst_len: int,
) -> Route:
    """A Route from fields already canonical (a kernel dump), without the
    validation of `Route()`: a 100k-route dump must not pay for it.
    (`Route.packed` derives the packed destination from `dst`.)"""
    return _build(dst, kind, nexthops, table, metric, family, dst_len,
                  dst if table == RT_TABLE_MAIN and metric == DEFAULT_METRIC
                  else (table, dst, metric))


_SLOT = {name: Route.__dict__[name].__set__ for name in (
    "dst", "kind", "nexthops", "table", "metric", "family", "dst_len", "_key")}


def _build(
    dst: str, kind: RouteKind, nexthops: tuple[NextHop, ...], table: int, metric: int,
    family: int, dst_len: int, key: IKey, *, _d=_SLOT["dst"], _k=_SLOT["kind"],
    _n=_SLOT["nexthops"], _t=_SLOT["table"], _m=_SLOT["metric"], _f=_SLOT["family"],
    _l=_SLOT["dst_len"], _K=_SLOT["_key"],
) -> Route:
    # The frozen dataclass's slots set through their descriptors: ~0.7 µs a route
    # where object.__setattr__ per field cost ~2 (a 100k burst builds 100k).
    r = _new(Route)
    _d(r, dst)
    _k(r, kind)
    _n(r, nexthops)
    _t(r, table)
    _m(r, metric)
    _f(r, family)
    _l(r, dst_len)
    _K(r, key)
    return r


class RouteSpec(NamedTuple):
    """Everything of a `Route` but its destination address (table and metric
    filled in). Interned (`route_spec`): every route via one next-hop set, of one
    length, table and metric shares one — what fib_sync keeps per route is its
    internal key and this shared spec. It reads like a Route where the diff reads
    one (``kind``, ``nexthops``: `same_route` takes either)."""

    kind: RouteKind
    nexthops: tuple[NextHop, ...]
    table: int
    metric: int
    family: int
    dst_len: int


# Keyed by the next-hop tuple's identity (held alive by the spec it maps to, so
# the id stays unique): no NextHop hashed per route. Equal specs built from equal
# but distinct next-hop tuples are distinct objects; they still compare equal.
_SPECS: dict[tuple, RouteSpec] = {}
_SPECS_MAX = 1 << 16


def route_spec(kind: RouteKind, nexthops: tuple[NextHop, ...], table: int, metric: int,
               family: int, dst_len: int) -> RouteSpec:
    """The shared `RouteSpec` of these fields (bounded like `intern_nexthops`)."""
    k = (kind, id(nexthops), table, metric, family, dst_len)
    spec = _SPECS.get(k)
    if spec is None:
        if len(_SPECS) >= _SPECS_MAX:
            _SPECS.clear()
        spec = _SPECS[k] = RouteSpec(kind, nexthops, table, metric, family, dst_len)
    return spec


def spec_of(route: Route) -> RouteSpec:
    """The shared spec of `route` (its table and metric must be set: `with_defaults`)."""
    return route_spec(route.kind, route.nexthops, route.table, route.metric,  # type: ignore[arg-type]
                      route.family, route.dst_len)


def route_of(key: IKey, spec: RouteSpec) -> Route:
    """The `Route` of an internal key and its spec."""
    return _build(key if type(key) is str else key[1], *spec, key)  # type: ignore[index]


def routes_of(items: Iterable[tuple[IKey, RouteSpec]]) -> list[Route]:
    """`route_of` for (key, spec) pairs, e.g. a spec map's ``items()``."""
    build = _build
    return [build(k if type(k) is str else k[1], *s, k) for k, s in items]  # type: ignore[index]


Item = tuple[IKey, RouteSpec]  # one route as fib_sync keeps it and hands it to the kernel


def items_of(routes: Iterable[Route]) -> list[Item]:
    """`routes` as (internal key, spec) items (the kernel backend's parts)."""
    return [(r._key, spec_of(r)) for r in routes]  # type: ignore[misc]


def specs_keyed(routes: Mapping[IKey, Route] | Iterable[Route]) -> dict[IKey, RouteSpec]:
    """`routes` as fib_sync keeps them: internal key -> shared spec (what
    `Reconciler.run_pass` takes). Table and metric must be set."""
    if isinstance(routes, Mapping):
        routes = routes.values()
    return {r._key: spec_of(r) for r in routes}  # type: ignore[misc]


def same_route(want: Route, have: Route) -> bool:
    """Does the kernel's `have` already implement `want`?

    A wanted next hop without a dev matches any dev: the kernel reports the
    device it resolved the gateway to.
    """
    if want.kind is not have.kind or len(want.nexthops) != len(have.nexthops):
        return False
    for w, h in zip(want.nexthops, have.nexthops, strict=True):
        if w.gateway != h.gateway or w.onlink != h.onlink or w.weight != h.weight:
            return False
        if w.dev is not None and w.dev != h.dev:
            return False
    return True


@dataclass(frozen=True, slots=True)
class Plan:
    """What to change in the kernel: add (key absent), replace (key present,
    route differs), delete (ours, not desired). Produced by `diff`, consumed by
    one apply step; nobody mutates it."""

    add: tuple[Route, ...] = ()
    replace: tuple[Route, ...] = ()
    delete: tuple[Route, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.add or self.replace or self.delete)

    def __len__(self) -> int:
        return len(self.add) + len(self.replace) + len(self.delete)


def keyed(routes: Mapping[IKey, Route] | Iterable[Route]) -> dict[IKey, Route]:
    """`routes` (or a mapping's values) by internal key: what `Reconciler` takes."""
    if isinstance(routes, Mapping):
        routes = routes.values()
    out: dict[IKey, Route] = {}
    for r in routes:
        out[r._key] = r  # type: ignore[index]
    return out


def diff(
    desired: Mapping[RouteKey, Route] | Iterable[Route],
    actual: Mapping[RouteKey, Route] | Iterable[Route],
) -> Plan:
    """The changes that turn `actual` (our tagged routes in the kernel) into
    `desired`. Pure: no I/O, inputs untouched. Routes must already carry
    their table and metric (`Route.with_defaults`); mappings are read by their
    values (keyed by `RouteKey` or internal keys alike)."""
    add, replace, delete, _ = diff_maps(keyed(desired), keyed(actual))
    return Plan(tuple(add.values()), tuple(replace.values()), tuple(delete.values()))


def diff_maps(
    want: Mapping[RouteKey, Route],
    have: Mapping[RouteKey, Route],
    only: Iterable[RouteKey] | None = None,
    old: dict[RouteKey, Route] | None = None,
) -> tuple[
    Mapping[RouteKey, Route],
    dict[RouteKey, Route],
    Mapping[RouteKey, Route],
    dict[RouteKey, Route],
]:
    """`diff` for the reconcile hot path: (add, replace, delete, same) keyed.

    `only`: diff these keys alone (the caller knows nothing else changed).
    `old`: filled with what `have` holds for each key to replace.
    `same`: desired routes the kernel already implements although they are
    not the very object held in `have` (a kernel dump): storing them in place
    of the dumped ones makes the next diff of those keys an identity check.
    The returned add/delete MAY BE `want`/`have` themselves (nothing to
    compare, no copy): read them, never mutate them.
    """
    if only is None:
        if not have:
            return want, {}, {}, {}
        if not want:
            return {}, {}, have, {}
        keys: Iterable[RouteKey] = want
        delete: Mapping[RouteKey, Route] = {k: r for k, r in have.items() if k not in want}
    else:
        keys = only
        delete = {}
    add: dict[RouteKey, Route] = {}
    replace: dict[RouteKey, Route] = {}
    same: dict[RouteKey, Route] = {}
    verdicts: dict[tuple[int, int], bool] = {}  # (id want nexthops, id have nexthops)
    wget, hget = want.get, have.get
    last_wn: object = None
    last_hn: object = None
    last_ok = False
    for key in keys:
        route = wget(key)
        cur = hget(key)
        if route is None:
            if cur is not None and only is not None:
                delete[key] = cur  # type: ignore[index]
            continue
        if cur is None:
            add[key] = route
        elif cur is route:
            continue
        elif cur.kind is not route.kind:
            replace[key] = route
            if old is not None:
                old[key] = cur
        else:
            wn, hn = route.nexthops, cur.nexthops
            if wn is hn:
                ok = True
            elif wn is last_wn and hn is last_hn:
                ok = last_ok  # the common case: a run of routes via one gateway pair
            else:
                # Both tuples are alive for the whole call, so their ids are stable.
                vk = (id(wn), id(hn))
                ok = verdicts.get(vk)  # type: ignore[assignment]
                if ok is None:
                    ok = verdicts[vk] = same_route(route, cur)
                last_wn, last_hn, last_ok = wn, hn, ok
            if ok:
                same[key] = route
            else:
                replace[key] = route
                if old is not None:
                    old[key] = cur
    return add, replace, delete, same
