"""Best-path ladder: one table row per rule, citing the clause it implements."""

from __future__ import annotations

import itertools

import pytest

from rib.bestpath import BestReason, compare, select_best
from rib.path import LOCAL_PEER, Origin, Path, PeerKind, PeerRef

P = "10.0.0.0/26"
IBGP_A = PeerRef("10.1.0.1", 64512, "10.1.0.1", PeerKind.IBGP)
IBGP_B = PeerRef("10.1.0.2", 64512, "10.1.0.2", PeerKind.IBGP)
EBGP_A = PeerRef("10.2.0.1", 65001, "10.2.0.1", PeerKind.EBGP)
EBGP_B = PeerRef("10.2.0.2", 65002, "10.2.0.2", PeerKind.EBGP)


def path(peer=IBGP_A, **kw) -> Path:
    return Path(prefix=P, next_hop=peer.address or "0.0.0.0", peer=peer, **kw)


# (clause, winner, loser, expected reason). Each loser is better on every rule
# *after* the deciding one, so a rule applied in the wrong place fails the row.
RULES = [
    ("RFC 4271 §9.1.1 highest LOCAL_PREF",
     path(IBGP_B, local_pref=200, as_path=(1, 2, 3)), path(IBGP_A, local_pref=100),
     BestReason.LOCAL_PREF),
    ("RFC 4271 §9.1.1 absent LOCAL_PREF counts as 100",
     path(IBGP_B, local_pref=None), path(IBGP_A, local_pref=99), BestReason.LOCAL_PREF),
    ("locally originated beats learned (GoBGP/BIRD practice)",
     Path(P, "", LOCAL_PEER, as_path=(1, 2)), path(EBGP_A, as_path=(65001,)),
     BestReason.LOCAL_ORIGIN),
    ("RFC 4271 §9.1.2.2 a shortest AS_PATH",
     path(EBGP_B, as_path=(65002,), origin=Origin.INCOMPLETE),
     path(EBGP_A, as_path=(65001, 65001)), BestReason.AS_PATH),
    ("RFC 4271 §9.1.2.2 a an AS_SET counts as one",
     path(EBGP_B, as_path=(65002,), as_set_len=1, origin=Origin.EGP),
     path(EBGP_A, as_path=(65001, 7, 8)), BestReason.AS_PATH),
    ("RFC 4271 §9.1.2.2 b lowest ORIGIN",
     path(IBGP_B, origin=Origin.IGP, med=50), path(IBGP_A, origin=Origin.EGP, med=0),
     BestReason.ORIGIN),
    ("RFC 4271 §9.1.2.2 b EGP over INCOMPLETE",
     path(IBGP_B, origin=Origin.EGP), path(IBGP_A, origin=Origin.INCOMPLETE),
     BestReason.ORIGIN),
    ("RFC 4271 §9.1.2.2 c lowest MED from the same neighbour AS",
     path(EBGP_B, as_path=(65001,), med=10), path(EBGP_A, as_path=(65001,), med=20),
     BestReason.MED),
    ("RFC 4271 §9.1.2.2 c absent MED counts as 0",
     path(IBGP_B, med=None), path(IBGP_A, med=5), BestReason.MED),
    ("RFC 4271 §9.1.2.2 d eBGP over iBGP",
     path(EBGP_B, as_path=(65002,)), path(IBGP_A, as_path=(65002,)),
     BestReason.EBGP_OVER_IBGP),
    ("RFC 4456 §9 b shortest CLUSTER_LIST",
     path(IBGP_B, cluster_list=("1.1.1.1",), originator_id="10.9.9.9"),
     path(IBGP_A, cluster_list=("1.1.1.1", "2.2.2.2"), originator_id="10.0.0.1"),
     BestReason.CLUSTER_LIST),
    ("RFC 4271 §9.1.2.2 f lowest BGP identifier",
     path(PeerRef("10.1.0.9", 64512, "1.1.1.1", PeerKind.IBGP)),
     path(PeerRef("10.1.0.1", 64512, "2.2.2.2", PeerKind.IBGP)), BestReason.ROUTER_ID),
    ("RFC 4456 §9 a ORIGINATOR_ID replaces the BGP identifier",
     path(IBGP_B, originator_id="1.1.1.1"), path(IBGP_A, originator_id="9.9.9.9"),
     BestReason.ROUTER_ID),
    ("RFC 4271 §9.1.2.2 g lowest peer address",
     path(PeerRef("10.1.0.1", 64512, "5.5.5.5", PeerKind.IBGP)),
     path(PeerRef("10.1.0.2", 64512, "5.5.5.5", PeerKind.IBGP)), BestReason.PEER_ADDRESS),
]


@pytest.mark.parametrize(("clause", "winner", "loser", "reason"), RULES, ids=[r[0] for r in RULES])
def test_rule_decides(clause, winner, loser, reason):
    c, why = compare(winner, loser)
    assert c < 0 and why is reason, clause
    c, why = compare(loser, winner)
    assert c > 0 and why is reason, clause
    for order in ([winner, loser], [loser, winner]):
        members, got = select_best(order)
        assert members == (winner,)
        assert got is reason


def test_med_not_compared_across_neighbour_as():
    # RFC 4271 §9.1.2.2 c: different neighbour AS -> MED skipped, next rule decides.
    a = path(EBGP_A, as_path=(65001,), med=100)  # lower peer address
    b = path(EBGP_B, as_path=(65002,), med=0)
    members, reason = select_best([b, a])
    assert members == (a,) and reason is BestReason.ROUTER_ID


def test_deterministic_med_order_independent():
    # The classic MED cycle: pairwise a beats b (router id), b beats c (MED, same AS),
    # c beats a (router id), so a pairwise fold's answer depends on arrival order.
    a = path(PeerRef("10.0.0.1", 65001, "1.0.0.1", PeerKind.EBGP), as_path=(65001,), med=5)
    b = path(PeerRef("10.0.0.2", 65002, "1.0.0.2", PeerKind.EBGP), as_path=(65002,), med=1)
    c = path(PeerRef("10.0.0.3", 65002, "1.0.0.0", PeerKind.EBGP), as_path=(65002,), med=10)
    assert compare(a, b)[0] < 0 and compare(b, c)[0] < 0 and compare(c, a)[0] < 0
    winners = {select_best(list(order))[0][0] for order in itertools.permutations([a, b, c])}
    assert winners == {a}


@pytest.mark.parametrize("max_paths", [1, 2, 3, 8])
def test_ecmp_set_bounded_and_excludes_worse(max_paths):
    peers = [PeerRef(f"10.1.0.{i}", 64512, f"10.1.0.{i}", PeerKind.IBGP) for i in range(1, 6)]
    equal = [path(p) for p in peers[:4]]
    worse = path(peers[4], local_pref=50)
    members, _ = select_best([worse, *reversed(equal)], max_paths)
    assert members[0] == equal[0]  # lowest router id is best
    assert list(members) == equal[: min(max_paths, 4)]
    assert worse not in members


def test_ecmp_needs_equality_down_to_router_id():
    # Differs only in cluster-list length (the rule just before router id): no ECMP.
    a = path(IBGP_A)
    b = path(IBGP_B, cluster_list=("3.3.3.3",))
    assert select_best([a, b], 4)[0] == (a,)


def test_no_paths_and_single_path():
    assert select_best([]) == ((), BestReason.ONLY_PATH)
    p = path()
    assert select_best([p]) == ((p,), BestReason.ONLY_PATH)
