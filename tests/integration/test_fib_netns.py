"""Privileged fib_sync tests: a real kernel FIB in throwaway namespaces.

Each test makes its own namespace (conftest `netns`), with veth pairs inside
it to give the routes reachable gateways: `veth0` holds 10.1.0.1/24 and
fd01::1/64, a veth named `tunl0` stands in for Calico's IPIP device (this
kernel has no ipip module, docs/testing.md).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections.abc import AsyncIterator, Callable

import pytest

from fib_sync import FibSyncer, NextHop, Route, RouteKind, diff
from fib_sync.netlink import NamespaceMissing
from fib_sync.route import route_of
from tests.conftest import require_root, unique_name
from tests.helpers.wait import until

P = 201


def ip(ns: str, *args: str, check: bool = True) -> str:
    return subprocess.run(
        ["ip", "-n", ns, *args], check=check, capture_output=True, text=True
    ).stdout


def kernel(ns: str, *selector: str) -> list[dict]:
    """Routes as `ip -j` sees them (IPv4 and IPv6)."""
    out = []
    for fam in ("-4", "-6"):
        out += json.loads(ip(ns, "-j", fam, "route", "show", *selector) or "[]")
    return out


def by_dst(routes: list[dict]) -> dict[str, dict]:
    return {r["dst"]: r for r in routes}


def setup_links(ns: str) -> None:
    ip(ns, "link", "add", "veth0", "type", "veth", "peer", "name", "veth1")
    ip(ns, "link", "add", "tunl0", "type", "veth", "peer", "name", "tunl0p")
    for dev in ("veth0", "veth1", "tunl0", "tunl0p"):
        ip(ns, "link", "set", dev, "up")
    ip(ns, "addr", "add", "10.1.0.1/24", "dev", "veth0")
    ip(ns, "addr", "add", "fd01::1/64", "dev", "veth0", "nodad")


@pytest.fixture
async def lab(netns: str) -> AsyncIterator[tuple[str, list[FibSyncer]]]:
    """The namespace with links, and a list the test puts its syncers in:
    every syncer is stopped at the end even if the test fails."""
    setup_links(netns)
    syncers: list[FibSyncer] = []
    try:
        yield netns, syncers
    finally:
        for s in syncers:
            if s._started:
                await s.stop()


async def started(ns: str, syncers: list[FibSyncer], **kw) -> FibSyncer:
    kw.setdefault("retry_interval", 0.1)
    s = FibSyncer(netns=ns, protocol=P, **kw)
    syncers.append(s)
    await s.start()
    return s


async def eventually(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait for a kernel-side condition we cannot subscribe to from here."""
    await until(cond, timeout, "a kernel-side condition", interval=0.02)


ALL_KINDS = [
    Route("10.10.0.0/26", nexthops=(NextHop("10.1.0.2"),)),
    Route("10.10.0.64/26", nexthops=(NextHop("10.1.0.2", weight=2), NextHop("10.1.0.3", weight=3))),
    Route("10.10.0.128/26", nexthops=(NextHop("192.168.7.1", dev="tunl0", onlink=True),)),
    Route("10.10.1.0/24", kind=RouteKind.BLACKHOLE),
    Route("fd10::/122", nexthops=(NextHop("fd01::2"),)),
    Route("fd10::40/122", nexthops=(NextHop("fd01::2", weight=4), NextHop("fd01::3"))),
    Route("fd10::80/122", nexthops=(NextHop("fd99::1", dev="tunl0", onlink=True),)),
    Route("fd11::/64", kind=RouteKind.BLACKHOLE),
]


