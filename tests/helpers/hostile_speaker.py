"""A purpose-built hostile BGP speaker for tests (stdlib only: raw sockets, hand-built bytes).

Owned by the reliability tests (tests/e2e/test_hostile_peer.py). Nothing here
imports podbgp or ExaBGP: every octet on the wire is written below, from the
RFCs, so the daemon is tested against bytes it did not produce.

- message builders: ``open_msg``, ``update``, ``keepalive``, ``notification``
  and the attribute/NLRI pieces (``origin``, ``as_path``, ``next_hop``, ``nlri``
  ...). Each takes overrides (``length=``, ``flags=``, ``truncate=``) so a test
  can write exactly the malformation it means: RFC 4271 §4 (formats), RFC 7606
  (what a receiver must do with each malformation), RFC 6793 (2/4-octet AS).
- ``Session``: one TCP connection (made inside a network namespace when asked)
  with an OPEN/KEEPALIVE handshake, ``send`` and ``outcome`` (what the peer did
  after a message: NOTIFICATION with code/subcode, a plain close, or nothing).
- ``fuzz_updates``: mutations of a valid UPDATE from a fixed seed (bit flips,
  truncations, wrong lengths), reproducible run to run.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import os
import random
import select
import socket
import struct
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

MARKER = b"\xff" * 16
HEADER_LEN = 19
MAX_MESSAGE = 4096  # RFC 4271 §4.1 (no extended-message capability negotiated)
OPEN, UPDATE, NOTIFICATION, KEEPALIVE = 1, 2, 3, 4

# Path attribute type codes (RFC 4271 §5, RFC 4760, RFC 6793) and flags (§4.3).
ORIGIN, AS_PATH, NEXT_HOP, MED, LOCAL_PREF = 1, 2, 3, 4, 5
COMMUNITY = 8
OPTIONAL, TRANSITIVE, PARTIAL, EXTENDED = 0x80, 0x40, 0x20, 0x10
AS_SET, AS_SEQUENCE = 1, 2
WELL_KNOWN = TRANSITIVE  # well-known mandatory/discretionary: optional bit clear, transitive set

CLONE_NEWNET = 0x40000000


# --------------------------------------------------------------- messages


def message(kind: int, body: bytes, *, length: int | None = None,
            marker: bytes = MARKER) -> bytes:
    """A BGP message: 16-octet marker, 2-octet length, 1-octet type (RFC 4271 §4.1).

    ``length`` overrides the header's length field (the bytes sent stay ``body``).
    """
    size = HEADER_LEN + len(body) if length is None else length
    return marker + struct.pack("!HB", size, kind) + body


def keepalive() -> bytes:
    return message(KEEPALIVE, b"")


def notification(code: int, subcode: int, data: bytes = b"") -> bytes:
    return message(NOTIFICATION, bytes([code, subcode]) + data)


def capability(code: int, value: bytes = b"") -> bytes:
    return bytes([code, len(value)]) + value


def cap_multiprotocol(afi: int = 1, safi: int = 1) -> bytes:
    return capability(1, struct.pack("!HBB", afi, 0, safi))


def cap_route_refresh() -> bytes:
    return capability(2)


def cap_as4(asn: int) -> bytes:
    return capability(65, struct.pack("!I", asn))


def open_msg(asn: int, router_id: str, hold_time: int = 90, *,
             capabilities: Sequence[bytes] | None = None, version: int = 4) -> bytes:
    """OPEN (RFC 4271 §4.2) with capabilities in one optional parameter (RFC 5492).

    Default capabilities: IPv4 unicast and route refresh, NO four-octet AS: the
    session then carries 2-octet AS_PATHs (RFC 6793 §4.2), which is what lets a
    2,000-hop AS_PATH fit a 4,096-octet UPDATE.
    """
    caps = list(capabilities) if capabilities is not None else [
        cap_multiprotocol(), cap_route_refresh()]
    params = b"".join(bytes([2, len(c)]) + c for c in caps)
    my_as = asn if asn <= 0xFFFF else 23456  # AS_TRANS (RFC 6793 §9)
    body = struct.pack("!BHH4sB", version, my_as, hold_time,
                       socket.inet_aton(router_id), len(params)) + params
    return message(OPEN, body)


def attr(code: int, value: bytes, flags: int = WELL_KNOWN, *,
         length: int | None = None) -> bytes:
    """One path attribute (RFC 4271 §4.3). Extended length is used when needed or
    asked for (``flags & EXTENDED``); ``length`` overrides the length field."""
    n = len(value) if length is None else length
    if n > 255 or flags & EXTENDED:
        return struct.pack("!BBH", flags | EXTENDED, code, n) + value
    return struct.pack("!BBB", flags, code, n) + value


def origin(value: int = 0, **kw) -> bytes:
    return attr(ORIGIN, bytes([value]), **kw)


def as_path(asns: Sequence[int], *, segment_type: int = AS_SEQUENCE, four: bool = False,
            **kw) -> bytes:
    """AS_PATH in segments of at most 255 ASNs (RFC 4271 §4.3), 2- or 4-octet ASNs."""
    fmt = "!I" if four else "!H"
    body = b""
    for i in range(0, len(asns), 255):
        chunk = asns[i:i + 255]
        body += bytes([segment_type, len(chunk)]) + b"".join(struct.pack(fmt, a) for a in chunk)
    return attr(AS_PATH, body, **kw)


def next_hop(address: str, **kw) -> bytes:
    return attr(NEXT_HOP, socket.inet_aton(address), **kw)


def med(value: int) -> bytes:
    return attr(MED, struct.pack("!I", value), OPTIONAL)


def local_pref(value: int) -> bytes:
    return attr(LOCAL_PREF, struct.pack("!I", value))


def community(*pairs: tuple[int, int]) -> bytes:
    return attr(COMMUNITY, b"".join(struct.pack("!HH", a, b) for a, b in pairs),
                OPTIONAL | TRANSITIVE)


def nlri(prefix: str, *, length: int | None = None, truncate: int = 0) -> bytes:
    """An IPv4 NLRI (RFC 4271 §4.3): length octet + the fewest octets that hold it.

    The address part is sent as written, host bits included ("10.244.21.7/26" puts
    .7 on the wire). ``length`` overrides the length octet (e.g. 33);
    ``truncate`` drops that many octets of the address part.
    """
    addr, _, plen_text = prefix.partition("/")
    plen = int(plen_text)
    octets = (plen + 7) // 8
    raw = socket.inet_aton(addr)[:octets]
    if length is not None and length > 32:
        raw = socket.inet_aton(addr) + b"\x00" * ((length + 7) // 8 - 4)
    if truncate:
        raw = raw[:-truncate]
    return bytes([plen if length is None else length]) + raw


def update(withdrawn: Iterable[bytes] = (), attributes: Iterable[bytes] = (),
           announced: Iterable[bytes] = (), *, withdrawn_len: int | None = None,
           attributes_len: int | None = None, length: int | None = None) -> bytes:
    """UPDATE (RFC 4271 §4.3): the length fields are right unless overridden."""
    w = b"".join(withdrawn)
    a = b"".join(attributes)
    n = b"".join(announced)
    wl = len(w) if withdrawn_len is None else withdrawn_len
    al = len(a) if attributes_len is None else attributes_len
    body = struct.pack("!H", wl) + w + struct.pack("!H", al) + a + n
    return message(UPDATE, body, length=length)


def route(prefixes: Iterable[str], nh: str, asns: Sequence[int], *, origin_code: int = 0,
          extra: Iterable[bytes] = ()) -> bytes:
    """A valid UPDATE announcing ``prefixes`` (ORIGIN, AS_PATH, NEXT_HOP, extras)."""
    return update(attributes=[origin(origin_code), as_path(asns), next_hop(nh), *extra],
                  announced=[nlri(p) for p in prefixes])


def withdraw(prefixes: Iterable[str]) -> bytes:
    return update(withdrawn=[nlri(p) for p in prefixes])


def max_nlri_updates(prefixes: Sequence[str], nh: str, asns: Sequence[int]) -> Iterator[bytes]:
    """Maximal UPDATEs (as many NLRI as fit 4,096 octets) announcing ``prefixes``."""
    attrs = origin(0) + as_path(asns) + next_hop(nh)
    room = MAX_MESSAGE - HEADER_LEN - 4 - len(attrs)
    batch: list[bytes] = []
    used = 0
    for p in prefixes:
        one = nlri(p)
        if used + len(one) > room:
            yield update(attributes=[attrs], announced=batch)
            batch, used = [], 0
        batch.append(one)
        used += len(one)
    if batch:
        yield update(attributes=[attrs], announced=batch)


def max_withdraw_updates(prefixes: Sequence[str]) -> Iterator[bytes]:
    room = MAX_MESSAGE - HEADER_LEN - 4
    batch: list[bytes] = []
    used = 0
    for p in prefixes:
        one = nlri(p)
        if used + len(one) > room:
            yield update(withdrawn=batch)
            batch, used = [], 0
        batch.append(one)
        used += len(one)
    if batch:
        yield update(withdrawn=batch)


# ------------------------------------------------------------------ fuzz


@dataclass(frozen=True)
class Fuzzed:
    kind: str  # bitflip | truncate | header-length | field-length
    detail: str
    data: bytes


def fuzz_updates(seed: int, count: int, template: bytes) -> list[Fuzzed]:
    """``count`` mutations of ``template`` (one valid UPDATE), reproducible from ``seed``.

    Marker and type are left alone (those are other cases); each mutation keeps
    the header's length field equal to what is sent unless the mutation is the
    header length itself, so each lands in the UPDATE parser, not the framing.
    """
    rng = random.Random(seed)
    body = template[HEADER_LEN:]
    out: list[Fuzzed] = []
    kinds = ("bitflip", "bitflip", "truncate", "header-length", "field-length")
    for _ in range(count):
        kind = rng.choice(kinds)
        if kind == "bitflip":
            b = bytearray(body)
            flips = []
            for _ in range(rng.randint(1, 3)):
                i = rng.randrange(len(b))
                bit = 1 << rng.randrange(8)
                b[i] ^= bit
                flips.append(f"{i}^{bit:#x}")
            out.append(Fuzzed(kind, ",".join(flips), message(UPDATE, bytes(b))))
        elif kind == "truncate":
            cut = rng.randrange(1, len(body))
            out.append(Fuzzed(kind, f"body[:{cut}]", message(UPDATE, body[:cut])))
        elif kind == "header-length":
            delta = rng.choice([-7, -3, -1, 1, 2, 5, 200, 5000])
            size = max(0, min(0xFFFF, HEADER_LEN + len(body) + delta))
            out.append(Fuzzed(kind, f"length {size}", message(UPDATE, body, length=size)))
        else:
            # A two-octet length field inside the UPDATE: withdrawn-routes length (0)
            # or total-path-attribute length (after it).
            b = bytearray(body)
            wl = struct.unpack("!H", b[:2])[0]
            where = rng.choice([0, 2 + wl])
            value = rng.choice([0, 1, 3, 0xFF, 0x7FFF, 0xFFFF,
                                struct.unpack("!H", b[where:where + 2])[0] + rng.randint(1, 9)])
            b[where:where + 2] = struct.pack("!H", value & 0xFFFF)
            out.append(Fuzzed(kind, f"@{where}={value}", message(UPDATE, bytes(b))))
    return out


# ---------------------------------------------------------------- sockets


def netns_socket(ns: str | None, family: int = socket.AF_INET,
                 kind: int = socket.SOCK_STREAM) -> socket.socket:
    """A socket created inside network namespace ``ns`` (None: this one).

    setns(2) changes the namespace of the calling thread only, so a short-lived
    thread enters the namespace, makes the socket and ends; the socket stays
    in that namespace for its whole life.
    """
    if ns is None:
        return socket.socket(family, kind)
    made: list[socket.socket] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns {ns}: {os.strerror(err)}")
            finally:
                os.close(fd)
            made.append(socket.socket(family, kind))
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=work, name=f"netns-{ns}")
    t.start()
    t.join()
    if errors:
        raise errors[0]
    return made[0]


@dataclass(frozen=True)
class Message:
    kind: int
    body: bytes


@dataclass(frozen=True)
class Outcome:
    """What the peer did after a message: ``notification`` (code, subcode, data),
    ``closed`` (no NOTIFICATION: TCP FIN or RST), or ``open`` (still up)."""

    kind: str
    code: int = 0
    subcode: int = 0
    data: bytes = b""
    seconds: float = 0.0

    def __str__(self) -> str:
        if self.kind == "notification":
            return f"notification {self.code}/{self.subcode}"
        return self.kind


class Session:
    """One hostile BGP session over TCP (stdlib socket, blocking with timeouts)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buf = b""
        self._wlock = threading.Lock()  # whole messages only, from any thread
        self.peer_open: Message | None = None
        self.received: list[Message] = []

    @classmethod
    def connect(cls, address: str, port: int = 179, *, ns: str | None = None,
                source: str | None = None, timeout: float = 5.0) -> Session:
        s = netns_socket(ns)
        try:
            s.settimeout(timeout)
            if source:
                s.bind((source, 0))
            s.connect((address, port))
        except BaseException:
            s.close()
            raise
        return cls(s)

    # -- reading
    def read(self, timeout: float) -> Message | None:
        """The next message, or None if the peer closed (or reset) the connection.
        Raises TimeoutError when nothing complete arrives in ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            if len(self._buf) >= HEADER_LEN:
                size, kind = struct.unpack("!HB", self._buf[16:19])
                if size < HEADER_LEN:
                    raise ValueError(f"peer sent a message of length {size}")
                if len(self._buf) >= size:
                    msg = Message(kind, self._buf[HEADER_LEN:size])
                    self._buf = self._buf[size:]
                    self.received.append(msg)
                    return msg
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no complete BGP message")
            ready, _, _ = select.select([self.sock], [], [], left)
            if not ready:
                continue
            try:
                data = self.sock.recv(65536)
            except (ConnectionResetError, BrokenPipeError):
                return None
            if not data:
                return None
            self._buf += data

    def handshake(self, asn: int, router_id: str, hold_time: int = 90, *,
                  capabilities: Sequence[bytes] | None = None, timeout: float = 10.0,
                  send_keepalive: bool = True) -> Message:
        """OPEN both ways, then KEEPALIVEs: Established. Returns the peer's OPEN."""
        self.send(open_msg(asn, router_id, hold_time, capabilities=capabilities))
        deadline = time.monotonic() + timeout
        while self.peer_open is None:
            msg = self.read(max(0.01, deadline - time.monotonic()))
            if msg is None:
                raise ConnectionError("peer closed the connection during OPEN")
            if msg.kind == NOTIFICATION:
                raise ConnectionError(f"peer sent NOTIFICATION {msg.body[:2].hex()} to our OPEN")
            if msg.kind == OPEN:
                self.peer_open = msg
        if send_keepalive:
            self.send(keepalive())
            while True:
                msg = self.read(max(0.01, deadline - time.monotonic()))
                if msg is None:
                    raise ConnectionError("peer closed the connection after OPEN")
                if msg.kind == NOTIFICATION:
                    raise ConnectionError(f"peer sent NOTIFICATION {msg.body[:2].hex()}")
                if msg.kind == KEEPALIVE:
                    break
        return self.peer_open

    def outcome(self, timeout: float) -> Outcome:
        """Read (answering KEEPALIVEs) until a NOTIFICATION, a close, or ``timeout``."""
        t0 = time.monotonic()
        deadline = t0 + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return Outcome("open", seconds=timeout)
            try:
                msg = self.read(left)
            except TimeoutError:
                return Outcome("open", seconds=timeout)
            except OSError:
                return Outcome("closed", seconds=time.monotonic() - t0)
            if msg is None:
                return Outcome("closed", seconds=time.monotonic() - t0)
            if msg.kind == NOTIFICATION:
                code, sub = (msg.body + b"\0\0")[:2]
                return Outcome("notification", code, sub, msg.body[2:], time.monotonic() - t0)
            if msg.kind == KEEPALIVE:
                with contextlib.suppress(OSError):
                    self.send(keepalive())

    def drain(self, seconds: float) -> Outcome:
        """Like ``outcome``; a name for 'keep the session alive this long'."""
        return self.outcome(seconds)

    # -- writing
    def send(self, *messages: bytes) -> None:
        with self._wlock:
            self.sock.sendall(b"".join(messages))

    def send_in_background(self, messages: Sequence[bytes], timeout: float = 300) -> threading.Thread:
        """Send many messages from a thread (the peer reads them as fast as it can; a
        blocking send would stop this side answering KEEPALIVEs). Join the thread."""
        self.sock.settimeout(timeout)
        errors: list[BaseException] = []

        def work() -> None:
            try:
                for m in messages:
                    self.send(m)
            except OSError as exc:
                errors.append(exc)

        t = threading.Thread(target=work, name="hostile-sender", daemon=True)
        t.errors = errors  # type: ignore[attr-defined]
        t.start()
        return t

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def establish(address: str, asn: int, router_id: str, *, ns: str | None = None,
              source: str | None = None, hold_time: int = 90, timeout: float = 20.0,
              capabilities: Sequence[bytes] | None = None) -> Session:
    """Connect and handshake, retrying while the peer still tears the previous
    session down (it refuses or closes a second connection meanwhile)."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            s = Session.connect(address, ns=ns, source=source)
        except OSError as exc:
            last = exc
            time.sleep(0.1)
            continue
        try:
            s.handshake(asn, router_id, hold_time, capabilities=capabilities)
            return s
        except (OSError, TimeoutError) as exc:  # ConnectionError is an OSError
            last = exc
            s.close()
            time.sleep(0.1)
    raise TimeoutError(f"no BGP session with {address} in {timeout}s (last: {last})")


def host_prefixes(network: str, count: int) -> list[str]:
    """The first ``count`` /32s of ``network`` as text."""
    net = ipaddress.ip_network(network)
    base = int(net.network_address)
    if count > net.num_addresses:
        raise ValueError(f"{network} has fewer than {count} addresses")
    return [f"{ipaddress.IPv4Address(base + i)}/32" for i in range(count)]
