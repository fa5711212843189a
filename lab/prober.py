"""A pod's network-policy prober: serves TCP/UDP/SCTP ports and probes others on request.

Run inside a pod's network namespace (``ip netns exec POD python -m
lab.prober --tcp 80,81 --udp 80 --sctp 80``). It answers on the given ports
(TCP: accept and write one byte; UDP: echo; SCTP: an INIT is answered with an
INIT ACK) and reads probe requests as JSON lines on stdin::

    {"id": 7, "proto": "tcp", "addr": "10.0.0.5", "port": 80, "timeout": 1.0}

answering each with one JSON line on stdout, ``{"id": 7, "ok": true}`` or
``{"id": 7, "ok": false, "error": "timed out"}``. Probes run concurrently
(one thread each), so a whole truth table of a multi-pod lab is probed in
about one timeout. This is the model of Kubernetes' network-policy e2e
tests (kubernetes/kubernetes test/e2e/network/netpol: a server container per
port and protocol in every pod, a probe per ordered pair), in one process per
pod. Used by the policy E2E tests and bench/policy.py.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import struct
import sys
import threading
import time

_out_lock = threading.Lock()


def _serve_tcp(port: int) -> None:
    srv = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    srv.bind(("::", port))
    srv.listen(512)
    while True:
        conn, _ = srv.accept()
        try:
            conn.sendall(b"k")
        except OSError:
            pass
        finally:
            conn.close()


def _serve_udp(port: int) -> None:
    srv = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    srv.bind(("::", port))
    while True:
        data, peer = srv.recvfrom(2048)
        try:
            srv.sendto(data, peer)
        except OSError:
            pass


def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC32C = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC32c (Castagnoli), SCTP's checksum (RFC 9260 appendix A)."""
    c = 0xFFFFFFFF
    for b in data:
        c = _CRC32C[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


SCTP_INIT, SCTP_INIT_ACK = 1, 2


def sctp_packet(sport: int, dport: int, vtag: int, chunk_type: int, tag: int) -> bytes:
    """An SCTP packet with one INIT or INIT ACK chunk (Initiate Tag `tag`); an INIT ACK
    carries the State Cookie parameter it must have (RFC 9260 section 3.3.3)."""
    params = struct.pack("!HH4s", 7, 8, b"podb") if chunk_type == SCTP_INIT_ACK else b""
    chunk = struct.pack("!BBHIIHHI", chunk_type, 0, 20 + len(params), tag, 65535, 1, 1,
                        tag) + params
    head = struct.pack("!HHII", sport, dport, vtag, 0)
    # the CRC is stored in the byte order the algorithm produces (Linux: cpu_to_le32)
    return head[:8] + struct.pack("<I", crc32c(head + chunk)) + chunk


def parse_sctp(ip_packet: bytes) -> tuple[str, int, int, int, int, int] | None:
    """(source, sport, dport, vtag, first chunk type, its Initiate Tag) of an IPv4
    packet as a raw socket receives it, or None when it is not a well-formed one."""
    if len(ip_packet) < 20:
        return None
    ihl = (ip_packet[0] & 0x0F) * 4
    body = ip_packet[ihl:]
    if len(body) < 20:
        return None
    sport, dport, vtag, _crc = struct.unpack("!HHII", body[:12])
    ctype = body[12]
    tag = struct.unpack("!I", body[16:20])[0] if ctype in (SCTP_INIT, SCTP_INIT_ACK) else 0
    return socket.inet_ntoa(ip_packet[12:16]), sport, dport, vtag, ctype, tag


def _serve_sctp(ports: set[int]) -> None:
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_SCTP)
    while True:
        pkt = parse_sctp(raw.recv(65535))
        if pkt is None:
            continue
        src, sport, dport, vtag, ctype, tag = pkt
        if ctype == SCTP_INIT and vtag == 0 and dport in ports:
            reply_tag = int.from_bytes(os.urandom(4), "big") or 1
            try:
                raw.sendto(sctp_packet(dport, sport, tag, SCTP_INIT_ACK, reply_tag), (src, 0))
            except OSError:
                pass


