"""Loc-RIB entries as candidates come and go: a prefix with one candidate stores
that Path alone, two or more a candidate/ECMP entry. The views and the Changes
must not tell the two apart (no missing and no spurious BestChange)."""

from __future__ import annotations

import pytest

from rib import BestReason, PeerKind, PeerPolicy, PeerRef, Pool, Rib, RibConfig
from rib.path import Path

PFX = "10.244.1.0/26"
A = PeerRef("10.1.0.11", 65001, "10.1.0.11", PeerKind.EBGP)
B = PeerRef("10.1.0.12", 65002, "10.1.0.12", PeerKind.EBGP)


def make_rib(max_paths: int) -> Rib:
    rib = Rib(RibConfig(local_asn=64512, router_id="10.1.0.1", pools=(Pool("10.244.0.0/16"),),
                        max_paths=max_paths))
    for peer in (A, B):
        rib.peer_up(PeerPolicy(key=peer.address, peer=peer, local_address="10.1.0.1"))
    return rib


def path(peer: PeerRef, *, as_path: tuple[int, ...] | None = None, med: int | None = None) -> Path:
    return Path(PFX, peer.address, peer, as_path=as_path or (peer.asn,), med=med)


@pytest.mark.parametrize("max_paths", [1, 2])
def test_second_candidate_that_loses_changes_nothing_and_leaving_changes_nothing(max_paths):
    rib = make_rib(max_paths)
    best = path(A)
    ch = rib.announce(A.address, [best])
    assert [(b.old, b.new, b.multipath) for b in ch.best] == [(None, best, (best,))]
    assert rib.best_reason(PFX) is BestReason.ONLY_PATH
    # A longer AS path loses: the selection, the kernel and exports stay as they are.
    loser = path(B, as_path=(65002, 65003))
    ch = rib.announce(B.address, [loser])
    assert not ch.best and not ch.kernel_add and not ch.kernel_remove
    assert rib.loc_rib() == {PFX: (best,)}
    assert rib.best_reason(PFX) is BestReason.AS_PATH
    # The loser leaves: back to one candidate, still no change to report.
    ch = rib.withdraw(B.address, [PFX])
    assert not ch.best and not ch.kernel_add and not ch.kernel_remove
    assert rib.best(PFX) is best
    assert rib.best_reason(PFX) is BestReason.ONLY_PATH
    assert rib.prefix_count() == 1


def test_best_leaves_the_other_candidate_takes_over():
    rib = make_rib(1)
    a, b = path(A), path(B, as_path=(65002, 65003))
    rib.announce(A.address, [a])
    rib.announce(B.address, [b])
    ch = rib.withdraw(A.address, [PFX])
    assert [(c.old, c.new, c.multipath, c.reason) for c in ch.best] == [
        (a, b, (b,), BestReason.ONLY_PATH)
    ]
    assert [r.next_hops for r in ch.kernel_add] == [(B.address,)]
    assert rib.loc_rib() == {PFX: (b,)}
    ch = rib.withdraw(B.address, [PFX])
    assert [(c.old, c.new, c.multipath) for c in ch.best] == [(b, None, ())]
    assert [r.prefix for r in ch.kernel_remove] == [PFX]
    assert rib.loc_rib() == {} and rib.best(PFX) is None and rib.best_reason(PFX) is None
    assert rib.prefix_count() == 0


def test_ecmp_pair_shrinks_to_one_and_grows_again():
    rib = make_rib(2)
    a, b = path(A, as_path=(65001,)), path(B, as_path=(65002,))
    rib.announce(A.address, [a])
    ch = rib.announce(B.address, [b])
    assert len(ch.best) == 1 and set(ch.best[0].multipath) == {a, b}
    assert ch.kernel_add[0].next_hops == tuple(sorted((A.address, B.address)))
    ch = rib.withdraw(B.address, [PFX])
    assert [(c.new, c.multipath) for c in ch.best] == [(a, (a,))]
    assert ch.kernel_add[0].next_hops == (A.address,)
    b2 = path(B, as_path=(65002,), med=5)  # replaces nothing: B had withdrawn
    ch = rib.announce(B.address, [b2])
    assert len(ch.best) == 1 and set(ch.best[0].multipath) == {a, b2}


def test_same_peer_replaces_its_lone_path():
    rib = make_rib(1)
    first, second = path(A), path(A, med=7)
    rib.announce(A.address, [first])
    ch = rib.announce(A.address, [second])
    assert [(c.old, c.new) for c in ch.best] == [(first, second)]
    assert not ch.kernel_add  # same next hop: the kernel route is unchanged
    assert rib.best(PFX) is second and rib.prefix_count() == 1


def _fresh(text: str) -> str:
    """An equal string that is a new object (what the parser hands over per UPDATE)."""
    return "".join(list(text))


@pytest.mark.parametrize("max_paths", [1, 2])
def test_one_string_object_per_prefix_in_every_table(max_paths):
    """Each UPDATE's prefixes are new string objects (the parser does not intern them,
    issue 17): a prefix the RIB holds keeps the one string it holds it by — a
    re-announcement, another peer's path, a rejected then accepted path — so no table
    and no Path keeps a second copy (64 bytes a prefix)."""
    rib = make_rib(max_paths)
    first = _fresh(PFX)
    rib.announce(A.address, [Path(first, A.address, A, as_path=(A.asn,))])
    # A re-announces with other attributes, B sends the prefix, A again: all fresh text.
    rib.announce(A.address, [Path(_fresh(PFX), A.address, A, as_path=(A.asn, 7))])
    rib.announce(B.address, [Path(_fresh(PFX), B.address, B, as_path=(B.asn,))])
    rib.announce(A.address, [Path(_fresh(PFX), A.address, A, as_path=(A.asn,))])
    held = [p for peer in (A, B) for p in rib.adj_rib_in(peer.address)]
    held += [p.prefix for peer in (A, B) for p in rib.adj_rib_in(peer.address).values()]
    held += [*rib.loc_rib(), *(p.prefix for ps in rib.loc_rib().values() for p in ps)]
    assert len(held) == 2 + 2 + 1 + max_paths
    assert all(s is first for s in held)
    # B leaves and comes back: the prefix is still A's, so still that string.
    rib.withdraw(B.address, [_fresh(PFX)])
    rib.announce(B.address, [Path(_fresh(PFX), B.address, B, as_path=(B.asn,))])
    assert all(p.prefix is first for peer in (A, B)
               for p in rib.adj_rib_in(peer.address).values())
    assert all(p is first for p in rib.loc_rib())
