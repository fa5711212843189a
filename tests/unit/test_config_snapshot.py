"""Snapshot: effective BGP configuration, node blocks, node addresses and AS."""

from __future__ import annotations

import pytest

from config.model import Affinity
from config.parse import parse_resource, parse_yaml_documents
from config.snapshot import Snapshot


def _conf(name, **spec):
    return parse_resource({"kind": "BGPConfiguration", "metadata": {"name": name}, "spec": spec})


def _node(name, **bgp):
    return parse_resource({"kind": "Node", "metadata": {"name": name}, "spec": {"bgp": bgp}})


def test_defaults_without_any_configuration():
    eff = Snapshot().effective_bgp_config("n1")
    assert eff.as_number == 64512
    assert eff.node_to_node_mesh_enabled is True
    assert eff.listen_port == 179
    assert eff.log_severity_screen == "Info"


def test_global_then_node_overlay():
    snap = Snapshot.from_resources([
        _conf("default", asNumber=65000, nodeToNodeMeshEnabled=False, listenPort=1790,
              logSeverityScreen="Debug"),
        _conf("node.n1", listenPort=1791, logSeverityScreen="Warning"),
        _conf("node.n2", asNumber="1.10"),
    ])
    n1 = snap.effective_bgp_config("n1")
    assert (n1.as_number, n1.node_to_node_mesh_enabled, n1.listen_port, n1.log_severity_screen) \
        == (65000, False, 1791, "Warning")
    n2 = snap.effective_bgp_config("n2")
    # Calico honours only listenPort, logSeverityScreen and prefixAdvertisements per
    # node (confd client.go updateBGPConfigCache); a node's AS is Node.spec.bgp.asNumber.
    assert (n2.as_number, n2.listen_port, n2.log_severity_screen) == (65000, 1790, "Debug")
    other = snap.effective_bgp_config("n3")
    assert (other.as_number, other.listen_port) == (65000, 1790)
    # the per-node resource knows which node it is for
    assert snap.bgp_configurations["node.n1"].node == "n1"
    assert snap.bgp_configurations["default"].node is None


def test_node_config_does_not_leak_to_other_nodes_with_prefix_names():
    snap = Snapshot.from_resources([_conf("node.n1", listenPort=2000)])
    assert snap.effective_bgp_config("n10").listen_port == 179


def test_node_blocks_only_confirmed_or_stateless_and_not_deleted():
    affs = [
        Affinity("n1", "10.0.0.64/26", "confirmed"),
        Affinity("n1", "10.0.0.0/26", ""),
        Affinity("n1", "10.0.1.0/26", "pending"),
        Affinity("n1", "10.0.2.0/26", "pendingDeletion"),
        Affinity("n1", "10.0.3.0/26", "confirmed", deleted=True),
        Affinity("n2", "10.0.4.0/26", "confirmed"),
        Affinity("n1", "fd00::/122", "confirmed"),
    ]
    snap = Snapshot(affinities=tuple(affs))
    assert snap.node_blocks("n1") == ("10.0.0.0/26", "10.0.0.64/26", "fd00::/122")
    assert snap.node_blocks("n2") == ("10.0.4.0/26",)
    assert snap.node_blocks("n3") == ()


def test_block_affinity_resources_become_affinities():
    ba = parse_resource({"kind": "BlockAffinity", "metadata": {"name": "n1-10-9-0-0-26"},
                         "spec": {"node": "n1", "cidr": "10.9.0.0/26", "state": "confirmed",
                                  "deleted": "false"}})
    snap = Snapshot.from_resources([ba])
    assert snap.node_blocks("n1") == ("10.9.0.0/26",)


def test_node_addresses_and_asn():
    snap = Snapshot.from_resources([
        _conf("default", asNumber=65001),
        _node("n1", ipv4Address="10.0.0.1/24", ipv6Address="fd00::1/64"),
        _node("n2", ipv4Address="10.0.0.2/24", asNumber=65010),
        parse_resource({"kind": "Node", "metadata": {"name": "n3"}, "spec": None}),
    ])
    assert snap.node_bgp_addresses("n1") == ("10.0.0.1", "fd00::1")
    assert snap.node_bgp_addresses("n2") == ("10.0.0.2", None)
    assert snap.node_bgp_addresses("n3") == (None, None)
    assert snap.node_bgp_addresses("absent") == (None, None)
    assert snap.node_asn("n1") == 65001
    assert snap.node_asn("n2") == 65010
    assert Snapshot().node_asn("x") == 64512


def test_snapshot_is_immutable_and_maps_are_read_only():
    snap = Snapshot.from_resources(parse_yaml_documents(
        "kind: IPPool\nmetadata: {name: p}\nspec: {cidr: 10.0.0.0/16, disabled: false}\n---\n"
        "kind: IPPool\nmetadata: {name: q}\nspec: {cidr: 10.1.0.0/16, disabled: true}\n"),
        revision=7, rejected={"/k": "bad"})
    assert snap.revision == 7 and dict(snap.rejected) == {"/k": "bad"}
    with pytest.raises(TypeError):
        snap.ippools["x"] = snap.ippools["p"]  # type: ignore[index]
    with pytest.raises(AttributeError):
        snap.revision = 8  # type: ignore[misc]
    assert [p.metadata.name for p in snap.enabled_pools()] == ["p"]
