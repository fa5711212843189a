"""A purpose-built BGP injector: pre-built UPDATEs over a plain TCP socket.

    ip netns exec INJ python -m bench.injector --listen 172.31.0.2 --local-as 65001 \
        --count 100000 --next-hop 172.31.0.2

Why not GoBGP or BIRD as the injector: docs/testing.md: we saw a BIRD injector hold back
its last UPDATEs for ~1 s, which skews the clock; this one builds every
message before the session starts and writes them in one ``sendall``.

It listens (passive; every DUT connects out), answers the DUT's OPEN, and
once the DUT's first KEEPALIVE arrives (Established) sends all K /26 routes
(one attribute set: ORIGIN IGP, AS_PATH [local-as], NEXT_HOP; 800 NLRI per
UPDATE, ~4 KB) and an End-of-RIB. Reports go to stdout, one per line, with
CLOCK_MONOTONIC times (system-wide, so the parent compares them with its own):

    listening <t> / established <t> / first_update <t> / sent <t>
    withdraw <t> / withdrawn <t>   (after "withdraw" on stdin)
    notification <code> <subcode>  (if the DUT closes the session)

Stdin commands: ``withdraw`` (all K in UPDATEs of 800), ``quit``. ``--count 0``
sends only the End-of-RIB (an idle session, for bench.memory).
"""

from __future__ import annotations

import argparse
import ipaddress
import socket
import struct
import sys
import threading
import time

from bench.common import prefixes

MARKER = b"\xff" * 16
OPEN, UPDATE, NOTIFICATION, KEEPALIVE = 1, 2, 3, 4
PER_UPDATE = 800  # 800 x 5-byte /26 NLRI + attributes < 4096 (RFC 4271 max size)
HOLD_TIME = 180
AS_TRANS = 23456


def message(kind: int, body: bytes = b"") -> bytes:
    return MARKER + struct.pack("!HB", 19 + len(body), kind) + body


def nlri(prefix: str) -> bytes:
    net = ipaddress.IPv4Network(prefix)
    n = (net.prefixlen + 7) // 8
    return bytes([net.prefixlen]) + net.network_address.packed[:n]


def open_message(asn: int, router_id: str) -> bytes:
    caps = (
        b"\x01\x04\x00\x01\x00\x01"  # multiprotocol IPv4 unicast
        + b"\x02\x00"  # route refresh
        + b"\x41\x04" + struct.pack("!I", asn)  # four-octet AS
    )
    params = b"\x02" + bytes([len(caps)]) + caps
    my_as = asn if asn < 65536 else AS_TRANS
    body = struct.pack("!BHH4sB", 4, my_as, HOLD_TIME, ipaddress.IPv4Address(router_id).packed,
                       len(params)) + params
    return message(OPEN, body)


def build_updates(pfx: list[str], asn: int, next_hop: str) -> tuple[list[bytes], list[bytes]]:
    """(announce messages, withdraw messages), PER_UPDATE NLRI each."""
    attrs = (
        b"\x40\x01\x01\x00"  # ORIGIN IGP
        + b"\x40\x02\x06\x02\x01" + struct.pack("!I", asn)  # AS_PATH: SEQUENCE of 1 (4-octet)
        + b"\x40\x03\x04" + ipaddress.IPv4Address(next_hop).packed  # NEXT_HOP
    )
    ann, wd = [], []
    for i in range(0, len(pfx), PER_UPDATE):
        blob = b"".join(nlri(p) for p in pfx[i : i + PER_UPDATE])
        ann.append(message(UPDATE, b"\x00\x00" + struct.pack("!H", len(attrs)) + attrs + blob))
        wd.append(message(UPDATE, struct.pack("!H", len(blob)) + blob + b"\x00\x00"))
    return ann, wd


END_OF_RIB = message(UPDATE, b"\x00\x00\x00\x00")


def say(text: str) -> None:
    sys.stdout.write(f"{text} {time.monotonic():.6f}\n")
    sys.stdout.flush()


def read_message(sock: socket.socket, buf: bytearray) -> tuple[int, bytes] | None:
    while True:
        if len(buf) >= 19:
            length = struct.unpack("!H", buf[16:18])[0]
            if length < 19:
                raise ValueError(f"bad BGP message length {length}")
            if len(buf) >= length:
                kind, body = buf[18], bytes(buf[19:length])
                del buf[:length]
                return kind, body
        data = sock.recv(1 << 16)
        if not data:
            return None
        buf += data


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.injector",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--listen", required=True, help="address to listen on (port 179)")
    ap.add_argument("--port", type=int, default=179)
    ap.add_argument("--local-as", type=int, default=65001)
    ap.add_argument("--router-id", default=None)
    ap.add_argument("--next-hop", default=None, help="default: the listen address")
    ap.add_argument("--count", type=int, required=True)
    a = ap.parse_args(argv)
    if a.count < 0:
        ap.error("--count: must be 0 or more")
    pfx = prefixes(a.count) if a.count else []  # 0: an idle session (End-of-RIB only)
    ann, wd = build_updates(pfx, a.local_as, a.next_hop or a.listen)
    ann_blob, wd_blob = b"".join(ann), b"".join(wd)
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((a.listen, a.port))
    lsock.listen(4)
    say("listening")
    conn, _peer = lsock.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = bytearray()
    got = read_message(conn, buf)
    if got is None or got[0] != OPEN:
        print(f"error expected OPEN, got {got and got[0]}", flush=True)
        return 1
    conn.sendall(open_message(a.local_as, a.router_id or a.listen) + message(KEEPALIVE))
    while True:
        got = read_message(conn, buf)
        if got is None:
            print("error closed before Established", flush=True)
            return 1
        if got[0] == KEEPALIVE:
            break
        if got[0] == NOTIFICATION:
            print(f"notification {got[1][0]} {got[1][1]}", flush=True)
            return 1
    say("established")
    done = threading.Event()

    def reader() -> None:
        # Drain the DUT's messages; only a NOTIFICATION or a close matters here.
        try:
            while not done.is_set():
                m = read_message(conn, buf)
                if m is None:
                    break
                if m[0] == NOTIFICATION:
                    print(f"notification {m[1][0]} {m[1][1]}", flush=True)
        except OSError:
            pass
        if not done.is_set():
            say("closed")

    def keepalive() -> None:
        while not done.wait(20):
            try:
                conn.sendall(message(KEEPALIVE))
            except OSError:
                return

    threading.Thread(target=reader, daemon=True).start()
    threading.Thread(target=keepalive, daemon=True).start()
    say("first_update")
    conn.sendall(ann_blob + END_OF_RIB)
    say("sent")
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "withdraw":
            say("withdraw")
            conn.sendall(wd_blob)
            say("withdrawn")
        elif cmd == "quit":
            break
    done.set()
    conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
