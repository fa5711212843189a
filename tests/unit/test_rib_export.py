"""Export policy: route reflection (RFC 4456), split horizon, next hop, eBGP rules,
origination, BGPFilter export rules, grouping, session start and graceful restart."""

from __future__ import annotations

import dataclasses

import pytest

from rib import (
    NEXT_HOP_SELF,
    FilterRule,
    NextHopMode,
    PeerKind,
    PeerPolicy,
    PeerRef,
    Pool,
    PrefixAdvertisement,
    Rib,
    RibConfig,
)
from rib.path import Path

PFX = "10.244.1.0/26"
C1 = PeerRef("10.1.0.11", 64512, "10.1.0.11", PeerKind.IBGP, rr_client=True)
C2 = PeerRef("10.1.0.12", 64512, "10.1.0.12", PeerKind.IBGP, rr_client=True)
N1 = PeerRef("10.1.0.21", 64512, "10.1.0.21", PeerKind.IBGP)
N2 = PeerRef("10.1.0.22", 64512, "10.1.0.22", PeerKind.IBGP)
E1 = PeerRef("10.2.0.1", 65001, "10.2.0.1", PeerKind.EBGP)
E2 = PeerRef("10.2.0.2", 65002, "10.2.0.2", PeerKind.EBGP)
ALL = {"C1": C1, "C2": C2, "N1": N1, "N2": N2, "E1": E1, "E2": E2}
BASE = RibConfig(
    local_asn=64512,
    router_id="10.1.0.1",
    node_addresses=frozenset({"10.1.0.1"}),
    own_blocks=("10.244.0.0/26",),
    pools=(Pool("10.244.0.0/16"), Pool("10.99.0.0/16", disable_bgp_export=True)),
    service_prefixes=("10.96.0.0/12",),
    prefix_advertisements=(
        PrefixAdvertisement("10.244.0.0/16", communities=((64512, 100),)),
        PrefixAdvertisement("10.244.0.0/24", large_communities=((64512, 1, 2),)),
    ),
)
RR = dataclasses.replace(BASE, cluster_id="1.0.0.1")


def policy(peer: PeerRef, **kw) -> PeerPolicy:
    return PeerPolicy(key=peer.address, peer=peer, local_address="10.1.0.1", **kw)


def setup(config=RR, **policies) -> Rib:
    rib = Rib(config)
    for name, peer in ALL.items():
        rib.peer_up(policies.get(name) or policy(peer))
    return rib


def learned(peer: PeerRef, **kw) -> Path:
    kw.setdefault("as_path", (peer.asn,) if peer.kind is PeerKind.EBGP else ())
    kw.setdefault("local_pref", 100 if peer.kind is PeerKind.IBGP else None)
    return Path(prefix=PFX, next_hop=peer.address, peer=peer, **kw)


def receivers(rib: Rib) -> set[str]:
    return {n for n, p in ALL.items() if PFX in rib.adj_rib_out(p.address)}


# RFC 4456 §6 and RFC 4271 §9.2 (iBGP split horizon), per source and node role.
REFLECTION = [
    ("RR: client route -> all other iBGP peers and eBGP", RR, "C1", {"C2", "N1", "N2", "E1", "E2"}),
    ("RR: non-client route -> clients only (and eBGP)", RR, "N1", {"C1", "C2", "E1", "E2"}),
    ("RR: eBGP route -> every peer but its source", RR, "E1", {"C1", "C2", "N1", "N2", "E2"}),
    ("no RR: iBGP route -> eBGP only (split horizon)", BASE, "C1", {"E1", "E2"}),
    ("no RR: iBGP route from non-client -> eBGP only", BASE, "N1", {"E1", "E2"}),
    ("no RR: eBGP route -> all but source", BASE, "E1", {"C1", "C2", "N1", "N2", "E2"}),
]


@pytest.mark.parametrize(("case", "config", "source", "expected"), REFLECTION,
                         ids=[r[0] for r in REFLECTION])
