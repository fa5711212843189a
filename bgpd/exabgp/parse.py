"""ExaBGP's JSON API lines -> ``bgpd.events`` (pure; no I/O).

Owned by the ExaBGP speaker (``bgpd.exabgp.speaker``): its reader task calls
``parse_line`` on every line the relay delivers and puts the result on the
speaker's event queue. One line in, one event out; nothing here ever raises on
bad input: anything unexpected is ``Garbage`` with the reason, so one odd line
cannot stop the reader.

Memory: prefixes and next hops are interned, and every ``Path`` of one UPDATE
shares the same attribute tuples (as-path, communities, cluster list).
"""

from __future__ import annotations

import ipaddress
import json
import sys
from functools import lru_cache

from bgpd.events import (
    CommandAck,
    EndOfRib,
    Event,
    Garbage,
    GracefulRestartCap,
    Ignored,
    Notification,
    Open,
    PeerLookup,
    RouteRefresh,
    SessionConnected,
    SessionDown,
    SessionUp,
    Shutdown,
    Update,
)
from rib.inputs import canonical_ipv4_len
from rib.path import Origin, Path, Withdraw, paths_for

MAX_U32 = 4294967295
MAX_U16 = 65535
FAMILIES = {"ipv4 unicast": ("ipv4", "unicast"), "ipv6 unicast": ("ipv6", "unicast")}
# Plain-text lines ExaBGP writes on the API stream besides done/error.
_INFO_LINES = {"reload in progress": "reload"}
_ORIGINS = {"igp": Origin.IGP, "egp": Origin.EGP, "incomplete": Origin.INCOMPLETE}


class _Bad(ValueError):
    pass


# ------------------------------------------------------------- primitives


def _prefix(text: str, _canonical=canonical_ipv4_len, _intern=sys.intern) -> str:
    # Canonical and interned: one string object per prefix however often it is seen
    # (sys.intern's table forgets a string once nothing holds it; an lru_cache here
    # kept ~100 bytes per prefix alive). Fast path for canonical IPv4 text, what
    # ExaBGP prints: inet_pton accepts exactly the dotted quad without leading
    # zeros; ip_network costs ~5 µs, a third of the daemon's per-route time in a
    # 100k-route burst (bench.convergence).
    if _canonical(text) >= 0:
        return _intern(text)
    return _intern(str(ipaddress.ip_network(text)))


@lru_cache(maxsize=1 << 14)
def _address(text: str) -> str:
    return sys.intern(str(ipaddress.ip_address(text)))


