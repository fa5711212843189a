"""Tunnel devices as netlink requests: build (pure), read, apply.

Owned by fib_sync/. The overlay syncer (`fib_sync.overlay`) is the only caller
of `LinkKernel`; the request builders are pure functions over plain values,
golden-tested byte for byte (tests/unit/test_link_requests.py) against the
kernel's uapi layouts (include/uapi/linux/if_link.h, if_tunnel.h,
if_addr.h, rtnetlink.h) and cross-checked against pyroute2's encoder.

Requests are laid out the way iproute2 lays them out (`ip link add NAME type
vxlan id VNI dstport PORT dev PARENT local ADDR nolearning`): ifinfomsg, then
IFLA_IFNAME, IFLA_MTU, IFLA_ADDRESS, then IFLA_LINKINFO{IFLA_INFO_KIND,
IFLA_INFO_DATA{...}} without NLA_F_NESTED. The kernel ignores IFLA_IFALIAS in
a create, so a new device gets its alias ("podbgp": the mark that it is ours),
MTU and admin-up in a second, set-link request (`link_set`).

A kernel without a link type's module answers a create with EOPNOTSUPP
(iproute2 prints it as "Unknown device type"); `LinkKernel.request` raises
`NetlinkError` carrying errno and the kernel's extended-ACK text.
"""

from __future__ import annotations

import errno
import os
import re
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field

from .netlink import (
    IFLA_IFNAME,
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_EXCL,
    NLM_F_REPLACE,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    RTM_DELADDR,
    RTM_DELLINK,
    RTM_GETLINK,
    RTM_NEWADDR,
    RTM_NEWLINK,
    ReplyBuffer,
    iter_messages,
    open_netlink,
    parse_error,
)

RTM_GETADDR = 22

IFLA_ADDRESS = 1
IFLA_MTU = 4
IFLA_LINK = 5
IFLA_OPERSTATE = 16
IFLA_LINKINFO = 18
IFLA_IFALIAS = 20
IFLA_INFO_KIND = 1
IFLA_INFO_DATA = 2

IFLA_VXLAN_ID = 1
IFLA_VXLAN_LINK = 3
IFLA_VXLAN_LOCAL = 4
IFLA_VXLAN_LEARNING = 7
IFLA_VXLAN_PORT = 15  # network byte order
IFLA_VXLAN_LOCAL6 = 17

IFA_ADDRESS = 1
IFA_LOCAL = 2

IFF_UP = 0x1
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_HOST = 254

OWNER_ALIAS = "podbgp"  # IFLA_IFALIAS of every device podbgp created
VXLAN_OVERHEAD = 50  # outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14 (Calico: 50)
VXLAN6_OVERHEAD = 70  # outer IPv6 40 instead of 20
IPIP_OVERHEAD = 20  # outer IPv4 header

_HDR = struct.Struct("=IHHII")
_IFINFO = struct.Struct("=BxHiII")
_IFADDR = struct.Struct("=BBBBI")
_NLA = struct.Struct("=HH")


class NetlinkError(OSError):
    """The kernel refused a request: errno, and its own words when it gave them."""

    def __init__(self, err: int, what: str, text: str = "") -> None:
        detail = text or os.strerror(err)
        super().__init__(err, f"{what}: {detail}")
        self.kernel_text = text


# ---------------------------------------------------------------- attributes


def _align(n: int) -> int:
    return (n + 3) & ~3


def nla(atype: int, payload: bytes) -> bytes:
    """One netlink attribute, padded to 4 bytes."""
    ln = 4 + len(payload)
    return _NLA.pack(ln, atype) + payload + bytes(_align(ln) - ln)


def nla_u8(atype: int, v: int) -> bytes:
    return nla(atype, struct.pack("=B", v))


def nla_u32(atype: int, v: int) -> bytes:
    return nla(atype, struct.pack("=I", v))


def nla_be16(atype: int, v: int) -> bytes:
    return nla(atype, struct.pack("!H", v))


def nla_str(atype: int, s: str) -> bytes:
    return nla(atype, s.encode() + b"\0")


