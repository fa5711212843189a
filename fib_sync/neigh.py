"""Neighbour (ARP/NDP) and FDB entries of podbgp's overlay devices: records,
the pure diff, batched netlink apply, filtered dumps.

Owned by fib_sync/. `fib_sync.overlay.OverlaySyncer` is the only caller.

A VXLAN route ``BLOCK via VTEP dev vxlan.calico onlink`` needs two more
kernel objects (Calico's Felix, felix/vxlanfdb/vxlan_fdb.go):
- a permanent neighbour entry VTEP -> the remote device's MAC (the inner
  Ethernet header, no ARP over the tunnel), and
- an FDB entry that MAC -> the remote node's address (the outer IP header).

Ownership: both live only on devices podbgp created (`fib_sync.link`,
alias "podbgp"). A neighbour entry is podbgp's when it is permanent and
carries podbgp's protocol number (NDA_PROTOCOL, the route protocol: the
kernel keeps it and dumps it back); a permanent entry with another protocol
on the device is someone else's and is reported and left alone; the
kernel's own dynamic entries (incomplete, stale...) are replaced when they
sit on a key podbgp wants. The VXLAN driver keeps no protocol on FDB
entries, so a permanent FDB entry on a podbgp device is podbgp's.

Like routes (`fib_sync.netlink`), messages go many to one send with an ACK
asked only on the last: the kernel answers every failed message with an
NLMSG_ERROR carrying its sequence number, so one ACK closes a chunk.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from .link import format_mac, parse_mac
from .netlink import (
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_REPLACE,
    NLM_F_REQUEST,
    NLMSG_ERROR,
    ReplyBuffer,
    dump_replies,
    iter_messages,
    open_netlink,
    parse_error,
)

RTM_NEWNEIGH = 28
RTM_DELNEIGH = 29
RTM_GETNEIGH = 30
RTMGRP_NEIGH = 0x4

NDA_DST = 1
NDA_LLADDR = 2
NDA_IFINDEX = 8
NDA_PROTOCOL = 12

NUD_INCOMPLETE = 0x01
NUD_REACHABLE = 0x02
NUD_NOARP = 0x40
NUD_PERMANENT = 0x80
NTF_SELF = 0x02
AF_BRIDGE = 7

CHUNK = 1024  # messages per send; one ACK per send

_HDR = struct.Struct("=IHHII")
_NDMSG = struct.Struct("=BxxxiHBB")
_NLA = struct.Struct("=HH")

NeighKey = tuple[str, str]  # (dev, ip)
FdbKey = tuple[str, str]  # (dev, mac)


def _canonical_ip(text: str, what: str) -> tuple[int, str]:
    fam = socket.AF_INET6 if ":" in text else socket.AF_INET
    try:
        return fam, socket.inet_ntop(fam, socket.inet_pton(fam, text))
    except (OSError, TypeError):
        raise ValueError(f"{what}: {text!r}: not an IP address") from None


def _canonical_mac(text: str, what: str) -> str:
    try:
        return format_mac(parse_mac(text))
    except (ValueError, AttributeError) as e:
        raise ValueError(f"{what}: {e}") from None


@dataclass(frozen=True, slots=True)
class Neighbour:
    """A permanent neighbour entry: `ip` on `dev` is at `mac`."""

    dev: str
    ip: str
    mac: str
    key: NeighKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _, ip = _canonical_ip(self.ip, f"neighbour on {self.dev}")
        object.__setattr__(self, "ip", ip)
        object.__setattr__(self, "mac", _canonical_mac(self.mac, f"neighbour {ip}"))
        object.__setattr__(self, "key", (self.dev, ip))

    @property
    def family(self) -> int:
        return socket.AF_INET6 if ":" in self.ip else socket.AF_INET


@dataclass(frozen=True, slots=True)
class FdbEntry:
    """A permanent FDB entry of a VXLAN device: frames for `mac` go to `dst`."""

    dev: str
    mac: str
    dst: str
    key: FdbKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "mac", _canonical_mac(self.mac, f"FDB entry on {self.dev}"))
        _, dst = _canonical_ip(self.dst, f"FDB entry {self.mac}")
        object.__setattr__(self, "dst", dst)
        object.__setattr__(self, "key", (self.dev, self.mac))


L2 = Neighbour | FdbEntry


@dataclass(frozen=True, slots=True)
class L2Plan:
    """What to change: add (absent), replace (present, different), delete (ours,
    not wanted). `held`: wanted keys someone else holds (left alone)."""

    add: tuple[L2, ...] = ()
    replace: tuple[L2, ...] = ()
    delete: tuple[L2, ...] = ()
    held: tuple[L2, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.add or self.replace or self.delete)

    def __len__(self) -> int:
        return len(self.add) + len(self.replace) + len(self.delete)


def diff_l2(desired: Iterable[L2], ours: Mapping[tuple, L2],
            foreign: Mapping[tuple, str] | None = None) -> L2Plan:
    """The changes that turn `ours` (podbgp's entries found in the kernel, by
    key) into `desired`. `foreign`: keys held by an entry that is not podbgp's
    (key -> who): those are not touched. Pure; inputs untouched."""
    foreign = foreign or {}
    add: list[L2] = []
    replace: list[L2] = []
    held: list[L2] = []
    want: dict[tuple, L2] = {}
    for e in desired:
        want[e.key] = e
    for key, e in want.items():
        have = ours.get(key)
        if have is None:
            if key in foreign:
                held.append(e)
            else:
                add.append(e)
        elif have != e:
            replace.append(e)
    delete = [e for k, e in ours.items() if k not in want]
    return L2Plan(tuple(add), tuple(replace), tuple(delete), tuple(held))


# ---------------------------------------------------------------- encoding

# One struct per message shape (header, ndmsg, attributes, padding): a message
# is one pack() call, so 10k entries cost milliseconds, not a pyroute2 encode each.
_S_NEIGH_ADD = {
    socket.AF_INET: struct.Struct("=IHHII BxxxiHBB HH4s HH6sxx HHBxxx".replace(" ", "")),
    socket.AF_INET6: struct.Struct("=IHHII BxxxiHBB HH16s HH6sxx HHBxxx".replace(" ", "")),
}
_S_NEIGH_DEL = {
    socket.AF_INET: struct.Struct("=IHHII BxxxiHBB HH4s".replace(" ", "")),
    socket.AF_INET6: struct.Struct("=IHHII BxxxiHBB HH16s".replace(" ", "")),
}
_S_FDB = {
    socket.AF_INET: struct.Struct("=IHHII BxxxiHBB HH6sxx HH4s".replace(" ", "")),
    socket.AF_INET6: struct.Struct("=IHHII BxxxiHBB HH6sxx HH16s".replace(" ", "")),
}
_ALEN = {socket.AF_INET: 4, socket.AF_INET6: 16}
_SET_FLAGS = NLM_F_REQUEST | NLM_F_CREATE | NLM_F_REPLACE


def _nla(atype: int, payload: bytes) -> bytes:
    ln = 4 + len(payload)
    return _NLA.pack(ln, atype) + payload + bytes(((ln + 3) & ~3) - ln)


def _family(ip: str) -> int:
    return socket.AF_INET6 if ":" in ip else socket.AF_INET


def encode_neighbour(op: str, n: Neighbour, ifindex: int, protocol: int, seq: int = 0) -> bytes:
    """RTM_NEWNEIGH (add/replace: create-or-replace, permanent, our protocol)
    or RTM_DELNEIGH of one neighbour entry: `ip neigh replace IP lladdr MAC dev
    D nud permanent protocol P`."""
    fam = _family(n.ip)
    alen = _ALEN[fam]
    dst = socket.inet_pton(fam, n.ip)
    if op == "delete":
        st = _S_NEIGH_DEL[fam]
        return st.pack(st.size, RTM_DELNEIGH, NLM_F_REQUEST, seq, 0,
                       fam, ifindex, NUD_PERMANENT, 0, 0, 4 + alen, NDA_DST, dst)
    st = _S_NEIGH_ADD[fam]
    return st.pack(st.size, RTM_NEWNEIGH, _SET_FLAGS, seq, 0,
                   fam, ifindex, NUD_PERMANENT, 0, 0, 4 + alen, NDA_DST, dst,
                   10, NDA_LLADDR, bytes.fromhex(n.mac.replace(":", "")),
                   5, NDA_PROTOCOL, protocol)


def encode_fdb(op: str, f: FdbEntry, ifindex: int, seq: int = 0) -> bytes:
    """RTM_NEWNEIGH / RTM_DELNEIGH (AF_BRIDGE, NTF_SELF) of one FDB entry of a
    VXLAN device: `bridge fdb replace MAC dev D dst IP self permanent`."""
    fam = _family(f.dst)
    st = _S_FDB[fam]
    mtype, flags = (RTM_DELNEIGH, NLM_F_REQUEST) if op == "delete" else (RTM_NEWNEIGH, _SET_FLAGS)
    return st.pack(st.size, mtype, flags, seq, 0,
                   AF_BRIDGE, ifindex, NUD_PERMANENT, NTF_SELF, 0,
                   10, NDA_LLADDR, bytes.fromhex(f.mac.replace(":", "")),
                   4 + _ALEN[fam], NDA_DST, socket.inet_pton(fam, f.dst))


_new = object.__new__
_set = object.__setattr__


def trusted_neighbour(dev: str, ip: str, mac: str) -> Neighbour:
    """A Neighbour from canonical fields (a kernel dump), without validation."""
    n = _new(Neighbour)
    _set(n, "dev", dev)
    _set(n, "ip", ip)
    _set(n, "mac", mac)
    _set(n, "key", (dev, ip))
    return n


def trusted_fdb(dev: str, mac: str, dst: str) -> FdbEntry:
    f = _new(FdbEntry)
    _set(f, "dev", dev)
    _set(f, "mac", mac)
    _set(f, "dst", dst)
    _set(f, "key", (dev, mac))
    return f


@dataclass(frozen=True, slots=True)
class L2Error:
    """One entry the kernel refused."""

    op: str
    entry: L2
    errno: int
    reason: str


@dataclass(slots=True)
class Dumped:
    """One pass's reading of the kernel: podbgp's entries and the keys held by
    others on podbgp's devices (key -> who)."""

    neighbours: dict[NeighKey, Neighbour]
    fdb: dict[FdbKey, FdbEntry]
    foreign: dict[tuple, str]