async def test_every_route_kind_v4_and_v6_is_installed_as_asked(lab):
    ns, syncers = lab
    s = await started(ns, syncers)
    await s.set_desired(ALL_KINDS)
    got = by_dst(kernel(ns, "proto", str(P)))
    assert set(got) == {r.dst for r in ALL_KINDS}
    assert got["10.10.0.0/26"]["gateway"] == "10.1.0.2"
    assert got["10.10.0.0/26"]["metric"] == 20
    ecmp = {h["gateway"]: h["weight"] for h in got["10.10.0.64/26"]["nexthops"]}
    assert ecmp == {"10.1.0.2": 2, "10.1.0.3": 3}
    onlink = got["10.10.0.128/26"]
    assert (onlink["gateway"], onlink["dev"], "onlink" in onlink["flags"]) == (
        "192.168.7.1",
        "tunl0",
        True,
    )
    assert got["10.10.1.0/24"]["type"] == "blackhole"
    assert got["fd10::/122"]["gateway"] == "fd01::2"
    ecmp6 = {h["gateway"]: h["weight"] for h in got["fd10::40/122"]["nexthops"]}
    assert ecmp6 == {"fd01::2": 4, "fd01::3": 1}
    assert got["fd10::80/122"]["dev"] == "tunl0" and "onlink" in got["fd10::80/122"]["flags"]
    assert got["fd11::/64"]["type"] == "blackhole"
    assert s.stats.installed == len(ALL_KINDS) and s.stats.failed == 0

    # What the syncer reads back is what it asked for: nothing to do twice.
    desired = [r.with_defaults(254, 20) for r in ALL_KINDS]
    assert not diff(desired, await s.kernel_routes())
    await s.resync()
    assert s.stats.replaced == 0 and s.stats.installed == len(ALL_KINDS)

    # A changed ECMP weight and a kind change are replacements in place.
    changed = [
        *ALL_KINDS[2:],
        Route("10.10.0.0/26", kind="blackhole"),
        Route("10.10.0.64/26", nexthops=(NextHop("10.1.0.2"), NextHop("10.1.0.3"))),
    ]
    await s.set_desired(changed)
    got = by_dst(kernel(ns, "proto", str(P)))
    assert got["10.10.0.0/26"]["type"] == "blackhole"
    assert {h["weight"] for h in got["10.10.0.64/26"]["nexthops"]} == {1}
    assert s.stats.replaced == 2

    await s.set_desired([])
    assert kernel(ns, "proto", str(P)) == []
    assert s.stats.deleted == len(ALL_KINDS)


async def test_external_delete_is_repaired(lab):
    ns, syncers = lab
    s = await started(ns, syncers, resync_interval=3600)
    routes = [
        Route("10.10.0.0/26", nexthops=(NextHop("10.1.0.2"),)),
        Route("fd10::/122", nexthops=(NextHop("fd01::2"),)),
    ]
    await s.set_desired(routes)
    ip(ns, "route", "del", "10.10.0.0/26", "proto", str(P))
    ip(ns, "-6", "route", "del", "fd10::/122", "proto", str(P))
    # Repaired from the netlink notification, not the (hour-long) resync timer.
    await eventually(lambda: len(kernel(ns, "proto", str(P))) == 2, timeout=3)
    assert s.stats.repairs == 2
    assert s.stats.full_resyncs == 0


async def test_routes_off_the_default_table_and_metric_are_kept_and_repaired(lab):
    # Inside fib_sync a route in the main table at metric 20 is keyed by its dst
    # alone, any other by (table, dst, metric): both kinds in one set, on a
    # syncer whose own defaults are the other kind.
    ns, syncers = lab
    s = await started(ns, syncers, resync_interval=3600, metric=30)
    a = Route("10.10.0.0/26", nexthops=(NextHop("10.1.0.2"),))  # the syncer's metric 30
    b = Route("10.10.0.0/26", nexthops=(NextHop("10.1.0.3"),), table=254, metric=20)
    c = Route("fd10::/122", nexthops=(NextHop("fd01::2"),), table=254, metric=20)
    await s.set_desired([a, b, c])
    assert set(s.desired_routes) == {(254, "10.10.0.0/26", 30), (254, "10.10.0.0/26", 20),
                                     (254, "fd10::/122", 20)}
    assert set(await s.kernel_routes()) == set(s.desired_routes)
    ip(ns, "route", "del", "10.10.0.0/26", "metric", "20", "proto", str(P))
    ip(ns, "route", "del", "10.10.0.0/26", "metric", "30", "proto", str(P))
    ip(ns, "-6", "route", "del", "fd10::/122", "proto", str(P))
    await eventually(lambda: len(kernel(ns, "proto", str(P))) == 3, timeout=3)
    assert s.stats.repairs == 3 and s.stats.full_resyncs == 0
    # A withdrawal by RouteKey triple removes exactly that route.
    await s.update(withdraw=[(254, "10.10.0.0/26", 20)])
    got = kernel(ns, "proto", str(P))
    assert sorted((r["dst"], r.get("metric")) for r in got) == [
        ("10.10.0.0/26", 30), ("fd10::/122", 20)]
    assert not diff(s.desired_routes, await s.kernel_routes())