def _await_raw(raw: socket.socket, timeout: float, match) -> bool:
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        if not select.select([raw], [], [], left)[0]:
            return False
        if match(raw.recv(65535)):
            return True
    return False


def _probe_sctp(addr: str, port: int, timeout: float) -> tuple[bool, str]:
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_SCTP)
    try:
        tag = int.from_bytes(os.urandom(4), "big") or 1
        sport = 1024 + int.from_bytes(os.urandom(2), "big") % 60000
        raw.sendto(sctp_packet(sport, port, 0, SCTP_INIT, tag), (addr, 0))

        def init_ack(data: bytes) -> bool:
            pkt = parse_sctp(data)
            return pkt is not None and pkt[:5] == (addr, port, sport, tag, SCTP_INIT_ACK)

        return _await_raw(raw, timeout, init_ack), "timed out"
    except OSError as e:
        return False, str(e) or type(e).__name__
    finally:
        raw.close()


def _probe_icmp(addr: str, icmp_type: int, timeout: float) -> tuple[bool, str]:
    if icmp_type != 8:
        return False, f"bad request: only ICMP echo (type 8) is probed, not {icmp_type}"
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    try:
        ident, seq = int.from_bytes(os.urandom(2), "big"), 1
        body = struct.pack("!BBHHH", 8, 0, 0, ident, seq) + b"podbgp-probe"
        csum = _inet_checksum(body)
        raw.sendto(body[:2] + struct.pack("!H", csum) + body[4:], (addr, 0))

        def reply(data: bytes) -> bool:
            ihl = (data[0] & 0x0F) * 4
            icmp = data[ihl:ihl + 8]
            return (len(icmp) == 8 and socket.inet_ntoa(data[12:16]) == addr
                    and icmp[0] == 0 and struct.unpack("!HH", icmp[4:8]) == (ident, seq))

        return _await_raw(raw, timeout, reply), "timed out"
    except OSError as e:
        return False, str(e) or type(e).__name__
    finally:
        raw.close()


def _inet_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def probe(proto: str, addr: str, port: int, timeout: float) -> tuple[bool, str]:
    if proto == "sctp":
        return _probe_sctp(addr, port, timeout)
    if proto == "icmp":
        return _probe_icmp(addr, port, timeout)
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    if proto == "tcp":
        s = socket.socket(family, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect((addr, port))
            return (s.recv(1) == b"k", "no greeting")
        except OSError as e:
            return False, str(e) or type(e).__name__
        finally:
            s.close()
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.settimeout(timeout)
    try:
        s.connect((addr, port))
        s.send(b"ping")
        return (s.recv(16) == b"ping", "bad echo")
    except OSError as e:
        return False, str(e) or type(e).__name__
    finally:
        s.close()


def _answer(req: dict) -> None:
    try:
        ok, err = probe(req["proto"], req["addr"], int(req["port"]), float(req.get("timeout", 1)))
    except Exception as e:  # a malformed request gets an answer, not a dead prober
        ok, err = False, f"bad request: {e}"
    out = {"id": req.get("id"), "ok": ok}
    if not ok:
        out["error"] = err
    with _out_lock:
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="lab.prober")
    p.add_argument("--tcp", default="80,81", help="TCP ports to serve (comma-separated)")
    p.add_argument("--udp", default="80", help="UDP ports to serve (comma-separated)")
    p.add_argument("--sctp", default="", help="SCTP ports to answer INITs on (comma-separated)")
    a = p.parse_args(argv)
    for port in filter(None, a.tcp.split(",")):
        threading.Thread(target=_serve_tcp, args=(int(port),), daemon=True).start()
    for port in filter(None, a.udp.split(",")):
        threading.Thread(target=_serve_udp, args=(int(port),), daemon=True).start()
    sctp = {int(port) for port in a.sctp.split(",") if port}
    if sctp:
        threading.Thread(target=_serve_sctp, args=(sctp,), daemon=True).start()
    sys.stdout.write(json.dumps({"ready": True}) + "\n")
    sys.stdout.flush()
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            req = json.loads(line)
        except ValueError:
            continue
        threading.Thread(target=_answer, args=(req,), daemon=True).start()
    return 0


if __name__ == "__main__":
    sys.exit(main())
