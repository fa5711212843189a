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
import re
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
    UpdateError,
)
from rib.inputs import canonical_ipv4_len
from rib.path import Origin, Path, PeerKind, PeerRef, Withdraw, paths_for

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


# RFC 7606 §7: the malformed attributes podbgp reads, each handled by
# "treat-as-withdraw" (§7.1 ORIGIN, §7.2 AS_PATH, §7.4 MED, §7.5 LOCAL_PREF,
# §7.8 COMMUNITIES, RFC 8092 §6 LARGE_COMMUNITY, §7.9 ORIGINATOR_ID, §7.10
# CLUSTER_LIST). Each is read on its own, so one bad attribute names itself and
# the others are still checked.
def _communities(value: object) -> tuple[tuple[int, int], ...]:
    out = []
    for c in _list(value, "community"):
        c = _list(c, "community")
        if len(c) != 2:
            raise _Bad(f"community: {c!r}")
        out.append((_uint(c[0], "community", MAX_U16), _uint(c[1], "community", MAX_U16)))
    return tuple(out)


def _large_communities(value: object) -> tuple[tuple[int, ...], ...]:
    out = []
    for c in _list(value, "large-community"):
        c = _list(c, "large-community")
        if len(c) != 3:
            raise _Bad(f"large-community: {c!r}")
        out.append(tuple(_uint(x, "large-community") for x in c))
    return tuple(out)


def _cluster_list(value: object) -> tuple[str, ...]:
    return tuple(_ipv4(c, "cluster-list") for c in _list(value, "cluster-list"))


_READERS = (
    ("local-preference", "local_pref", lambda v: _uint(v, "local-preference")),
    ("med", "med", lambda v: _uint(v, "med")),
    ("community", "communities", _communities),
    ("large-community", "large_communities", _large_communities),
    ("originator-id", "originator_id", lambda v: _ipv4(v, "originator-id")),
    ("cluster-list", "cluster_list", _cluster_list),
)


def _attributes(attr: object, peer: PeerRef) -> tuple[dict, list[str], list[UpdateError]]:
    """(keyword arguments shared by every Path of one UPDATE, treat-as-withdraw
    reasons, other errors). Any treat-as-withdraw reason makes the whole attribute
    set unusable: every NLRI it came with is withdrawn instead (RFC 7606 §2)."""
    if not isinstance(attr, dict):
        return {}, [f"attribute: expected an object, got {type(attr).__name__}"], []
    out: dict = {}
    taw: list[str] = []
    other: list[UpdateError] = []
    verdict = _exabgp_verdict(attr)
    if verdict is not None:
        if verdict.startswith("treat-as-withdraw"):
            taw.append(f"exabgp: {verdict}")
        else:
            other.append(UpdateError("attribute-discard", f"exabgp: {verdict}"))
    origin = attr.get("origin")
    if origin is None:  # RFC 7606 §3 (d): a missing well-known mandatory attribute
        taw.append("origin: missing")
    elif origin in _ORIGINS:
        out["origin"] = _ORIGINS[origin]
    else:
        taw.append(f"origin: {origin!r}")  # ExaBGP says "invalid" for values > 2
    if "as-path" in attr:
        try:
            out["as_path"], out["as_set_len"] = _as_path(attr["as-path"])
        except _Bad as exc:
            taw.append(str(exc))
    elif peer.kind == PeerKind.EBGP:
        # ExaBGP prints no "as-path" for an absent or an empty one: from an external
        # peer either is wrong (RFC 4271 §5.1.2: it prepends its own AS), so
        # treat-as-withdraw (RFC 7606 §3 (d), §7.2).
        taw.append("as-path: missing or empty from an external peer")
    for key, name, read in _READERS:
        if key in attr:
            try:
                out[name] = read(attr[key])
            except _Bad as exc:
                taw.append(str(exc))
    return out, taw, other


