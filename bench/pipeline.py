"""Benchmark: CPU seconds of the daemon's own route path, stage by stage.

    sudo .venv/bin/python -m bench.pipeline [--routes 100000] [--reps 3] [--profile]

What bench.convergence's podbgp does between ExaBGP's JSON and the kernel, in one
process, timed in CPU seconds (time.process_time: robust to load where wall time
is not): ExaBGP's API lines for K /26 routes in UPDATEs of 800 NLRI (exactly the
text ExaBGP 5.0.15 writes with exabgp.api.compact for bench.injector's UPDATEs)
-> ``parse_line`` (bgpd.exabgp.parse) -> ``Rib.update`` per UPDATE -> the kernel
routes (``FibRoutes.ikey``/``spec``, what the node queues) -> ``FibSyncer.update_specs``
into a fresh namespace (removed at the end), one call per UPDATE as the daemon's FIB
pump makes them. Each stage runs over all K before the next, so its CPU is its
own; ``fib`` includes the kernel's work (system time), as in the daemon.
``--profile`` prints a cProfile of parse+rib+route (not fib: its pass runs in a
thread cProfile does not see).
The last line: ``pipeline: parse <s> rib <s> route <s> fib <s> CPU s per 100k``.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import logging
import os
import pstats
import statistics
import subprocess
import sys
import time

import structlog

from bench.fib import gateway_ns
from bgpd.exabgp.parse import parse_line
from bgpd.translate import FibRoutes
from fib_sync import FibSyncer
from rib import PeerKind, PeerPolicy, PeerRef, Pool, Rib, RibConfig

PER_UPDATE = 800  # bench.injector's NLRI per UPDATE
DUT_IP, INJ_IP, DUT_AS, INJ_AS = "10.88.0.1", "10.88.0.2", 64512, 65001
PROTO, METRIC = 201, 0


def prefixes(k: int) -> list[str]:
    return [f"10.{(i >> 10) & 255}.{(i >> 2) & 255}.{(i & 3) * 64}/26" for i in range(k)]


def exabgp_lines(pfx: list[str], withdraw: bool = False) -> list[str]:
    """ExaBGP 5.0.15's JSON for bench.injector's UPDATEs (exabgp.api.compact)."""
    head = ('{ "exabgp": "5.0.0", "time": 1795806833.5, "host" : "dut", "pid" : 1, '
            '"ppid" : 1, "counter": 1, "type": "update", "neighbor": { "address": '
            f'{{ "local": "{DUT_IP}", "peer": "{INJ_IP}" }}, "asn": {{ "local": {DUT_AS}, '
            f'"peer": {INJ_AS} }}, "router-id": "{DUT_IP}" , "direction": "receive", '
            '"message": { "update": { ')
    out = []
    for i in range(0, len(pfx), PER_UPDATE):
        nlri = ", ".join(f'"{p}"' for p in pfx[i : i + PER_UPDATE])
        if withdraw:
            body = f'"withdraw": {{ "ipv4 unicast": [ {nlri} ] }}'
        else:
            body = ('"attribute": { "origin": "igp", "as-path": {"0": {"element": '
                    f'"as-sequence", "value": [{INJ_AS}]}}}}, "confederation-path": [] }}, '
                    f'"announce": {{ "ipv4 unicast": {{ "{INJ_IP}": [ {nlri} ] }} }}')
        out.append(head + body + " } } } }\n")
    return out


def make_rib() -> tuple[Rib, PeerRef, tuple]:
    config = RibConfig(local_asn=DUT_AS, router_id=DUT_IP, node_addresses=frozenset({DUT_IP}),
                       own_blocks=(), node_subnets=("10.88.0.0/24",),
                       pools=(Pool("10.0.0.0/8", block_size=26),))
    peer = PeerRef(INJ_IP, INJ_AS, INJ_IP, PeerKind.EBGP)
    key = (INJ_IP, 179)
    rib = Rib(config, record_best=False)  # as the daemon (bgpd.node)
    rib.peer_up(PeerPolicy(key=key, peer=peer, local_address=DUT_IP))
    return rib, peer, key


async def one(k: int, ns: str, profile: bool) -> dict[str, float]:
    pfx = prefixes(k)
    lines, wd_lines = exabgp_lines(pfx), exabgp_lines(pfx, withdraw=True)
    rib, peer, key = make_rib()
    conv = FibRoutes(254, METRIC)
    lookup = {INJ_IP: peer}.get
    gc.collect()
    cpu = time.process_time
    prof = cProfile.Profile() if profile else None
    out: dict[str, float] = {}

    if prof:
        prof.enable()
    t = cpu()
    events = [parse_line(line, lookup) for line in lines]
    out["parse"] = cpu() - t
    t = cpu()
    changes = [rib.update(key, e.announced, e.withdrawn) for e in events]
    out["rib"] = cpu() - t
    t = cpu()
    batches = [{conv.ikey(kr.prefix): conv.spec(kr) for kr in c.kernel_add} for c in changes]
    out["route"] = cpu() - t
    if prof:
        prof.disable()
    assert sum(map(len, batches)) == k, "every route reaches the kernel side"
    del events, changes

    syncer = FibSyncer(netns=ns, protocol=PROTO, metric=METRIC, resync_interval=3600)
    await syncer.start()
    try:
        t = cpu()
        for b in batches:
            await syncer.update_specs(b, wait=False)
        await syncer.update_specs({}, wait=True)
        out["fib"] = cpu() - t
        assert syncer.stats.installed >= k, "all routes installed"
        # Withdraw (parse + rib + fib) for the record, and to leave the namespace empty.
        t = cpu()
        for line in wd_lines:
            e = parse_line(line, lookup)
            c = rib.update(key, e.announced, e.withdrawn)
            await syncer.update_specs({}, [conv.ikey(kr.prefix) for kr in c.kernel_remove],
                                      wait=False)
        await syncer.update_specs({}, wait=True)
        out["withdraw_all"] = cpu() - t
    finally:
        await syncer.stop()
    if prof:
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
    return out


async def run(k: int, reps: int, profile: bool) -> dict[str, float]:
    ns = gateway_ns("pbpipe", f"{DUT_IP}/24")
    try:
        trials = [await one(k, ns, profile and r == 0) for r in range(reps)]
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    return {s: (statistics.median(t[s] for t in trials), min(t[s] for t in trials))
            for s in trials[0]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.pipeline",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--routes", type=int, default=100_000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--profile", action="store_true", help="cProfile of parse+rib+route")
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench.pipeline needs root (a network namespace)", file=sys.stderr)
        return 2
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    med = asyncio.run(run(a.routes, a.reps, a.profile))
    scale = 100_000 / a.routes
    print(f"{a.routes} /26 routes, UPDATEs of {PER_UPDATE}, median of {a.reps}; CPU seconds "
          "(process_time), per stage:")
    for stage, (s, lo) in med.items():
        print(f"  {stage:<13} {s:7.3f} s  ({s * scale:.3f} per 100k; least {lo * scale:.3f})")
    per = {s: v * scale for s, (v, _lo) in med.items()}
    print(f"pipeline: parse {per['parse']:.3f} rib {per['rib']:.3f} route {per['route']:.3f} "
          f"fib {per['fib']:.3f} CPU s per 100k (withdraw all {per['withdraw_all']:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