def nest(atype: int, *attrs: bytes) -> bytes:
    return nla(atype, b"".join(attrs))


def message(mtype: int, flags: int, body: bytes, seq: int = 0) -> bytes:
    """A whole netlink message (header with length, sequence number, port id 0)."""
    return _HDR.pack(16 + len(body), mtype, flags, seq, 0) + body


_MAC = re.compile(r"[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}")


def parse_mac(mac: str) -> bytes:
    """``aa:bb:cc:dd:ee:ff`` as 6 bytes; ValueError naming the value otherwise."""
    if not isinstance(mac, str) or not _MAC.fullmatch(mac):
        raise ValueError(f"MAC address {mac!r}: expected six hex pairs (aa:bb:cc:dd:ee:ff)")
    return bytes.fromhex(mac.replace(":", ""))


def format_mac(raw: bytes) -> str:
    return raw.hex(":")


def _packed(addr: str) -> tuple[int, bytes]:
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    return fam, socket.inet_pton(fam, addr)


# ---------------------------------------------------------------- specs


@dataclass(frozen=True, slots=True)
class VxlanSpec:
    """A VXLAN device as Calico's Felix makes it (vxlan_mgr.go): VNI, UDP port,
    bound to the parent device and the node's address on it, learning off,
    its MAC fixed (the one published in the Node resource)."""

    name: str
    vni: int
    port: int
    local: str  # the node's address: outer source of every packet; its device is the parent
    mac: str
    mtu: int  # 0: the parent's MTU minus VXLAN_OVERHEAD
    address: str  # the VTEP address, put on the device as /32 (/128)

    def __post_init__(self) -> None:
        if not 0 < len(self.name) < 16:
            raise ValueError(f"device name {self.name!r}: 1..15 characters")
        if not 0 < self.vni < 1 << 24:
            raise ValueError(f"VXLAN VNI {self.vni}: must be 1..16777215")
        if not 0 < self.port < 1 << 16:
            raise ValueError(f"VXLAN port {self.port}: must be 1..65535")
        _check_mtu(self.mtu)
        parse_mac(self.mac)
        if _packed(self.local)[0] != _packed(self.address)[0]:
            raise ValueError(f"{self.name}: local {self.local} and VTEP {self.address} differ "
                             "in address family")

    @property
    def family(self) -> int:
        return _packed(self.address)[0]


@dataclass(frozen=True, slots=True)
class IpipSpec:
    """The IPv4-in-IPv4 fallback device ``tunl0`` (Felix ipip_mgr.go): no
    endpoints of its own (any remote), the node's tunnel address, MTU."""

    name: str
    mtu: int  # 0: the parent's MTU minus IPIP_OVERHEAD
    address: str  # the node's IPIP tunnel address, put on the device as /32
    local: str  # the node's address: its device is the parent (for the MTU)

    def __post_init__(self) -> None:
        if not 0 < len(self.name) < 16:
            raise ValueError(f"device name {self.name!r}: 1..15 characters")
        _check_mtu(self.mtu)
        for what, a in (("tunnel address", self.address), ("node address", self.local)):
            if _packed(a)[0] != socket.AF_INET:
                raise ValueError(f"{self.name}: {what} {a}: IPIP is IPv4 only")

    @property
    def family(self) -> int:
        return socket.AF_INET


def _check_mtu(mtu: int) -> None:
    if mtu and not 68 <= mtu <= 65535:
        raise ValueError(f"MTU {mtu}: must be 68..65535 (or 0: the parent's, less overhead)")


DeviceSpec = VxlanSpec | IpipSpec


# ---------------------------------------------------------------- requests


