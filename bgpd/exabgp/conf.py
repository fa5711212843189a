"""Render ExaBGP 5.0.15's configuration text and environment (pure).

Owned by the ExaBGP speaker (bgpd/exabgp/speaker.py). Input: this node's router id and addresses, the wanted
sessions (``PeerSpec``, planned by bgpd/peers from the datastore) and the
relay command. Output: the text of ``exabgp.conf`` and the environment dict
that overrides ExaBGP's env file.

Every value that reaches the text comes from the datastore, so each one is
validated and re-rendered from its parsed form (``ipaddress`` objects, ints
in range); passwords are given base64-encoded (``md5-base64 true``) so no byte
of them touches ExaBGP's syntax; names and descriptions never reach the text.
Anything odd raises ``ExaBGPConfigError`` naming the session and the field.
"""

from __future__ import annotations

import base64
import ipaddress
import re
from collections.abc import Iterable, Sequence

from bgpd.peerspec import PeerSpec
from bgpd.speaker import PeerConfigError

PROCESS_NAME = "podbgp"
MAX_ASN = 4294967295
MAX_HOLD_TIME = 65535
MIN_NONZERO_HOLD_TIME = 3
MAX_GRACEFUL_RESTART_TIME = 4095  # 12 bits (RFC 4724 §3)
MAX_TTL_HOPS = 255  # Calico's ttlSecurity is a uint8: 255 hops accepts any TTL
MAX_MD5_KEY_BYTES = 80  # TCP_MD5SIG_MAXKEYLEN
# A word of the relay command reaches the text unquoted: keep it to characters
# that ExaBGP's tokeniser treats as plain word characters.
_SAFE_WORD = re.compile(r"[A-Za-z0-9_./+=@:%-]+")

IP = ipaddress.IPv4Address | ipaddress.IPv6Address


class ExaBGPConfigError(PeerConfigError):
    """A value that cannot be rendered safely; the message names it. The node sees it
    as the backend-neutral ``bgpd.speaker.PeerConfigError``."""


def _where(spec: PeerSpec | None, field: str) -> str:
    if spec is None:
        return field
    # repr() so a hostile address shows its control characters, not a new line.
    return f"session {spec.address!r}: {field}"


def _ip(value: object, field: str, spec: PeerSpec | None = None) -> IP:
    if not isinstance(value, str):
        raise ExaBGPConfigError(f"{_where(spec, field)}: {value!r}: not an IP address string")
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        raise ExaBGPConfigError(f"{_where(spec, field)}: {value!r}: not an IP address") from None


def _ipv4(value: object, field: str, spec: PeerSpec | None = None) -> ipaddress.IPv4Address:
    addr = _ip(value, field, spec)
    if not isinstance(addr, ipaddress.IPv4Address):
        raise ExaBGPConfigError(f"{_where(spec, field)}: {value!r}: a router id must be IPv4")
    return addr


def _int(value: object, field: str, lo: int, hi: int, spec: PeerSpec | None = None) -> int:
    # bool is an int subclass; True as an AS number is a bug upstream, not 1.
    if not isinstance(value, int) or isinstance(value, bool):
        raise ExaBGPConfigError(f"{_where(spec, field)}: {value!r}: not an integer")
    if not lo <= value <= hi:
        raise ExaBGPConfigError(f"{_where(spec, field)}: {value}: out of range {lo}..{hi}")
    return value


def _bool(value: object, field: str, spec: PeerSpec) -> bool:
    if not isinstance(value, bool):
        raise ExaBGPConfigError(f"{_where(spec, field)}: {value!r}: not a boolean")
    return value


def _password_b64(value: object, spec: PeerSpec) -> str:
    if not isinstance(value, str) or not value:
        raise ExaBGPConfigError(f"{_where(spec, 'password')}: must be a non-empty string")
    raw = value.encode("utf-8")
    if len(raw) > MAX_MD5_KEY_BYTES:
        # Never echo the password itself.
        raise ExaBGPConfigError(
            f"{_where(spec, 'password')}: {len(raw)} bytes, TCP MD5 allows {MAX_MD5_KEY_BYTES}"
        )
    if "\x00" in value:
        raise ExaBGPConfigError(f"{_where(spec, 'password')}: contains a NUL byte")
    return base64.b64encode(raw).decode("ascii")