def test_who_receives(case, config, source, expected):
    rib = setup(config)
    ch = rib.announce(ALL[source].address, [learned(ALL[source])])
    assert receivers(rib) == expected, case
    assert {k for k, d in ch.exports.items() if d.announce} == {ALL[n].address for n in expected}
    ch = rib.withdraw(ALL[source].address, [PFX])
    assert receivers(rib) == set()
    assert {k for k, d in ch.exports.items() if d.withdraw} == {ALL[n].address for n in expected}


def test_reflected_attributes_rfc4456_section_8():
    rib = setup()
    # First reflection: ORIGINATOR_ID = the source's router id, CLUSTER_LIST = ours.
    rib.announce(C1.address, [learned(C1, med=7, communities=((1, 2),))])
    a = rib.adj_rib_out(N1.address)[PFX]
    assert a.originator_id == C1.router_id
    assert a.cluster_list == ("1.0.0.1",)
    assert a.next_hop == C1.address  # next hop kept
    assert (a.local_pref, a.med, a.communities, a.as_path) == (100, 7, ((1, 2),), ())
    # Already reflected once: keep ORIGINATOR_ID, prepend our cluster id.
    rib.announce(C1.address, [learned(C1, originator_id="9.9.9.9", cluster_list=("2.0.0.2",))])
    a = rib.adj_rib_out(N1.address)[PFX]
    assert a.originator_id == "9.9.9.9"
    assert a.cluster_list == ("1.0.0.1", "2.0.0.2")


def test_ebgp_export_prepends_as_and_drops_ibgp_only_attributes():
    rib = setup()
    rib.announce(C1.address, [learned(C1, local_pref=300, med=5, originator_id="9.9.9.9",
                                      cluster_list=("2.0.0.2",), as_path=(65100,))])
    a = rib.adj_rib_out(E1.address)[PFX]
    assert a.as_path == (64512, 65100)
    assert a.local_pref is None and a.med is None
    assert a.originator_id is None and a.cluster_list == ()
    assert a.next_hop == "10.1.0.1"  # Auto: self towards eBGP


def test_ebgp_export_uses_session_local_as():
    rib = setup(E1=policy(dataclasses.replace(E1, local_asn=65333)))
    rib.announce(C1.address, [learned(C1)])
    assert rib.adj_rib_out(E1.address)[PFX].as_path == (65333,)


@pytest.mark.parametrize(
    ("mode", "target", "expected"),
    [
        (NextHopMode.AUTO, "N1", C1.address),  # iBGP: keep
        (NextHopMode.AUTO, "E1", "10.1.0.1"),  # eBGP: self
        (NextHopMode.SELF, "N1", "10.1.0.1"),
        (NextHopMode.KEEP, "E1", C1.address),
    ],
)
def test_next_hop_mode(mode, target, expected):
    rib = setup(**{target: policy(ALL[target], next_hop_mode=mode)})
    rib.announce(C1.address, [learned(C1)])
    assert rib.adj_rib_out(ALL[target].address)[PFX].next_hop == expected


def test_next_hop_self_without_local_address_uses_keyword():
    rib = Rib(RR)
    rib.peer_up(PeerPolicy(key="x", peer=N1))
    assert rib.adj_rib_out("x")["10.244.0.0/26"].next_hop == NEXT_HOP_SELF


@pytest.mark.parametrize("mode", list(NextHopMode))
def test_originated_routes_next_hop_self_communities_and_no_export_pools(mode):
    config = dataclasses.replace(RR, own_blocks=("10.244.0.0/26", "10.99.0.0/26"))
    rib = Rib(config)
    ch = rib.peer_up(policy(N1, next_hop_mode=mode))
    delta = ch.exports[N1.address]
    assert delta.full
    out = rib.adj_rib_out(N1.address)
    # disableBGPExport pool: blackholed locally, never announced.
    assert set(out) == {"10.244.0.0/26", "10.96.0.0/12"}
    assert "10.99.0.0/26" in rib.desired_routes()
    block = out["10.244.0.0/26"]
    assert block.next_hop == "10.1.0.1"
    assert block.communities == ((64512, 100),)
    assert block.large_communities == ((64512, 1, 2),)
    assert out["10.96.0.0/12"].communities == ()
    assert {p for _, ps in delta.batches() for p in ps} == set(out)


