"""Hypothesis properties of rib/: order independence, incremental == from scratch
(Loc-RIB, kernel intent, Adj-RIB-Out, and the Changes stream itself), and
announce-then-withdraw-everything leaves nothing behind."""

from __future__ import annotations

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st

from rib import (
    Changes,
    EncapMode,
    Origin,
    PeerKind,
    PeerPolicy,
    PeerRef,
    Pool,
    Rib,
    RibConfig,
    rib_from,
)
from rib.path import Path

PEERS = (
    PeerRef("10.1.0.11", 64512, "10.1.0.11", PeerKind.IBGP, rr_client=True),
    PeerRef("10.1.0.12", 64512, "10.1.0.3", PeerKind.IBGP),
    PeerRef("10.1.0.13", 64512, "10.1.0.13", PeerKind.IBGP, rr_client=True),
    PeerRef("10.2.0.1", 65001, "10.2.0.1", PeerKind.EBGP),
    PeerRef("10.2.0.2", 65002, "10.2.0.2", PeerKind.EBGP),
)
POLICIES = tuple(PeerPolicy(key=p.address, peer=p, local_address="10.1.0.1") for p in PEERS)
PREFIXES = ("10.244.1.0/26", "10.244.2.0/26", "10.244.3.0/26", "10.245.0.0/26",
            "10.246.0.0/26", "192.168.0.0/24", "10.244.0.0/26")  # last: own block
BASE = RibConfig(
    local_asn=64512,
    router_id="10.1.0.1",
    node_addresses=frozenset({"10.1.0.1"}),
    own_blocks=("10.244.0.0/26",),
    node_subnets=("10.1.0.0/24",),
    pools=(Pool("10.244.0.0/16"), Pool("10.245.0.0/16", ipip_mode=EncapMode.CROSS_SUBNET),
           Pool("10.246.0.0/16", vxlan_mode=EncapMode.ALWAYS)),
    max_paths=2,
)
CONFIGS = (
    BASE,
    dataclasses.replace(BASE, cluster_id="1.0.0.1", max_paths=1),
    dataclasses.replace(BASE, max_paths=3, pools=BASE.pools[:2]),
)


@st.composite
def paths(draw, peer=None, prefix=None) -> Path:
    peer = PEERS[draw(st.integers(0, len(PEERS) - 1))] if peer is None else peer
    ebgp = peer.kind is PeerKind.EBGP
    as_path = draw(st.lists(st.sampled_from([65001, 65002, 65003, 64512]), max_size=3))
    if ebgp:
        as_path = [peer.asn, *as_path]
    return Path(
        prefix=draw(st.sampled_from(PREFIXES)) if prefix is None else prefix,
        next_hop=draw(st.sampled_from([peer.address, "10.9.0.1", "10.9.0.2", "10.1.0.1"])),
        peer=peer,
        origin=draw(st.sampled_from(list(Origin))),
        as_path=tuple(as_path),
        local_pref=None if ebgp else draw(st.sampled_from([None, 100, 200])),
        med=draw(st.sampled_from([None, 0, 5])),
        originator_id=draw(st.sampled_from([None, "10.7.0.1", "10.1.0.1"])),
        cluster_list=tuple(draw(st.lists(st.sampled_from(["2.0.0.2", "1.0.0.1"]), max_size=2))),
    )


@st.composite
def med_race(draw, peer, prefix) -> Path:
    """Paths equal down to MED with one-AS paths from two neighbour ASes: the
    shape in which a pairwise (non-deterministic-MED) comparison is order-dependent."""
    return Path(prefix=prefix, next_hop=peer.address, peer=peer,
                as_path=(draw(st.sampled_from([65001, 65002])),),
                med=draw(st.sampled_from([0, 5, 10])))


def same_prefix_paths():
    return st.tuples(st.sampled_from(PREFIXES[:5]), st.booleans()).flatmap(
        lambda a: st.tuples(*((med_race if a[1] else paths)(peer=p, prefix=a[0]) for p in PEERS))
    )