def vxlan_create(spec: VxlanSpec, parent_index: int, mtu: int | None = None,
                 seq: int = 0) -> bytes:
    """RTM_NEWLINK creating `spec`'s device (fails with EEXIST if the name is
    taken); `mtu` overrides the spec's (the resolved one when it says 0)."""
    mtu = mtu or spec.mtu
    if not mtu:
        raise ValueError(f"{spec.name}: an MTU is needed to create the device")
    fam, local = _packed(spec.local)
    data = [
        nla_u32(IFLA_VXLAN_ID, spec.vni),
        nla_u32(IFLA_VXLAN_LINK, parent_index),
        nla(IFLA_VXLAN_LOCAL if fam == socket.AF_INET else IFLA_VXLAN_LOCAL6, local),
        nla_u8(IFLA_VXLAN_LEARNING, 0),
        nla_be16(IFLA_VXLAN_PORT, spec.port),
    ]
    body = _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + b"".join((
        nla_str(IFLA_IFNAME, spec.name),
        nla_u32(IFLA_MTU, mtu),
        nla(IFLA_ADDRESS, parse_mac(spec.mac)),
        nest(IFLA_LINKINFO, nla_str(IFLA_INFO_KIND, "vxlan"), nest(IFLA_INFO_DATA, *data)),
    ))
    return message(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, body, seq)


def ipip_create(name: str, seq: int = 0) -> bytes:
    """RTM_NEWLINK creating an ``ipip`` device with no fixed endpoints: an empty
    IFLA_INFO_DATA leaves link, local and remote at the kernel's "any"
    (ipip_netlink_parms), which is what the fallback device ``tunl0`` is. For
    that name the kernel already holds the device once the module is loaded
    (loading it through this very request creates it): EEXIST then means
    "there", which the caller accepts; EOPNOTSUPP means no module."""
    body = _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + b"".join((
        nla_str(IFLA_IFNAME, name),
        nest(IFLA_LINKINFO, nla_str(IFLA_INFO_KIND, "ipip"), nest(IFLA_INFO_DATA)),
    ))
    return message(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, body, seq)


def link_set(index: int, *, mtu: int | None = None, up: bool | None = None,
             alias: str | None = None, seq: int = 0) -> bytes:
    """RTM_NEWLINK changing an existing device: MTU, admin state, alias."""
    flags = change = 0
    if up is not None:
        change = IFF_UP
        flags = IFF_UP if up else 0
    attrs = b""
    if mtu is not None:
        attrs += nla_u32(IFLA_MTU, mtu)
    if alias is not None:
        attrs += nla_str(IFLA_IFALIAS, alias)
    body = _IFINFO.pack(socket.AF_UNSPEC, 0, index, flags, change) + attrs
    return message(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK, body, seq)


def link_delete(index: int, seq: int = 0) -> bytes:
    body = _IFINFO.pack(socket.AF_UNSPEC, 0, index, 0, 0)
    return message(RTM_DELLINK, NLM_F_REQUEST | NLM_F_ACK, body, seq)


def addr_request(add: bool, index: int, address: str, prefixlen: int | None = None,
                 seq: int = 0) -> bytes:
    """RTM_NEWADDR (replace: idempotent) / RTM_DELADDR of one host address
    (/32 or /128 by default), scope global, as `ip addr add A/32 dev D`."""
    fam, packed = _packed(address)
    plen = prefixlen if prefixlen is not None else len(packed) * 8
    body = _IFADDR.pack(fam, plen, 0, RT_SCOPE_UNIVERSE, index)
    body += nla(IFA_LOCAL, packed) + nla(IFA_ADDRESS, packed)
    if add:
        return message(RTM_NEWADDR, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
                       body, seq)
    return message(RTM_DELADDR, NLM_F_REQUEST | NLM_F_ACK, body, seq)


# ---------------------------------------------------------------- reading


@dataclass(frozen=True, slots=True)
class LinkInfo:
    """What the syncer needs to know of one device."""

    index: int
    name: str
    kind: str | None
    mtu: int
    up: bool
    mac: str | None
    alias: str | None
    data: dict = field(default_factory=dict)  # IFLA_INFO_DATA, raw by attribute number

    @property
    def ours(self) -> bool:
        return self.alias == OWNER_ALIAS


def _attrs(buf, start: int, end: int) -> Iterable[tuple[int, int, int]]:
    """(type, payload offset, payload length) of the attributes in buf[start:end]."""
    a = start
    while a + 4 <= end:
        alen, atyp = _NLA.unpack_from(buf, a)
        if alen < 4:
            break
        yield atyp & 0x3FFF, a + 4, alen - 4
        a += _align(alen)


