"""ADD-PATH (RFC 7911): a peer's paths with different identifiers are kept apart.

Calico's BIRD template sets ``add paths on`` on every session, so a BIRD route
reflector sends every path of a prefix, each with its identifier. Each one must
be its own candidate (ECMP through the reflector), replaced and withdrawn by its
identifier alone (RFC 7911 §3: the identifier and the prefix identify a path).
"""

from __future__ import annotations

from rib import PeerKind, PeerPolicy, PeerRef, Pool, Rib, RibConfig
from rib.path import Path, Withdraw, paths_for

RR = PeerRef("10.1.0.2", 64512, "10.1.0.2", PeerKind.IBGP)
OTHER = PeerRef("10.1.0.3", 64512, "10.1.0.3", PeerKind.IBGP)
PFX = "10.244.5.0/26"


def rib(max_paths: int = 4, **policy) -> Rib:
    r = Rib(RibConfig(local_asn=64512, router_id="10.1.0.1", pools=(Pool("10.244.0.0/16"),),
                      max_paths=max_paths))
    r.peer_up(PeerPolicy(key=RR.address, peer=RR, **policy))
    r.peer_up(PeerPolicy(key=OTHER.address, peer=OTHER))
    return r


def via(nh: str, pid: int, prefix: str = PFX, **kw) -> Path:
    # Reflected paths: the originator is the node behind the next hop (RFC 4456).
    return Path(prefix, nh, RR, local_pref=100, originator_id=nh, path_id=pid, **kw)


def test_paths_with_different_ids_are_kept_apart_and_give_ecmp():
    r = rib()
    ch = r.update(RR.address, [via("10.1.0.21", 1), via("10.1.0.22", 2)])
    assert [len(r.loc_rib()[PFX])] == [2]
    (route,) = [k for k in ch.kernel_add if k.prefix == PFX]
    assert route.next_hops == ("10.1.0.21", "10.1.0.22")
    assert r.counts(RR.address)[:2] == (2, 2)


def test_a_path_is_replaced_and_withdrawn_by_its_id_alone():
    r = rib()
    r.update(RR.address, [via("10.1.0.21", 1), via("10.1.0.22", 2)])
    r.update(RR.address, [via("10.1.0.23", 2)])  # id 2 changes its next hop
    assert {p.next_hop for p in r.loc_rib()[PFX]} == {"10.1.0.21", "10.1.0.23"}
    r.update(RR.address, withdrawn=[Withdraw(PFX, RR, 1)])
    assert [p.next_hop for p in r.loc_rib()[PFX]] == ["10.1.0.23"]
    r.update(RR.address, withdrawn=[Withdraw(PFX, RR, 9)])  # unknown id: nothing
    assert [p.next_hop for p in r.loc_rib()[PFX]] == ["10.1.0.23"]
    r.update(RR.address, withdrawn=[Withdraw(PFX, RR, 2)])
    assert PFX not in r.loc_rib()


def test_the_choice_does_not_depend_on_arrival_order():
    a, b = via("10.1.0.22", 7), via("10.1.0.22", 3)  # same next hop and originator
    r1, r2 = rib(max_paths=1), rib(max_paths=1)
    r1.update(RR.address, [a, b])
    r2.update(RR.address, [b, a])
    assert r1.best(PFX) == r2.best(PFX) == b  # the lower identifier


def test_max_prefix_counts_every_path_of_the_session():
    # A hostile peer cannot escape its limit by inventing path identifiers.
    r = rib(max_prefixes=3)
    paths = [via(f"10.1.0.{20 + i}", i, f"10.244.{i}.0/26") for i in range(1, 6)]
    ch = r.update(RR.address, paths)
    assert len(ch.rejected) == 2 and {x.reason.value for x in ch.rejected} == {"max-prefix"}
    assert r.counts(RR.address)[:2] == (5, 3)


def test_session_down_stale_and_sweep_cover_every_stream():
    r = rib()
    r.update(RR.address, [via("10.1.0.21", 1), via("10.1.0.22", 2)])
    r.mark_stale(RR.address)
    assert all(p.stale for p in r.loc_rib()[PFX])
    r.peer_up(PeerPolicy(key=RR.address, peer=RR))
    r.update(RR.address, [via("10.1.0.21", 1)])  # re-announced after the restart
    r.end_of_rib(RR.address)  # id 2 was not: swept
    assert [(p.next_hop, p.stale) for p in r.loc_rib()[PFX]] == [("10.1.0.21", False)]
    r.update(RR.address, [via("10.1.0.22", 2)])
    r.peer_down(RR.address)
    assert PFX not in r.loc_rib() and r.path_count() == 0


def test_policy_change_reimports_every_stream():
    from rib import FilterAction, FilterRule, MatchOperator

    r = rib()
    r.update(RR.address, [via("10.1.0.21", 1), via("10.1.0.22", 2)])
    ch = r.set_peer_policy(PeerPolicy(key=RR.address, peer=RR, import_filters=(
        FilterRule(FilterAction.REJECT, "10.244.0.0/16", MatchOperator.IN),)))
    assert PFX not in r.loc_rib() and len(ch.rejected) == 2


def test_paths_for_keeps_the_template_id():
    t = via("10.1.0.21", 5)
    assert [p.path_id for p in paths_for([PFX, "10.244.6.0/26"], t)] == [5, 5]