async def test_foreign_route_on_our_prefix_is_left_alone_and_reported(lab):
    ns, syncers = lab
    # Same key as ours (metric 20): the kernel refuses ours; keep theirs.
    ip(ns, "route", "add", "10.20.0.0/26", "via", "10.1.0.9", "metric", "20", "proto", "static")
    # Same prefix at another metric: both may exist; still a conflict to report.
    ip(ns, "route", "add", "10.20.0.64/26", "via", "10.1.0.9", "proto", "static")
    s = await started(ns, syncers)
    want = [
        Route("10.20.0.0/26", nexthops=(NextHop("10.1.0.2"),)),
        Route("10.20.0.64/26", nexthops=(NextHop("10.1.0.2"),)),
        Route("10.20.0.128/26", nexthops=(NextHop("10.1.0.2"),)),
    ]
    await s.set_desired(want)
    await s.resync()
    await s.resync()
    statics = by_dst(kernel(ns, "proto", "static"))
    assert statics["10.20.0.0/26"]["gateway"] == "10.1.0.9"
    assert statics["10.20.0.64/26"]["gateway"] == "10.1.0.9"
    assert set(by_dst(kernel(ns, "proto", str(P)))) == {"10.20.0.64/26", "10.20.0.128/26"}
    assert s.stats.conflicts == 2  # once each, however many passes
    assert set(s.conflicting_prefixes) == {(254, "10.20.0.0/26"), (254, "10.20.0.64/26")}
    assert s.stats.failed == 0

    # Someone replaces one of ours with their own: a conflict, not a fight.
    ip(
        ns,
        "route",
        "replace",
        "10.20.0.128/26",
        "via",
        "10.1.0.7",
        "metric",
        "20",
        "proto",
        "static",
    )
    await eventually(lambda: s.stats.conflicts == 3)
    await s.resync()
    assert by_dst(kernel(ns, "proto", "static"))["10.20.0.128/26"]["gateway"] == "10.1.0.7"

    # Their route goes away: ours is installed.
    ip(ns, "route", "del", "10.20.0.0/26", "proto", "static")
    await eventually(lambda: "10.20.0.0/26" in by_dst(kernel(ns, "proto", str(P))))
    await s.set_desired([])
    assert len(kernel(ns, "proto", "static")) == 2


async def test_link_down_and_up_is_recovered(lab):
    ns, syncers = lab
    s = await started(ns, syncers, resync_interval=3600)
    routes = [
        Route("10.30.0.0/26", nexthops=(NextHop("10.1.0.2"),)),
        Route("fd30::/122", nexthops=(NextHop("fd01::2"),)),
    ]
    await s.set_desired(routes)
    ip(ns, "link", "set", "veth0", "down")
    await eventually(lambda: not kernel(ns, "proto", str(P)))  # the kernel dropped them silently
    ip(ns, "link", "set", "veth0", "up")
    await eventually(lambda: "10.30.0.0/26" in by_dst(kernel(ns, "proto", str(P))))
    # IPv6 flushed veth0's address on down: the route waits, failing, until it is back.
    assert (254, "fd30::/122", 20) in s.failing_routes
    ip(ns, "addr", "add", "fd01::1/64", "dev", "veth0", "nodad")
    await eventually(lambda: len(kernel(ns, "proto", str(P))) == 2)
    assert s.stats.installed == 4 and not s.failing_routes


