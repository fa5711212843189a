"""Peer planning: mesh, BGPPeer scopes, selectors, route reflectors, precedence."""

from __future__ import annotations

import pytest

from bgpd.peers import plan_peers, router_id_for
from bgpd.peerspec import NextHopMode, PeerType
from config.parse import parse_resource
from config.snapshot import Snapshot


def node(name, v4=None, v6=None, asn=None, labels=None, rr=None):
    bgp = {}
    if v4:
        bgp["ipv4Address"] = v4 + "/24"
    if v6:
        bgp["ipv6Address"] = v6 + "/64"
    if asn:
        bgp["asNumber"] = asn
    if rr:
        bgp["routeReflectorClusterID"] = rr
    return {"apiVersion": "projectcalico.org/v3", "kind": "Node",
            "metadata": {"name": name, "labels": labels or {}}, "spec": {"bgp": bgp}}


def peer(name, **spec):
    meta = {"name": name}
    if "annotations" in spec:
        meta["annotations"] = spec.pop("annotations")
    return {"apiVersion": "projectcalico.org/v3", "kind": "BGPPeer", "metadata": meta,
            "spec": spec}


def bgpconf(name="default", **spec):
    return {"apiVersion": "projectcalico.org/v3", "kind": "BGPConfiguration",
            "metadata": {"name": name}, "spec": spec}


def snap(*docs):
    return Snapshot.from_resources([parse_resource(d) for d in docs])


THREE = (node("n1", "10.0.0.1"), node("n2", "10.0.0.2"), node("n3", "10.0.0.3"))


def test_full_mesh_greater_address_dials_lower_is_passive() -> None:
    # confd bgp_processor.go processMeshPeers: `if peerIP > currentNodeIP { Passive }`.
    plan = plan_peers(snap(*THREE), "n2")
    assert [(p.address, p.passive, p.peer_type, p.name) for p in plan.peers] == [
        ("10.0.0.1", False, PeerType.MESH, "Mesh_10_0_0_1"),  # we are greater: we dial
        ("10.0.0.3", True, PeerType.MESH, "Mesh_10_0_0_3"),   # n3 is greater: it dials us
    ]
    assert all(p.local_address == "10.0.0.2" and p.local_as == 64512 == p.peer_as
               for p in plan.peers)
    assert plan.node.router_id == "10.0.0.2"


def test_mesh_roles_compare_addresses_as_calico_does_as_strings() -> None:
    # Go compares the address strings: "10.0.0.10" < "10.0.0.9". A numeric comparison
    # would flip this pair, and in a mixed calico-node/podbgp mesh both sides would wait.
    s = snap(node("a", "10.0.0.9"), node("b", "10.0.0.10"))
    assert [p.passive for p in plan_peers(s, "a").peers] == [False]  # a ("10.0.0.9") dials
    assert [p.passive for p in plan_peers(s, "b").peers] == [True]


def test_mesh_dials_the_peer_nodes_listen_port() -> None:
    # confd processMeshPeers: the peer's listen_port (node.<peer>), else the global one.
    s = snap(*THREE, bgpconf(listenPort=1790), bgpconf("node.n3", listenPort=2790))
    by = {p.address: p for p in plan_peers(s, "n1").peers}
    assert (by["10.0.0.2"].port, by["10.0.0.3"].port) == (1790, 2790)
    assert by["10.0.0.2"].name == "Mesh_10_0_0_2"  # mesh names carry no port

def test_mesh_disabled_gives_no_mesh_sessions() -> None:
    plan = plan_peers(snap(*THREE, bgpconf(nodeToNodeMeshEnabled=False)), "n1")
    assert plan.peers == ()


def test_node_without_bgp_address_plans_nothing_and_says_why() -> None:
    plan = plan_peers(snap(*THREE), "n9")
    assert plan.peers == () and plan.node is None and "n9" in plan.problems[0]


def test_ipv6_sessions_pair_families() -> None:
    plan = plan_peers(snap(node("a", "10.0.0.1", "fd00::1"), node("b", "10.0.0.2", "fd00::2"),
                           node("c", "10.0.0.3")), "a")
    assert [(p.address, p.local_address) for p in plan.peers] == [
        ("10.0.0.2", "10.0.0.1"), ("10.0.0.3", "10.0.0.1"), ("fd00::2", "fd00::1")]


