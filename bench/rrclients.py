"""Simulated iBGP route-reflector clients: many BGP sessions in one asyncio process.

    ip netns exec C python -m bench.rrclients --first 172.30.1.1 --count 200 \
        --asn 64512 --cluster-id 244.0.0.1 --reflector 172.30.0.1

Used by bench.rr_scale and bench.soak. Each client has its own source address
(all added to one link in the clients' namespace by the harness) and LISTENS
on port 179 of it: the reflector dials, as a Calico route reflector with
``peerIP`` BGPPeers does (podbgp and BIRD alike). Once a session is
Established the client sends its UPDATE (its /26, itself as next hop, ORIGIN
IGP, empty AS_PATH, LOCAL_PREF 100: what a Calico node announces to its
reflector) and an End-of-RIB, then counts what it receives. Every UPDATE is
built before the reflector starts; received UPDATEs are decoded just enough
to check the reflection rules (RFC 4456 §8: next hop kept = the originating
client, ORIGINATOR_ID = the originating client's router id, CLUSTER_LIST
holding the reflector's cluster id) and to keep each client's view, with the
decoded attributes and NLRI blocks cached by their bytes (a reflector sends
the same bytes to every client), so the simulator is not the bottleneck.

Reports are JSON lines on stdout with CLOCK_MONOTONIC times (system-wide: the
harness compares them with its own clock). Commands, one per line on stdin:

    withdraw I / announce I   client I withdraws / re-announces its block; reports
                              when no other client holds it / every other client does
    reset I                   client I closes its session (NOTIFICATION Cease, then
                              close); the reflector dials again
    flap ON|OFF [RATE]        client 0 toggles its flap set (--flap K prefixes)
                              RATE times a second (announce all, withdraw all, ...)
    check                     each client's view against what is announced now
    status                    counters (JSON)
    quit

Automatic reports: ``listening``, then ``converged`` once every client holds
every other client's block (with per-client times), and ``closed``/``notification``
lines as they happen.

Node mode (``--node-routes K``): a single peer standing in for a reflector in
front of one ordinary node: it announces K blocks, each with its own next hop
(other addresses of the clients' link), ORIGINATOR_ID and CLUSTER_LIST, as a
reflector would, one UPDATE each.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import struct
import sys
import time

MARKER = b"\xff" * 16
OPEN, UPDATE, NOTIFICATION, KEEPALIVE = 1, 2, 3, 4
KEEPALIVE_MSG = MARKER + struct.pack("!HB", 19, KEEPALIVE)
EOR_MSG = MARKER + struct.pack("!HB", 23, UPDATE) + b"\x00\x00\x00\x00"
HOLD_TIME = 180  # offered in our OPEN (--hold); the session uses the smaller of the two
PER_UPDATE = 800  # NLRI per UPDATE for a flap set (< 4096 bytes)
ATTR_ORIGIN, ATTR_AS_PATH, ATTR_NEXT_HOP, ATTR_MED, ATTR_LOCAL_PREF = 1, 2, 3, 4, 5
ATTR_ORIGINATOR_ID, ATTR_CLUSTER_LIST = 9, 10
CACHE_LIMIT = 200_000


def message(kind: int, body: bytes = b"") -> bytes:
    return MARKER + struct.pack("!HB", 19 + len(body), kind) + body


def address(first: str, i: int) -> str:
    """The i-th client address: first + i, skipping .0 and .255 of each /24."""
    base = int(ipaddress.IPv4Address(first))
    n = base + i + 3 * (i // 253)  # .1-.253 of each /24, starting at first (a .1)
    return str(ipaddress.IPv4Address(n))


def block(i: int, second: int = 0) -> str:
    """The i-th /26 inside 10.<second>.0.0/9 (4 per /24)."""
    return f"10.{second + (i >> 10)}.{(i >> 2) & 255}.{(i & 3) * 64}/26"


def nlri(prefix: str) -> bytes:
    net = ipaddress.IPv4Network(prefix)
    n = (net.prefixlen + 7) // 8
    return bytes([net.prefixlen]) + net.network_address.packed[:n]


def open_message(asn: int, router_id: str, hold: int = HOLD_TIME) -> bytes:
    caps = (
        b"\x01\x04\x00\x01\x00\x01"  # multiprotocol IPv4 unicast
        + b"\x02\x00"  # route refresh
        + b"\x41\x04" + struct.pack("!I", asn)  # four-octet AS
    )
    params = b"\x02" + bytes([len(caps)]) + caps
    body = struct.pack("!BHH4sB", 4, asn if asn < 65536 else 23456, hold,
                       ipaddress.IPv4Address(router_id).packed, len(params)) + params
    return message(OPEN, body)


def path_attributes(next_hop: str, originator: str | None = None,
                    cluster: str | None = None) -> bytes:
    """ORIGIN IGP, empty AS_PATH, NEXT_HOP, LOCAL_PREF 100 (+ reflection attributes)."""
    out = (b"\x40\x01\x01\x00" + b"\x40\x02\x00"
           + b"\x40\x03\x04" + ipaddress.IPv4Address(next_hop).packed
           + b"\x40\x05\x04" + struct.pack("!I", 100))
    if originator:
        out += b"\x80\x09\x04" + ipaddress.IPv4Address(originator).packed
    if cluster:
        out += b"\x80\x0a\x04" + ipaddress.IPv4Address(cluster).packed
    return out


def announce_messages(prefixes: list[str], attrs: bytes) -> bytes:
    out = []
    for i in range(0, len(prefixes), PER_UPDATE):
        blob = b"".join(nlri(p) for p in prefixes[i:i + PER_UPDATE])
        out.append(message(UPDATE, b"\x00\x00" + struct.pack("!H", len(attrs)) + attrs + blob))
    return b"".join(out)


def withdraw_messages(prefixes: list[str]) -> bytes:
    out = []
    for i in range(0, len(prefixes), PER_UPDATE):
        blob = b"".join(nlri(p) for p in prefixes[i:i + PER_UPDATE])
        out.append(message(UPDATE, struct.pack("!H", len(blob)) + blob + b"\x00\x00"))
    return b"".join(out)


# ------------------------------------------------------------------ decoding
_PREFIX_CACHE: dict[bytes, tuple[str, ...]] = {}
_ATTR_CACHE: dict[bytes, tuple] = {}


def decode_prefixes(data: bytes) -> tuple[str, ...]:
    """IPv4 NLRI (RFC 4271 §4.3) as "a.b.c.d/len" strings, cached by the block's bytes."""
    hit = _PREFIX_CACHE.get(data)
    if hit is not None:
        return hit
    out = []
    i, n = 0, len(data)
    while i < n:
        plen = data[i]
        k = (plen + 7) >> 3
        raw = data[i + 1:i + 1 + k] + b"\x00" * (4 - k)
        out.append(f"{raw[0]}.{raw[1]}.{raw[2]}.{raw[3]}/{plen}")
        i += 1 + k
    if i != n:
        raise ValueError("NLRI runs past its field")
    hit = tuple(out)
    if len(_PREFIX_CACHE) > CACHE_LIMIT:
        _PREFIX_CACHE.clear()
    _PREFIX_CACHE[data] = hit
    return hit


