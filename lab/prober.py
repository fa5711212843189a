"""A pod's network-policy prober: serves TCP/UDP ports and probes others on request.

Run inside a pod's network namespace (``ip netns exec POD python -m
lab.prober --tcp 80,81 --udp 80``). It answers on the given ports (TCP: accept
and write one byte; UDP: echo) and reads probe requests as JSON lines on
stdin::

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
import socket
import sys
import threading

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


def probe(proto: str, addr: str, port: int, timeout: float) -> tuple[bool, str]:
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
    a = p.parse_args(argv)
    for port in filter(None, a.tcp.split(",")):
        threading.Thread(target=_serve_tcp, args=(int(port),), daemon=True).start()
    for port in filter(None, a.udp.split(",")):
        threading.Thread(target=_serve_udp, args=(int(port),), daemon=True).start()
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
