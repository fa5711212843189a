"""A small rtnetlink client for pod interfaces: veth pairs, addresses, routes.

Owned by cni/. Standard library only, on purpose: the CNI plugin runs once
per pod event and importing pyroute2 costs ~0.4 s of CPU per run here, more
than everything else an ADD does; pyroute2 also opens a socket in another
namespace by forking a child. Here a socket is opened *in* a namespace by
switching the calling thread into it (``setns``), creating the socket (it
stays bound to that namespace) and switching back, so it is cheap and
thread-safe (network namespaces are per thread).

The messages are the kernel's (``include/uapi/linux/rtnetlink.h``,
``if_link.h``, ``veth.h``); every request asks for an ACK and a refusal is a
`NetlinkError` carrying errno and the kernel's extended-ACK text.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno as _errno
import ipaddress
import os
import socket
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

__all__ = [
    "RTPROT_BOOT",
    "RT_SCOPE_LINK",
    "Addr",
    "Link",
    "NamespaceError",
    "NetlinkError",
    "Route",
    "Rtnl",
    "in_netns",
    "open_rtnl",
    "read_sysctl",
    "write_sysctl",
]

CLONE_NEWNET = 0x40000000
NETLINK_ROUTE = 0
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11

NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4
NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLM_F_DUMP = 0x300
NLM_F_ACK_TLVS = 0x200
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLMSGERR_ATTR_MSG = 1

RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_SETLINK = 16, 17, 18, 19
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26

IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINK = 1, 3, 4, 5
IFLA_LINKINFO, IFLA_NET_NS_FD = 18, 28
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
VETH_INFO_PEER = 1
NLA_F_NESTED = 0x8000
IFF_UP = 0x1

IFA_ADDRESS, IFA_LOCAL, IFA_FLAGS = 1, 2, 8
IFA_F_NODAD = 0x02
IFA_F_PERMANENT = 0x80

RTM_NEWNEIGH = 28
NDA_DST, NDA_LLADDR = 1, 2
NUD_PERMANENT = 0x80

RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_TABLE = 1, 4, 5, 6, 15
RT_TABLE_MAIN = 254
RTM_F_FIB_MATCH = 0x2000
RT_SCOPE_UNIVERSE, RT_SCOPE_LINK, RT_SCOPE_HOST = 0, 253, 254
RTN_UNICAST = 1
RTPROT_KERNEL, RTPROT_BOOT = 2, 3

_HDR = struct.Struct("=IHHII")
_NLA = struct.Struct("=HH")
_IFINFO = struct.Struct("=BxHiII")
_IFADDR = struct.Struct("=BBBBI")
_RTMSG = struct.Struct("=BBBBBBBBI")
_NDMSG = struct.Struct("=BxxxiHBB")
_U32 = struct.Struct("=I")
_I32 = struct.Struct("=i")

_libc = ctypes.CDLL(None, use_errno=True)


class NetlinkError(OSError):
    """The kernel refused a request: ``errno`` and its own explanation when it gave one."""

    def __init__(self, err: int, what: str, text: str = "") -> None:
        detail = f"{os.strerror(err)}" + (f" ({text})" if text else "")
        super().__init__(err, f"{what}: {detail}")
        self.what, self.text = what, text


class NamespaceError(OSError):
    """A network namespace path that cannot be entered."""


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def in_netns(path: str) -> Iterator[None]:
    """Run the block with this thread in the network namespace at ``path``.

    The thread always returns to the namespace it was in, also on error.
    """
    try:
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise NamespaceError(exc.errno, f"network namespace {path!r}: {exc.strerror}") from None
    try:
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            try:
                _setns(target)
            except OSError as exc:
                raise NamespaceError(exc.errno, f"{path!r} is not a network namespace "
                                     f"({exc.strerror})") from None
            try:
                yield
            finally:
                _setns(home)
        finally:
            os.close(home)
    finally:
        os.close(target)


def _align(n: int) -> int:
    return (n + 3) & ~3


def _attr(kind: int, payload: bytes) -> bytes:
    ln = _NLA.size + len(payload)
    return _NLA.pack(ln, kind) + payload + b"\0" * (_align(ln) - ln)


def _name(text: str) -> bytes:
    return text.encode() + b"\0"


def _attrs(buf: bytes | memoryview, off: int, end: int) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    while off + _NLA.size <= end:
        ln, kind = _NLA.unpack_from(buf, off)
        if ln < _NLA.size:
            break
        out[kind & 0x3FFF] = bytes(buf[off + _NLA.size: off + ln])
        off += _align(ln)
    return out


def _link_name(buf: bytes | memoryview, off: int, end: int) -> str:
    """IFLA_IFNAME of an ifinfomsg at ``off`` without parsing its other attributes."""
    off += _IFINFO.size
    while off + _NLA.size <= end:
        ln, kind = _NLA.unpack_from(buf, off)
        if ln < _NLA.size:
            break
        if kind & 0x3FFF == IFLA_IFNAME:
            return _cstr(bytes(buf[off + _NLA.size: off + ln]))
        off += _align(ln)
    return ""


def _cstr(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode(errors="replace")


def _mac_text(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def _mac_bytes(text: str) -> bytes:
    parts = text.replace("-", ":").split(":")
    if len(parts) != 6:
        raise ValueError(f"not a MAC address: {text!r}")
    return bytes(int(p, 16) for p in parts)


@dataclass(frozen=True, slots=True)
class Link:
    index: int
    name: str
    mac: str
    mtu: int
    up: bool
    kind: str = ""
    peer_index: int = 0  # IFLA_LINK: a veth's peer (index in the peer's namespace)


@dataclass(frozen=True, slots=True)
class Addr:
    index: int
    address: ipaddress.IPv4Interface | ipaddress.IPv6Interface


@dataclass(frozen=True, slots=True)
class Route:
    dst: ipaddress.IPv4Network | ipaddress.IPv6Network
    oif: int = 0
    gateway: str | None = None
    scope: int = RT_SCOPE_UNIVERSE
    protocol: int = RTPROT_BOOT
    table: int = RT_TABLE_MAIN
    metric: int = 0
    type: int = RTN_UNICAST
    extra: dict = field(default_factory=dict, compare=False)


def open_rtnl(netns: str | None = None) -> Rtnl:
    """An rtnetlink socket in ``netns`` (a path; None: this thread's namespace)."""
    if netns is None:
        return Rtnl(_socket())
    with in_netns(netns):
        return Rtnl(_socket())


def _socket() -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                         NETLINK_ROUTE)
    for opt in (NETLINK_CAP_ACK, NETLINK_EXT_ACK):
        with contextlib.suppress(OSError):
            sock.setsockopt(SOL_NETLINK, opt, 1)
    sock.bind((0, 0))
    return sock


