"""Calico's etcd key layout in both directions, and kind spellings."""

from __future__ import annotations

import pytest

from config import keys

R = "/calico/resources/v3/projectcalico.org/"


@pytest.mark.parametrize(
    ("kind", "name", "key"),
    [
        ("IPPool", "default-ipv4-ippool", R + "ippools/default-ipv4-ippool"),
        ("BGPConfiguration", "default", R + "bgpconfigurations/default"),
        ("BGPConfiguration", "node.node1", R + "bgpconfigurations/node.node1"),
        ("BGPPeer", "bgppeer-1", R + "bgppeers/bgppeer-1"),
        ("BGPFilter", "f", R + "bgpfilters/f"),
        ("Node", "kube-master", R + "nodes/kube-master"),
        ("BlockAffinity", "n-10-0-0-0-26", R + "blockaffinities/n-10-0-0-0-26"),
    ],
)
def test_resource_keys_both_ways(kind, name, key):
    assert keys.resource_key(kind, name) == key
    assert keys.parse_resource_key(key) == (kind, name)
    assert keys.resource_prefix(kind) == key.rsplit("/", 1)[0] + "/"
    assert key.startswith(keys.RESOURCES_PREFIX)


@pytest.mark.parametrize(
    "key",
    [
        R + "ippools/",
        R + "ippools",
        R + "widgets/w",
        R + "ippools/ns/p",
        "/calico/resources/v3/other.org/ippools/p",
        "/calico/ipam/v2/host/n/ipv4/block/10.0.0.0-26",
    ],
)
def test_non_resource_keys(key):
    assert keys.parse_resource_key(key) is None


def test_resource_key_rejects_bad_names():
    for bad in ("", "a/b"):
        with pytest.raises(ValueError):
            keys.resource_key("IPPool", bad)


@pytest.mark.parametrize(
    ("spelling", "kind"),
    [
        ("ippool", "IPPool"), ("ippools", "IPPool"), ("IPPool", "IPPool"), ("ipp", "IPPool"),
        ("pools", "IPPool"), ("bgppeer", "BGPPeer"), ("BGPPeers", "BGPPeer"), ("bp", "BGPPeer"),
        ("bgpconfig", "BGPConfiguration"), ("bgpconfigurations", "BGPConfiguration"),
        ("node", "Node"), ("nodes", "Node"), ("no", "Node"), ("bgpfilters", "BGPFilter"),
        ("blockaffinity", "BlockAffinity"), ("affinities", "BlockAffinity"),
        (" IPPOOL ", "IPPool"),
    ],
)
def test_normalize_kind(spelling, kind):
    assert keys.normalize_kind(spelling) == kind


def test_normalize_kind_rejects_unknown():
    with pytest.raises(ValueError, match="unknown resource kind 'widgets'"):
        keys.normalize_kind("widgets")


@pytest.mark.parametrize(
    ("node", "cidr", "key"),
    [
        ("node1", "10.0.0.0/26", "/calico/ipam/v2/host/node1/ipv4/block/10.0.0.0-26"),
        ("n.example", "192.168.221.0/26",
         "/calico/ipam/v2/host/n.example/ipv4/block/192.168.221.0-26"),
        ("node1", "fd00:1::/122", "/calico/ipam/v2/host/node1/ipv6/block/fd00:1::-122"),
    ],
)
def test_affinity_keys_both_ways(node, cidr, key):
    assert keys.affinity_key(node, cidr) == key
    assert keys.parse_affinity_key(key) == (node, cidr)
    assert key.startswith(keys.affinity_prefix(node))
    assert key.startswith(keys.IPAM_HOST_PREFIX)


@pytest.mark.parametrize(
    "key",
    [
        "/calico/ipam/v2/host/n/ipv6/block/10.0.0.0-26",  # family mismatch
        "/calico/ipam/v2/host/n/ipv4/block/10.0.0.1-26",  # host bits
        "/calico/ipam/v2/host/n/ipv4/block/10.0.0.0",
        "/calico/ipam/v2/host/n/ipv4/blocks/10.0.0.0-26",
        "/calico/ipam/v2/host//ipv4/block/10.0.0.0-26",
        "/calico/ipam/v2/host/n/ipv4/block/10.0.0.0-26/x",
        "/calico/ipam/v2/assignment/ipv4/block/10.0.0.0-26",
    ],
)
def test_non_affinity_keys(key):
    assert keys.parse_affinity_key(key) is None


def test_block_and_handle_keys():
    key = "/calico/ipam/v2/assignment/ipv4/block/10.244.2.0-26"
    assert keys.block_key("10.244.2.0/26") == key
    assert keys.parse_block_key(key) == "10.244.2.0/26"
    assert keys.parse_block_key("/calico/ipam/v2/assignment/ipv6/block/10.244.2.0-26") is None
    assert keys.handle_key("k8s-pod-network.abc") == "/calico/ipam/v2/handle/k8s-pod-network.abc"
    with pytest.raises(ValueError):
        keys.handle_key("a/b")
    assert keys.cidr_to_key_part("fd00:0:0:1::/64") == "fd00:0:0:1::-64"
    assert keys.key_part_to_cidr("fd00:0:0:1::-64") == "fd00:0:0:1::/64"


def test_policy_kinds_keys():
    # Calico's etcd layout: networkpolicies are namespaced, the others are not.
    assert keys.key_for("NetworkPolicy", "p", "ns") == R + "networkpolicies/ns/p"
    assert keys.parse_namespaced_key(R + "networkpolicies/ns/p") == ("NetworkPolicy", "ns", "p")
    assert keys.key_for("GlobalNetworkPolicy", "g") == R + "globalnetworkpolicies/g"
    assert keys.parse_resource_key(R + "profiles/kns.a") == ("Profile", "kns.a")
    for alias, kind in (("gnp", "GlobalNetworkPolicy"), ("np", "NetworkPolicy"),
                        ("policies", "NetworkPolicy"), ("pro", "Profile"),
                        ("weps", "WorkloadEndpoint")):
        assert keys.normalize_kind(alias) == kind
    with pytest.raises(ValueError, match="namespace is required"):
        keys.key_for("NetworkPolicy", "p")