def parse_link(buf, off: int, ln: int) -> LinkInfo:
    """One RTM_NEWLINK message (a dump entry or a reply) as a LinkInfo."""
    _fam, _type, index, flags, _change = _IFINFO.unpack_from(buf, off + 16)
    name = ""
    kind = None
    mtu = 0
    mac = alias = None
    data: dict = {}
    for atyp, p, plen in _attrs(buf, off + 32, off + ln):
        raw = bytes(buf[p : p + plen])
        if atyp == IFLA_IFNAME:
            name = raw.rstrip(b"\0").decode()
        elif atyp == IFLA_MTU:
            mtu = struct.unpack_from("=I", raw)[0]
        elif atyp == IFLA_ADDRESS and plen == 6:
            mac = format_mac(raw)
        elif atyp == IFLA_IFALIAS:
            alias = raw.rstrip(b"\0").decode(errors="replace") or None
        elif atyp == IFLA_LINKINFO:
            for ityp, ip_, iplen in _attrs(buf, p, p + plen):
                if ityp == IFLA_INFO_KIND:
                    kind = bytes(buf[ip_ : ip_ + iplen]).rstrip(b"\0").decode()
                elif ityp == IFLA_INFO_DATA:
                    data = _parse_info_data(buf, ip_, ip_ + iplen)
    return LinkInfo(index, name, kind, mtu, bool(flags & IFF_UP), mac, alias, data)


def _parse_info_data(buf, start: int, end: int) -> dict[int, bytes]:
    # Raw, by attribute number: the numbering is the kind's (`vxlan_fields` decodes).
    return {atyp: bytes(buf[p : p + plen]) for atyp, p, plen in _attrs(buf, start, end)}


def vxlan_fields(info: LinkInfo) -> dict:
    """The VXLAN attributes podbgp sets, decoded (missing ones absent)."""
    d = info.data
    out: dict = {}
    if IFLA_VXLAN_ID in d:
        out["vni"] = struct.unpack("=I", d[IFLA_VXLAN_ID][:4])[0]
    if IFLA_VXLAN_LINK in d:
        out["link"] = struct.unpack("=I", d[IFLA_VXLAN_LINK][:4])[0]
    if IFLA_VXLAN_LOCAL in d and len(d[IFLA_VXLAN_LOCAL]) == 4:
        out["local"] = socket.inet_ntop(socket.AF_INET, d[IFLA_VXLAN_LOCAL])
    if IFLA_VXLAN_LOCAL6 in d and len(d[IFLA_VXLAN_LOCAL6]) == 16:
        out["local"] = socket.inet_ntop(socket.AF_INET6, d[IFLA_VXLAN_LOCAL6])
    if IFLA_VXLAN_LEARNING in d:
        out["learning"] = d[IFLA_VXLAN_LEARNING][0]
    if IFLA_VXLAN_PORT in d:
        out["port"] = struct.unpack("!H", d[IFLA_VXLAN_PORT][:2])[0]
    return out


def vxlan_incompatible(spec: VxlanSpec, info: LinkInfo, parent_index: int) -> str:
    """Why an existing device cannot serve `spec` without being re-created ('' if it
    can): the attributes the kernel fixes at creation (Felix's vxlanLinksIncompat)."""
    if info.kind != "vxlan":
        return f"kind {info.kind or 'unknown'} is not vxlan"
    f = vxlan_fields(info)
    for name, want in (("vni", spec.vni), ("port", spec.port), ("local", spec.local),
                       ("link", parent_index), ("learning", 0)):
        have = f.get(name)
        if have != want:
            return f"{name} {have} (want {want})"
    if info.mac != spec.mac.lower():
        return f"mac {info.mac} (want {spec.mac.lower()})"
    return ""


# ---------------------------------------------------------------- kernel