async def test_adoption_keeps_routes_across_restart_and_sweeps_only_unconfirmed(lab):
    ns, syncers = lab
    a = Route("10.40.0.0/26", nexthops=(NextHop("10.1.0.2"),))
    b = Route("10.40.0.64/26", nexthops=(NextHop("10.1.0.2"),))
    c = Route("fd40::/122", nexthops=(NextHop("fd01::2"),))
    first = await started(ns, syncers)
    await first.set_desired([a, b, c])
    await first.stop()
    assert len(kernel(ns, "proto", str(P))) == 3  # stop leaves the kernel as it is

    second = await started(ns, syncers)
    assert second.stats.adopted == 3 and len(second.stale_routes) == 3
    b2 = Route("10.40.0.64/26", nexthops=(NextHop("10.1.0.3"),))
    await second.set_desired([a, b2])  # c not re-confirmed (yet)
    got = by_dst(kernel(ns, "proto", str(P)))
    assert set(got) == {"10.40.0.0/26", "10.40.0.64/26", "fd40::/122"}
    assert got["10.40.0.64/26"]["gateway"] == "10.1.0.3"
    assert second.stats.installed == 0 and second.stats.replaced == 1  # a kept, not re-added
    await second.converged()
    assert set(by_dst(kernel(ns, "proto", str(P)))) == {"10.40.0.0/26", "10.40.0.64/26"}
    assert second.stats.swept == 1


async def test_routes_of_other_protocols_are_never_touched(lab):
    ns, syncers = lab
    ip(ns, "route", "add", "10.50.0.0/26", "via", "10.1.0.2", "metric", "20", "proto", "12")
    ip(ns, "route", "add", "10.50.0.64/26", "via", "10.1.0.2", "metric", "20", "proto", "186")
    ip(ns, "route", "add", "blackhole", "10.50.1.0/24", "metric", "20", "proto", "static")
    ip(ns, "-6", "route", "add", "fd50::/122", "via", "fd01::2", "metric", "20", "proto", "80")
    before = sorted(json.dumps(r, sort_keys=True) for r in kernel(ns))
    s = await started(ns, syncers)
    assert s.stats.adopted == 0
    await s.set_desired([Route("10.50.2.0/26", nexthops=(NextHop("10.1.0.2"),))])
    await s.resync()
    await s.set_desired([])
    await s.converged()
    await s.stop()
    after = sorted(json.dumps(r, sort_keys=True) for r in kernel(ns))
    assert after == before


async def test_missing_namespace_is_an_error_not_created():
    require_root()
    name = unique_name("pbtmissing")
    s = FibSyncer(netns=name)
    with pytest.raises(NamespaceMissing, match=name):
        await s.start()
    assert not os.path.exists(f"/var/run/netns/{name}")


async def test_own_block_blackhole_behind_a_connected_route_is_not_a_conflict(lab):
    """The CNI bridge holds the node's block as a connected route (metric 0); our
    blackhole for that block sits behind it by design: both stay, no conflict."""
    ns, syncers = lab
    ip(ns, "link", "add", "cni0", "type", "bridge")
    ip(ns, "link", "set", "cni0", "up")
    ip(ns, "addr", "add", "10.244.1.1/26", "dev", "cni0")
    s = await started(ns, syncers)
    await s.set_desired([Route("10.244.1.0/26", RouteKind.BLACKHOLE),
                         Route("10.244.2.0/26", RouteKind.BLACKHOLE)])
    await s.resync()
    ours = by_dst(kernel(ns, "proto", str(P)))
    assert set(ours) == {"10.244.1.0/26", "10.244.2.0/26"}
    assert by_dst(kernel(ns, "proto", "kernel"))["10.244.1.0/26"]["dev"] == "cni0"
    assert s.stats.conflicts == 0 and not s.conflicting_prefixes
    # A foreign route on the exact key of a blackhole still is one.
    ip(ns, "route", "add", "10.244.3.0/26", "via", "10.1.0.9", "metric", "20", "proto", "static")
    await s.set_desired([Route("10.244.1.0/26", RouteKind.BLACKHOLE),
                         Route("10.244.3.0/26", RouteKind.BLACKHOLE)])
    await s.resync()
    assert set(s.conflicting_prefixes) == {(254, "10.244.3.0/26")}