def _ip(b: bytes) -> str:
    return f"{b[0]}.{b[1]}.{b[2]}.{b[3]}"


def decode_attributes(data: bytes) -> tuple:
    """(next_hop, originator_id, cluster_list, local_pref), cached by the bytes."""
    hit = _ATTR_CACHE.get(data)
    if hit is not None:
        return hit
    nh = oid = lp = None
    clusters: tuple[str, ...] = ()
    i, n = 0, len(data)
    while i < n:
        flags, code = data[i], data[i + 1]
        if flags & 0x10:
            ln = struct.unpack_from("!H", data, i + 2)[0]
            i += 4
        else:
            ln = data[i + 2]
            i += 3
        val = data[i:i + ln]
        i += ln
        if code == ATTR_NEXT_HOP and ln == 4:
            nh = _ip(val)
        elif code == ATTR_ORIGINATOR_ID and ln == 4:
            oid = _ip(val)
        elif code == ATTR_CLUSTER_LIST:
            clusters = tuple(_ip(val[j:j + 4]) for j in range(0, ln, 4))
        elif code == ATTR_LOCAL_PREF and ln == 4:
            lp = struct.unpack("!I", val)[0]
    hit = (nh, oid, clusters, lp)
    if len(_ATTR_CACHE) > CACHE_LIMIT:
        _ATTR_CACHE.clear()
    _ATTR_CACHE[data] = hit
    return hit