def all_up(config: RibConfig) -> Rib:
    rib = Rib(config)
    for pol in POLICIES:
        rib.peer_up(pol)
    return rib


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(CONFIGS), same_prefix_paths(), st.randoms(use_true_random=False))
def test_best_path_independent_of_arrival_order(config, candidates, rnd):
    order = list(range(len(candidates)))
    rnd.shuffle(order)
    ribs = []
    for seq in (range(len(candidates)), order):
        rib = all_up(config)
        for i in seq:
            rib.announce(PEERS[i].address, [candidates[i]])
        ribs.append(rib)
    a, b = ribs
    assert a.loc_rib() == b.loc_rib()
    assert a.desired_routes() == b.desired_routes()
    for pol in POLICIES:
        assert a.adj_rib_out(pol.key) == b.adj_rib_out(pol.key)


class Mirror:
    """What a consumer of the Changes stream would hold (fib_sync, the speaker)."""

    def __init__(self, rib: Rib) -> None:
        self.kernel = rib.desired_routes()
        self.out: dict = {}
        self.loc = rib.loc_rib()  # kept from BestChanges alone

    def apply(self, ch: Changes) -> None:
        for b in ch.best:
            old = self.loc.get(b.prefix, ())
            # A BestChange reports a change: the same selection again is noise.
            assert len(old) != len(b.multipath) or any(
                x is not y for x, y in zip(old, b.multipath, strict=True)
            ), f"BestChange for {b.prefix} without a change"
            assert b.old is (old[0] if old else None)
            if b.multipath:
                self.loc[b.prefix] = b.multipath
            else:
                del self.loc[b.prefix]
        for r in ch.kernel_remove:
            assert self.kernel.pop(r.prefix) == r
        for r in ch.kernel_add:
            self.kernel[r.prefix] = r
        for key, delta in ch.exports.items():
            out = {} if delta.full else self.out.setdefault(key, {})
            for p in delta.withdraw:
                del out[p]
            for attrs, prefixes in delta.batches():
                for p in prefixes:
                    out[p] = attrs
            self.out[key] = out


OPS = st.one_of(
    st.tuples(st.just("announce"), st.lists(paths(), min_size=1, max_size=4)),
    st.tuples(st.just("withdraw"), st.integers(0, len(PEERS) - 1),
              st.lists(st.sampled_from(PREFIXES), max_size=3)),
    st.tuples(st.just("down"), st.integers(0, len(PEERS) - 1)),
    st.tuples(st.just("stale"), st.integers(0, len(PEERS) - 1)),
    st.tuples(st.just("eor"), st.integers(0, len(PEERS) - 1)),
    st.tuples(st.just("config"), st.sampled_from(CONFIGS)),
)


def ensure_up(rib: Rib, i: int, mirror: Mirror) -> None:
    if not rib.is_up(POLICIES[i].key):
        mirror.apply(rib.peer_up(POLICIES[i]))


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(CONFIGS), st.lists(OPS, max_size=25))
def test_incremental_equals_from_scratch(config, ops):
    rib = all_up(config)
    mirror = Mirror(rib)
    for pol in POLICIES:
        mirror.out[pol.key] = rib.adj_rib_out(pol.key)
    for op in ops:
        kind = op[0]
        if kind == "announce":
            by_peer: dict[int, list[Path]] = {}
            for p in op[1]:
                by_peer.setdefault(PEERS.index(p.peer), []).append(p)
            for i, ps in by_peer.items():
                ensure_up(rib, i, mirror)
                mirror.apply(rib.announce(POLICIES[i].key, ps))
        elif kind == "withdraw":
            ensure_up(rib, op[1], mirror)
            mirror.apply(rib.withdraw(POLICIES[op[1]].key, op[2]))
        elif kind == "down":
            mirror.apply(rib.peer_down(POLICIES[op[1]].key))
            mirror.out.pop(POLICIES[op[1]].key, None)
        elif kind == "stale":
            ensure_up(rib, op[1], mirror)
            mirror.apply(rib.mark_stale(POLICIES[op[1]].key))
            mirror.out.pop(POLICIES[op[1]].key, None)
        elif kind == "eor":
            ensure_up(rib, op[1], mirror)
            mirror.apply(rib.end_of_rib(POLICIES[op[1]].key))
        else:
            mirror.apply(rib.set_config(op[1]))
        assert mirror.kernel == rib.desired_routes()
        assert mirror.loc == rib.loc_rib()
        assert rib.prefix_count() == len(mirror.loc)
        for key, out in mirror.out.items():
            assert out == rib.adj_rib_out(key)
    for i in range(len(PEERS)):
        ensure_up(rib, i, mirror)
    scratch = rib_from(
        rib.config, {pol: rib.adj_rib_in(pol.key).values() for pol in POLICIES}
    )
    assert rib.loc_rib() == scratch.loc_rib()
    assert rib.desired_routes() == scratch.desired_routes()
    assert mirror.kernel == scratch.desired_routes()
    for pol in POLICIES:
        assert rib.adj_rib_out(pol.key) == scratch.adj_rib_out(pol.key)
        assert rib.rejected(pol.key) == scratch.rejected(pol.key)


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(CONFIGS), st.lists(paths(), max_size=20), st.booleans())
def test_announce_then_withdraw_everything_leaves_nothing(config, announced, by_peer_down):
    rib = all_up(config)
    empty_out = {pol.key: rib.adj_rib_out(pol.key) for pol in POLICIES}
    empty_kernel = rib.desired_routes()
    empty_loc = rib.loc_rib()
    for p in announced:
        rib.announce(p.peer.address, [p])
    for pol in POLICIES:
        if by_peer_down:
            rib.peer_down(pol.key)
            rib.peer_up(pol)
        else:
            rib.withdraw(pol.key, list(PREFIXES))
    assert len(rib) == 0
    assert rib.loc_rib() == empty_loc  # only our own originations
    assert all(p.peer.kind is PeerKind.LOCAL for ms in rib.loc_rib().values() for p in ms)
    assert rib.desired_routes() == empty_kernel
    for pol in POLICIES:
        assert rib.adj_rib_out(pol.key) == empty_out[pol.key]
        assert rib.rejected(pol.key) == {}


