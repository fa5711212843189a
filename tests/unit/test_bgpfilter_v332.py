"""BGPFilter's v3.32 fields with Calico's semantics, on Calico's own test filters.

The filters are those of projectcalico/calico's confd tests (87c15906,
confd/tests/mock_data/calicoctl/bgpfilter/{communities_and_operations,peer_type,
as_path_and_priority}/input.yaml); what each must do is what the BIRD functions
confd renders from them say (compiled_templates/.../bird.cfg, e.g.
``if (((65000, 100) ~ bgp_community)) then { bgp_local_pref = 2147483391; accept; }``):
conditions on communities, AS-path prefix and priority (LOCAL_PREF = 2^31-1 -
priority), ``peerType`` (``is_same_as``), and the operations of an Accept rule.
"""

from __future__ import annotations

import dataclasses

import pytest

import rib
from bgpd.peerspec import PeerSpec, PeerType
from bgpd.translate import peer_policy
from config.parse import parse_resource
from config.snapshot import Snapshot
from rib.path import Path
from tests.helpers import confd

NODE = "10.192.0.2"
IBGP = rib.PeerRef("10.192.0.3", 64512, "10.192.0.3", rib.PeerKind.IBGP)
EBGP = rib.PeerRef("10.192.0.9", 65009, "10.192.0.9", rib.PeerKind.EBGP)
MAX = 2147483647


def setup(case: str, filt_peer: rib.PeerRef) -> tuple[rib.Rib, rib.PeerPolicy]:
    """A RIB with the case's filter on ``filt_peer``, plus a plain iBGP and eBGP peer."""
    docs = confd.case_documents(confd.case(f"bgpfilter/{case}"))
    snap = Snapshot.from_resources(parse_resource(d) for d in docs
                                   if d["kind"] in ("BGPFilter", "IPPool"))
    (name,) = snap.bgp_filters
    spec = PeerSpec(address=filt_peer.address, peer_as=filt_peer.asn, local_address=NODE,
                    local_as=64512, router_id=NODE, peer_type=PeerType.GLOBAL, filters=(name,))
    policy, problems = peer_policy(spec, filt_peer, snap)
    assert problems == []
    policy = dataclasses.replace(policy, key=filt_peer.address)
    r = rib.Rib(rib.RibConfig(local_asn=64512, router_id=NODE,
                              pools=(rib.Pool("10.0.0.0/8"), rib.Pool("172.16.0.0/12"),
                                     rib.Pool("192.168.0.0/16"))))
    r.peer_up(policy)
    for other in (IBGP, EBGP):
        if other != filt_peer:
            r.peer_up(rib.PeerPolicy(key=other.address, peer=other, local_address=NODE))
    return r, policy


def path(prefix: str, peer: rib.PeerRef, **kw) -> Path:
    kw.setdefault("as_path", (peer.asn,) if peer.kind is rib.PeerKind.EBGP else ())
    return Path(prefix, peer.address, peer, **kw)


def test_communities_match_and_set_priority_on_import():
    # importV4: Accept if (65000,100) with setPriority 256, else Reject.
    r, pol = setup("communities_and_operations", EBGP)
    ch = r.update(EBGP.address, [path("192.168.1.0/24", EBGP, communities=((65000, 100),)),
                                 path("192.168.2.0/24", EBGP, communities=((65000, 1),))])
    assert [(x.prefix, x.reason.value) for x in ch.rejected] == [("192.168.2.0/24",
                                                                  "filter-reject")]
    assert r.best("192.168.1.0/24").local_pref == MAX - 256  # 2147483391, as confd renders
    # The pre-policy view keeps what the peer sent; a policy change re-imports that.
    assert r.adj_rib_in(EBGP.address)["192.168.1.0/24"].local_pref is None
    r.set_peer_policy(pol)
    assert r.best("192.168.1.0/24").local_pref == MAX - 256


def test_communities_match_and_operations_on_export():
    # exportV4: Accept if (65000,42): add (65001,200), prepend 65000; else Reject.
    r, _ = setup("communities_and_operations", EBGP)
    r.update(IBGP.address, [path("10.1.0.0/24", IBGP, local_pref=100,
                                 communities=((65000, 42),)),
                            path("10.2.0.0/24", IBGP, local_pref=100)])
    out = r.adj_rib_out(EBGP.address)
    assert set(out) == {"10.1.0.0/24"}
    a = out["10.1.0.0/24"]
    assert a.communities == ((65000, 42), (65001, 200))
    assert a.as_path == (64512, 65000)  # our AS first: BIRD prepends it after the filter


@pytest.mark.parametrize(("peer", "exported"), [
    (EBGP, {"10.1.0.0/24"}),  # eBGP rule: Accept 10/8; then Reject all
    (IBGP, set()),  # iBGP: Reject 172.16/12, then Reject all
])
def test_peer_type_selects_rules_by_session_kind(peer, exported):
    r, _ = setup("peer_type", peer)
    other = IBGP if peer is EBGP else EBGP
    r.update(other.address, [path("10.1.0.0/24", other, local_pref=100),
                             path("172.16.1.0/24", other, local_pref=100)])
    assert set(r.adj_rib_out(peer.address)) == exported


def test_peer_type_on_import_sets_priority_for_ibgp_only():
    # importV4: iBGP + (65000,100) -> setPriority 100; then Accept all.
    for peer, lp in ((IBGP, MAX - 100), (EBGP, None)):
        r, _ = setup("peer_type", peer)
        r.update(peer.address, [path("10.3.0.0/24", peer, communities=((65000, 100),))])
        assert r.best("10.3.0.0/24").local_pref == lp, peer


def test_as_path_prefix_and_priority():
    # importV4: AS path starting 65000 -> priority 100; 65000 65001 -> (shadowed); Accept.
    # exportV4: priority 100 -> add (65000,100); priority 200 -> prepend; else Reject.
    r, _ = setup("as_path_and_priority", EBGP)
    eb = rib.PeerRef("10.192.0.9", 65000, "10.192.0.9", rib.PeerKind.EBGP)
    r.update(EBGP.address, [path("10.4.0.0/24", eb, as_path=(65000, 7)),
                            path("10.5.0.0/24", eb, as_path=(65009, 65000))])
    assert r.best("10.4.0.0/24").local_pref == MAX - 100
    assert r.best("10.5.0.0/24").local_pref is None  # the prefix must lead the path
    r.update(IBGP.address, [path("10.6.0.0/24", IBGP, local_pref=MAX - 200),
                            path("10.7.0.0/24", IBGP, local_pref=100)])
    out = r.adj_rib_out(EBGP.address)
    assert out["10.6.0.0/24"].as_path == (64512, 65000, 65001)
    assert "10.7.0.0/24" not in out  # no priority match: Reject