def report(event: str, **kw) -> None:
    sys.stdout.write(json.dumps({"event": event, "t": time.monotonic(), **kw}) + "\n")
    sys.stdout.flush()


# ------------------------------------------------------------------- clients
class Client(asyncio.Protocol):
    """One simulated client: its own address, one session at a time."""

    def __init__(self, sim: Sim, idx: int, addr: str, routes: list[tuple[str, bytes]]) -> None:
        self.sim = sim
        self.idx = idx
        self.addr = addr
        self.routes = routes  # (prefix, path attributes) it announces
        self.own = {p for p, _ in routes}
        self.announced = True
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.got_open = False
        self.established: float | None = None
        self.first_established: float | None = None
        self.eor_at: float | None = None
        self.complete_at: float | None = None
        self.have: dict[str, bool] = {}  # prefix -> its attributes passed the checks
        self.bad = 0
        self.bad_examples: list[str] = []
        self.sessions = 0
        self.resets = 0  # an Established session that ended without our asking
        self.notifications: list[str] = []
        self.updates = 0
        self.closing = False
        self.hold = 0  # negotiated hold time of the session (0: none)
        self.last_rx = 0.0  # when the reflector last sent anything
        self.max_gap = 0.0  # longest silence of the reflector on an Established session

    # -- asyncio.Protocol
    def connection_made(self, transport) -> None:
        if self.transport is not None:
            # A second connection while one is open: keep the newer one (the reflector
            # gave up on the old one).
            self.transport.abort()
            self._down("replaced")
        self.transport = transport
        self.buf.clear()
        self.got_open = False
        self.last_rx = time.monotonic()
        transport.write(open_message(self.sim.asn, self.addr, self.sim.hold))

    def connection_lost(self, exc) -> None:
        if self.transport is None:
            return
        self.transport = None
        self._down("closed" if exc is None else str(exc))

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        if self.established is not None:
            self.max_gap = max(self.max_gap, now - self.last_rx)
        self.last_rx = now
        buf = self.buf
        buf += data
        pos, n = 0, len(buf)
        while n - pos >= 19:
            length = (buf[pos + 16] << 8) | buf[pos + 17]
            if length < 19:
                self._abort("bad length")
                return
            if n - pos < length:
                break
            kind = buf[pos + 18]
            body = bytes(buf[pos + 19:pos + length])
            pos += length
            if kind == UPDATE:
                self._update(body)
            elif kind == KEEPALIVE:
                if self.established is None and self.got_open:
                    self._up()
            elif kind == OPEN:
                self.got_open = True
                theirs = (body[3] << 8) | body[4] if len(body) >= 5 else 0
                self.hold = min(theirs, self.sim.hold)
                if self.transport is not None:
                    self.transport.write(KEEPALIVE_MSG)
            elif kind == NOTIFICATION:
                text = f"{body[0]}/{body[1]}" if len(body) >= 2 else "?"
                self.notifications.append(text)
                report("notification", client=self.idx, code=text)
        del buf[:pos]

    # -- session
    def _up(self) -> None:
        now = time.monotonic()
        self.established = now
        if self.first_established is None:
            self.first_established = now
        self.sessions += 1
        self.closing = False
        self.sim.on_established(self)
        out = []
        if self.announced:
            out.extend(announce_messages([p], a) for p, a in self.routes)
        out.append(EOR_MSG)
        if self.sim.flapper is self and self.sim.flap_state:
            out.append(self.sim.flap_announce)
        self.transport.write(b"".join(out))

    def _down(self, why: str) -> None:
        if self.established is not None:
            if not self.closing:
                self.resets += 1
                report("closed", client=self.idx, why=why)
            self.established = None
        for prefix in list(self.have):
            self._lose(prefix)
        self.eor_at = None

    def _abort(self, why: str) -> None:
        if self.transport is not None:
            report("aborted", client=self.idx, why=why)
            self.transport.abort()

    def reset(self) -> None:
        """Close the session the way an operator's `clear` does (Cease / admin reset)."""
        if self.transport is None:
            return
        self.closing = True
        self.transport.write(message(NOTIFICATION, b"\x06\x04"))
        self.transport.close()

    def send(self, data: bytes) -> None:
        if self.transport is not None and self.established is not None:
            self.transport.write(data)

    # -- received routes
    def _update(self, body: bytes) -> None:
        self.updates += 1
        wl = (body[0] << 8) | body[1]
        if wl:
            for prefix in decode_prefixes(body[2:2 + wl]):
                self._lose(prefix)
        pos = 2 + wl
        al = (body[pos] << 8) | body[pos + 1]
        pos += 2
        if not wl and not al and pos == len(body):
            if self.eor_at is None:
                self.eor_at = time.monotonic()
            return
        if pos + al == len(body):
            return
        nh, oid, clusters, lp = decode_attributes(body[pos:pos + al])
        sim = self.sim
        owner_of = sim.owner_of
        for prefix in decode_prefixes(body[pos + al:]):
            owner = owner_of.get(prefix)
            ok = (owner is not None and owner is not self and nh == owner.nh_of[prefix]
                  and oid == owner.addr and sim.cluster_id in clusters and lp is not None)
            if not ok:
                self.bad += 1
                if len(self.bad_examples) < 3:
                    self.bad_examples.append(f"{prefix} nh={nh} originator={oid} "
                                             f"clusters={list(clusters)} local_pref={lp}")
            if prefix not in self.have:
                self.have[prefix] = ok
                sim.gained(self, prefix)
            else:
                self.have[prefix] = ok

    def _lose(self, prefix: str) -> None:
        if self.have.pop(prefix, None) is not None:
            self.sim.lost(self, prefix)

    @property
    def nh_of(self) -> dict[str, str]:
        return self.sim.next_hops[self.idx]


