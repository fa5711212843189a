"""rib.path.paths_for: the clone constructor one UPDATE's paths are built with."""

from __future__ import annotations

import pickle
from dataclasses import FrozenInstanceError, fields

import pytest

from rib.path import FIELDS, Origin, Path, PathAttrs, PeerKind, PeerRef, paths_for

REF = PeerRef("10.0.0.2", 65002, "10.0.0.2", PeerKind.EBGP)


def test_paths_for_equals_constructor_for_every_field() -> None:
    # Every field set to a non-default value, so a field the clone forgot shows up.
    template = Path("10.244.0.0/26", "10.0.0.2", REF, origin=Origin.INCOMPLETE,
                    as_path=(65002, 7), local_pref=150, med=9, communities=((1, 2),),
                    large_communities=((1, 2, 3),), originator_id="1.1.1.1",
                    cluster_list=("2.2.2.2",), stale=True, as_set_len=1, path_id=7)
    assert all(getattr(template, f.name) != f.default for f in fields(PathAttrs)
               if f.name not in ("next_hop", "peer"))
    prefixes = ["10.244.1.0/26", "10.244.2.0/26"]
    got = paths_for(prefixes, template)
    for p, prefix in zip(got, prefixes, strict=True):
        want = template.replace(prefix=prefix)
        assert p == want and hash(p) == hash(want) and p.astuple() == want.astuple()
        assert p.astuple() == (prefix, *template.astuple()[1:])
        assert p.attrs is template.attrs  # one attributes object per UPDATE, not copied
    assert paths_for([], template) == []


# ---- Path as a record: a prefix and the shared PathAttrs of its UPDATE (issue 17) ----

def _full(prefix: str = "10.244.0.0/26") -> Path:
    return Path(prefix, "10.0.0.2", REF, origin=Origin.EGP, as_path=(65002,), med=5,
                communities=((65002, 1),))


def test_path_is_frozen_and_compares_by_value_not_by_attrs_identity() -> None:
    a, b = _full(), _full()
    assert a.attrs is not b.attrs and a == b and hash(a) == hash(b)
    assert a != a.replace(med=6) and a != a.replace(prefix="10.244.0.64/26")
    assert a != a.replace(stale=True) and a != a.replace(path_id=1)
    with pytest.raises(FrozenInstanceError):
        a.med = 7  # type: ignore[misc]
    with pytest.raises(FrozenInstanceError):
        a.prefix = "10.0.0.0/8"  # type: ignore[misc]
    with pytest.raises(FrozenInstanceError):
        del a.attrs
    assert a.med == 5 and a.prefix == "10.244.0.0/26"


def test_replace_shares_attrs_only_when_they_do_not_change() -> None:
    a = _full()
    moved = a.replace(prefix="10.244.0.64/26")
    assert moved.attrs is a.attrs and moved.prefix == "10.244.0.64/26"
    changed = a.replace(med=9, as_path=(1, 2))
    # the original and its attributes object are untouched
    assert (a.med, a.as_path, a.attrs.med) == (5, (65002,), 5)
    assert (changed.med, changed.as_path, changed.prefix) == (9, (1, 2), a.prefix)
    assert changed.communities is a.communities
    with pytest.raises(TypeError):
        a.replace(no_such_field=1)


def test_repr_names_every_field_and_pickle_round_trips() -> None:
    a = _full()
    text = repr(a)
    assert text.startswith("Path(prefix='10.244.0.0/26', next_hop='10.0.0.2'")
    assert all(f"{name}=" in text for name in FIELDS)
    assert pickle.loads(pickle.dumps(a)) == a


# ---- a shared attributes object through the RIB: what one prefix's change must not touch --

from rib import PeerPolicy, Pool, Rib, RibConfig  # noqa: E402

EB = PeerRef("10.1.0.11", 65001, "10.1.0.11", PeerKind.EBGP)
P1, P2 = "10.244.1.0/26", "10.244.2.0/26"


def _rib() -> Rib:
    rib = Rib(RibConfig(local_asn=64512, router_id="10.1.0.1",
                        pools=(Pool("10.244.0.0/16"),)))
    rib.peer_up(PeerPolicy(key=EB.address, peer=EB, local_address="10.1.0.1"))
    return rib


def _update(prefixes, *, as_path, med, nh="10.1.0.11") -> list[Path]:
    return paths_for(prefixes, Path(prefixes[0], nh, EB, as_path=as_path, med=med,
                                    communities=((65001, 7),)))


def test_one_prefix_withdrawn_the_other_of_its_update_keeps_its_attributes() -> None:
    rib = _rib()
    first = _update([P1, P2], as_path=(65001,), med=10)
    assert first[0].attrs is first[1].attrs
    rib.announce(EB.address, first)
    ch = rib.withdraw(EB.address, [P1])
    assert [r.prefix for r in ch.kernel_remove] == [P1] and not ch.kernel_add
    kept = rib.best(P2)
    assert rib.best(P1) is None
    assert (kept.prefix, kept.next_hop, kept.as_path, kept.med, kept.communities) == (
        P2, "10.1.0.11", (65001,), 10, ((65001, 7),))
    assert rib.adj_rib_in(EB.address) == {P2: first[1]}
    assert rib.desired_routes()[P2].next_hops == ("10.1.0.11",)


def test_a_later_update_for_one_prefix_changes_that_prefix_only() -> None:
    rib = _rib()
    rib.announce(EB.address, _update([P1, P2], as_path=(65001,), med=10))
    ch = rib.announce(EB.address, _update([P2], as_path=(65001, 65009), med=20,
                                          nh="10.1.0.12"))
    assert [(b.old.med, b.new.med) for b in ch.best] == [(10, 20)]
    assert [(r.prefix, r.next_hops) for r in ch.kernel_add] == [(P2, ("10.1.0.12",))]
    one, two = rib.best(P1), rib.best(P2)
    assert (one.next_hop, one.as_path, one.med) == ("10.1.0.11", (65001,), 10)
    assert (two.next_hop, two.as_path, two.med) == ("10.1.0.12", (65001, 65009), 20)
    assert rib.desired_routes()[P1].next_hops == ("10.1.0.11",)
    assert rib.desired_routes()[P2].next_hops == ("10.1.0.12",)


def test_graceful_restart_stale_copies_share_attrs_and_reannouncing_one_clears_only_it():
    rib = _rib()
    first = _update([P1, P2], as_path=(65001,), med=10)
    rib.announce(EB.address, first)
    rib.mark_stale(EB.address)
    s1, s2 = rib.best(P1), rib.best(P2)
    assert s1.stale and s2.stale and s1.attrs is s2.attrs  # one stale copy per UPDATE
    assert not first[0].stale and first[0].attrs is first[1].attrs  # originals untouched
    assert (s1.med, s1.as_path, s2.next_hop) == (10, (65001,), "10.1.0.11")
    rib.peer_up(PeerPolicy(key=EB.address, peer=EB, local_address="10.1.0.1"))
    rib.announce(EB.address, _update([P1], as_path=(65001,), med=10))
    rib.end_of_rib(EB.address)
    rib.sweep_stale(EB.address)
    assert rib.best(P1) is not None and not rib.best(P1).stale
    assert rib.best(P2) is None  # not re-announced: swept
