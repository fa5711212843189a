"""Benchmark: the VXLAN overlay — programming cost and throughput, each
against its peer measured in the same run.

    sudo .venv/bin/python -m bench.overlay [--blocks 10000] [--reps 3] [--seconds 5]

1. FIB programming of N remote VXLAN blocks, one remote node each (the worst
   case: a route, a neighbour and an FDB entry per block, Felix's shape:
   ``BLOCK via VTEP dev vxlan.calico onlink``, ``VTEP lladdr MAC nud
   permanent``, ``MAC dst NODE self permanent``): podbgp (FibSyncer +
   OverlaySyncer, whole desired sets) against `ip -batch` (routes and
   neighbours) + `bridge -batch` (FDB) of the same objects, each in a fresh
   namespace with the VXLAN device already there. Median of ``--reps``.
2. Pod-to-pod TCP throughput with iperf3 (Debian) between two "nodes" joined
   by a veth: natively routed (pod block via the other node) and through
   VXLAN (via its VTEP, device and entries made by OverlaySyncer; pod MTU
   1450 as Calico sets it), alternating, ``--reps`` runs of ``--seconds``.

The last line: ``overlay: N VXLAN blocks route+neigh+FDB podbgp X s, ip-batch
Y s, ratio Y/X; iperf3 VXLAN A Gbit/s, native B Gbit/s (A/B)``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time

import structlog

from bench.common import Netns, table
from fib_sync import FibSyncer, NextHop, Route
from fib_sync.link import VxlanSpec
from fib_sync.neigh import FdbEntry, Neighbour
from fib_sync.overlay import OK, OverlaySyncer

DEV = "vxlan.calico"
PROTO = 201
IP_PROTO = 202


def sh(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


def objects(n: int) -> tuple[list[Route], list[Neighbour], list[FdbEntry]]:
    routes, neigh, fdb = [], [], []
    for i in range(n):
        block = f"10.{64 + i // 1024}.{(i // 4) % 256}.{(i % 4) * 64}/26"
        vtep = f"10.{64 + i // 1024}.{(i // 4) % 256}.{(i % 4) * 64}"  # the block's first address
        mac = f"66:00:00:{i >> 16:02x}:{(i >> 8) & 255:02x}:{i & 255:02x}"
        node = f"172.{16 + i // 65536}.{(i // 256) % 256}.{i % 256}"
        routes.append(Route(block, nexthops=(NextHop(vtep, dev=DEV, onlink=True),),
                            table=254, metric=20))
        neigh.append(Neighbour(DEV, vtep, mac))
        fdb.append(FdbEntry(DEV, mac, node))
    return routes, neigh, fdb


def node_ns(net: Netns, short: str) -> str:
    ns = net.add_ns(short)
    sh("ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
    sh("ip", "-n", ns, "addr", "add", "172.31.255.1/16", "dev", "eth0")
    for d in ("eth0", "eth0p"):
        sh("ip", "-n", ns, "link", "set", d, "up")
    return ns


SPEC = VxlanSpec(DEV, 4096, 4789, "172.31.255.1", "66:aa:00:00:00:01", 0, "10.255.0.1")


async def podbgp_trial(n: int) -> dict[str, float]:
    routes, neigh, fdb = objects(n)
    with Netns("bov") as net:
        ns = node_ns(net, "p")
        ov = OverlaySyncer(netns=ns, protocol=PROTO, resync_interval=3600)
        fib = FibSyncer(netns=ns, protocol=PROTO, metric=20, resync_interval=3600)
        await ov.start()
        await fib.start()
        try:
            await ov.set_desired([SPEC], [])
            assert ov.devices[DEV].state == OK, ov.devices
            t0 = time.perf_counter()
            await ov.set_desired([SPEC], [*neigh, *fdb])
            t1 = time.perf_counter()
            await fib.set_desired(routes)
            t2 = time.perf_counter()
            assert not fib.failing_routes and not ov.failing
            assert fib.stats.installed == n and ov.stats.entries_installed == 2 * n
            got = len(sh("ip", "-n", ns, "route", "show", "proto", str(PROTO)).splitlines())
            assert got == n, f"{got} routes"
        finally:
            await fib.stop()
            await ov.stop()
    return {"total": t2 - t0, "l2": t1 - t0, "routes": t2 - t1}


def iproute_trial(n: int) -> dict[str, float]:
    routes, neigh, fdb = objects(n)
    with Netns("bov") as net, tempfile.TemporaryDirectory() as tmp:
        ns = node_ns(net, "i")
        sh("ip", "-n", ns, "link", "add", DEV, "address", SPEC.mac, "mtu", "1450", "type",
           "vxlan", "id", "4096", "dstport", "4789", "dev", "eth0", "local", SPEC.local,
           "nolearning")
        sh("ip", "-n", ns, "link", "set", DEV, "up")
        ipb, brb = os.path.join(tmp, "ip.batch"), os.path.join(tmp, "bridge.batch")
        with open(ipb, "w") as f:
            for e in neigh:
                f.write(f"neigh replace {e.ip} lladdr {e.mac} dev {DEV} nud permanent\n")
            for r in routes:
                f.write(f"route add {r.dst} via {r.nexthops[0].gateway} dev {DEV} onlink "
                        f"proto {IP_PROTO} metric 20\n")
        with open(brb, "w") as f:
            for e in fdb:
                f.write(f"fdb replace {e.mac} dev {DEV} dst {e.dst} self permanent\n")
        t0 = time.perf_counter()
        sh("ip", "-n", ns, "-batch", ipb)
        t1 = time.perf_counter()
        sh("bridge", "-n", ns, "-batch", brb)
        t2 = time.perf_counter()
        got = len(sh("ip", "-n", ns, "route", "show", "proto", str(IP_PROTO)).splitlines())
        assert got == n, f"{got} routes"
    return {"total": t2 - t0, "ip": t1 - t0, "bridge": t2 - t1}


# ------------------------------------------------------------------ throughput


async def throughput(seconds: float, reps: int) -> dict[str, list[float]]:
    """Gbit/s of iperf3 pod A -> pod B, native and VXLAN, alternating."""
    out: dict[str, list[float]] = {"native": [], "vxlan": []}
    with Netns("bot") as net:
        n1, n2, p1, p2 = (net.add_ns(s) for s in ("n1", "n2", "p1", "p2"))
        net.link(n1, "172.30.0.1/24", n2, "172.30.0.2/24")
        for node, pod, block, ip in ((n1, p1, "10.10.1", "10.10.1.5"),
                                     (n2, p2, "10.10.2", "10.10.2.5")):
            sh("ip", "-n", node, "link", "add", "cali0", "type", "veth", "peer", "name", "eth0",
               "netns", pod)
            sh("ip", "-n", node, "addr", "add", f"{block}.1/24", "dev", "cali0")
            sh("ip", "-n", node, "link", "set", "cali0", "up")
            sh("ip", "-n", pod, "addr", "add", f"{ip}/24", "dev", "eth0")
            sh("ip", "-n", pod, "link", "set", "eth0", "up")
            sh("ip", "-n", pod, "route", "add", "default", "via", f"{block}.1")
            sh("ip", "netns", "exec", node, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        server = net.spawn(p2, ["iperf3", "-s", "-B", "10.10.2.5"], "iperf3-server.log")
        time.sleep(0.3)
        specs = {
            n1: VxlanSpec(DEV, 4096, 4789, "172.30.0.1", "66:aa:00:00:00:01", 0, "10.10.1.0"),
            n2: VxlanSpec(DEV, 4096, 4789, "172.30.0.2", "66:aa:00:00:00:02", 0, "10.10.2.0"),
        }
        peers = {n1: (n2, "10.10.2.0/24"), n2: (n1, "10.10.1.0/24")}
        syncers = {}
        for node in (n1, n2):
            ov = OverlaySyncer(netns=node, resync_interval=3600)
            fib = FibSyncer(netns=node, resync_interval=3600)
            await ov.start()
            await fib.start()
            syncers[node] = (ov, fib)
        try:
            for node, (ov, _fib) in syncers.items():
                other = specs[peers[node][0]]
                await ov.set_desired([specs[node]], [Neighbour(DEV, other.address, other.mac),
                                                     FdbEntry(DEV, other.mac, other.local)])
            for rep in range(reps):
                for mode in ("native", "vxlan"):
                    for node, (_ov, fib) in syncers.items():
                        other_node, block = peers[node]
                        nh = (NextHop(specs[other_node].local),) if mode == "native" else (
                            NextHop(specs[other_node].address, dev=DEV, onlink=True),)
                        await fib.set_desired([Route(block, nexthops=nh)])
                    mtu = "1500" if mode == "native" else "1450"  # Calico: pod MTU = tunnel MTU
                    for pod in (p1, p2):
                        sh("ip", "-n", pod, "link", "set", "eth0", "mtu", mtu)
                    r = subprocess.run(
                        ["ip", "netns", "exec", p1, "iperf3", "-c", "10.10.2.5", "-t",
                         str(seconds), "-J"], capture_output=True, text=True, check=True)
                    bps = json.loads(r.stdout)["end"]["sum_received"]["bits_per_second"]
                    out[mode].append(bps / 1e9)
                    print(f"  iperf3 rep {rep} {mode:<6} {bps / 1e9:6.2f} Gbit/s", flush=True)
        finally:
            for ov, fib in syncers.values():
                await fib.stop()
                await ov.stop()
            net.kill(server.pid)
    return out


async def run(n: int, reps: int, seconds: float) -> None:
    podbgp, iproute = [], []
    for rep in range(reps):
        p = await podbgp_trial(n)
        i = iproute_trial(n)
        podbgp.append(p)
        iproute.append(i)
        print(f"  rep {rep}: podbgp {p['total']:.3f} s (l2 {p['l2']:.3f} + routes "
              f"{p['routes']:.3f}), ip+bridge -batch {i['total']:.3f} s (ip {i['ip']:.3f} + "
              f"bridge {i['bridge']:.3f})", flush=True)
    pt = statistics.median(x["total"] for x in podbgp)
    it = statistics.median(x["total"] for x in iproute)
    print(f"\n{n} remote VXLAN blocks, one node each: {n} routes + {n} neighbours + {n} FDB "
          f"entries, fresh namespace, device already up; median of {reps}")
    print(table(["method", "seconds", "objects/s"], [
        ["podbgp (FibSyncer + OverlaySyncer)", f"{pt:.3f}", f"{3 * n / pt:,.0f}"],
        ["ip -batch + bridge -batch", f"{it:.3f}", f"{3 * n / it:,.0f}"],
    ]))
    tp = await throughput(seconds, reps)
    vx, nat = statistics.median(tp["vxlan"]), statistics.median(tp["native"])
    print(f"\niperf3 pod -> pod across two nodes (veth), {seconds:g} s each, median of {reps}")
    print(table(["path", "Gbit/s"], [["native routing", f"{nat:.2f}"],
                                      ["VXLAN (vxlan.calico)", f"{vx:.2f}"]]))
    print(f"overlay: {n} VXLAN blocks route+neigh+FDB podbgp {pt:.3f} s, ip-batch {it:.3f} s, "
          f"ratio {it / pt:.2f}; iperf3 VXLAN {vx:.2f} Gbit/s, native {nat:.2f} Gbit/s "
          f"({vx / nat:.2f})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.overlay",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--blocks", type=int, default=10_000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5.0)
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench.overlay needs root (network namespaces)", file=sys.stderr)
        return 2
    if not 1 <= a.blocks <= 60_000:
        print("--blocks must be 1..60000", file=sys.stderr)
        return 2
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    asyncio.run(run(a.blocks, a.reps, a.seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