def test_learned_route_in_no_export_pool_not_exported():
    rib = setup()
    rib.announce(C1.address, [Path("10.99.1.0/26", C1.address, C1)])
    assert rib.best("10.99.1.0/26") is not None
    assert all("10.99.1.0/26" not in rib.adj_rib_out(p.address) for p in ALL.values())


def test_an_imported_external_prefix_is_used_but_never_passed_on():
    # calico_export_to_bgp_peers (confd bird_ipam.cfg.template) exports only pool and
    # service ranges: an import Accept of an outside prefix does not make this node a
    # transit for it (issue 13) — not to eBGP peers, not reflected to clients.
    ext = "203.0.113.0/24"
    accept = (FilterRule("Accept", "203.0.113.0/24", "Equal"),)
    rib = setup(E1=policy(E1, import_filters=accept),
                E2=policy(E2, export_filters=(FilterRule("Accept", ext, "Equal"),)))
    ch = rib.announce(E1.address, [Path(ext, E1.address, E1, as_path=(65001,))])
    assert not ch.rejected and rib.best(ext) is not None and ch.kernel_add
    got = {n for n, p in ALL.items() if ext in rib.adj_rib_out(p.address)}
    assert got == {"E2"}  # only where an export filter explicitly accepts it


EXPORT_FILTERS = [
    ((FilterRule("Reject", "10.244.1.0/26", "Equal"),), False),
    ((FilterRule("Reject", source="RemotePeers"),), False),
    ((FilterRule("Reject", "10.244.0.0/16", "NotIn"),), True),
    ((FilterRule("Accept", "10.244.0.0/16", "In"), FilterRule("Reject")), True),
]


@pytest.mark.parametrize(("rules", "exported"), EXPORT_FILTERS)
def test_export_filters(rules, exported):
    rib = setup(E1=policy(E1, export_filters=rules))
    rib.announce(C1.address, [learned(C1)])
    assert (PFX in rib.adj_rib_out(E1.address)) is exported
    assert PFX in rib.adj_rib_out(E2.address)  # filters are per peer


def test_remote_peers_source_rule_keeps_originated_routes():
    rib = setup(E1=policy(E1, export_filters=(FilterRule("Reject", source="RemotePeers"),)))
    assert "10.244.0.0/26" in rib.adj_rib_out(E1.address)


def test_exports_grouped_by_shared_attributes():
    rib = setup()
    paths = [Path(f"10.244.{i}.0/26", C1.address, C1, local_pref=100) for i in range(1, 6)]
    paths += [Path(f"10.244.{i}.0/26", C1.address, C1, local_pref=200) for i in range(6, 9)]
    ch = rib.announce(C1.address, paths)
    groups = sorted(len(ps) for _, ps in ch.exports[N1.address].batches())
    assert groups == [3, 5]
    # Re-announcing identical attributes exports nothing.
    assert not rib.announce(C1.address, paths).exports


def test_better_path_replaces_export_and_source_gets_the_other():
    rib = setup()
    rib.announce(N1.address, [learned(N1, local_pref=100)])
    assert PFX in rib.adj_rib_out(C1.address)
    ch = rib.announce(C1.address, [learned(C1, local_pref=200)])
    assert rib.best(PFX).peer is C1
    # C1 is now the source: the route it was sent (N1's) is withdrawn from it.
    assert ch.exports[C1.address].withdraw == [PFX]
    assert rib.adj_rib_out(N1.address)[PFX].local_pref == 200