class Rtnl:
    """Requests on one rtnetlink socket (one namespace). Not shared between threads."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._seq = 0

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Rtnl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ transport

    def _send(self, mtype: int, flags: int, body: bytes) -> int:
        self._seq += 1
        msg = _HDR.pack(_HDR.size + len(body), mtype, flags | NLM_F_REQUEST, self._seq, 0) + body
        self.sock.send(msg)
        return self._seq

    def _messages(self, seq: int) -> Iterator[tuple[int, memoryview, int, int]]:
        """(type, buffer, body offset, end) of each reply to ``seq`` until DONE/ERROR."""
        while True:
            data = memoryview(self.sock.recv(1 << 20))
            off = 0
            while off + _HDR.size <= len(data):
                ln, mtype, flags, mseq, _pid = _HDR.unpack_from(data, off)
                if ln < _HDR.size:
                    return
                if mseq == seq:
                    yield mtype, data, off, off + ln
                    if mtype in (NLMSG_DONE, NLMSG_ERROR) or not flags & NLM_F_MULTI:
                        return
                off += _align(ln)

    @staticmethod
    def _error(buf: memoryview, off: int, end: int) -> tuple[int, str]:
        (code,) = _I32.unpack_from(buf, off + _HDR.size)
        flags = _HDR.unpack_from(buf, off)[2]
        text = ""
        if code and flags & NLM_F_ACK_TLVS:
            inner = _HDR.unpack_from(buf, off + _HDR.size + 4)[0]
            # with NETLINK_CAP_ACK the request is echoed as its header only
            start = off + _HDR.size + 4 + (_HDR.size if flags & 0x100 else inner)
            msg = _attrs(buf, _align(start), end).get(NLMSGERR_ATTR_MSG)
            text = _cstr(msg) if msg else ""
        return -code, text

    def _ack(self, buf: memoryview, off: int, end: int, what: str) -> None:
        """An NLMSG_ERROR: nothing if it is an ACK (error 0), else NetlinkError."""
        err, text = self._error(buf, off, end)
        if err:
            raise NetlinkError(err, what, text)

    def request(self, mtype: int, flags: int, body: bytes, what: str) -> None:
        seq = self._send(mtype, flags | NLM_F_ACK, body)
        for typ, buf, off, end in self._messages(seq):
            if typ == NLMSG_ERROR:
                self._ack(buf, off, end, what)
                return

    def dump(self, mtype: int, body: bytes, what: str) -> Iterator[tuple[int, memoryview, int, int]]:
        seq = self._send(mtype, NLM_F_DUMP, body)
        for typ, buf, off, end in self._messages(seq):
            if typ == NLMSG_ERROR:
                self._ack(buf, off, end, what)
                return
            if typ == NLMSG_DONE:
                return
            yield typ, buf, off + _HDR.size, end

    # ------------------------------------------------------------ links

    def add_veth(self, name: str, peer: str, peer_netns_fd: int, *, mtu: int = 0,
                 mac: str | None = None, peer_mtu: int = 0) -> None:
        """Create veth ``name`` here and its peer ``peer`` in the namespace of ``peer_netns_fd``."""
        peer_attrs = _attr(IFLA_IFNAME, _name(peer)) + _attr(IFLA_NET_NS_FD,
                                                             _U32.pack(peer_netns_fd))
        if peer_mtu or mtu:
            peer_attrs += _attr(IFLA_MTU, _U32.pack(peer_mtu or mtu))
        info = _attr(IFLA_INFO_KIND, b"veth") + _attr(
            IFLA_INFO_DATA | NLA_F_NESTED,
            _attr(VETH_INFO_PEER | NLA_F_NESTED, _IFINFO.pack(0, 0, 0, 0, 0) + peer_attrs))
        body = _IFINFO.pack(0, 0, 0, 0, 0) + _attr(IFLA_IFNAME, _name(name))
        if mtu:
            body += _attr(IFLA_MTU, _U32.pack(mtu))
        if mac:
            body += _attr(IFLA_ADDRESS, _mac_bytes(mac))
        body += _attr(IFLA_LINKINFO | NLA_F_NESTED, info)
        self.request(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, body,
                     f"create veth {name} (peer {peer})")

    def set_link(self, index: int, *, up: bool | None = None, mac: str | None = None,
                 mtu: int = 0, name: str | None = None) -> None:
        flags = change = 0
        if up is not None:
            flags, change = (IFF_UP if up else 0), IFF_UP
        body = _IFINFO.pack(0, 0, index, flags, change)
        if mac:
            body += _attr(IFLA_ADDRESS, _mac_bytes(mac))
        if mtu:
            body += _attr(IFLA_MTU, _U32.pack(mtu))
        if name:
            body += _attr(IFLA_IFNAME, _name(name))
        self.request(RTM_NEWLINK, 0, body, f"set link {index}")

    def del_link(self, index: int) -> None:
        self.request(RTM_DELLINK, 0, _IFINFO.pack(0, 0, index, 0, 0), f"delete link {index}")

    def _parse_link(self, buf: memoryview, off: int, end: int) -> Link:
        _fam, _typ, index, flags, _chg = _IFINFO.unpack_from(buf, off)
        a = _attrs(buf, off + _IFINFO.size, end)
        kind = ""
        if IFLA_LINKINFO in a:
            info = a[IFLA_LINKINFO]
            kind = _cstr(_attrs(info, 0, len(info)).get(IFLA_INFO_KIND, b""))
        return Link(index=index, name=_cstr(a.get(IFLA_IFNAME, b"")),
                    mac=_mac_text(a.get(IFLA_ADDRESS, b"")),
                    mtu=_U32.unpack(a[IFLA_MTU])[0] if IFLA_MTU in a else 0,
                    up=bool(flags & IFF_UP), kind=kind,
                    peer_index=_U32.unpack(a[IFLA_LINK])[0] if IFLA_LINK in a else 0)

    def link(self, name: str) -> Link | None:
        """The link called ``name``, None if there is none."""
        body = _IFINFO.pack(0, 0, 0, 0, 0) + _attr(IFLA_IFNAME, _name(name))
        return self._get_one(RTM_GETLINK, body, RTM_NEWLINK, self._parse_link,
                             (_errno.ENODEV, _errno.ENOENT), f"look up link {name}")

    def _get_one(self, mtype: int, body: bytes, answer: int, parse, absent: tuple[int, ...],
                 what: str):
        """A request with one answer: ``parse`` of the ``answer`` message, or None when the
        kernel says one of the ``absent`` errors (NetlinkError for any other)."""
        seq = self._send(mtype, 0, body)
        for typ, buf, off, end in self._messages(seq):
            if typ == NLMSG_ERROR:
                err, text = self._error(buf, off, end)
                if err and err not in absent:
                    raise NetlinkError(err, what, text)
                return None
            if typ == answer:
                return parse(buf, off + _HDR.size, end)
        return None

    def links(self, name_match: Callable[[str], object] | None = None) -> list[Link]:
        """Every link, or only those whose name ``name_match`` accepts (the others are
        not parsed: a node's pod veths are most of its links)."""
        return [self._parse_link(buf, off, end)
                for typ, buf, off, end in self.dump(RTM_GETLINK, _IFINFO.pack(0, 0, 0, 0, 0),
                                                    "list links")
                if typ == RTM_NEWLINK
                and (name_match is None or name_match(_link_name(buf, off, end)))]

    # ------------------------------------------------------------ addresses

    def add_address(self, index: int, iface: ipaddress.IPv4Interface | ipaddress.IPv6Interface,
                    nodad: bool = False) -> None:
        fam = socket.AF_INET if iface.version == 4 else socket.AF_INET6
        flags = IFA_F_PERMANENT | (IFA_F_NODAD if nodad else 0)
        raw = iface.ip.packed
        body = (_IFADDR.pack(fam, iface.network.prefixlen, flags & 0xFF, RT_SCOPE_UNIVERSE, index)
                + _attr(IFA_LOCAL, raw) + _attr(IFA_ADDRESS, raw)
                + _attr(IFA_FLAGS, _U32.pack(flags)))
        self.request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, body, f"add address {iface}")

    def addresses(self, index: int = 0) -> list[Addr]:
        out = []
        for typ, buf, off, end in self.dump(RTM_GETADDR, _IFADDR.pack(0, 0, 0, 0, 0),
                                            "list addresses"):
            if typ != RTM_NEWADDR:
                continue
            fam, plen, _flags, _scope, idx = _IFADDR.unpack_from(buf, off)
            if index and idx != index:
                continue
            a = _attrs(buf, off + _IFADDR.size, end)
            raw = a.get(IFA_LOCAL) or a.get(IFA_ADDRESS)
            if raw is None or fam not in (socket.AF_INET, socket.AF_INET6):
                continue
            ip = ipaddress.ip_address(raw)
            out.append(Addr(idx, ipaddress.ip_interface(f"{ip}/{plen}")))
        return out

    # ------------------------------------------------------------ neighbours

    def add_neighbour(self, index: int, ip: str, mac: str) -> None:
        """A permanent neighbour entry (``ip neigh replace IP lladdr MAC nud permanent``)."""
        addr = ipaddress.ip_address(ip)
        fam = socket.AF_INET if addr.version == 4 else socket.AF_INET6
        body = (_NDMSG.pack(fam, index, NUD_PERMANENT, 0, 0) + _attr(NDA_DST, addr.packed)
                + _attr(NDA_LLADDR, _mac_bytes(mac)))
        self.request(RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_REPLACE, body, f"add neighbour {ip}")

    # ------------------------------------------------------------ routes

    def _route_body(self, r: Route) -> bytes:
        fam = socket.AF_INET if r.dst.version == 4 else socket.AF_INET6
        body = _RTMSG.pack(fam, r.dst.prefixlen, 0, 0, r.table if r.table < 256 else 252,
                           r.protocol, r.scope, r.type, 0)
        if r.dst.prefixlen:
            body += _attr(RTA_DST, r.dst.network_address.packed)
        if r.oif:
            body += _attr(RTA_OIF, _U32.pack(r.oif))
        if r.gateway:
            body += _attr(RTA_GATEWAY, ipaddress.ip_address(r.gateway).packed)
        if r.metric:
            body += _attr(RTA_PRIORITY, _U32.pack(r.metric))
        if r.table >= 256:
            body += _attr(RTA_TABLE, _U32.pack(r.table))
        return body

    def add_route(self, r: Route, replace: bool = False) -> None:
        flags = NLM_F_CREATE | (NLM_F_REPLACE if replace else NLM_F_EXCL)
        self.request(RTM_NEWROUTE, flags, self._route_body(r), f"add route {r.dst}")

    def del_route(self, r: Route) -> None:
        self.request(RTM_DELROUTE, 0, self._route_body(r), f"delete route {r.dst}")

    def route_get(self, dst: ipaddress.IPv4Network | ipaddress.IPv6Network) -> Route | None:
        """The FIB entry that matches ``dst``'s address (``ip route get fibmatch``), or None
        when nothing does. One request, whatever the size of the table."""
        fam = socket.AF_INET if dst.version == 4 else socket.AF_INET6
        body = (_RTMSG.pack(fam, dst.max_prefixlen, 0, 0, 0, 0, 0, 0, RTM_F_FIB_MATCH)
                + _attr(RTA_DST, dst.network_address.packed))
        # Absent: no route, or a blackhole/unreachable one.
        return self._get_one(RTM_GETROUTE, body, RTM_NEWROUTE, self._parse_route,
                             (_errno.ENETUNREACH, _errno.EHOSTUNREACH, _errno.EINVAL,
                              _errno.ESRCH, _errno.ENOENT), f"look up route {dst}")

    def _parse_route(self, buf: memoryview, off: int, end: int) -> Route:
        rfam, dlen, _s, _t, tbl, proto, scope, rtype, _f = _RTMSG.unpack_from(buf, off)
        a = _attrs(buf, off + _RTMSG.size, end)
        if RTA_TABLE in a:
            tbl = _U32.unpack(a[RTA_TABLE])[0]
        zero = b"\0" * (4 if rfam == socket.AF_INET else 16)
        dst = ipaddress.ip_network((ipaddress.ip_address(a.get(RTA_DST, zero)), dlen))
        gw = a.get(RTA_GATEWAY)
        return Route(dst=dst, oif=_U32.unpack(a[RTA_OIF])[0] if RTA_OIF in a else 0,
                     gateway=str(ipaddress.ip_address(gw)) if gw else None,
                     scope=scope, protocol=proto, table=tbl, type=rtype,
                     metric=_U32.unpack(a[RTA_PRIORITY])[0] if RTA_PRIORITY in a else 0)

    def routes(self, version: int = 4, table: int = RT_TABLE_MAIN) -> list[Route]:
        fam = socket.AF_INET if version == 4 else socket.AF_INET6
        out = []
        for typ, buf, off, end in self.dump(RTM_GETROUTE, _RTMSG.pack(fam, 0, 0, 0, 0, 0, 0, 0, 0),
                                            "list routes"):
            if typ != RTM_NEWROUTE:
                continue
            route = self._parse_route(buf, off, end)
            if route.table == table:
                out.append(route)
        return out


def write_sysctl(path: str, value: str) -> None:
    """Write one /proc/sys value (of the calling thread's network namespace)."""
    with open(path, "w") as f:
        f.write(value)


def read_sysctl(path: str) -> str:
    with open(path) as f:
        return f.read().strip()
