"""Benchmark of rib/: 100,000 paths from 3 peers with overlapping prefixes.

Run from the repository root: ``python -m bench.rib``. Peers A, B, C announce
overlapping /26 sets (A: 0..40k, B: 0..30k, C: 10k..40k = 100k paths over 40k
prefixes), so best-path selection really competes and exports and kernel intent
are computed for each. Then every path is withdrawn. Paths are built the way
the speaker builds them: one PeerRef per session, attribute tuples shared per
UPDATE, prefixes as (interned) strings. Memory is the tracemalloc growth while
the RIB holds all paths, including the Path objects, divided by the path count.
The last line is the summary other tools grep for.
"""

from __future__ import annotations

import argparse
import gc
import logging
import sys
import time
import tracemalloc

import structlog

from rib import PeerKind, PeerPolicy, PeerRef, Pool, Rib, RibConfig
from rib.path import Path, paths_for

BATCH = 500  # NLRI per UPDATE (ExaBGP groups a few hundred /26s per message)


def prefixes(n: int) -> list[str]:
    # 10.0.0.0/8 in /26 steps: n distinct block prefixes.
    out = []
    for i in range(n):
        v = (10 << 24) | (i << 6)
        out.append(sys.intern(f"{v >> 24}.{(v >> 16) & 255}.{(v >> 8) & 255}.{v & 255}/26"))
    return out


def run(n: int, trace: bool) -> dict:
    config = RibConfig(
        local_asn=64512,
        router_id="192.0.2.1",
        node_addresses=frozenset({"192.0.2.1"}),
        own_blocks=("10.255.0.0/26",),
        node_subnets=("192.0.2.0/24",),
        pools=(Pool("10.0.0.0/8", block_size=26),),
        max_paths=2,
    )
    peers = [
        PeerRef("192.0.2.11", 64512, "192.0.2.11", PeerKind.IBGP),
        PeerRef("192.0.2.12", 64512, "192.0.2.12", PeerKind.IBGP, rr_client=True),
        PeerRef("198.51.100.1", 65001, "198.51.100.1", PeerKind.EBGP),
    ]
    policies = [PeerPolicy(key=(p.address, 179), peer=p, local_address="192.0.2.1") for p in peers]
    pfx = prefixes(n)
    third = n // 4
    spans = [(0, n), (0, 3 * third), (third, n)]  # overlapping: 100k paths for n=40k
    as_paths = [(), (), (65001, 65010)]
    long_path = (65100, 65101, 65102)
    gc.collect()
    if trace:
        tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0] if trace else 0
    rib = Rib(config)
    for pol in policies:
        rib.peer_up(pol)

    def build(i: int, lo: int, hi: int) -> list[list[Path]]:
        # A's second half carries a long AS path, so B or C wins there; where A and B
        # tie they form a 2-way ECMP set.
        peer, nh = peers[i], peers[i].address
        lp = 100 if peer.kind is PeerKind.IBGP else None
        out = []
        for s in range(lo, hi, BATCH):
            batch = pfx[s : min(s + BATCH, hi)]
            # As the speaker does (bgpd.exabgp.parse): one template per UPDATE,
            # its attributes shared by every prefix of the batch (rib.path.paths_for).
            out.append(paths_for(batch, Path(batch[0], nh, peer, local_pref=lp,
                                             as_path=as_paths[i] if i or s < n // 2
                                             else long_path)))
        return out

    t0 = time.perf_counter()
    updates = 0
    exports = kernel = 0
    for i, (lo, hi) in enumerate(spans):
        for batch in build(i, lo, hi):
            ch = rib.announce(policies[i].key, batch)
            updates += len(batch)
            exports += sum(len(d) for d in ch.exports.values())
            kernel += len(ch.kernel_add)
    t_ann = time.perf_counter() - t0
    held = len(rib)
    mem = tracemalloc.get_traced_memory()[0] - base if trace else 0
    loc = len(rib.loc_rib())
    routes = len(rib.desired_routes())
    t1 = time.perf_counter()
    for i, (lo, hi) in enumerate(spans):
        for s in range(lo, hi, BATCH):
            rib.withdraw(policies[i].key, pfx[s : min(s + BATCH, hi)])
            updates += min(s + BATCH, hi) - s
    t_wd = time.perf_counter() - t1
    if trace:
        tracemalloc.stop()
    assert len(rib) == 0 and len(rib.desired_routes()) == 1, "withdraw left routes behind"
    return dict(
        held=held,
        t_ann=t_ann,
        t_wd=t_wd,
        updates=updates,
        mem=mem,
        loc=loc,
        routes=routes,
        exports=exports,
        kernel=kernel,
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prefixes", type=int, default=40_000)
    ap.add_argument("--profile", action="store_true", help="print a cProfile of the timed run")
    args = ap.parse_args(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
    # Timed without tracemalloc (it slows every allocation several times);
    # memory from a second, identical run under tracemalloc.
    if args.profile:
        import cProfile
        import pstats

        prof = cProfile.Profile()
        prof.runcall(run, args.prefixes, False)
        pstats.Stats(prof).sort_stats("tottime").print_stats(15)
    r = run(args.prefixes, trace=False)
    m = run(args.prefixes, trace=True)
    held, t_ann, t_wd = r["held"], r["t_ann"], r["t_wd"]
    rate = r["updates"] / (t_ann + t_wd)
    mem = m["mem"]
    loc, routes, exports, kernel = r["loc"], r["routes"], r["exports"], r["kernel"]
    print(f"{'phase':<10} {'paths':>8} {'seconds':>8} {'paths/s':>10}")
    print(f"{'announce':<10} {held:>8} {t_ann:>8.2f} {held / t_ann:>10.0f}")
    print(f"{'withdraw':<10} {held:>8} {t_wd:>8.2f} {held / t_wd:>10.0f}")
    print(
        f"loc-rib prefixes {loc}, kernel routes {routes}, export updates {exports}, "
        f"kernel adds {kernel}, memory {mem / 1e6:.1f} MB (tracemalloc)"
    )
    print(f"rib: {rate:.0f} path updates/s, {mem / held:.0f} bytes/path")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