def test_peer_up_again_resends_everything():
    rib = setup()
    rib.announce(C1.address, [learned(C1)])
    ch = rib.peer_up(policy(N1))
    delta = ch.exports[N1.address]
    assert delta.full
    assert {p for _, ps in delta.batches() for p in ps} == set(rib.adj_rib_out(N1.address))
    assert PFX in rib.adj_rib_out(N1.address)


def test_peer_down_withdraws_its_routes():
    rib = setup()
    rib.announce(C1.address, [learned(C1)])
    ch = rib.peer_down(C1.address)
    assert rib.best(PFX) is None
    assert ch.exports[N1.address].withdraw == [PFX]
    assert C1.address not in ch.exports
    assert [k.prefix for k in ch.kernel_remove] == [PFX]


def test_graceful_restart_stale_then_end_of_rib():
    rib = setup()
    keep, gone = learned(C1), Path("10.244.2.0/26", C1.address, C1, local_pref=100)
    rib.announce(C1.address, [keep, gone])
    routes = rib.desired_routes()
    ch = rib.mark_stale(C1.address)
    assert not ch.kernel_add and not ch.kernel_remove  # forwarding carries on
    assert not any(d.withdraw for d in ch.exports.values())
    assert rib.best(PFX).stale and rib.desired_routes() == routes
    assert not rib.is_up(C1.address)
    with pytest.raises(ValueError, match="not up"):
        rib.announce(C1.address, [keep])
    rib.peer_up(policy(C1))
    rib.announce(C1.address, [keep])  # re-announced: fresh
    assert not rib.best(PFX).stale
    ch = rib.end_of_rib(C1.address)
    assert rib.best("10.244.2.0/26") is None
    assert [k.prefix for k in ch.kernel_remove] == ["10.244.2.0/26"]
    assert ch.exports[N1.address].withdraw == ["10.244.2.0/26"]
    assert rib.all_end_of_rib() is False  # the others have not sent theirs


def test_sweep_stale_after_restart_timer_forgets_down_peer():
    rib = setup()
    rib.announce(C1.address, [learned(C1)])
    rib.mark_stale(C1.address)
    ch = rib.sweep_stale()
    assert rib.best(PFX) is None and [k.prefix for k in ch.kernel_remove] == [PFX]
    assert C1.address not in rib.peer_keys()


def test_one_computation_per_export_class_still_answers_every_peer_alike() -> None:
    """A reflected route is worked out once per export class (peers whose policies read
    alike), not once per peer: the answers must be exactly the per-peer ones. Two
    clients in one class, one client with next-hop self (another class), the same
    route from each client in turn (split horizon differs inside the class)."""
    c3 = PeerRef("10.1.0.13", 64512, "10.1.0.13", PeerKind.IBGP, rr_client=True)
    peers = {"C1": C1, "C2": C2, "C3": c3, "E1": E1}
    rib = Rib(RR)
    for name, peer in peers.items():
        kw = {"next_hop_mode": NextHopMode.SELF} if name == "C3" else {}
        rib.peer_up(policy(peer, **kw))
    from rib.policy import export_key

    for source in (C1, C2, c3):
        path = learned(source)
        changes = rib.update(source.address, [path])
        got = {k: next(iter(d.announce)) for k, d in changes.exports.items() if d.announce}
        want = {}
        for peer in peers.values():
            key = export_key(path, rib._peer(peer.address).policy, rib._ectx)
            if key is not None:
                want[peer.address] = key
        assert source.address not in got  # never back to where it came from
        assert {k: tuple(getattr(a, f) for f in (
            "next_hop", "origin", "as_path", "local_pref", "med", "communities",
            "large_communities", "originator_id", "cluster_list")) for k, a in got.items()} \
            == want
        rib.update(source.address, withdrawn=[PFX])
    # the two plain clients share a class; next-hop self and eBGP are classes of their own
    assert len(rib._classes) == 3