def check_command(command: Sequence[str]) -> list[str]:
    """Validate the relay command words (absolute program path first)."""
    words = list(command)
    if not words:
        raise ExaBGPConfigError("relay command: empty")
    for word in words:
        if not isinstance(word, str) or not _SAFE_WORD.fullmatch(word):
            raise ExaBGPConfigError(
                f"relay command: {word!r}: only letters, digits and _./+=@:%- are allowed"
            )
    if not words[0].startswith("/"):
        raise ExaBGPConfigError(f"relay command: {words[0]!r}: program must be an absolute path")
    return words


def _neighbor(spec: PeerSpec, node_router_id: str) -> list[str]:
    if not isinstance(spec, PeerSpec):
        raise ExaBGPConfigError(f"session: {spec!r}: not a PeerSpec")
    peer = _ip(spec.address, "address", spec)
    local = _ip(spec.local_address, "local_address", spec)
    if peer.version != local.version:
        raise ExaBGPConfigError(
            f"{_where(spec, 'local_address')}: {spec.local_address!r}: "
            f"IPv{local.version} source for an IPv{peer.version} peer"
        )
    router_id = _ipv4(spec.router_id or node_router_id, "router_id", spec)
    local_as = _int(spec.local_as, "local_as", 1, MAX_ASN, spec)
    peer_as = _int(spec.peer_as, "peer_as", 1, MAX_ASN, spec)
    port = _int(spec.port, "port", 1, 65535, spec)
    hold = _int(spec.hold_time, "hold_time", 0, MAX_HOLD_TIME, spec)
    if 0 < hold < MIN_NONZERO_HOLD_TIME:
        raise ExaBGPConfigError(f"{_where(spec, 'hold_time')}: {hold}: must be 0 or at least 3")
    gr = _int(spec.graceful_restart_time, "graceful_restart_time", 0,
              MAX_GRACEFUL_RESTART_TIME, spec)
    ttl_hops = _int(spec.ttl_security, "ttl_security", 0, MAX_TTL_HOPS, spec)
    passive = _bool(spec.passive, "passive", spec)

    bind = _bool(spec.bind_source, "bind_source", spec)
    lines = [
        f"neighbor {peer} {{",
        f"    router-id {router_id};",
        # sourceAddress None: no source address; the kernel picks one (ExaBGP "auto").
        f"    local-address {local if bind else 'auto'};",
        f"    local-as {local_as};",
        f"    peer-as {peer_as};",
        f"    hold-time {hold};",
        f"    passive {'true' if passive else 'false'};",
    ]
    if port != 179:
        # `connect` is this build's name for the peer's port (reactor/protocol.py).
        lines.append(f"    connect {port};")
    if spec.password is not None:
        lines.append("    md5-base64 true;")
        lines.append(f"    md5-password '{_password_b64(spec.password, spec)}';")
    if ttl_hops:
        # GTSM (RFC 5082): send with TTL 255, accept only what crossed <= hops routers.
        lines.append("    outgoing-ttl 255;")
        lines.append(f"    incoming-ttl {256 - ttl_hops};")
    # podbgp's rib keeps Adj-RIB-In; ExaBGP need not keep a second copy.
    lines.append("    adj-rib-in false;")
    lines.append("    group-updates true;")
    # The daemon sends End-of-RIB itself once the session's first full export is
    # acknowledged: ExaBGP's own EoR would go out before any API announcement and
    # make a graceful-restart helper sweep our routes too early.
    lines.append("    manual-eor true;")
    family = "ipv6 unicast" if peer.version == 6 else "ipv4 unicast"
    lines.append(f"    family {{ {family}; }}")
    capability = "route-refresh;"
    if gr:
        capability = f"graceful-restart {gr}; " + capability
    if _bool(spec.add_paths, "add_paths", spec):
        # RFC 7911 both ways, as Calico's template (`add paths on;`): received paths keep
        # their identifiers apart in the RIB; podbgp itself sends its best path only.
        capability = "add-path send/receive; " + capability
    lines.append(f"    capability {{ {capability} }}")
    lines.append(
        f"    api {{ processes [ {PROCESS_NAME} ]; neighbor-changes; "
        "receive { parsed; update; notification; open; refresh; } }"
    )
    lines.append("}")
    return lines