async def test_many_routes_over_several_sends_map_each_refusal_to_its_route(lab):
    """Thousands of routes travel in several pipelined sends (1024 messages
    each, v4 and v6 runs interleaved); a refusal in the middle of a send is
    booked against the right route, the rest apply, and the view stays equal
    to the kernel (a refused replace leaves the old route in both)."""
    ns, syncers = lab
    v4 = [f"10.{50 + i // 256}.{i % 256}.0/26" for i in range(2500)]
    v6 = [f"fd50:{i:x}::/122" for i in range(700)]
    bad, taken = v4[1500], v4[1100]
    # A static route on our exact key, inside a run of same-shaped messages:
    # its EEXIST must be booked against that route, not a neighbour.
    ip(ns, "route", "add", taken, "via", "10.1.0.2", "metric", "20", "proto", "static")
    s = await started(ns, syncers, retry_interval=3600)
    want = [Route(d, nexthops=(NextHop("10.9.9.9" if d == bad else "10.1.0.2"),)) for d in v4]
    want += [Route(d, nexthops=(NextHop("fd01::2"),)) for d in v6]
    await s.set_desired(want)
    got = by_dst(kernel(ns, "proto", str(P)))
    assert len(got) == len(want) - 2 and bad not in got and taken not in got
    (key,) = s.failing_routes
    assert key[1] == bad and s.failing_routes[key][0] == 101  # ENETUNREACH
    assert s.stats.installed == len(want) - 2 and s.stats.failed == 1
    await eventually(lambda: bool(s.conflicting_prefixes))
    assert set(s.conflicting_prefixes) == {(254, taken)}

    # Replace 2000 routes; one of them to an unreachable gateway.
    bad2 = v4[700]
    changes = [Route(d, nexthops=(NextHop("10.9.9.8" if d == bad2 else "10.1.0.3"),))
               for d in v4[:2000] if d not in (bad, taken)]
    await s.update(changes)
    got = by_dst(kernel(ns, "proto", str(P)))
    assert got[bad2]["gateway"] == "10.1.0.2"  # refused: the old route stays
    assert got[v4[1999]]["gateway"] == "10.1.0.3" and v4[2000] not in changes
    assert got[v4[699]]["gateway"] == "10.1.0.3" and got[v4[701]]["gateway"] == "10.1.0.3"
    assert {k[1] for k in s.failing_routes} == {bad, bad2}
    assert s.stats.replaced == len(changes) - 1
    # By internal key; kernel_routes() by RouteKey. Copied in the syncer's own
    # executor thread: a retry pass (bad/bad2 keep failing) may be changing it.
    # The view keeps (internal key -> shared RouteSpec): as Routes to compare.
    view = await asyncio.get_running_loop().run_in_executor(
        s._executor, lambda: {k: route_of(k, v) for k, v in s._reconciler.view.items()})
    dumped = await s.kernel_routes()
    assert {r.key for r in view.values()} == set(dumped)
    assert all(k == r._key for k, r in view.items())
    assert view[bad2].nexthops[0].gateway == "10.1.0.2"  # main table, metric 20: by dst
    assert not diff(view, dumped)  # the view says what the kernel holds

    await s.set_desired([])
    assert kernel(ns, "proto", str(P)) == [] and s.stats.deleted == len(want) - 2
    assert by_dst(kernel(ns, "proto", "static"))[taken]["gateway"] == "10.1.0.2"


def test_kernel_refusals_inside_a_run_name_the_refused_route(lab):
    """NetlinkKernel.apply_plan: errors in the middle of a run of same-shaped
    messages (one template, several sends) are mapped to their own route."""
    from fib_sync.netlink import ADD, DELETE, NetlinkKernel

    ns, _ = lab
    dsts = [f"10.{60 + i // 256}.{i % 256}.0/26" for i in range(3000)]
    taken = {dsts[5], dsts[1023], dsts[1024], dsts[2500]}
    for d in taken:
        ip(ns, "route", "add", d, "via", "10.1.0.2", "metric", "20", "proto", "static")
    routes = [Route(d, nexthops=(NextHop("10.1.0.2"),), table=254, metric=20) for d in dsts]
    k = NetlinkKernel(ns, P)
    try:
        errors = k.apply_plan([], [], routes)
        assert sorted((e.op, e.route.dst, e.errno) for e in errors) == sorted(
            (ADD, d, 17) for d in taken)  # EEXIST
        assert len(k.dump([254])) == len(dsts) - len(taken)
        errors = k.apply_plan(routes, [], [])  # the static ones are not ours: ESRCH
        assert sorted((e.op, e.route.dst, e.errno) for e in errors) == sorted(
            (DELETE, d, 3) for d in taken)
        assert k.dump([254]) == {}
    finally:
        k.close()