def _exabgp_verdict(attr: object) -> str | None:
    """ExaBGP's own RFC 7606 verdict on the attributes: "treat-as-withdraw[ due to X]"
    (it has moved the NLRI to "withdraw" already) or "discard" (a malformed
    attribute it dropped, e.g. AGGREGATOR, RFC 7606 §7.7)."""
    if isinstance(attr, dict) and "error" in attr:
        return str(attr["error"])
    return None


def _nexthop(text: object) -> tuple[str | None, str | None]:
    """(address, None) for a usable next hop, else (None, why)."""
    if text == "no-nexthop":  # ExaBGP's key for NLRI without a NEXT_HOP attribute
        return None, "next-hop: missing"  # RFC 7606 §3 (d)
    try:
        addr = _ip(text, "next-hop")
    except _Bad as exc:
        return None, str(exc)
    why = _semantic_nexthop(addr)
    return (None, why) if why else (addr, None)


@lru_cache(maxsize=1 << 10)
def _semantic_nexthop(addr: str) -> str | None:
    """RFC 4271 §6.3 (RFC 7606 §7.3): a syntactically fine NEXT_HOP that cannot be a
    next hop (unspecified, loopback, multicast, reserved) makes the route ignored."""
    ip = ipaddress.ip_address(addr)
    if ip.is_unspecified or ip.is_loopback or ip.is_multicast or \
            (ip.version == 4 and ip.is_reserved):
        return f"next-hop: {addr} cannot be a next hop"
    return None


def _path_id(value: object) -> int | None:
    """An ADD-PATH identifier as ExaBGP writes it ("0.0.0.7": its 4 bytes), or None."""
    if not isinstance(value, str):
        return None
    parts = value.split(".")
    if len(parts) != 4 or not all(p.isdigit() and int(p) < 256 for p in parts):
        return None
    return int.from_bytes(bytes(int(p) for p in parts), "big")


def _nlris(entries: object, what: str, errors: list[UpdateError],
           ids: dict[int, int] | None = None,
           _canonical=canonical_ipv4_len) -> list[str]:
    """The prefixes of one NLRI list, each on its own: host bits set beyond the
    length are cleared (RFC 4271 §4.3: they are irrelevant) and counted; an entry
    that is no prefix at all is dropped and counted; the others are kept.

    ADD-PATH (RFC 7911): an entry with a ``path-information`` puts its identifier in
    ``ids`` under the index of its prefix in the result (absent: identifier 0)."""
    if not isinstance(entries, list):
        errors.append(UpdateError("nlri-discarded",
                                  f"{what}: expected a list, got {type(entries).__name__}"))
        return []
    out = []
    append = out.append
    for entry in entries:
        # exabgp.api.compact: the prefix itself; canonical IPv4 text is the hot path.
        # Not interned: the RIB stores a prefix it holds by the string it has (issue 17).
        if type(entry) is str and _canonical(entry) >= 0:
            append(entry)
            continue
        text = entry if type(entry) is str else (
            entry.get("nlri") if isinstance(entry, dict) else None)
        if not isinstance(text, str):
            errors.append(UpdateError("nlri-discarded", f"{what}: not an NLRI: {entry!r:.60}", 1))
            continue
        prefix = _slow_prefix(text, what, errors)
        if prefix is None:
            continue
        if ids is not None and type(entry) is dict and "path-information" in entry:
            pid = _path_id(entry["path-information"])
            if pid is None:
                errors.append(UpdateError("nlri-discarded", f"{what}: not a path identifier: "
                                          f"{entry['path-information']!r:.40}", 1))
                continue
            if pid:
                ids[len(out)] = pid
        append(prefix)
    return out


def _by_path_id(prefixes: list[str], ids: dict[int, int]) -> dict[int, list[str]]:
    """ADD-PATH: the prefixes of one NLRI list grouped by their identifier."""
    groups: dict[int, list[str]] = {}
    for i, prefix in enumerate(prefixes):
        groups.setdefault(ids.get(i, 0), []).append(prefix)
    return groups


