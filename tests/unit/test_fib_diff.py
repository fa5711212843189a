"""Pure tests of fib_sync: Route validation, diff, and the reconcile/retry
logic against the fake kernel (no sockets, no root)."""

from __future__ import annotations

import asyncio
import errno
import socket

import pytest

from fib_sync import FibSyncer, NextHop, Route, RouteKind, diff
from fib_sync.reconcile import Reconciler
from fib_sync.route import (
    full_key,
    internal_key,
    keyed,
    spec_of,
    specs_keyed,
    trusted_route,
)
from tests.helpers.fake_kernel import FakeKernel
from tests.helpers.wait import until

P = 201
GW = (NextHop("10.1.0.2"),)


def r(dst: str, gw: str = "10.1.0.2", metric: int = 20, **kw) -> Route:
    return Route(dst, nexthops=(NextHop(gw),), table=254, metric=metric, **kw)


# ------------------------------------------------------------------ Route


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dst": "10.0.0.1/24", "nexthops": GW}, "host bits set"),
        ({"dst": "10.0.0.0", "nexthops": GW}, "not a CIDR"),
        ({"dst": "10.0.0.0/33", "nexthops": GW}, "prefix length"),
        ({"dst": "10.0.0.x/24", "nexthops": GW}, "not an IP address"),
        ({"dst": "10.0.0.0/24"}, "needs at least one next hop"),
        ({"dst": "10.0.0.0/24", "kind": "blackhole", "nexthops": GW}, "no next hops"),
        ({"dst": "10.0.0.0/24", "kind": "anycast", "nexthops": GW}, "not unicast/blackhole"),
        ({"dst": "fd00::/64", "nexthops": GW}, "address family differs"),
        ({"dst": "10.0.0.0/24", "nexthops": GW, "metric": -1}, "metric"),
    ],
)
def test_route_rejects_bad_input_naming_it(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Route(**kwargs)


def test_nexthop_rejects_bad_input():
    with pytest.raises(ValueError, match="onlink needs a dev"):
        NextHop("10.0.0.1", onlink=True)
    with pytest.raises(ValueError, match="weight"):
        NextHop("10.0.0.1", weight=0)
    with pytest.raises(ValueError, match="gateway or a dev"):
        NextHop(None)


def test_route_canonical_forms_compare_equal():
    a = Route("fd00:0:0::/64", nexthops=(NextHop("fd01:0::2"),), table=254, metric=0)
    b = Route("fd00::/64", nexthops=(NextHop("fd01::2"),), table=254, metric=1024)
    assert a == b and a.key == b.key  # v6 metric 0 is stored as 1024 by the kernel
    m1 = Route("10.0.0.0/24", nexthops=(NextHop("10.1.0.3"), NextHop("10.1.0.2")))
    m2 = Route("10.0.0.0/24", nexthops=(NextHop("10.1.0.2"), NextHop("10.1.0.3")))
    assert m1 == m2  # ECMP order does not matter
    # A lone next hop carries no weight in the kernel.
    assert Route("10.0.0.0/24", nexthops=(NextHop("10.1.0.2", weight=5),)).nexthops[0].weight == 1
    assert Route("10.0.0.0/24", nexthops=GW).with_defaults(100, 7).key == (100, "10.0.0.0/24", 7)



def test_internal_keys_are_dst_for_main_table_default_metric_only():
    main = r("10.0.0.0/26")  # table 254, metric 20
    other = r("10.0.0.0/26", metric=30)
    assert (main._key, other._key) == ("10.0.0.0/26", (254, "10.0.0.0/26", 30))
    assert (main.key, other.key) == ((254, "10.0.0.0/26", 20), (254, "10.0.0.0/26", 30))
    for route in (main, other, Route("fd00::/64", kind="blackhole", table=100, metric=20)):
        assert full_key(route._key) == route.key
        assert internal_key(route.key) == route._key == internal_key(route._key)
        assert internal_key(list(route.key)) == route._key
    # Equal routes from the kernel dump path key the same way.
    assert trusted_route("10.0.0.0/26", RouteKind.UNICAST, main.nexthops, 254, 20,
                         socket.AF_INET, 26)._key == main._key
    assert keyed([main, other]) == {main._key: main, other._key: other}


@pytest.mark.parametrize(
    ("dst", "family", "dst_len", "packed"),
    [
        ("10.244.1.64/26", socket.AF_INET, 26, bytes([10, 244, 1, 64])),
        ("0.0.0.0/0", socket.AF_INET, 0, bytes(4)),
        ("fd00:0::40/122", socket.AF_INET6, 122, bytes([0xFD] + [0] * 14 + [0x40])),
    ],
)
def test_route_address_fields_follow_dst(dst, family, dst_len, packed):
    # The packed address is derived from dst (not stored); the netlink encoder
    # writes it into every message of a templated run.
    for route in (
        Route(dst, kind="blackhole"),
        Route(dst, kind="blackhole").with_defaults(254, 20),
        trusted_route(Route(dst, kind="blackhole").dst, RouteKind.BLACKHOLE, (), 254, 20,
                      family, dst_len),
    ):
        assert (route.family, route.dst_len, route.packed) == (family, dst_len, packed)


# ------------------------------------------------------------------ diff


def test_diff_sorts_into_add_replace_delete_and_leaves_equal_alone():
    same = r("10.0.0.0/26")
    changed_old, changed_new = r("10.0.0.64/26"), r("10.0.0.64/26", gw="10.1.0.3")
    gone, new = r("10.0.0.128/26"), r("10.0.0.192/26")
    plan = diff([same, changed_new, new], [same, changed_old, gone])
    assert plan.add == (new,)
    assert plan.replace == (changed_new,)
    assert plan.delete == (gone,)
    assert not diff([same], [same])


def test_diff_kind_and_weight_changes_are_replacements():
    bh = Route("10.0.0.0/26", kind=RouteKind.BLACKHOLE, table=254, metric=20)
    assert diff([bh], [r("10.0.0.0/26")]).replace == (bh,)
    w1 = Route(
        "10.0.0.0/26", nexthops=(NextHop("10.1.0.2"), NextHop("10.1.0.3")), table=254, metric=20
    )
    w2 = Route(
        "10.0.0.0/26",
        nexthops=(NextHop("10.1.0.2", weight=3), NextHop("10.1.0.3")),
        table=254,
        metric=20,
    )
    assert diff([w2], [w1]).replace == (w2,)


def test_diff_wanted_nexthop_without_dev_matches_kernel_resolved_dev():
    want = r("10.0.0.0/26")
    have = Route("10.0.0.0/26", nexthops=(NextHop("10.1.0.2", dev="eth0"),), table=254, metric=20)
    assert not diff([want], [have])
    pinned = Route("10.0.0.0/26", nexthops=(NextHop("10.1.0.2", dev="eth1"),), table=254, metric=20)
    assert diff([pinned], [have]).replace == (pinned,)


def test_diff_metric_is_part_of_identity():
    plan = diff([r("10.0.0.0/26", metric=30)], [r("10.0.0.0/26", metric=20)])
    assert len(plan.add) == 1 and len(plan.delete) == 1 and not plan.replace


# --------------------------------------------------- reconciler on a fake kernel


def target(*routes: Route) -> dict:
    return specs_keyed(routes)  # Reconciler speaks internal keys and shared specs


def test_failed_route_is_counted_once_others_apply_and_retry_succeeds():
    k = FakeKernel(P)
    rec = Reconciler(k)
    good, bad = r("10.0.0.0/26"), r("10.0.0.64/26")
    k.fail[bad.dst] = errno.ENETUNREACH
    rep = rec.run_pass(target(good, bad), [254])
    assert rep.failures == 1
    assert set(k.ours()) == {good.key}
    assert rec.stats.failed == 1 and rec.stats.failing == 1
    assert rec.failing[bad._key][0] == errno.ENETUNREACH
    rec.run_pass(target(good, bad), [254])  # still failing: retried, not recounted
    assert rec.stats.failed == 1
    del k.fail[bad.dst]
    rec.run_pass(target(good, bad), [254])
    assert set(k.ours()) == {good.key, bad.key}
    assert rec.stats.failing == 0 and not rec.failing
    assert rec.stats.installed == 2


def test_foreign_route_on_same_key_is_a_conflict_left_alone():
    k = FakeKernel(P)
    foreign = r("10.0.0.0/26", gw="10.1.0.9")
    k.put(foreign, 4)  # static
    rec = Reconciler(k)
    mine = r("10.0.0.0/26")
    for _ in range(3):
        rec.run_pass(target(mine), [254], full=True)
    assert k.routes[mine.key] == (foreign, 4)  # untouched
    assert rec.stats.conflicts == 1  # logged and counted once
    assert (254, "10.0.0.0/26") in rec.conflicts
    del k.routes[mine.key]  # the static route goes away: ours goes in
    rec.run_pass(target(mine), [254], full=True)
    assert k.routes[mine.key] == (mine, P)
    assert not rec.conflicts


def test_routes_of_other_protocols_are_never_deleted():
    k = FakeKernel(P)
    other = r("10.9.0.0/26")
    k.put(other, 12)  # BIRD's
    rec = Reconciler(k)
    rec.run_pass({}, [254], full=True)
    assert k.routes[other.key] == (other, 12)
    assert rec.stats.deleted == 0


def test_lost_replies_force_a_full_read_then_converge():
    k = FakeKernel(P)
    rec = Reconciler(k)
    routes = [r(f"10.0.{i}.0/26") for i in range(10)]
    k.lose_replies = 1
    rep = rec.run_pass(target(*routes), [254])
    assert rep.state_unknown and rec.view is None
    dumps = k.dumps
    rec.run_pass(target(*routes), [254])
    assert k.dumps == dumps + 1  # re-read, not guessed
    assert set(k.ours()) == {r.key for r in routes}
    assert not diff(routes, k.ours())


def test_external_delete_reported_by_monitor_is_repaired_and_counted():
    k = FakeKernel(P)
    rec = Reconciler(k)
    a, b = r("10.0.0.0/26"), r("10.0.0.64/26")
    rec.run_pass(target(a, b), [254])
    del k.routes[a.key]
    rec.run_pass(target(a, b), [254], gone=[a.key])
    assert a.key in k.routes and rec.stats.repairs == 1


# ------------------------------------------------------ FibSyncer on a fake kernel


async def test_syncer_adopts_stale_keeps_reconfirmed_and_sweeps_on_converged():
    k = FakeKernel(P)
    keep, drop = r("10.0.0.0/26"), r("10.0.0.64/26")
    k.put(keep, P)
    k.put(drop, P)
    s = FibSyncer(protocol=P, _kernel=k)
    await s.start()
    try:
        assert set(s.stale_routes) == {keep.key, drop.key}
        await s.set_desired([Route("10.0.0.0/26", nexthops=GW)])
        assert set(k.ours()) == {keep.key, drop.key}  # stale ones stay until converged
        assert set(s.stale_routes) == {drop.key}
        await s.converged()
        assert set(k.ours()) == {keep.key}
        assert s.stats.swept == 1 and s.stats.deleted == 0 and s.stats.adopted == 2
    finally:
        await s.stop()
    assert set(k.ours()) == {keep.key}  # stop leaves the kernel as it is


async def test_syncer_stale_timeout_sweeps_without_converged():
    k = FakeKernel(P)
    k.put(r("10.0.0.64/26"), P)
    s = FibSyncer(protocol=P, stale_timeout=0.05, _kernel=k)
    await s.start()
    try:
        await s.set_desired([])
        assert k.ours()  # still there: stale
        await until(lambda: not k.ours(), what="the stale timeout to sweep the route")
        assert s.stats.swept == 1
    finally:
        await s.stop()


async def test_syncer_coalesces_desired_sets_and_retries_failures():
    k = FakeKernel(P)
    s = FibSyncer(protocol=P, retry_interval=0.05, _kernel=k)
    await s.start()
    try:
        k.fail["10.0.1.0/26"] = errno.ENETUNREACH
        sets = [[Route(f"10.0.{i}.0/26", nexthops=GW)] for i in range(20)]
        passes, ops = s.stats.passes, k.applied_ops
        await asyncio.gather(*(s.set_desired(x) for x in sets))
        # Coalesced: the 20 sets arrive before the sync loop runs, so ONE pass applies
        # only the last of them — one add, none of the 19 intermediate adds/deletes
        # (without coalescing: 20 passes, 39 operations).
        assert s.stats.passes - passes == 1
        assert k.applied_ops - ops == 1
        assert set(k.ours()) == {(254, "10.0.19.0/26", 20)}
        await s.set_desired([Route("10.0.1.0/26", nexthops=GW)])
        assert s.failing_routes and not k.ours()
        del k.fail["10.0.1.0/26"]
        await until(k.ours, what="the retry timer to re-apply the failed route")
        assert set(k.ours()) == {(254, "10.0.1.0/26", 20)}
        assert not s.failing_routes
    finally:
        await s.stop()


async def test_syncer_rejects_duplicate_keys_and_bad_options():
    s = FibSyncer(protocol=P, _kernel=FakeKernel(P))
    with pytest.raises(ValueError, match=r"two different routes for 10\.0\.0\.0/26"):
        await s.set_desired([r("10.0.0.0/26"), r("10.0.0.0/26", gw="10.1.0.3")])
    with pytest.raises(ValueError, match="protocol"):
        FibSyncer(protocol=2)
    with pytest.raises(ValueError, match="protocol"):
        FibSyncer(protocol=300)
    with pytest.raises(ValueError, match="table"):
        FibSyncer(table=0)
    with pytest.raises(TypeError, match=r"not a fib_sync\.Route"):
        await s.set_desired(["10.0.0.0/26"])
    with pytest.raises(TypeError, match="not a fib_sync RouteSpec"):
        await s.update_specs({"10.0.0.0/26": r("10.0.0.0/26")})  # a Route is no spec
    with pytest.raises(TypeError, match="not a fib_sync RouteSpec"):
        await s.update_specs({"10.0.0.0/26": spec_of(Route("10.0.0.0/26", nexthops=GW))})
    assert not s.desired_routes  # nothing half-applied


async def test_syncer_update_applies_only_the_changes():
    k = FakeKernel(P)
    s = FibSyncer(protocol=P, _kernel=k)
    await s.start()
    try:
        await s.set_desired([Route(f"10.0.{i}.0/26", nexthops=GW) for i in range(50)])
        # Someone else's change the syncer has not heard of: a delta must not touch it.
        k.routes.pop((254, "10.0.7.0/26", 20))
        ops = k.applied_ops
        new_gw = (NextHop("10.1.0.3"),)
        await s.update([Route("10.0.1.0/26", nexthops=new_gw)], withdraw=[(254, "10.0.2.0/26", 20)])
        assert k.applied_ops - ops == 2
        assert k.routes[(254, "10.0.1.0/26", 20)][0].nexthops == new_gw
        assert (254, "10.0.2.0/26", 20) not in k.routes
        assert (254, "10.0.2.0/26", 20) not in s.desired_routes
        await s.resync()  # the full read finds and repairs the missing one
        assert (254, "10.0.7.0/26", 20) in k.routes and s.stats.repairs == 1
    finally:
        await s.stop()


# -------------------------------------------- what fib_sync keeps per route (issue 17)


def _live_routes() -> int:
    import gc

    gc.collect()
    return sum(1 for o in gc.get_objects() if type(o) is Route)


async def test_syncer_keeps_shared_specs_not_a_route_per_route():
    """The desired set, the reconciler's view and adopted stale routes keep each route
    as its key and a RouteSpec shared by every route via the same next hops: no Route
    object per route lives on after a pass (a Route cost 96 bytes a route, issue 17)."""
    n = 2000
    k = FakeKernel(P)
    adopted = [r(f"10.{100 + i // 1024}.{(i // 4) % 256}.{(i % 4) * 64}/26", gw="10.1.0.9")
               for i in range(n)]
    for rt in adopted:
        k.put(rt, P)
    s = FibSyncer(protocol=P, _kernel=k)
    await s.start()
    try:
        routes = [r(f"10.{i // 1024}.{(i // 4) % 256}.{(i % 4) * 64}/26",
                    gw="10.1.0.2" if i % 2 else "10.1.0.3") for i in range(n)]
        await s.update(routes[: n // 2])
        await s.update_specs({rt._key: spec_of(rt) for rt in routes[n // 2:]})
        assert len(k.ours()) == 2 * n  # stale adopted + desired
        held = (s._desired, s._reconciler.view, s._stale)  # type: ignore[union-attr]
        specs = {id(v) for table in held for v in table.values()}
        assert len(specs) == 3  # two gateways + the adopted routes' one
        del routes, adopted
        k.routes.clear()  # the fake kernel's own copies are not the syncer's
        assert _live_routes() < 50
    finally:
        await s.stop()


async def test_update_specs_and_update_reach_the_same_kernel_state():
    """The daemon's path (Node.take_kernel -> update_specs: keys and shared specs)
    leaves the kernel exactly as update() with the Routes does, withdrawals and
    replacements included."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    gws = st.sampled_from(["10.1.0.2", "10.1.0.3", None])
    dsts = st.integers(0, 30).map(lambda i: f"10.0.{i}.0/26")
    op = st.tuples(dsts, gws, st.sampled_from([20, 30]))

    @settings(max_examples=60, deadline=None)
    @given(batches=st.lists(st.lists(op, max_size=12), min_size=1, max_size=5))
    def check(batches):
        async def run(specs: bool) -> dict:
            k = FakeKernel(P)
            s = FibSyncer(protocol=P, _kernel=k)
            await s.start()
            try:
                for batch in batches:
                    adds = {}
                    dels = []
                    for dst, gw, metric in batch:
                        if gw is None:
                            dels.append((254, dst, metric))
                        else:
                            rt = r(dst, gw=gw, metric=metric)
                            adds[rt._key] = rt
                    if specs:
                        await s.update_specs({key: spec_of(rt) for key, rt in adds.items()},
                                             [internal_key(d) for d in dels])
                    else:
                        await s.update(list(adds.values()), dels)
                return k.ours(), s.desired_routes
            finally:
                await s.stop()

        with_routes = asyncio.run(run(False))
        with_specs = asyncio.run(run(True))
        assert with_specs == with_routes
        assert with_specs[0] == with_specs[1]  # the kernel holds exactly the desired set

    await asyncio.get_running_loop().run_in_executor(None, check)


async def test_compact_gives_back_the_tables_of_a_withdrawn_flood_and_changes_nothing():
    """After a large withdrawal the desired set and the view are rebuilt at their size
    (a dict keeps its largest size: the hostile peer's 200,000-route flood left ~15 MB
    in these two); the kernel, the desired routes and the next passes are unchanged."""
    import sys

    k = FakeKernel(P)
    s = FibSyncer(protocol=P, _kernel=k)
    await s.start()
    try:
        flood = [r(f"10.{i // 1024}.{(i // 4) % 256}.{(i % 4) * 64}/26") for i in range(20_000)]
        await s.update_specs({rt._key: spec_of(rt) for rt in flood})
        await s.update_specs({}, [rt._key for rt in flood[10:]])
        assert len(k.ours()) == 10
        rec = s._reconciler
        assert rec is not None and rec.view is not None
        big = sys.getsizeof(s._desired) + sys.getsizeof(rec.view)
        want, view = s.desired_routes, dict(rec.view)
        await s.compact()
        assert sys.getsizeof(s._desired) + sys.getsizeof(rec.view) < big / 50
        assert s.desired_routes == want and rec.view == view and len(k.ours()) == 10
        await s.update([r("10.200.0.0/26")], [flood[0].key])  # passes go on as before
        assert set(k.ours()) == {rt.key for rt in flood[1:10]} | {(254, "10.200.0.0/26", 20)}
    finally:
        await s.stop()
    await s.compact()  # after stop: the tables only