def test_global_node_specific_and_selector_scopes() -> None:
    s = snap(node("n1", "10.0.0.1", labels={"rack": "a"}), node("n2", "10.0.0.2"),
             bgpconf(nodeToNodeMeshEnabled=False),
             peer("tor-global", peerIP="10.0.0.100", asNumber=65001),
             peer("only-n2", node="n2", peerIP="10.0.0.101", asNumber=65002),
             peer("rack-a", nodeSelector="rack == 'a'", peerIP="10.0.0.102:1179",
                  asNumber="1.10"))
    n1 = {p.address: p for p in plan_peers(s, "n1").peers}
    n2 = {p.address: p for p in plan_peers(s, "n2").peers}
    assert set(n1) == {"10.0.0.100", "10.0.0.102"} and set(n2) == {"10.0.0.100", "10.0.0.101"}
    assert n1["10.0.0.100"].peer_type == PeerType.GLOBAL and not n1["10.0.0.100"].passive
    assert n1["10.0.0.102"].peer_type == PeerType.NODE
    assert n1["10.0.0.102"].port == 1179 and n1["10.0.0.102"].peer_as == 65546


def test_peer_selector_peers_with_selected_nodes_using_their_as() -> None:
    s = snap(node("n1", "10.0.0.1", labels={"role": "rr"}), node("n2", "10.0.0.2", asn=65010),
             node("n3", "10.0.0.3", labels={"role": "rr"}),
             bgpconf(nodeToNodeMeshEnabled=False),
             peer("to-rr", nodeSelector="!has(role)", peerSelector="role == 'rr'"))
    n2 = plan_peers(s, "n2").peers
    # Node-specific (nodeSelector) sessions always dial, whatever the addresses.
    assert [(p.address, p.peer_as, p.local_as, p.passive) for p in n2] == [
        ("10.0.0.1", 64512, 65010, False), ("10.0.0.3", 64512, 65010, False)]
    # The selected side peers back (Calico confd's reverse peerings), with the
    # nodeSelector's nodes only: n1 peers back with n2, never n3.
    n1 = plan_peers(s, "n1").peers
    assert [(p.address, p.peer_as, p.local_as, p.passive, p.peer_type) for p in n1] == [
        ("10.0.0.2", 65010, 64512, False, PeerType.NODE)]


def test_route_reflector_skips_mesh_and_marks_clients() -> None:
    s = snap(node("rr", "10.0.0.1", rr="1.1.1.1", labels={"rr": "y"}),
             node("c1", "10.0.0.2"), node("c2", "10.0.0.3"),
             peer("all-to-rr", nodeSelector="!has(rr)", peerSelector="has(rr)"),
             peer("rr-to-all", nodeSelector="has(rr)", peerSelector="!has(rr)"))
    rr = plan_peers(s, "rr").peers
    assert [(p.address, p.peer_type, p.rr_client) for p in rr] == [
        ("10.0.0.2", PeerType.NODE, True), ("10.0.0.3", PeerType.NODE, True)]
    c1 = {p.address: p for p in plan_peers(s, "c1").peers}
    # c1 still meshes with c2 (mesh on), and peers with the RR, never as a reflector itself
    assert c1["10.0.0.3"].peer_type == PeerType.MESH
    assert c1["10.0.0.1"].peer_type == PeerType.NODE and not c1["10.0.0.1"].rr_client


def test_node_specific_definition_wins_over_mesh_for_same_address() -> None:
    s = snap(*THREE, peer("n1-n2", node="n1", peerIP="10.0.0.2", asNumber=64512,
                          nextHopMode="Keep"),
             peer("legacy", node="n1", peerIP="10.0.0.3", asNumber=64512,
                  keepOriginalNextHop=True))
    plan = plan_peers(s, "n1")
    by = {p.address: p for p in plan.peers}
    assert by["10.0.0.2"].peer_type == PeerType.NODE
    assert by["10.0.0.2"].next_hop_mode == NextHopMode.KEEP
    # confd: the deprecated keepOriginalNextHop counts for eBGP sessions only.
    assert by["10.0.0.3"].next_hop_mode == NextHopMode.AUTO
    # Calico would also run the mesh sessions to both; podbgp runs one per address
    # and says why the other is not configured.
    assert sorted(s.name for s, _ in plan.rejected) == ["Mesh_10_0_0_2", "Mesh_10_0_0_3"]
    assert all("one session per peer address" in why for _, why in plan.rejected)


def test_passwords_resolved_through_reader_and_missing_reported() -> None:
    s = snap(*THREE, peer("tor", peerIP="10.0.0.100", asNumber=65001,
                          password={"secretKeyRef": {"name": "bgp", "key": "tor"}}),
             bgpconf(nodeMeshPassword={"secretKeyRef": {"name": "bgp", "key": "mesh"}}))
    secrets = {("bgp", "tor"): "s3cret"}
    plan = plan_peers(s, "n1", lambda n, k: secrets.get((n, k)))
    by = {p.address: p for p in plan.peers}
    assert by["10.0.0.100"].password == "s3cret"
    assert by["10.0.0.2"].password is None
    assert any("bgp/mesh" in pr for pr in plan.problems)