class Sim:
    def __init__(self, a: argparse.Namespace) -> None:
        self.asn = a.asn
        self.hold = a.hold
        self.keepalive = a.keepalive
        self.cluster_id = a.cluster_id
        self.clients: list[Client] = []
        self.owner_of: dict[str, Client] = {}
        self.next_hops: list[dict[str, str]] = []
        self.holders: dict[str, int] = {}
        self.watch: dict[str, tuple[str, int, float]] = {}  # prefix -> (event, want, t0)
        self.incomplete = 0
        self.converged = False
        self.t_first_established: float | None = None
        self.flapper: Client | None = None
        self.flap_state = False
        self.flap_prefixes: list[str] = []
        self.flap_announce = b""
        self.flap_withdraw = b""
        self.flap_task: asyncio.Task | None = None
        self.flaps = 0
        if a.node_routes:
            # One peer in front of a plain node: K blocks, each as a reflector sends it.
            addr = address(a.first, 0)
            routes, nhs = [], {}
            for j in range(a.node_routes):
                nh = address(a.first, j + 1)
                routes.append((block(j), path_attributes(nh, nh, a.cluster_id)))
                nhs[block(j)] = nh
            self._add(0, addr, routes, nhs)
            self.expect = 0  # the node may send its own blocks; nothing is awaited
        else:
            for i in range(a.count):
                addr = address(a.first, i)
                self._add(i, addr, [(block(i), path_attributes(addr))], {block(i): addr})
            self.expect = a.count - 1
        if a.flap:
            self.flapper = self.clients[0]
            self.flap_prefixes = [block(j, 128) for j in range(a.flap)]
            attrs = path_attributes(self.flapper.addr)
            self.flap_announce = announce_messages(self.flap_prefixes, attrs)
            self.flap_withdraw = withdraw_messages(self.flap_prefixes)
            for p in self.flap_prefixes:
                self.next_hops[0][p] = self.flapper.addr
                self.owner_of[p] = self.flapper
        self.incomplete = len(self.clients)

    def _add(self, i: int, addr: str, routes: list[tuple[str, bytes]],
             nhs: dict[str, str]) -> None:
        c = Client(self, i, addr, routes)
        self.clients.append(c)
        self.next_hops.append(nhs)
        for p, _ in routes:
            self.owner_of[p] = c

    # -- progress
    def on_established(self, c: Client) -> None:
        if self.t_first_established is None:
            self.t_first_established = time.monotonic()
            report("first_session", client=c.idx)

    def gained(self, c: Client, prefix: str) -> None:
        n = self.holders.get(prefix, 0) + 1
        self.holders[prefix] = n
        if not self.converged and c.complete_at is None and len(c.have) >= self.expect \
                and self.expect:
            c.complete_at = time.monotonic()
            self.incomplete -= 1
            if self.incomplete == 0:
                self.converged = True
                self.report_converged()
        w = self.watch.get(prefix)
        if w is not None and w[0] == "announced" and n >= w[1]:
            del self.watch[prefix]
            report("announced", prefix=prefix, t0=w[2], holders=n)

    def lost(self, c: Client, prefix: str) -> None:
        n = self.holders.get(prefix, 0) - 1
        self.holders[prefix] = n
        w = self.watch.get(prefix)
        if w is not None and w[0] == "withdrawn" and n <= 0:
            del self.watch[prefix]
            report("withdrawn", prefix=prefix, t0=w[2], holders=n)

    def report_converged(self) -> None:
        cs = self.clients
        report("converged",
               first_established=self.t_first_established,
               established=[c.first_established for c in cs],
               complete=[c.complete_at for c in cs],
               eor=[c.eor_at for c in cs],
               **self.counters())

    def counters(self) -> dict:
        cs = self.clients
        return {
            "clients": len(cs),
            "up": sum(1 for c in cs if c.established is not None),
            "sessions": sum(c.sessions for c in cs),
            "resets": sum(c.resets for c in cs),
            "notifications": sum(len(c.notifications) for c in cs),
            "bad": sum(c.bad for c in cs),
            "bad_examples": [e for c in cs for e in c.bad_examples][:5],
            "updates": sum(c.updates for c in cs),
            "routes_held": sum(len(c.have) for c in cs),
            "eor_received": sum(1 for c in cs if c.eor_at is not None),
            "max_rx_gap": max((c.max_gap for c in cs), default=0.0),
            "incomplete": self.incomplete,
            "flaps": self.flaps,
        }

    # -- commands
    def command(self, line: str) -> bool:
        words = line.split()
        if not words:
            return True
        cmd, args = words[0], words[1:]
        try:
            if cmd == "quit":
                return False
            if cmd in ("withdraw", "announce"):
                c = self.clients[int(args[0])]
                c.announced = cmd == "announce"
                want = 0 if cmd == "withdraw" else sum(
                    1 for o in self.clients if o is not c and o.established is not None)
                t0 = time.monotonic()
                for prefix, attrs in c.routes:
                    self.watch[prefix] = ("withdrawn" if cmd == "withdraw" else "announced",
                                          want, t0)
                    c.send(withdraw_messages([prefix]) if cmd == "withdraw"
                           else announce_messages([prefix], attrs))
            elif cmd == "reset":
                self.clients[int(args[0])].reset()
            elif cmd == "flap":
                on = args[0].lower() == "on"
                if self.flap_task is not None:
                    self.flap_task.cancel()
                    self.flap_task = None
                if on:
                    rate = float(args[1]) if len(args) > 1 else 1.0
                    self.flap_task = asyncio.get_running_loop().create_task(self._flap(rate))
                report("flap", on=on)
            elif cmd == "check":
                report("check", **self.check())
            elif cmd == "status":
                # `status ID`: the answer carries the ID, so a reader can tell it from the
                # answer to an earlier status it did not read
                report("status", **({"id": args[0]} if args else {}), **self.counters())
            else:
                report("error", error=f"unknown command {cmd!r}")
        except (IndexError, ValueError) as e:
            report("error", error=f"{line!r}: {e}")
        return True

    async def _flap(self, rate: float) -> None:
        c = self.flapper
        if c is None:
            return
        period = 1.0 / rate
        nxt = time.monotonic()
        while True:
            self.flap_state = not self.flap_state
            c.send(self.flap_announce if self.flap_state else self.flap_withdraw)
            self.flaps += 1
            nxt += period
            await asyncio.sleep(max(0.0, nxt - time.monotonic()))

    def check(self) -> dict:
        """Every client's view against what is announced now (all but its own)."""
        announced = set()
        for c in self.clients:
            if c.announced:
                announced.update(p for p, _ in c.routes)
        if self.flapper is not None and self.flap_state:
            announced.update(self.flap_prefixes)
        mismatched, missing, extra, wrong = 0, 0, 0, 0
        examples = []
        for c in self.clients:
            want = announced - c.own - (set(self.flap_prefixes) if c is self.flapper else set())
            have = set(c.have)
            miss, ext = want - have, have - want
            bad = sum(1 for ok in c.have.values() if not ok)
            if miss or ext or bad or c.established is None:
                mismatched += 1
                if len(examples) < 5:
                    examples.append({"client": c.idx, "up": c.established is not None,
                                     "missing": sorted(miss)[:3], "extra": sorted(ext)[:3],
                                     "wrong_attributes": bad})
            missing += len(miss)
            extra += len(ext)
            wrong += bad
        return {"announced": len(announced), "mismatched_clients": mismatched,
                "missing": missing, "extra": extra, "wrong_attributes": wrong,
                "examples": examples, **self.counters()}

    async def keepalives(self) -> None:
        """KEEPALIVE every third of the hold time; a session whose reflector stays
        silent for its whole hold time is dropped (RFC 4271 §6.5) and counted as a reset."""
        every = self.keepalive or min(self.hold / 3, 20.0)
        tick = max(0.25, every / 4)
        last_sent = 0.0
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            send = now - last_sent >= max(0.5, every - tick)
            if send:
                last_sent = now
            for c in self.clients:
                if c.transport is None or not c.got_open:
                    continue
                if send:
                    c.transport.write(KEEPALIVE_MSG)
                if c.established is not None and c.hold and now - c.last_rx > c.hold:
                    c._abort("hold timer expired")