def _ip(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise _Bad(f"{what}: {value!r} is not an address")
    try:
        return _address(value)
    except ValueError:
        raise _Bad(f"{what}: {value!r} is not an address") from None


def _ipv4(value: object, what: str) -> str:
    addr = _ip(value, what)
    if ":" in addr:
        raise _Bad(f"{what}: {value!r} is not IPv4")
    return addr


def _uint(value: object, what: str, hi: int = MAX_U32) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= hi:
        raise _Bad(f"{what}: {value!r} is not an integer in 0..{hi}")
    return value


def _obj(value: object, what: str) -> dict:
    if not isinstance(value, dict):
        raise _Bad(f"{what}: expected an object, got {type(value).__name__}")
    return value


def _list(value: object, what: str) -> list:
    if not isinstance(value, list):
        raise _Bad(f"{what}: expected a list, got {type(value).__name__}")
    return value


def _str(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise _Bad(f"{what}: expected a string, got {type(value).__name__}")
    return value


def _family(text: object, what: str) -> tuple[str, str]:
    """'ipv4/unicast' or 'ipv4 unicast' -> ('ipv4', 'unicast')."""
    parts = _str(text, what).replace("/", " ").split()
    if len(parts) != 2:
        raise _Bad(f"{what}: {text!r} is not a family")
    return (sys.intern(parts[0]), sys.intern(parts[1]))


# ------------------------------------------------------------- attributes


def _as_path(value: object) -> tuple[tuple[int, ...], int]:
    """(flattened AS_SEQUENCE, number of AS_SET segments); confederation segments
    do not count toward the path length (RFC 5065 §5.3)."""
    if isinstance(value, list):  # older encoders: a flat list of ASNs
        return tuple(_uint(a, "as-path") for a in value), 0
    segments = _obj(value, "as-path")
    seq: list[int] = []
    sets = 0
    for key in sorted(segments, key=lambda k: int(k) if k.isdigit() else -1):
        seg = _obj(segments[key], "as-path segment")
        kind = seg.get("element")
        asns = [_uint(a, "as-path") for a in _list(seg.get("value"), "as-path segment value")]
        if kind == "as-sequence":
            seq.extend(asns)
        elif kind == "as-set":
            sets += 1
        elif kind in ("confed-sequence", "confed-set"):
            continue
        else:
            raise _Bad(f"as-path: unknown segment {kind!r}")
    return tuple(seq), sets


def _attributes(attr: dict) -> dict:
    """Keyword arguments shared by every Path of one UPDATE."""
    out: dict = {}
    origin = attr.get("origin", "igp")
    if origin not in _ORIGINS:
        raise _Bad(f"origin: {origin!r}")
    out["origin"] = _ORIGINS[origin]
    if "as-path" in attr:
        out["as_path"], out["as_set_len"] = _as_path(attr["as-path"])
    if "local-preference" in attr:
        out["local_pref"] = _uint(attr["local-preference"], "local-preference")
    if "med" in attr:
        out["med"] = _uint(attr["med"], "med")
    if "community" in attr:
        comms = []
        for c in _list(attr["community"], "community"):
            c = _list(c, "community")
            if len(c) != 2:
                raise _Bad(f"community: {c!r}")
            comms.append((_uint(c[0], "community", MAX_U16), _uint(c[1], "community", MAX_U16)))
        out["communities"] = tuple(comms)
    if "large-community" in attr:
        large = []
        for c in _list(attr["large-community"], "large-community"):
            c = _list(c, "large-community")
            if len(c) != 3:
                raise _Bad(f"large-community: {c!r}")
            large.append(tuple(_uint(x, "large-community") for x in c))
        out["large_communities"] = tuple(large)
    if "originator-id" in attr:
        out["originator_id"] = _ipv4(attr["originator-id"], "originator-id")
    if "cluster-list" in attr:
        out["cluster_list"] = tuple(
            _ipv4(c, "cluster-list") for c in _list(attr["cluster-list"], "cluster-list")
        )
    return out


def _nlri(entry: object, what: str) -> str:
    if type(entry) is str:  # exabgp.api.compact: the prefix itself
        text = entry
    else:
        text = _obj(entry, what).get("nlri")
        if not isinstance(text, str):
            raise _Bad(f"{what}: entry without nlri")
    try:
        return _prefix(text)
    except ValueError:
        raise _Bad(f"{what}: {text!r} is not a prefix") from None


# ---------------------------------------------------------------- messages


def _update(neighbor: str, message: dict, lookup: PeerLookup) -> Event:
    if "eor" in message:
        eor = _obj(message["eor"], "eor")
        return EndOfRib(neighbor, _str(eor.get("afi"), "eor afi"), _str(eor.get("safi"), "eor safi"))
    update = _obj(message.get("update"), "update")
    peer = lookup(neighbor)
    if peer is None:
        return Garbage("", f"update from unknown neighbor {neighbor}")
    announced: list[Path] = []
    withdrawn: list[Withdraw] = []
    announce = update.get("announce")
    if announce is not None:
        attrs = _attributes(_obj(update.get("attribute", {}), "attribute"))
        for family, by_nexthop in _obj(announce, "announce").items():
            if family not in FAMILIES:
                continue  # not negotiated by podbgp's config; nothing to keep
            for nexthop, entries in _obj(by_nexthop, family).items():
                nh = _ip(nexthop, "next-hop")
                prefixes = [_nlri(entry, family) for entry in _list(entries, family)]
                if prefixes:
                    # One attribute set, many NLRI: validate it once, share its objects.
                    announced.extend(paths_for(prefixes, Path(prefixes[0], nh, peer, **attrs)))
    withdraw = update.get("withdraw")
    if withdraw is not None:
        for family, entries in _obj(withdraw, "withdraw").items():
            if family not in FAMILIES:
                continue
            for entry in _list(entries, family):
                withdrawn.append(Withdraw(_nlri(entry, family), peer))
    return Update(neighbor, announced, withdrawn)


def _open(neighbor: str, direction: str, msg: dict) -> Open:
    caps = _obj(msg.get("capabilities", {}), "capabilities")
    asn = _uint(msg.get("asn"), "open asn")
    families: list[tuple[str, str]] = []
    gr: GracefulRestartCap | None = None
    route_refresh = False
    for cap in caps.values():
        cap = _obj(cap, "capability")
        name = cap.get("name")
        if name == "multiprotocol":
            families.extend(_family(f, "multiprotocol") for f in _list(cap.get("families"), "mp"))
        elif name == "asn4":
            asn = _uint(cap.get("asn4"), "asn4")
        elif name == "graceful restart":
            flags = _obj(cap.get("address-family-flags", {}), "graceful restart families")
            # ExaBGP 5.0 swaps the labels: a family's F bit (0x80, forwarding state
            # kept) prints as "restart", the R bit (0x8, "I restarted") as
            # "forwarding". Either label means the one bit each place can hold.
            gr_families = tuple(_family(f, "graceful restart family") for f in flags)
            forwarding = tuple(
                fam for fam, fl in zip(gr_families, flags.values(), strict=True)
                if set(_list(fl, "graceful restart flags")) & {"restart", "forwarding"}
            )
            r_flags = set(_list(cap.get("restart-flags", []), "restart-flags"))
            gr = GracefulRestartCap(
                time=_uint(cap.get("time"), "graceful restart time", 4095),
                restarting=bool(r_flags & {"restart", "forwarding"}),
                families=gr_families,
                forwarding=forwarding,
            )
        elif name in ("route-refresh", "enhanced-route-refresh"):
            route_refresh = True
    return Open(
        neighbor=neighbor,
        direction=direction,
        asn=asn,
        hold_time=_uint(msg.get("hold_time"), "hold_time", MAX_U16),
        router_id=_ipv4(msg.get("router_id"), "router_id"),
        families=tuple(families),
        graceful_restart=gr,
        route_refresh=route_refresh,
    )


def _parse(line: str, lookup: PeerLookup) -> Event:
    stripped = line.strip()
    if stripped == "done":
        return CommandAck(True)
    if stripped == "error":
        return CommandAck(False)
    if stripped in _INFO_LINES:
        return Ignored(_INFO_LINES[stripped])
    if not stripped.startswith("{"):
        return Garbage(line, "not JSON")
    try:
        doc = json.loads(stripped)
    except (ValueError, RecursionError) as exc:
        return Garbage(line, f"invalid JSON: {exc}")
    doc = _obj(doc, "line")
    kind = doc.get("type")
    if kind == "notification" and doc.get("notification") == "shutdown":
        return Shutdown()
    nb = _obj(doc.get("neighbor"), "neighbor")
    addr = _obj(nb.get("address"), "neighbor address")
    neighbor = _ip(addr.get("peer"), "neighbor address")
    direction = nb.get("direction", "receive")
    if kind == "state":
        state = nb.get("state")
        if state == "up":
            asn = _obj(nb.get("asn"), "asn")
            return SessionUp(neighbor, _ip(addr.get("local"), "local address"),
                             _uint(asn.get("peer"), "peer asn"), _uint(asn.get("local"), "asn"))
        if state == "down":
            return SessionDown(neighbor, str(nb.get("reason", "")))
        if state == "connected":
            return SessionConnected(neighbor)
        return Garbage(line, f"unknown state {state!r}")
    if kind == "update":
        event = _update(neighbor, _obj(nb.get("message"), "message"), lookup)
        if isinstance(event, Garbage):
            return Garbage(line, event.reason)
        return event
    if kind == "open":
        return _open(neighbor, direction, _obj(nb.get("open"), "open"))
    if kind == "notification":
        n = _obj(nb.get("notification"), "notification")
        return Notification(neighbor, direction, _uint(n.get("code"), "code", 255),
                            _uint(n.get("subcode"), "subcode", 255), str(n.get("message", "")))
    if kind == "refresh":
        r = _obj(nb.get("route-refresh"), "route-refresh")
        return RouteRefresh(neighbor, _str(r.get("afi"), "afi"), _str(r.get("safi"), "safi"))
    if kind in ("keepalive", "negotiated", "fsm", "signal", "operational"):
        return Ignored(kind)
    return Garbage(line, f"unknown message type {kind!r}")


def parse_line(line: str | bytes, lookup: PeerLookup) -> Event:
    """One ExaBGP API line -> one event. Never raises: bad input is ``Garbage``.

    ``lookup(neighbor_address)`` gives the session's ``PeerRef`` (owned by the
    daemon); an UPDATE from an address it does not know is ``Garbage``.
    """
    if isinstance(line, bytes):
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            return Garbage(line.decode("utf-8", "replace"), f"not UTF-8: {exc}")
    try:
        return _parse(line, lookup)
    except _Bad as exc:
        return Garbage(line, str(exc))
    except Exception as exc:  # a lookup bug or a shape we never saw must not kill the reader
        return Garbage(line, f"{type(exc).__name__}: {exc}")