@given(st.sampled_from(CONFIGS), st.integers(0, len(PEERS) - 1),
       st.lists(st.tuples(paths(), st.lists(st.sampled_from(PREFIXES), max_size=4)),
                max_size=5))
def test_batch_import_equals_per_path_import(config, i, groups):
    """Import decided per UPDATE (``import_reasons``) == decided path by path, for
    runs of paths sharing one attribute set (as ``paths_for`` builds an UPDATE)."""
    from rib.path import paths_for
    from rib.policy import ImportContext, import_reason, import_reasons

    ctx = ImportContext(config)
    policy = POLICIES[i]
    batch = [q for template, extra in groups
             for q in paths_for([template.prefix, *extra], template)]
    assert import_reasons(batch, policy, ctx) == [import_reason(q, policy, ctx) for q in batch]


def _run_op(rib: Rib, op) -> list[Changes]:
    """One OPS entry on ``rib`` (peers brought up as needed): the Changes it gave."""
    kind, out = op[0], []

    def up(i: int) -> None:
        if not rib.is_up(POLICIES[i].key):
            out.append(rib.peer_up(POLICIES[i]))

    if kind == "announce":
        by_peer: dict[int, list[Path]] = {}
        for p in op[1]:
            by_peer.setdefault(PEERS.index(p.peer), []).append(p)
        for i, ps in by_peer.items():
            up(i)
            out.append(rib.announce(POLICIES[i].key, ps))
    elif kind == "config":
        out.append(rib.set_config(op[1]))
    elif kind == "down":
        out.append(rib.peer_down(POLICIES[op[1]].key))
    else:
        up(op[1])
        call = {"withdraw": lambda k: rib.withdraw(k, op[2]), "stale": rib.mark_stale,
                "eor": rib.end_of_rib}[kind]
        out.append(call(POLICIES[op[1]].key))
    return out


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(CONFIGS), st.lists(OPS, max_size=25))
def test_a_rib_without_best_records_changes_the_same_otherwise(config, ops):
    # The daemon's Rib(record_best=False) (issue 17): no BestChange objects, every other
    # part of every Changes the same as the recording RIB's, the same Loc-RIB.
    ribs = [Rib(config), Rib(config, record_best=False)]
    for rib in ribs:
        for pol in POLICIES:
            rib.peer_up(pol)
    for op in ops:
        full, lean = (_run_op(rib, op) for rib in ribs)
        assert len(full) == len(lean)
        for a, b in zip(full, lean, strict=True):
            assert b.best == []
            assert (a.kernel_add, a.kernel_remove, a.exports, a.rejected, a.teardown) == \
                (b.kernel_add, b.kernel_remove, b.exports, b.rejected, b.teardown)
        assert ribs[0].loc_rib() == ribs[1].loc_rib()