async def amain(a: argparse.Namespace) -> int:
    sim = Sim(a)
    loop = asyncio.get_running_loop()
    servers = []
    for c in sim.clients:
        servers.append(await loop.create_server(lambda c=c: c, c.addr, a.port,
                                                reuse_address=True, backlog=4))
    report("listening", clients=len(sim.clients), pid=os.getpid())
    ka = loop.create_task(sim.keepalives())
    lines: asyncio.Queue[str] = asyncio.Queue()
    pending = bytearray()

    def on_stdin() -> None:
        # os.read, not sys.stdin.readline(): readline() would buffer every line that
        # came in one read and return one, leaving the rest unseen until more input.
        data = os.read(sys.stdin.fileno(), 1 << 16)
        if not data:
            lines.put_nowait("quit")
            return
        pending.extend(data)
        while b"\n" in pending:
            line, _, rest = bytes(pending).partition(b"\n")
            pending[:] = rest
            lines.put_nowait(line.decode(errors="replace"))

    loop.add_reader(sys.stdin.fileno(), on_stdin)
    try:
        while sim.command((await lines.get()).strip()):
            pass
    finally:
        loop.remove_reader(sys.stdin.fileno())
        ka.cancel()
        for c in sim.clients:
            if c.transport is not None:
                c.closing = True
                c.transport.abort()
        for s in servers:
            s.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.rrclients",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--first", required=True, help="address of client 0 (others follow)")
    ap.add_argument("--count", type=int, default=1)
    ap.add_argument("--port", type=int, default=179)
    ap.add_argument("--asn", type=int, default=64512)
    ap.add_argument("--hold", type=int, default=HOLD_TIME,
                    help="hold time offered (the client drops a silent reflector after it)")
    ap.add_argument("--keepalive", type=float, default=0.0,
                    help="seconds between our KEEPALIVEs (default: a third of --hold)")
    ap.add_argument("--cluster-id", required=True)
    ap.add_argument("--flap", type=int, default=0, help="client 0 also has this many "
                    "blocks to flap (10.128.0.0/9)")
    ap.add_argument("--node-routes", type=int, default=0,
                    help="node mode: one peer announcing this many reflected blocks")
    a = ap.parse_args(argv)
    if a.node_routes:
        a.count = 1
    return asyncio.run(amain(a))


if __name__ == "__main__":
    sys.exit(main())
