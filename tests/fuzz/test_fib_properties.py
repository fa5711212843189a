"""Property: for any desired and actual sets, one diff + apply on the fake
kernel reaches desired exactly, a second diff is empty, and routes of other
protocols survive untouched."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from fib_sync import NextHop, Route, RouteKind, diff
from fib_sync.reconcile import Reconciler
from fib_sync.route import keyed, routes_of, specs_keyed
from tests.helpers.fake_kernel import FakeKernel

P = 201

gateways = st.sampled_from(["10.1.0.2", "10.1.0.3", "10.1.0.4"])
nexthop = st.builds(
    NextHop,
    gateway=gateways,
    dev=st.sampled_from([None, "tunl0"]),
    onlink=st.just(False),
    weight=st.integers(1, 4),
)
prefix = st.integers(0, 40).map(lambda i: f"10.{i // 4}.{(i % 4) * 64}.0/26")


@st.composite
def routes(draw):
    dst = draw(prefix)
    metric = draw(st.sampled_from([20, 30]))
    if draw(st.booleans()) and draw(st.booleans()):
        return Route(dst, kind=RouteKind.BLACKHOLE, table=254, metric=metric)
    nhs = draw(st.lists(nexthop, min_size=1, max_size=3, unique_by=lambda n: n.gateway))
    return Route(dst, nexthops=tuple(nhs), table=254, metric=metric)


# By internal key (what Reconciler takes): metric 20 routes by dst, metric 30 by triple.
route_sets = st.lists(routes(), max_size=30).map(keyed)


@settings(max_examples=200, deadline=None)
@given(desired=route_sets, actual=route_sets, foreign=route_sets)
def test_one_diff_and_apply_reaches_desired(desired, actual, foreign):
    k = FakeKernel(P)
    for rt in foreign.values():
        k.put(rt, 12)
    for rt in actual.values():
        k.put(rt, P)  # ours wins the key where both drew it
    foreign_left = {key: v for key, v in k.routes.items() if v[1] != P}
    rec = Reconciler(k)
    rec.run_pass(specs_keyed(desired), [254], full=True)
    reachable = {rt.key: rt for rt in desired.values() if rt.key not in foreign_left}
    # Same keys, and equal as the kernel compares them: a desired next hop without a
    # device matches the kernel's route via that gateway on whatever device it resolved.
    assert k.ours().keys() == reachable.keys()
    assert not diff(reachable, k.ours())
    view = routes_of(rec.view.items())  # the view as Routes: what it says the kernel holds
    assert not diff(desired, view).replace and not diff(desired, view).delete
    # Foreign routes are never touched.
    assert {key: v for key, v in k.routes.items() if v[1] != P} == foreign_left
    # Every desired key held by a foreign route is reported as a conflict.
    assert {(rt.table, rt.dst) for rt in desired.values() if rt.key in foreign_left} <= set(
        rec.conflicts)
    # The view says exactly what the kernel holds (keys, kinds, next hops).
    assert {rt.key for rt in view} == k.ours().keys()
    assert not diff(view, k.ours()) and not diff(k.ours(), view).delete
    ops = k.applied_ops
    rec.run_pass(specs_keyed(desired), [254])
    adds_blocked = len(desired) - len(reachable)
    assert k.applied_ops - ops == adds_blocked  # only the blocked adds are retried