def _slow_prefix(text: str, what: str, errors: list[UpdateError]) -> str | None:
    try:
        return _prefix(text)
    except ValueError:
        pass
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        errors.append(UpdateError("nlri-discarded", f"{what}: not a prefix: {text!r:.60}", 1))
        return None
    errors.append(UpdateError("prefix-masked", f"{what}: host bits set: {text}", 1))
    return sys.intern(str(net))


def _merge(errors: list[UpdateError]) -> tuple[UpdateError, ...]:
    """One record per (action, what was wrong) with its prefix count, naming the first
    example: a flood of one mistake is one record, not one per prefix. A reason of the
    form ``"<what>: <problem>: <example>"`` groups by ``"<what>: <problem>"``."""
    if not errors:
        return ()
    merged: dict[tuple[str, str], list] = {}
    for e in errors:
        head, _, example = e.reason.rpartition(": ") if e.reason.count(": ") >= 2 else \
            (e.reason, "", "")
        entry = merged.setdefault((e.action, head), [0, example, 0])
        entry[0] += e.prefixes
        entry[2] += 1
    out = []
    for (action, head), (prefixes, example, n) in merged.items():
        reason = f"{head}: {example}" if example else head
        if n > 1 and example:
            reason += f" and {n - 1} more"
        out.append(UpdateError(action, reason, prefixes))
    return tuple(out)


def _families(value: object, what: str, errors: list[UpdateError]):
    """(family, value) for the families podbgp negotiates (others: nothing to keep)."""
    if not isinstance(value, dict):
        errors.append(UpdateError("nlri-discarded",
                                  f"{what}: expected an object, got {type(value).__name__}"))
        return
    for family, inner in value.items():
        if family in FAMILIES:
            yield family, inner


# ---------------------------------------------------------------- messages


def _update(neighbor: str, message: dict, lookup: PeerLookup) -> Event:
    """One UPDATE, degraded part by part (RFC 7606 §2): a malformed attribute
    withdraws the NLRI it came with instead of announcing them; a bad next hop
    does that for its own NLRI only; a bad NLRI costs only itself; every
    withdrawal is applied. Only an UPDATE from an unknown neighbor is Garbage."""
    if "eor" in message:
        eor = _obj(message["eor"], "eor")
        return EndOfRib(neighbor, _str(eor.get("afi"), "eor afi"), _str(eor.get("safi"), "eor safi"))
    update = _obj(message.get("update"), "update")
    peer = lookup(neighbor)
    if peer is None:
        return Garbage("", f"update from unknown neighbor {neighbor}")
    announced: list[Path] = []
    withdrawn: list[Withdraw] = []
    errors: list[UpdateError] = []
    attribute = update.get("attribute", {})
    announce = update.get("announce")
    taw: list[str] = []
    if announce is not None:
        attrs, taw, other = _attributes(attribute, peer)
        errors.extend(other)
        for family, by_nexthop in _families(announce, "announce", errors):
            if not isinstance(by_nexthop, dict):
                errors.append(UpdateError("nlri-discarded", f"announce {family}: expected an "
                                          f"object, got {type(by_nexthop).__name__}"))
                continue
            for nexthop, entries in by_nexthop.items():
                ids: dict[int, int] = {}
                prefixes = _nlris(entries, family, errors, ids)
                if not prefixes:
                    continue
                nh, why = (None, None) if taw else _nexthop(nexthop)
                if taw or why:
                    withdrawn.extend(Withdraw(p, peer, ids.get(i, 0))
                                     for i, p in enumerate(prefixes))
                    errors.append(UpdateError("treat-as-withdraw", "; ".join(taw or [why]),
                                              len(prefixes)))
                elif ids:
                    for pid, group in _by_path_id(prefixes, ids).items():
                        announced.extend(paths_for(
                            group, Path(group[0], nh, peer, **attrs, path_id=pid)))
                else:
                    # One attribute set, many NLRI: validate it once, share its objects.
                    announced.extend(paths_for(prefixes, Path(prefixes[0], nh, peer, **attrs)))
    else:
        verdict = _exabgp_verdict(attribute)
        if verdict is not None and verdict.startswith("treat-as-withdraw"):
            taw = [f"exabgp: {verdict}"]  # it moved the NLRI to "withdraw" itself
    withdraw = update.get("withdraw")
    if withdraw is not None:
        for family, entries in _families(withdraw, "withdraw", errors):
            ids = {}
            prefixes = _nlris(entries, family, errors, ids)
            if ids:
                withdrawn.extend(Withdraw(p, peer, ids.get(i, 0)) for i, p in enumerate(prefixes))
            else:
                withdrawn.extend(Withdraw(p, peer) for p in prefixes)
    if taw and not any(e.action == "treat-as-withdraw" for e in errors):
        errors.append(UpdateError("treat-as-withdraw", "; ".join(taw), 0))
    return Update(neighbor, announced, withdrawn, _merge(errors))