def test_timers_ttl_and_max_prefix_annotations() -> None:
    s = snap(*THREE, peer("tor", peerIP="10.0.0.100", asNumber=65001, keepaliveTime="10s",
                          maxRestartTime="5m", ttlSecurity=1,
                          annotations={"podbgp.io/max-prefixes": "100",
                                       "podbgp.io/max-prefix-action": "teardown"}),
             peer("bad", peerIP="10.0.0.101", asNumber=65001,
                  annotations={"podbgp.io/max-prefixes": "lots"}))
    by = {p.address: p for p in plan_peers(s, "n1").peers}
    tor = by["10.0.0.100"]
    # keepaliveTime does not change the hold time (issue 13: it used to shorten it).
    assert (tor.keepalive_time, tor.hold_time, tor.graceful_restart_time) == (10, 90, 300)
    assert (tor.ttl_security, tor.max_prefixes, tor.max_prefix_action) == (1, 100, "teardown")
    assert by["10.0.0.101"].max_prefixes is None
    assert any("lots" in pr for pr in plan_peers(s, "n1").problems)


@pytest.mark.parametrize("v4,v6,expect_v4", [("10.1.2.3", None, True), (None, "fd00::9", False)])
def test_router_id(v4, v6, expect_v4) -> None:
    rid = router_id_for(v4, v6, "x")
    assert (rid == v4) is expect_v4
    assert rid.count(".") == 3 and rid == router_id_for(v4, v6, "x")


@pytest.mark.parametrize(("name", "rid"), [("Testrobin123", "207.94.5.27"),
                                           ("nodeTest", "109.174.215.226")])
def test_router_id_of_an_ipv6_only_node_is_calicos_hash(name, rid) -> None:
    # projectcalico/calico 87c15906 confd/pkg/resource/template/template_funcs_test.go
    # Test_hashToIPv4_invalid_range/_valid_range: HashToIPv4 of the node name, a first
    # byte above 223 (239 for Testrobin123) less 32.
    assert router_id_for(None, "fd00::9", name) == rid


def test_documented_rr_peer_gives_reflector_sessions_to_every_node() -> None:
    # Calico's docs: one BGPPeer, nodeSelector all(), peerSelector the reflectors.
    # The reflector matches the peerSelector, so it peers back with every node.
    s = snap(node("rr", "10.0.0.1", rr="244.0.0.1", labels={"route-reflector": "true"}),
             node("c1", "10.0.0.2"), node("c2", "10.0.0.3"),
             bgpconf(nodeToNodeMeshEnabled=False),
             peer("peer-with-route-reflectors", nodeSelector="all()",
                  peerSelector="route-reflector == 'true'", maxRestartTime="10s"))
    rr = plan_peers(s, "rr").peers
    assert [(p.address, p.passive, p.rr_client, p.graceful_restart_time) for p in rr] == [
        ("10.0.0.2", False, True, 10), ("10.0.0.3", False, True, 10)]
    c2 = plan_peers(s, "c2").peers
    # A nodeSelector peering is node-specific: confd makes neither side passive.
    assert [(p.address, p.passive, p.rr_client) for p in c2] == [("10.0.0.1", False, False)]


def test_peer_ip_naming_a_node_gives_that_node_the_reverse_session() -> None:
    s = snap(*THREE, bgpconf(nodeToNodeMeshEnabled=False),
             peer("n2-to-n1", node="n2", peerIP="10.0.0.1", asNumber=64512),
             peer("other-as", node="n3", peerIP="10.0.0.1", asNumber=65000))
    n1 = plan_peers(s, "n1").peers
    assert [(p.address, p.name, p.resource) for p in n1] == [
        ("10.0.0.2", "Node_10_0_0_2", "n2-to-n1")]


def test_route_reflector_example_of_the_docs_plans_as_written() -> None:
    """docs/route-reflector.md's YAML, as a user would apply it, plus two client nodes:
    the reflector peers with both clients as its clients, each client with the
    reflector only (the mesh is off), and the reflector never with itself."""
    import re
    from pathlib import Path

    from config.parse import parse_yaml_documents

    text = (Path(__file__).parents[2] / "docs" / "route-reflector.md").read_text()
    example = re.search(r"```yaml\n(.*?)```", text, re.S).group(1)
    s = Snapshot.from_resources([*parse_yaml_documents(example, strict=True),
                                 parse_resource(node("c1", "10.0.1.1")),
                                 parse_resource(node("c2", "10.0.1.2"))])
    rr = plan_peers(s, "rr1")
    assert rr.node.cluster_id == "244.0.0.1"
    assert [(p.address, p.rr_client, p.peer_as) for p in rr.peers] == [
        ("10.0.1.1", True, 64512), ("10.0.1.2", True, 64512)]
    c1 = plan_peers(s, "c1").peers
    assert [(p.address, p.rr_client) for p in c1] == [("10.0.0.1", False)]