class LinkKernel:
    """Devices and their addresses in one network namespace, request by request
    (a handful per pass: no batching). Not thread-safe: one caller thread."""

    def __init__(self, netns: str | None) -> None:
        self.netns = netns
        self.sock = open_netlink(netns)
        self._seq = 1
        self._buf = ReplyBuffer()

    def close(self) -> None:
        self.sock.close()

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0x7FFFFFFF or 1
        return self._seq

    def _exchange(self, msg: bytes, what: str, dump: bool = False) -> list[tuple[int, bytes]]:
        """Send `msg` (its sequence number patched in); return (type, message)
        of every reply until the ACK or NLMSG_DONE. Raises NetlinkError."""
        seq = self._next_seq()
        data = bytearray(msg)
        struct.pack_into("=I", data, 8, seq)
        self.sock.send(data)
        out: list[tuple[int, bytes]] = []
        while True:
            n = self._buf.recv(self.sock, what)
            view = memoryview(self._buf.data)
            for off, ln, typ, flags, mseq in iter_messages(view, n):
                if mseq != seq:
                    continue
                if typ == NLMSG_ERROR:
                    err, text = parse_error(view, off, ln, flags)
                    if err:
                        raise NetlinkError(err, what, text)
                    return out
                if typ == NLMSG_DONE:
                    return out
                out.append((typ, bytes(view[off : off + ln])))
                if not dump and not flags & 0x2:  # a single reply, not NLM_F_MULTI
                    return out

    def request(self, msg: bytes, what: str) -> None:
        """Send one request built above and wait for its ACK."""
        self._exchange(msg, what)

    def links(self) -> list[LinkInfo]:
        body = _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
        replies = self._exchange(message(RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP, body),
                                 "list links", dump=True)
        return [parse_link(m, 0, len(m)) for t, m in replies if t == RTM_NEWLINK]

    def link(self, name: str | int) -> LinkInfo | None:
        """The device named `name` (or with ifindex `name`), None if there is none."""
        if isinstance(name, int):
            body = _IFINFO.pack(socket.AF_UNSPEC, 0, name, 0, 0)
        else:
            body = _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + nla_str(IFLA_IFNAME, name)
        try:
            replies = self._exchange(message(RTM_GETLINK, NLM_F_REQUEST, body),
                                     f"read link {name}")
        except NetlinkError as e:
            if e.errno in (errno.ENODEV, errno.ENOENT):
                return None
            raise
        for t, m in replies:
            if t == RTM_NEWLINK:
                return parse_link(m, 0, len(m))
        return None

    def addresses(self, index: int) -> list[tuple[str, int]]:
        """(address, prefix length) of every address on device `index`."""
        body = _IFADDR.pack(socket.AF_UNSPEC, 0, 0, 0, index)
        replies = self._exchange(message(RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, body),
                                 "list addresses", dump=True)
        out = []
        for t, m in replies:
            if t != RTM_NEWADDR:
                continue
            fam, plen, _fl, _scope, idx = _IFADDR.unpack_from(m, 16)
            if idx != index:
                continue
            local = address = None
            for atyp, p, plen_ in _attrs(m, 24, len(m)):
                if atyp == IFA_LOCAL:
                    local = socket.inet_ntop(fam, m[p : p + plen_])
                elif atyp == IFA_ADDRESS:
                    address = socket.inet_ntop(fam, m[p : p + plen_])
            addr = local or address
            if addr is not None:
                out.append((addr, plen))
        return out

    def index_of_address(self, address: str) -> int | None:
        """The device holding `address` (the VXLAN parent: the node's uplink)."""
        body = _IFADDR.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
        replies = self._exchange(message(RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, body),
                                 "list addresses", dump=True)
        fam, want = _packed(address)
        for t, m in replies:
            if t != RTM_NEWADDR:
                continue
            afam, _plen, _fl, _scope, idx = _IFADDR.unpack_from(m, 16)
            if afam != fam:
                continue
            for atyp, p, plen_ in _attrs(m, 24, len(m)):
                if atyp in (IFA_LOCAL, IFA_ADDRESS) and m[p : p + plen_] == want:
                    return idx
        return None
