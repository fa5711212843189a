"""BGP UPDATE messages for podbgp's exports, encoded once and handed to ExaBGP as bytes.

Owned by the ExaBGP speaker (bgpd/exabgp/speaker.py), which sends these through
the ``podbgp-send`` command that bgpd.exabgp.launch adds to ExaBGP (group
``raw``): a route going to 200 peers is encoded once here instead of being
parsed from text once and packed by ExaBGP 200 times.

The encoding is exactly what ExaBGP 5.0.15 sends for the same
``announce attributes <attributes_text> nlri ...`` command on a session that
negotiated 4-octet AS numbers (RFC 6793), with or without ADD-PATH send
(RFC 7911: path identifier 0, as ExaBGP gives a route without one); the
speaker sends text commands to any other session. tests/unit/test_exabgp_wire.py compares
these bytes with ExaBGP's own for iBGP and eBGP, IPv4 and IPv6, every
attribute. Pure functions; no I/O.

Layout (RFC 4271 §4.3): attributes in type-code order (ExaBGP's), LOCAL_PREF
only on iBGP sessions (100 when the route has none, as ExaBGP does), NEXT_HOP
for IPv4; IPv6 routes go in MP_REACH_NLRI / MP_UNREACH_NLRI (RFC 4760) after
the other attributes; a withdrawal carries no attribute. Every message fits
4096 octets (a session without RFC 8654 extended messages).
"""

from __future__ import annotations

import base64
import ipaddress
import struct
from collections.abc import Iterable

from rib.path import Origin

MAX_MESSAGE = 4096
HEADER = 19
MARKER = b"\xff" * 16
UPDATE, ROUTE_REFRESH = 2, 5
# attribute flags
_WELL_KNOWN, _OPTIONAL, _TRANSITIVE, _EXTENDED = 0x40, 0x80, 0x40, 0x10
AFI_IPV4, AFI_IPV6, SAFI_UNICAST = 1, 2, 1


class WireError(ValueError):
    """An attribute value that cannot be encoded (out of range, wrong family)."""


def message(kind: int, body: bytes) -> bytes:
    return MARKER + struct.pack("!HB", HEADER + len(body), kind) + body


def _attr(flags: int, code: int, value: bytes) -> bytes:
    if len(value) > 255:
        return struct.pack("!BBH", flags | _EXTENDED, code, len(value)) + value
    return struct.pack("!BBB", flags, code, len(value)) + value