def _open(neighbor: str, direction: str, msg: dict) -> Open:
    caps = _obj(msg.get("capabilities", {}), "capabilities")
    asn = _uint(msg.get("asn"), "open asn")
    families: list[tuple[str, str]] = []
    gr: GracefulRestartCap | None = None
    route_refresh = asn4 = enhanced = False
    add_path_receive: list[tuple[str, str]] = []
    for cap in caps.values():
        cap = _obj(cap, "capability")
        name = cap.get("name")
        if name == "multiprotocol":
            families.extend(_family(f, "multiprotocol") for f in _list(cap.get("families"), "mp"))
        elif name == "asn4":
            asn = _uint(cap.get("asn4"), "asn4")
            asn4 = True
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
            enhanced = enhanced or name == "enhanced-route-refresh"
        elif name == "addpath":
            # RFC 7911 §4: per family "receive", "send" or "send/receive"
            for fam, mode in cap.items():
                if fam != "name" and "receive" in str(mode):
                    add_path_receive.append(_family(fam, "addpath family"))
    return Open(
        neighbor=neighbor,
        direction=direction,
        asn=asn,
        hold_time=_uint(msg.get("hold_time"), "hold_time", MAX_U16),
        router_id=_ipv4(msg.get("router_id"), "router_id"),
        families=tuple(families),
        graceful_restart=gr,
        route_refresh=route_refresh,
        asn4=asn4,
        enhanced_route_refresh=enhanced,
        add_path_receive=tuple(add_path_receive),
    )


_NOTIFICATION_REASON = re.compile(r"notification (sent|received) \((\d+),(\d+)\)")
_DOWN_CAUSES = (  # ExaBGP 5.0.15's reasons (reactor/peer.py), by prefix
    ("closing connection", "connection-lost"),
    ("stop, message [removed]", "removed"),
    ("stop, message [shutting down]", "shutdown"),
    ("graceful restarted negotiated", "graceful-close"),
    ("connection received before we could fully establish", "collision"),
    ("closing outgoing connection as we have another incoming", "collision"),
    ("process problem", "speaker-error"),
    ("exabgp exited", "speaker-exited"),  # the speaker's own, when ExaBGP dies
)


def down_cause(reason: str) -> tuple[str, int, int]:
    """ExaBGP's down reason -> (cause, code, subcode) in bgpd.events' vocabulary.

    An empty reason is ExaBGP's catch-all for an exception inside its session loop
    (reactor/peer.py "UNHANDLED PROBLEMS"): the session ended with no NOTIFICATION.
    """
    m = _NOTIFICATION_REASON.match(reason)
    if m:
        return f"notification-{m.group(1)}", min(int(m.group(2)), 255), min(int(m.group(3)), 255)
    if not reason:
        return "internal-error", 0, 0
    for prefix, cause in _DOWN_CAUSES:
        if reason.startswith(prefix):
            return cause, 0, 0
    return "other", 0, 0


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
            reason = str(nb.get("reason", ""))
            return SessionDown(neighbor, reason, *down_cause(reason))
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
