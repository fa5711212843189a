"""podbgp plans the sessions Calico's confd plans, case by case from Calico's own tests.

Each case is one of projectcalico/calico's confd tests (tests/helpers/confd.py lists
them with the Go test they come from): its mock_data input, the node it renders
for, and the BIRD configs it must produce. The ``protocol bgp`` blocks of those
configs — names, neighbor address, port and AS, local AS, source address, passive,
TTL security, graceful-restart and keepalive times, route-reflector client and
cluster id, password, next hop, allow local as, add paths — are what podbgp's plan
must equal.
"""

from __future__ import annotations

import pytest

from bgpd.peers import plan_peers
from config.parse import parse_resource
from config.snapshot import Snapshot
from tests.helpers import confd


@pytest.mark.parametrize("case", confd.CASES, ids=[c.name for c in confd.CASES])
def test_plan_matches_confd(case: confd.Case) -> None:
    snap = Snapshot.from_resources(parse_resource(d) for d in confd.case_documents(case))
    plan = plan_peers(snap, case.node, confd.secret_reader(case))
    got = confd.plan_sessions(plan)
    want = confd.golden_sessions(case)
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name] == want[name], name


def test_the_cases_cover_what_matters() -> None:
    # A guard that the golden parser reads what it should: if BIRD statements stopped
    # being recognised, every session would look alike and the cases above would pass
    # for the wrong reason.
    every = [s for c in confd.CASES for s in confd.golden_sessions(c).values()]
    assert len(confd.CASES) >= 70 and len(every) >= 200
    assert sum(s["passive"] for s in every) >= 50
    assert {s["port"] for s in every} >= {179, 150, 166, 177, 500, 50}
    assert any(s["rr_client"] for s in every) and any(s["password"] for s in every)
    assert {s["ttl"] for s in every} > {0} and any(s["source"] is None for s in every)
    assert {s["next_hop"] for s in every} == {None, "keep", "self"}
    assert any(s["keepalive"] for s in every) or True  # confd's cases set none today
    assert all(s["add_paths"] for s in every)


def test_runnable_sessions_are_one_per_address_and_the_rest_say_why() -> None:
    # explicit_peering/global: two BGPPeers to 10.192.0.1 on ports 166 and 150 (the
    # node's listen port). Calico renders both; podbgp's speaker knows a peer by
    # address, so it runs one (the lower port) and reports the other.
    case = next(c for c in confd.CASES if c.name == "explicit_peering/global")
    snap = Snapshot.from_resources(parse_resource(d) for d in confd.case_documents(case))
    plan = plan_peers(snap, case.node)
    assert [(p.name, p.port) for p in plan.peers] == [
        ("Global_10_192_0_1_port_150", 150), ("Global_10_192_0_3_port_150", 150)]
    ((spec, why),) = plan.rejected
    assert spec.name == "Global_10_192_0_1_port_166"
    assert "Global_10_192_0_1_port_150" in why and "one session per peer address" in why
