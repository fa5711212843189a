"""Benchmark: podbgp's FibSyncer against `ip -batch`, same routes, same run.

    sudo .venv/bin/python -m bench.fib [--routes 100000]

In a fresh namespace (removed at the end) with a veth giving two gateways:
install N /26 routes via a gateway, replace 10% with another gateway, delete
all — first with podbgp (protocol 201), then with `ip -batch` (protocol 202,
numeric: iproute2 6.1's -batch mislabels named protocols after a numeric one,
docs/testing.md). Then times how long an external `ip route del` takes to be repaired.
The last line is `fib: podbgp <X> routes/s, ip-batch <Y> routes/s, ratio <X/Y>`
for the install.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

import structlog

from fib_sync import FibSyncer, NextHop, Route
from fib_sync.netlink import RTM_NEWROUTE, RTMGRP_IPV4_ROUTE, iter_messages, open_netlink

PODBGP_PROTO = 201
IPBATCH_PROTO = 202
METRIC = 20
GW1, GW2 = "10.1.0.2", "10.1.0.3"


def sh(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


def prefixes(n: int) -> list[str]:
    return [f"10.{64 + i // 1024}.{(i // 4) % 256}.{(i % 4) * 64}/26" for i in range(n)]


def count(ns: str, proto: int) -> int:
    out = sh("ip", "-n", ns, "route", "show", "proto", str(proto))
    return len(out.splitlines())


def ip_batch(ns: str, lines: list[str]) -> float:
    with tempfile.NamedTemporaryFile("w", suffix=".batch", delete=False) as f:
        f.write("\n".join(lines) + "\n")
        path = f.name
    try:
        t0 = time.perf_counter()
        sh("ip", "-n", ns, "-batch", path)
        return time.perf_counter() - t0
    finally:
        os.unlink(path)


def wait_repaired(ns: str, dst: str, timeout: float = 10.0) -> float:
    """Delete `dst` behind podbgp's back; seconds until its RTM_NEWROUTE is back."""
    mon = open_netlink(ns, RTMGRP_IPV4_ROUTE)
    mon.settimeout(timeout)
    try:
        sh("ip", "-n", ns, "route", "del", dst, "proto", str(PODBGP_PROTO))
        t0 = time.perf_counter()
        addr, plen = dst.split("/")
        want = (bytes(int(x) for x in addr.split(".")), int(plen))
        while True:
            data = mon.recv(1 << 16)
            for off, _ln, typ, _f, _s in iter_messages(data, len(data)):
                if typ != RTM_NEWROUTE:
                    continue
                if data[off + 16 + 5] != PODBGP_PROTO or data[off + 17] != want[1]:
                    continue
                if want[0] in data[off + 28 : off + _ln]:
                    return time.perf_counter() - t0
    finally:
        mon.close()


def gateway_ns(prefix: str, address: str) -> str:
    """A fresh namespace whose veth0 has ``address`` (CIDR): gateways on its subnet
    are reachable. The caller deletes it (``ip netns del``)."""
    ns = f"{prefix}{uuid.uuid4().hex[:8]}"
    sh("ip", "netns", "add", ns)
    try:
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", ns, "link", "add", "veth0", "type", "veth", "peer", "name", "veth1")
        sh("ip", "-n", ns, "link", "set", "veth0", "up")
        sh("ip", "-n", ns, "link", "set", "veth1", "up")
        sh("ip", "-n", ns, "addr", "add", address, "dev", "veth0")
    except BaseException:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        raise
    return ns


async def run(n: int) -> None:
    ns = gateway_ns("pbbench", "10.1.0.1/24")
    try:
        dsts = prefixes(n)
        churn = n // 10
        nh1, nh2 = (NextHop(GW1),), (NextHop(GW2),)
        # Table and metric given, as the daemon gives them: no defaulted copies.
        routes = [Route(d, nexthops=nh1, table=254, metric=METRIC) for d in dsts]
        changes = [Route(d, nexthops=nh2, table=254, metric=METRIC) for d in dsts[:churn]]

        res: dict[str, dict[str, float]] = {"podbgp": {}, "ip-batch": {}}
        syncer = FibSyncer(netns=ns, protocol=PODBGP_PROTO, metric=METRIC, resync_interval=3600)
        await syncer.start()
        try:
            t0 = time.perf_counter()
            await syncer.set_desired(routes)
            res["podbgp"]["install"] = n / (time.perf_counter() - t0)
            assert count(ns, PODBGP_PROTO) == n, "podbgp install incomplete"
            t0 = time.perf_counter()
            await syncer.update(changes)  # the daemon hands over changes
            res["podbgp"]["replace"] = churn / (time.perf_counter() - t0)
            assert syncer.stats.replaced == churn and syncer.stats.failed == 0
            t0 = time.perf_counter()
            await syncer.set_desired(routes)  # and back, as a whole desired set
            whole_set_replace = churn / (time.perf_counter() - t0)
            assert syncer.stats.replaced == 2 * churn
            loop = asyncio.get_running_loop()
            repairs = []
            for i in range(5):
                dst = dsts[n // 2 + i]
                repairs.append(await loop.run_in_executor(None, wait_repaired, ns, dst))
            t0 = time.perf_counter()
            await syncer.set_desired([])
            res["podbgp"]["delete"] = n / (time.perf_counter() - t0)
            assert count(ns, PODBGP_PROTO) == 0, "podbgp delete incomplete"
        finally:
            await syncer.stop()

        tail = f"proto {IPBATCH_PROTO} metric {METRIC}"
        dt = ip_batch(ns, [f"route add {d} via {GW1} {tail}" for d in dsts])
        res["ip-batch"]["install"] = n / dt
        assert count(ns, IPBATCH_PROTO) == n, "ip -batch install incomplete"
        dt = ip_batch(ns, [f"route replace {d} via {GW2} {tail}" for d in dsts[:churn]])
        res["ip-batch"]["replace"] = churn / dt
        dt = ip_batch(ns, [f"route del {d} {tail}" for d in dsts])
        res["ip-batch"]["delete"] = n / dt
        assert count(ns, IPBATCH_PROTO) == 0, "ip -batch delete incomplete"
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)

    print(
        f"{n} /26 routes via a gateway, fresh namespace; replace = {churn} routes (10%), given as changes"
    )
    print(f"{'phase':<8} {'podbgp routes/s':>16} {'ip-batch routes/s':>18} {'ratio':>7}")
    for phase in ("install", "replace", "delete"):
        p, b = res["podbgp"][phase], res["ip-batch"][phase]
        print(f"{phase:<8} {p:>16,.0f} {b:>18,.0f} {p / b:>7.2f}")
    print(f"(podbgp replace given the whole 100k desired set instead: {whole_set_replace:,.0f}/s)")
    print(
        f"external delete repaired in: median {statistics.median(repairs) * 1000:.1f} ms, "
        f"max {max(repairs) * 1000:.1f} ms ({len(repairs)} deletes, {n} routes installed)"
    )
    p, b = res["podbgp"]["install"], res["ip-batch"]["install"]
    print(f"fib: podbgp {p:.0f} routes/s, ip-batch {b:.0f} routes/s, ratio {p / b:.2f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.fib", description=__doc__.split("\n")[0])
    ap.add_argument("--routes", type=int, default=100_000, help="number of /26 routes")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench.fib needs root (network namespaces)", file=sys.stderr)
        return 2
    if not 1 <= args.routes <= 200_000:
        print("--routes must be 1..200000", file=sys.stderr)
        return 2
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    asyncio.run(run(args.routes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