def _u32(v: object, what: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= 0xFFFFFFFF:
        raise WireError(f"{what}: {v!r} out of range")
    return v


def _ipv4(v: object, what: str) -> bytes:
    try:
        return ipaddress.IPv4Address(v).packed  # type: ignore[arg-type]
    except ValueError:
        raise WireError(f"{what}: {v!r} is not an IPv4 address") from None


def _as_path(asns: tuple[int, ...]) -> bytes:
    out = b""
    for i in range(0, len(asns), 255):  # AS_SEQUENCE segments of at most 255 ASNs
        seg = asns[i:i + 255]
        out += struct.pack("!BB", 2, len(seg)) + b"".join(
            struct.pack("!I", _u32(a, "as_path")) for a in seg)
    return out


def path_attributes(attrs: object, *, ibgp: bool) -> tuple[bytes, bytes | None]:
    """(the attributes but MP_REACH_NLRI, the IPv6 next hop or None for IPv4) of an
    ``rib.policy.ExportAttrs``-like object, as ExaBGP encodes its text form."""
    nh = ipaddress.ip_address(getattr(attrs, "next_hop"))  # noqa: B009 - ExportAttrs-like
    out = [_attr(_WELL_KNOWN, 1, bytes([int(Origin(getattr(attrs, "origin", Origin.IGP)))]))]
    out.append(_attr(_WELL_KNOWN, 2, _as_path(tuple(getattr(attrs, "as_path", ())))))
    if nh.version == 4:
        out.append(_attr(_WELL_KNOWN, 3, nh.packed))
    med = getattr(attrs, "med", None)
    if med is not None:
        out.append(_attr(_OPTIONAL, 4, struct.pack("!I", _u32(med, "med"))))
    if ibgp:
        lp = getattr(attrs, "local_pref", None)
        out.append(_attr(_WELL_KNOWN, 5, struct.pack("!I", 100 if lp is None else
                                                      _u32(lp, "local_pref"))))
    comms = getattr(attrs, "communities", ())
    if comms:
        out.append(_attr(_OPTIONAL | _TRANSITIVE, 8, b"".join(
            struct.pack("!HH", a, b) if 0 <= a <= 0xFFFF and 0 <= b <= 0xFFFF
            else _bad("community", (a, b)) for a, b in comms)))
    oid = getattr(attrs, "originator_id", None)
    if oid:
        out.append(_attr(_OPTIONAL, 9, _ipv4(oid, "originator_id")))
    clusters = getattr(attrs, "cluster_list", ())
    if clusters:
        out.append(_attr(_OPTIONAL, 10, b"".join(_ipv4(c, "cluster_list") for c in clusters)))
    large = getattr(attrs, "large_communities", ())
    if large:
        out.append(_attr(_OPTIONAL | _TRANSITIVE, 32, b"".join(
            struct.pack("!III", _u32(a, "large"), _u32(b, "large"), _u32(c, "large"))
            for a, b, c in large)))
    return b"".join(out), (nh.packed if nh.version == 6 else None)


def _bad(what: str, v: object) -> bytes:
    raise WireError(f"{what}: {v!r} out of range")


# RFC 7911 §3: with ADD-PATH send negotiated every NLRI starts with a four-octet Path
# Identifier. podbgp sends one path per prefix, with the identifier ExaBGP gives a
# route that has none (0).
NO_PATH_ID = b"\x00\x00\x00\x00"


def nlri(prefix: str, ipv6: bool, add_path: bool = False) -> bytes:
    net = ipaddress.ip_network(prefix)
    if (net.version == 6) != ipv6:
        raise WireError(f"{prefix}: wrong address family for this session")
    n = (net.prefixlen + 7) // 8
    out = bytes([net.prefixlen]) + net.network_address.packed[:n]
    return NO_PATH_ID + out if add_path else out


def _chunks(blobs: list[bytes], room: int) -> Iterable[bytes]:
    """Consecutive NLRI blobs, joined into pieces of at most ``room`` octets."""
    cur: list[bytes] = []
    size = 0
    for b in blobs:
        if size + len(b) > room and cur:
            yield b"".join(cur)
            cur, size = [], 0
        cur.append(b)
        size += len(b)
    if cur:
        yield b"".join(cur)


def announce(attrs: object, prefixes: Iterable[str], *, ibgp: bool, ipv6: bool,
             add_path: bool = False) -> bytes:
    """UPDATE messages announcing ``prefixes`` with ``attrs`` (each <= 4096 octets);
    ``add_path``: the session negotiated ADD-PATH send for the family."""
    return announce_packed(path_attributes(attrs, ibgp=ibgp), prefixes, ipv6=ipv6,
                           add_path=add_path)


def announce_packed(attributes: tuple[bytes, bytes | None], prefixes: Iterable[str], *,
                    ipv6: bool, add_path: bool = False) -> bytes:
    """``announce`` with the attributes already encoded by ``path_attributes``."""
    packed, nh6 = attributes
    blobs = [nlri(p, ipv6, add_path) for p in prefixes]
    if not ipv6:
        if nh6 is not None:
            raise WireError("an IPv6 next hop for IPv4 routes")
        room = MAX_MESSAGE - HEADER - 4 - len(packed)
        return b"".join(message(UPDATE, b"\x00\x00" + struct.pack("!H", len(packed)) + packed
                                + chunk) for chunk in _chunks(blobs, room))
    if nh6 is None:
        raise WireError("an IPv4 next hop for IPv6 routes")
    head = struct.pack("!HBB", AFI_IPV6, SAFI_UNICAST, len(nh6)) + nh6 + b"\x00"
    room = MAX_MESSAGE - HEADER - 4 - len(packed) - 4 - len(head)
    out = []
    for chunk in _chunks(blobs, room):
        attrs_all = packed + _attr(_OPTIONAL, 14, head + chunk)
        out.append(message(UPDATE, b"\x00\x00" + struct.pack("!H", len(attrs_all)) + attrs_all))
    return b"".join(out)


def withdraw(prefixes: Iterable[str], *, ipv6: bool, add_path: bool = False) -> bytes:
    """UPDATE messages withdrawing ``prefixes`` (no path attributes)."""
    blobs = [nlri(p, ipv6, add_path) for p in prefixes]
    if not ipv6:
        room = MAX_MESSAGE - HEADER - 4
        return b"".join(message(UPDATE, struct.pack("!H", len(chunk)) + chunk + b"\x00\x00")
                        for chunk in _chunks(blobs, room))
    head = struct.pack("!HB", AFI_IPV6, SAFI_UNICAST)
    room = MAX_MESSAGE - HEADER - 4 - 4 - len(head)
    out = []
    for chunk in _chunks(blobs, room):
        mp = _attr(_OPTIONAL, 15, head + chunk)
        out.append(message(UPDATE, b"\x00\x00" + struct.pack("!H", len(mp)) + mp))
    return b"".join(out)


def end_of_rib(ipv6: bool) -> bytes:
    """RFC 4724 §2: an empty UPDATE (IPv4) or an empty MP_UNREACH_NLRI (IPv6)."""
    if not ipv6:
        return message(UPDATE, b"\x00\x00\x00\x00")
    mp = _attr(_OPTIONAL, 15, struct.pack("!HB", AFI_IPV6, SAFI_UNICAST))
    return message(UPDATE, b"\x00\x00" + struct.pack("!H", len(mp)) + mp)


def route_refresh_marker(ipv6: bool, subtype: int) -> bytes:
    """RFC 7313 §4: Beginning (1) or End (2) of Route-Refresh for the session's family."""
    return message(ROUTE_REFRESH, struct.pack("!HBB", AFI_IPV6 if ipv6 else AFI_IPV4, subtype,
                                              SAFI_UNICAST))


def encode_payload(data: bytes) -> str:
    """The command-line form of a run of messages (no spaces, no newlines)."""
    return base64.b64encode(data).decode("ascii")
