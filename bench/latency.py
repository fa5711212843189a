"""Benchmark: event latency — a new block affinity on node A to the route in node B's kernel.

    sudo .venv/bin/python -m bench.latency [--blocks 100] [--quick] [--json PATH]

A 3-node lab (lab.harness.Lab, real etcd, real bgpd on each node, full mesh).
A probe process inside node B's namespace writes, one at a time, a confirmed
block affinity for node A into etcd (Calico's key, over a kept-alive HTTP
connection to etcd's v3 JSON gateway, as calico-ipam keeps its connection),
and waits on a netlink route monitor in B's namespace for the RTM_NEWROUTE of
that block with podbgp's protocol (201). Latency = write start -> route
notification, one clock (the probe's).

Reference in the same run, the Calico way: BIRD 2 in a namespace A' with the
block added as a static route by rewriting an included config file and
running `birdc configure` (what confd does), eBGP to BIRD 2 in B' exporting to
B's kernel; latency = rewrite start -> RTM_NEWROUTE (protocol bird, 12) in B'.

The last line: `latency: podbgp p50 <a> ms p99 <b> ms, Calico way p50 <c> ms p99 <d> ms, p99 ratio <b/d>x`.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import socket
import struct
import subprocess
import sys
import textwrap
import time

WARMUP = 3
GAP = 0.02  # seconds between samples: each sample starts from a quiet system
RTM_NEWROUTE = 24
RTMGRP_IPV4_ROUTE = 0x40
POOL = "10.244.0.0/16"


def block(i: int, second: int = 244) -> str:
    return f"10.{second}.{i >> 2}.{(i & 3) * 64}/26"


# =================================================================== probe
# Runs inside a namespace (python -m bench.latency --probe ...): stdlib only,
# so its own start-up and imports stay out of the samples.
class RouteMonitor:
    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)  # NETLINK_ROUTE
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.bind((0, RTMGRP_IPV4_ROUTE))

    def wait(self, prefix: str, protocol: int, timeout: float) -> float:
        addr, plen = prefix.split("/")
        want = socket.inet_aton(addr)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{prefix} (proto {protocol}) not in the kernel after {timeout}s")
            self.sock.settimeout(left)
            data = self.sock.recv(1 << 20)
            now = time.monotonic()
            off = 0
            while off + 16 <= len(data):
                ln, typ = struct.unpack_from("=IH", data, off)
                if ln < 16:
                    break
                # rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type
                if typ == RTM_NEWROUTE and data[off + 17] == int(plen) \
                        and data[off + 21] == protocol and self._dst(data, off, ln) == want:
                    return now
                off += (ln + 3) & ~3

    @staticmethod
    def _dst(data: bytes, off: int, ln: int) -> bytes | None:
        a = off + 28
        while a + 4 <= off + ln:
            alen, atype = struct.unpack_from("=HH", data, a)
            if alen < 4:
                return None
            if atype == 1:  # RTA_DST
                return data[a + 4 : a + alen]
            a += (alen + 3) & ~3
        return None


def probe_podbgp(etcd: str, node: str, n: int) -> list[float]:
    host, port = etcd.split("//", 1)[1].rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    mon = RouteMonitor()
    out = []
    for i in range(n + WARMUP):
        cidr = block(i)
        key = f"/calico/ipam/v2/host/{node}/ipv4/block/{cidr.replace('/', '-')}"
        body = json.dumps({"key": base64.b64encode(key.encode()).decode(),
                           "value": base64.b64encode(b'{"state":"confirmed"}').decode()})
        t0 = time.monotonic()
        conn.request("POST", "/v3/kv/put", body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        if resp.status != 200:
            raise RuntimeError(f"etcd put {key}: HTTP {resp.status}")
        t1 = mon.wait(cidr, 201, 10)
        if i >= WARMUP:
            out.append(t1 - t0)
        time.sleep(GAP)
    return out


def probe_bird(include: str, sock: str, birdc: str, n: int) -> list[float]:
    mon = RouteMonitor()
    out = []
    lines: list[str] = []
    for i in range(n + WARMUP):
        cidr = block(i, 250)
        lines.append(f"route {cidr} blackhole;")
        t0 = time.monotonic()
        # confd's way: write the whole file anew, rename over, reconfigure.
        tmp = include + ".tmp"
        with open(tmp, "w") as f:
            f.write("protocol static blocks {\n  ipv4;\n  " + "\n  ".join(lines) + "\n}\n")
        os.rename(tmp, include)
        r = subprocess.run([birdc, "-s", sock, "configure"], capture_output=True, text=True)
        if r.returncode != 0 or "Reconfigured" not in r.stdout:
            raise RuntimeError(f"birdc configure: {r.stdout.strip()} {r.stderr.strip()}")
        t1 = mon.wait(cidr, 12, 10)
        if i >= WARMUP:
            out.append(t1 - t0)
        time.sleep(GAP)
    return out


# =================================================================== lab side
def _bird_conf(me: str, asn: int, peer: str, peer_as: int, include: str | None) -> str:
    static = f'include "{include}";' if include else ""
    imp, exp = ("none", "all") if include else ("all", "none")
    return textwrap.dedent(f"""\
        router id {me};
        protocol device {{ scan time 10; }}
        protocol kernel {{ persist; scan time 60; ipv4 {{ import none; export all; }}; }}
        {static}
        protocol bgp peer {{
            local {me} as {asn}; neighbor {peer} as {peer_as}; connect delay time 1;
            ipv4 {{ import {imp}; export {exp}; }};
        }}
        """)


def run_podbgp(lab, n: int) -> list[float]:

    lab.apply(f"""
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {{name: bench-pool}}
spec: {{cidr: {POOL}, blockSize: 26, ipipMode: Never, vxlanMode: Never, natOutgoing: false}}
""")
    for node in lab.nodes.values():
        lab.register_node(node)
    for name in lab.nodes:
        lab.start_daemon(name)

    def mesh_up() -> bool:
        for name in lab.nodes:
            peers = lab.status(name)["peers"]
            if len(peers) != len(lab.nodes) - 1 or any(p["state"] != "up" for p in peers):
                return False
        return True

    lab.wait_for(mesh_up, 90, "the 3-node mesh to come up", interval=0.2)
    b = lab.nodes["node2"]
    r = subprocess.run(["ip", "netns", "exec", b.ns, sys.executable, "-m", "bench.latency",
                        "--probe", "podbgp", "--etcd", lab.etcd_endpoint, "--node", "node1",
                        "--blocks", str(n)], capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"podbgp probe failed: {r.stderr.strip()[-800:]}\n"
                           f"node1 log: {lab.daemon_log('node1', 10)}")
    return json.loads(r.stdout)


def run_calico_way(lab, n: int) -> list[float]:
    import shutil

    a, b = lab.add_external("bird-a", 1), lab.add_external("bird-b", 2)
    include = lab.workdir / "blocks.conf"
    include.write_text("protocol static blocks { ipv4; }\n")
    bird = shutil.which("bird") or "/usr/sbin/bird"
    birdc = shutil.which("birdc") or "/usr/sbin/birdc"
    socks = {}
    for node, peer, asn, pas, inc in ((a, b, 64601, 64602, str(include)),
                                      (b, a, 64602, 64601, None)):
        conf = lab.workdir / f"{node.name}.conf"
        conf.write_text(_bird_conf(node.ip, asn, peer.ip, pas, inc))
        socks[node.name] = str(lab.workdir / f"{node.name}.ctl")
        lab.spawn_in(node.ns, [bird, "-f", "-c", str(conf), "-s", socks[node.name],
                               "-P", str(lab.workdir / f"{node.name}.pid")], f"{node.name}.log")

    def established() -> bool:
        r = subprocess.run([birdc, "-s", socks["bird-b"], "show", "protocols"],
                           capture_output=True, text=True)
        return "Established" in r.stdout

    lab.wait_for(established, 60, "BIRD A' - BIRD B' session", interval=0.2)
    r = subprocess.run(["ip", "netns", "exec", b.ns, sys.executable, "-m", "bench.latency",
                        "--probe", "bird", "--include", str(include), "--sock", socks["bird-a"],
                        "--birdc", birdc, "--blocks", str(n)],
                       capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"Calico-way probe failed: {r.stderr.strip()[-800:]}")
    return json.loads(r.stdout)


def stats(xs: list[float]) -> dict:
    from bench.common import median, percentile

    ms = [x * 1000 for x in xs]
    return {"n": len(ms), "p50_ms": median(ms), "p90_ms": percentile(ms, 90),
            "p99_ms": percentile(ms, 99), "max_ms": max(ms) if ms else float("nan"),
            "min_ms": min(ms) if ms else float("nan"), "samples_ms": ms}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.latency",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", type=int, default=100, help="samples (one new block each)")
    ap.add_argument("--quick", action="store_true", help="20 samples")
    ap.add_argument("--json", help="write samples and percentiles to this file")
    ap.add_argument("--probe", choices=("podbgp", "bird"), help=argparse.SUPPRESS)
    ap.add_argument("--etcd", help=argparse.SUPPRESS)
    ap.add_argument("--node", help=argparse.SUPPRESS)
    ap.add_argument("--include", help=argparse.SUPPRESS)
    ap.add_argument("--sock", help=argparse.SUPPRESS)
    ap.add_argument("--birdc", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if not 1 <= a.blocks <= 1000:
        ap.error(f"--blocks: {a.blocks} is out of range 1..1000")
    if a.probe == "podbgp":
        print(json.dumps(probe_podbgp(a.etcd, a.node, a.blocks)))
        return 0
    if a.probe == "bird":
        print(json.dumps(probe_bird(a.include, a.sock, a.birdc, a.blocks)))
        return 0

    from bench.common import require_root, table
    from lab.harness import Lab

    require_root("bench.latency")
    n = 20 if a.quick else a.blocks
    with Lab(nodes=3, log_level="warning") as lab:
        calico = run_calico_way(lab, n)
        podbgp = run_podbgp(lab, n)
    res = {"podbgp": stats(podbgp), "calico": stats(calico)}
    rows = [[name, s["n"], s["min_ms"], s["p50_ms"], s["p90_ms"], s["p99_ms"], s["max_ms"]]
            for name, s in (("podbgp (etcd -> B's kernel)", res["podbgp"]),
                            ("Calico way (BIRD 2 configure -> B's kernel)", res["calico"]))]
    print(f"\nEvent latency, new block on node A -> route in node B's kernel, ms "
          f"({n} samples each, same run)\n")
    print(table(["path", "n", "min", "p50", "p90", "p99", "max"], rows))
    p, c = res["podbgp"], res["calico"]
    ratio = p["p99_ms"] / c["p99_ms"]
    res["p99_ratio"] = ratio
    print(f"\nlatency: podbgp p50 {p['p50_ms']:.1f} ms p99 {p['p99_ms']:.1f} ms, Calico way "
          f"p50 {c['p50_ms']:.1f} ms p99 {c['p99_ms']:.1f} ms, p99 ratio {ratio:.2f}x")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