class NeighKernel:
    """Neighbour and FDB entries of podbgp's devices in one namespace.

    One command socket; not thread-safe (the overlay syncer's executor thread
    calls it)."""

    def __init__(self, netns: str | None, protocol: int) -> None:
        self.netns = netns
        self.protocol = protocol
        self.sock = open_netlink(netns)
        self._seq = 1
        self._buf = ReplyBuffer()

    def close(self) -> None:
        self.sock.close()

    # -- reading

    def _dump(self, family: int, ifindex: int):
        self._seq = (self._seq + 1) & 0x7FFFFFFF or 1
        if family == AF_BRIDGE:
            body = _NDMSG.pack(family, ifindex, 0, 0, 0)  # the bridge port filter
        else:  # strict checking wants ndm_ifindex 0 and the filter as NDA_IFINDEX
            body = _NDMSG.pack(family, 0, 0, 0, 0) + _nla(NDA_IFINDEX, struct.pack("=i", ifindex))
        for view, off, ln, typ in dump_replies(self.sock, self._buf, RTM_GETNEIGH, body,
                                               self._seq, "neighbour dump"):
            if typ == RTM_NEWNEIGH:
                yield view, off, ln

    def dump(self, devices: Mapping[str, int]) -> Dumped:
        """Entries on `devices` (name -> ifindex): ours, and who holds the rest."""
        neighbours: dict[NeighKey, Neighbour] = {}
        fdb: dict[FdbKey, FdbEntry] = {}
        foreign: dict[tuple, str] = {}
        proto = self.protocol
        for dev, index in devices.items():
            for fam in (socket.AF_INET, socket.AF_INET6, AF_BRIDGE):
                for buf, off, ln in self._dump(fam, index):
                    nfam, idx, state, flags, _typ = _NDMSG.unpack_from(buf, off + 16)
                    if idx != index or nfam != fam:
                        continue
                    dst = lladdr = None
                    nproto = 0
                    a, end = off + 28, off + ln
                    while a + 4 <= end:
                        alen, atyp = _NLA.unpack_from(buf, a)
                        if alen < 4:
                            break
                        atyp &= 0x3FFF
                        if atyp == NDA_DST:
                            dst = bytes(buf[a + 4 : a + alen])
                        elif atyp == NDA_LLADDR:
                            lladdr = bytes(buf[a + 4 : a + alen])
                        elif atyp == NDA_PROTOCOL and alen >= 5:
                            nproto = buf[a + 4]
                        a += (alen + 3) & ~3
                    permanent = bool(state & NUD_PERMANENT)
                    if fam == AF_BRIDGE:
                        if lladdr is None or len(lladdr) != 6 or dst is None:
                            continue
                        if not state & NUD_PERMANENT or not flags & NTF_SELF:
                            continue  # learned entries: learning is off on our devices
                        dfam = socket.AF_INET if len(dst) == 4 else socket.AF_INET6
                        e = trusted_fdb(dev, lladdr.hex(":"), socket.inet_ntop(dfam, dst))
                        if e.key in fdb:
                            # A second remote for one MAC (`bridge fdb append`): not
                            # something podbgp makes; the first one is replaced.
                            continue
                        fdb[e.key] = e
                        continue
                    if dst is None:
                        continue
                    ip = socket.inet_ntop(fam, dst)
                    key = (dev, ip)
                    if permanent and nproto == proto and lladdr is not None and len(lladdr) == 6:
                        neighbours[key] = trusted_neighbour(dev, ip, lladdr.hex(":"))
                    elif permanent:
                        foreign[key] = f"a permanent entry of protocol {nproto}"
                    # else: the kernel's own (dynamic) entry: replaced if wanted.
        return Dumped(neighbours, fdb, foreign)

    # -- apply

    def apply(self, ops: Sequence[tuple[str, L2]], ifindex: Mapping[str, int]) -> list[L2Error]:
        """Apply (op, entry) pairs in order, CHUNK messages per send with one
        ACK; return what the kernel refused. Raises StateUnknown on ENOBUFS."""
        errors: list[L2Error] = []
        proto = self.protocol
        i = 0
        while i < len(ops):
            chunk = ops[i : i + CHUNK]
            i += CHUNK
            pieces: list[bytes] = []
            sent: list[tuple[str, L2]] = []
            seq0 = self._seq + 1
            for op, e in chunk:
                index = ifindex.get(e.dev)
                if index is None:
                    errors.append(L2Error(op, e, errno.ENODEV, f"device {e.dev!r} not found"))
                    continue
                seq = seq0 + len(sent)
                if isinstance(e, Neighbour):
                    pieces.append(encode_neighbour(op, e, index, proto, seq))
                else:
                    pieces.append(encode_fdb(op, e, index, seq))
                sent.append((op, e))
            if not sent:
                continue
            last = bytearray(pieces[-1])
            flags = struct.unpack_from("=H", last, 6)[0]
            struct.pack_into("=H", last, 6, flags | NLM_F_ACK)
            pieces[-1] = bytes(last)
            self._seq = seq0 + len(sent) - 1
            self._send(b"".join(pieces), seq0, self._seq, sent, errors)
        return errors

    def _send(self, data: bytes, seq0: int, last_seq: int, sent: list[tuple[str, L2]],
              errors: list[L2Error]) -> None:
        self.sock.send(data)
        while True:
            n = self._buf.recv(self.sock, "while applying neighbour entries")
            view = memoryview(self._buf.data)
            for off, ln, typ, flags, seq in iter_messages(view, n):
                if typ != NLMSG_ERROR or not seq0 <= seq <= last_seq:
                    continue
                err, text = parse_error(view, off, ln, flags)
                if err:
                    op, e = sent[seq - seq0]
                    errors.append(L2Error(op, e, err, text or os.strerror(err)))
                if seq == last_seq:
                    return