def check_peers(router_id: str, peers: Iterable[PeerSpec]
                ) -> tuple[list[PeerSpec], list[tuple[PeerSpec, str]]]:
    """Split sessions into those that render and those that cannot, each with the reason.

    One bad session is one bad session: the others are configured as usual. Two
    sessions to one peer address cannot both be expressed (ExaBGP 5.0.15 names a
    neighbor by address, local address, ASes and router id, never by port): the
    first one (by address, port) is kept.
    """
    node_rid = str(_ipv4(router_id, "router_id"))
    ok: list[PeerSpec] = []
    bad: list[tuple[PeerSpec, str]] = []
    seen: set[str] = set()
    for spec in sorted(peers, key=lambda s: (str(getattr(s, "address", "")),
                                              str(getattr(s, "port", "")))):
        try:
            _neighbor(spec, node_rid)
            addr = str(ipaddress.ip_address(spec.address))
            if addr in seen:
                raise ExaBGPConfigError(f"session {spec.address!r}: address: configured twice "
                                        "(one session per peer address)")
        except ExaBGPConfigError as e:
            bad.append((spec, str(e)))
            continue
        seen.add(addr)
        ok.append(spec)
    return ok, bad


def render_config(
    router_id: str,
    local_addresses: Iterable[str],
    peers: Iterable[PeerSpec],
    relay_command: Sequence[str],
) -> str:
    """The whole ExaBGP config text. Sessions are sorted by key: same input, same text."""
    node_rid = str(_ipv4(router_id, "router_id"))
    for addr in local_addresses:
        _ip(addr, "local address")
    words = check_command(relay_command)
    out = [
        "# Generated by podbgp (bgpd/exabgp/conf.py); rewritten on every peer change.",
        f"process {PROCESS_NAME} {{",
        f"    run {' '.join(words)};",
        "    encoder json;",
        "}",
    ]
    seen: set[tuple[str, int]] = set()
    specs = list(peers)
    for spec in specs:
        if not isinstance(spec, PeerSpec):
            raise ExaBGPConfigError(f"session: {spec!r}: not a PeerSpec")
    for spec in sorted(specs, key=lambda s: (str(s.address), str(s.port))):
        lines = _neighbor(spec, node_rid)
        addr = str(ipaddress.ip_address(spec.address))
        if any(a == addr for a, _ in seen):
            # ExaBGP keys neighbors by address (and local address); two ports
            # to one peer address are not expressible here.
            raise ExaBGPConfigError(f"session {spec.address!r}: address: configured twice")
        seen.add((addr, spec.port))
        out.append("")
        out.extend(lines)
    return "\n".join(out) + "\n"


def render_env(local_addresses: Iterable[str], listen_port: int = 179) -> dict[str, str]:
    """Environment overrides for ``exabgp server`` (docs/exabgp.md, Environment)."""
    addrs = [str(_ip(a, "local address")) for a in local_addresses]
    if not addrs:
        # An empty tcp.bind means ExaBGP never listens: passive sessions never come up.
        raise ExaBGPConfigError("local addresses: at least one is needed to listen on")
    port = _int(listen_port, "listen port", 1, 65535)
    return {
        "exabgp.daemon.user": "root",
        "exabgp.daemon.drop": "false",
        "exabgp.daemon.daemonize": "false",
        "exabgp.api.ack": "true",
        "exabgp.api.cli": "false",
        "exabgp.api.respawn": "true",
        "exabgp.api.encoder": "json",
        "exabgp.tcp.bind": " ".join(addrs),
        "exabgp.tcp.port": str(port),
        "exabgp.log.destination": "stdout",
        "exabgp.log.level": "WARNING",
    }

