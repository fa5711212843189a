"""Validation table for config.model via config.parse: one bad input per rule.

Each case names the field the error must point at and a fragment of the
reason, so a rule that silently stops firing (or blames the wrong field)
fails here.
"""

from __future__ import annotations

import copy

import pytest

from config.errors import ConfigError
from config.model import duration_seconds, parse_as_number, split_peer_ip
from config.parse import parse_resource, to_calico_dict, unknown_fields

DELETE = object()

BASES = {
    "IPPool": {
        "apiVersion": "projectcalico.org/v3",
        "kind": "IPPool",
        "metadata": {"name": "pool-1"},
        "spec": {"cidr": "10.0.0.0/16"},
    },
    "IPPool6": {
        "apiVersion": "projectcalico.org/v3",
        "kind": "IPPool",
        "metadata": {"name": "pool-6"},
        "spec": {"cidr": "fd00:1::/112"},
    },
    "BGPConfiguration": {
        "apiVersion": "projectcalico.org/v3",
        "kind": "BGPConfiguration",
        "metadata": {"name": "default"},
        "spec": {"asNumber": 64512},
    },
    "BGPPeer": {
        "apiVersion": "projectcalico.org/v3",
        "kind": "BGPPeer",
        "metadata": {"name": "peer-1"},
        "spec": {"peerIP": "10.0.0.1", "asNumber": 64513},
    },
    "BGPFilter": {
        "apiVersion": "projectcalico.org/v3",
        "kind": "BGPFilter",
        "metadata": {"name": "filter-1"},
        "spec": {"exportV4": [{"action": "Accept", "cidr": "10.0.0.0/8", "matchOperator": "In"}]},
    },
    "Node": {
        "apiVersion": "projectcalico.org/v3",
        "kind": "Node",
        "metadata": {"name": "node-1"},
        "spec": {"bgp": {"ipv4Address": "10.0.0.1/24"}},
    },
    "BlockAffinity": {
        "apiVersion": "projectcalico.org/v3",
        "kind": "BlockAffinity",
        "metadata": {"name": "node-1-10-0-0-0-26"},
        "spec": {"node": "node-1", "cidr": "10.0.0.0/26", "state": "confirmed", "deleted": False},
    },
}


def build(base: str, patch: dict) -> dict:
    """BASES[base] with dotted-path ``patch`` applied (DELETE removes a key)."""
    doc = copy.deepcopy(BASES[base])
    for path, value in patch.items():
        parts = path.split(".")
        node = doc
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        if value is DELETE:
            node.pop(parts[-1], None)
        else:
            node[parts[-1]] = value
    return doc


def test_bases_are_valid():
    for name in BASES:
        parse_resource(BASES[name])


# (base, patch, expected field path, reason fragment)
BAD = [
    # --- resource envelope and metadata
    ("IPPool", {"kind": "IPPools"}, "kind", "unknown kind"),
    ("IPPool", {"kind": DELETE}, "kind", "missing"),
    ("IPPool", {"apiVersion": "projectcalico.org/v1"}, "apiVersion", "must be"),
    ("IPPool", {"state": {}}, "state", "unknown field"),
    ("IPPool", {"metadata": DELETE}, "metadata", "missing"),
    ("IPPool", {"metadata.name": DELETE}, "metadata.name", "missing"),
    ("IPPool", {"metadata.name": ""}, "metadata.name", "empty"),
    ("IPPool", {"metadata.name": "Pool-1"}, "metadata.name", "lowercase"),
    ("IPPool", {"metadata.name": "pool_1"}, "metadata.name", "lowercase"),
    ("IPPool", {"metadata.name": "-pool"}, "metadata.name", "lowercase"),
    ("IPPool", {"metadata.name": "a" * 254}, "metadata.name", "max 253"),
    ("IPPool", {"metadata.name": 7}, "metadata.name", "string"),
    ("IPPool", {"metadata.colour": "red"}, "metadata.colour", "unknown field"),
    ("IPPool", {"metadata.labels": ["a"]}, "metadata.labels", "mapping"),
    ("IPPool", {"metadata.labels": {"-bad": "x"}}, "metadata.labels", "label key"),
    ("IPPool", {"metadata.labels": {"Bad_Prefix/x": "x"}}, "metadata.labels", "prefix"),
    ("IPPool", {"metadata.labels": {"a": "x" * 64}}, "metadata.labels", "63"),
    ("IPPool", {"metadata.labels": {"a": "has space"}}, "metadata.labels", "value"),
    ("IPPool", {"metadata.labels": {"a": ["x"]}}, "metadata.labels", "strings"),
    ("IPPool", {"metadata.generation": "one"}, "metadata.generation", "integer"),
    # --- IPPool
    ("IPPool", {"spec": DELETE}, "spec", "missing"),
    ("IPPool", {"spec": "cidr"}, "spec", "mapping"),
    ("IPPool", {"spec.cidr": DELETE}, "spec.cidr", "missing"),
    ("IPPool", {"spec.cidr": "10.0.0.0"}, "spec.cidr", "CIDR"),
    ("IPPool", {"spec.cidr": "10.0.0.0/33"}, "spec.cidr", "CIDR"),
    ("IPPool", {"spec.cidr": "bogus/16"}, "spec.cidr", "CIDR"),
    ("IPPool", {"spec.cidr": "10.0.0.1/16"}, "spec.cidr", "strictly masked"),
    ("IPPool", {"spec.cidr": "127.0.0.0/16"}, "spec.cidr", "loopback"),
    ("IPPool", {"spec.cidr": "169.254.0.0/16"}, "spec.cidr", "link-local"),
    ("IPPool6", {"spec.cidr": "fe80::/112"}, "spec.cidr", "link-local"),
    ("IPPool", {"spec.cidr": "224.0.0.0/8"}, "spec.cidr", "multicast"),
    ("IPPool", {"spec.blockSize": 19}, "spec.blockSize", "between 20 and 32"),
    ("IPPool", {"spec.blockSize": 33}, "spec.blockSize", "between 20 and 32"),
    ("IPPool6", {"spec.blockSize": 115}, "spec.blockSize", "between 116 and 128"),
    ("IPPool6", {"spec.blockSize": 129}, "spec.blockSize", "between 116 and 128"),
    ("IPPool6", {"spec.blockSize": 26}, "spec.blockSize", "between 116 and 128"),
    ("IPPool", {"spec.cidr": "10.0.0.0/28"}, "spec.blockSize", "smaller than the pool"),
    ("IPPool", {"spec.blockSize": "26"}, "spec.blockSize", "integer"),
    ("IPPool", {"spec.ipipMode": "Sometimes"}, "spec.ipipMode", "Never"),
    ("IPPool6", {"spec.ipipMode": "CrossSubnet"}, "spec.ipipMode", "IPv6"),
    ("IPPool", {"spec.vxlanMode": "Often"}, "spec.vxlanMode", "Never"),
    ("IPPool", {"spec.ipipMode": "Always", "spec.vxlanMode": "CrossSubnet"}, "spec.vxlanMode",
     "both"),
    ("IPPool", {"spec.natOutgoing": "yes"}, "spec.natOutgoing", "true or false"),
    ("IPPool", {"spec.disabled": 1}, "spec.disabled", "true or false"),
    ("IPPool", {"spec.disableBGPExport": "x"}, "spec.disableBGPExport", "true or false"),
    ("IPPool", {"spec.nodeSelector": "has(zone"}, "spec.nodeSelector", "position"),
    ("IPPool", {"spec.nodeSelector": 5}, "spec.nodeSelector", "string"),
    ("IPPool", {"spec.allowedUses": ["Workload", "Pets"]}, "spec.allowedUses[1]", "Tunnel"),
    ("IPPool", {"spec.allowedUses": ["Tunnel", "Tunnel"]}, "spec.allowedUses", "repeat"),
    ("IPPool", {"spec.allowedUses": ["LoadBalancer", "Workload"]}, "spec.allowedUses",
     "LoadBalancer"),
    ("IPPool", {"spec.assignmentMode": "Sometimes"}, "spec.assignmentMode", "Automatic"),
    ("IPPool", {"spec.ipip": {"enabled": "yes"}}, "spec.ipip.enabled", "true or false"),
    ("IPPool", {"spec.colour": "red"}, "spec.colour", "unknown field"),
    # --- BGPConfiguration
    ("BGPConfiguration", {"spec.logSeverityScreen": "Loud"}, "spec.logSeverityScreen", "Info"),
    ("BGPConfiguration", {"spec.nodeToNodeMeshEnabled": "maybe"},
     "spec.nodeToNodeMeshEnabled", "true or false"),
    ("BGPConfiguration", {"spec.asNumber": 0}, "spec.asNumber", "between 1 and 4294967295"),
    ("BGPConfiguration", {"spec.asNumber": 4294967296}, "spec.asNumber", "between 1"),
    ("BGPConfiguration", {"spec.asNumber": -5}, "spec.asNumber", "between 1"),
    ("BGPConfiguration", {"spec.asNumber": "1.70000"}, "spec.asNumber", "0-65535"),
    ("BGPConfiguration", {"spec.asNumber": "as64512"}, "spec.asNumber", "digits"),
    ("BGPConfiguration", {"spec.asNumber": True}, "spec.asNumber", "integer or a string"),
    ("BGPConfiguration", {"spec.asNumber": 645.12}, "spec.asNumber", "integer or a string"),
    ("BGPConfiguration", {"spec.serviceClusterIPs": [{"cidr": "nope/16"}]},
     "spec.serviceClusterIPs[0].cidr", "CIDR"),
    ("BGPConfiguration", {"spec.serviceExternalIPs": [{"cidr": "10.0.0.0"}]},
     "spec.serviceExternalIPs[0].cidr", "CIDR"),
    ("BGPConfiguration", {"spec.serviceLoadBalancerIPs": [{"cidr": "1.0.0.0/8", "x": 1}]},
     "spec.serviceLoadBalancerIPs[0].x", "unknown field"),
    ("BGPConfiguration", {"spec.serviceClusterIPs": "10.0.0.0/8"}, "spec.serviceClusterIPs",
     "list"),
    ("BGPConfiguration", {"spec.listenPort": 0}, "spec.listenPort", "between 1 and 65535"),
    ("BGPConfiguration", {"spec.listenPort": 65536}, "spec.listenPort", "between 1 and 65535"),
    ("BGPConfiguration", {"spec.listenPort": "179"}, "spec.listenPort", "integer"),
    ("BGPConfiguration", {"spec.communities": [{"name": "c", "value": "1:70000"}]},
     "spec.communities[0].value", "16-bit"),
    ("BGPConfiguration", {"spec.communities": [{"name": "c", "value": "a:b"}]},
     "spec.communities[0].value", "aa:nn"),
    ("BGPConfiguration", {"spec.communities": [{"name": "c", "value": "1:2:4294967296"}]},
     "spec.communities[0].value", "32-bit"),
    ("BGPConfiguration", {"spec.communities": [{"name": "bad name", "value": "1:2"}]},
     "spec.communities[0].name", "letters"),
    ("BGPConfiguration", {"spec.communities": [{"name": "c", "value": "1:2"},
                                               {"name": "c", "value": "1:3"}]},
     "spec.communities[1].name", "repeated"),
    ("BGPConfiguration", {"spec.prefixAdvertisements": [{"cidr": "10.0.0.0/33"}]},
     "spec.prefixAdvertisements[0].cidr", "CIDR"),
    ("BGPConfiguration", {"spec.prefixAdvertisements": [{"cidr": "10.0.0.0/8",
                                                         "communities": ["nosuch"]}]},
     "spec.prefixAdvertisements[0].communities[0]", "neither"),
    ("BGPConfiguration", {"spec.nodeMeshPassword": {"secretKeyRef": {"name": "s"}}},
     "spec.nodeMeshPassword.secretKeyRef.key", "missing"),
    ("BGPConfiguration", {"spec.nodeMeshPassword": {"secretKeyRef": {"name": "", "key": "k"}}},
     "spec.nodeMeshPassword.secretKeyRef.name", "empty"),
    ("BGPConfiguration", {"spec.nodeMeshMaxRestartTime": "2 minutes"},
     "spec.nodeMeshMaxRestartTime", "duration"),
    ("BGPConfiguration", {"spec.nodeMeshMaxRestartTime": 120},
     "spec.nodeMeshMaxRestartTime", "duration"),
    ("BGPConfiguration", {"spec.nodeToNodeMeshEnabled": False,
                          "spec.nodeMeshMaxRestartTime": "120s"},
     "spec.nodeMeshMaxRestartTime", "nodeToNodeMeshEnabled is false"),
    ("BGPConfiguration", {"spec.nodeToNodeMeshEnabled": False,
                          "spec.nodeMeshPassword": {"secretKeyRef": {"name": "s", "key": "k"}}},
     "spec.nodeMeshPassword", "nodeToNodeMeshEnabled is false"),
    ("BGPConfiguration", {"spec.bindMode": "All"}, "spec.bindMode", "NodeIP"),
    ("BGPConfiguration", {"spec.ignoredInterfaces": [1]}, "spec.ignoredInterfaces[0]", "string"),
    ("BGPConfiguration", {"spec.localWorkloadPeeringIPV4": "nope"},
     "spec.localWorkloadPeeringIPV4", "IP address"),
    ("BGPConfiguration", {"spec.localWorkloadPeeringIPV4": "fd00::1"},
     "spec.localWorkloadPeeringIPV4", "IPv4"),
    ("BGPConfiguration", {"spec.localWorkloadPeeringIPV6": "10.0.0.1"},
     "spec.localWorkloadPeeringIPV6", "IPv6"),
    ("BGPConfiguration", {"spec.meshEnabled": True}, "spec.meshEnabled", "unknown field"),
    # --- BGPPeer
    ("BGPPeer", {"spec.peerIP": "999.999.999.999"}, "spec.peerIP", "IP address"),
    ("BGPPeer", {"spec.peerIP": "10.0.0.1:0"}, "spec.peerIP", "port"),
    ("BGPPeer", {"spec.peerIP": "10.0.0.1:70000"}, "spec.peerIP", "port"),
    ("BGPPeer", {"spec.peerIP": "10.0.0.1:http"}, "spec.peerIP", "port"),
    ("BGPPeer", {"spec.peerIP": "[fd00::1:179"}, "spec.peerIP", "]"),
    ("BGPPeer", {"spec.peerIP": "[10.0.0.1]:179"}, "spec.peerIP", "IPv6"),
    ("BGPPeer", {"spec.peerIP": "[fd00::1]179"}, "spec.peerIP", ":port"),
    ("BGPPeer", {"spec.peerIP": 167772161}, "spec.peerIP", "IP address"),
    ("BGPPeer", {"spec.asNumber": "x"}, "spec.asNumber", "digits"),
    ("BGPPeer", {"spec.node": "n1", "spec.nodeSelector": "all()"}, "spec.nodeSelector",
     "node and nodeSelector"),
    ("BGPPeer", {"spec.peerSelector": "has(rr)", "spec.asNumber": DELETE}, "spec.peerSelector",
     "peerIP and peerSelector"),
    ("BGPPeer", {"spec.peerIP": DELETE, "spec.peerSelector": "has(rr)"}, "spec.asNumber",
     "peerSelector"),
    ("BGPPeer", {"spec.nodeSelector": "rack = 'a'"}, "spec.nodeSelector", "position"),
    ("BGPPeer", {"spec.peerIP": DELETE, "spec.asNumber": DELETE, "spec.peerSelector": "has("},
     "spec.peerSelector", "position"),
    ("BGPPeer", {"spec.node": "Node_1"}, "spec.node", "node name"),
    ("BGPPeer", {"spec.keepOriginalNextHop": "true"}, "spec.keepOriginalNextHop", "true or false"),
    ("BGPPeer", {"spec.password": {"secretKeyRef": {"name": "s"}}},
     "spec.password.secretKeyRef.key", "missing"),
    ("BGPPeer", {"spec.password": {"value": "hunter2"}}, "spec.password.value", "unknown field"),
    ("BGPPeer", {"spec.password": "hunter2"}, "spec.password", "mapping"),
    ("BGPPeer", {"spec.sourceAddress": "Other"}, "spec.sourceAddress", "UseNodeIP"),
    ("BGPPeer", {"spec.failureDetectionMode": "BFD"}, "spec.failureDetectionMode",
     "BFDIfDirectlyConnected"),
    ("BGPPeer", {"spec.restartMode": "Never"}, "spec.restartMode", "GracefulRestart"),
    ("BGPPeer", {"spec.maxRestartTime": "10 s"}, "spec.maxRestartTime", "duration"),
    ("BGPPeer", {"spec.maxRestartTime": "10d"}, "spec.maxRestartTime", "duration"),
    ("BGPPeer", {"spec.keepaliveTime": "soon"}, "spec.keepaliveTime", "duration"),
    ("BGPPeer", {"spec.birdGatewayMode": "Direct"}, "spec.birdGatewayMode", "Recursive"),
    ("BGPPeer", {"spec.numAllowedLocalASNumbers": -1}, "spec.numAllowedLocalASNumbers",
     "negative"),
    ("BGPPeer", {"spec.ttlSecurity": 256}, "spec.ttlSecurity", "0 and 255"),
    ("BGPPeer", {"spec.ttlSecurity": "1"}, "spec.ttlSecurity", "integer"),
    ("BGPPeer", {"spec.filters": ["Bad_Filter"]}, "spec.filters", "filter name"),
    ("BGPPeer", {"spec.filters": "f1"}, "spec.filters", "list"),
    ("BGPPeer", {"spec.localASNumber": 0}, "spec.localASNumber", "between 1"),
    ("BGPPeer", {"spec.reachableBy": "gateway"}, "spec.reachableBy", "IP address"),
    ("BGPPeer", {"spec.reachableBy": "fd00::1"}, "spec.reachableBy", "family"),
    ("BGPPeer", {"spec.nextHopMode": "Never"}, "spec.nextHopMode", "Auto"),
    ("BGPPeer", {"spec.keepOriginalNextHop": True, "spec.nextHopMode": "Self"},
     "spec.nextHopMode", "keepOriginalNextHop"),
    ("BGPPeer", {"spec.peerASN": 1}, "spec.peerASN", "unknown field"),
    # --- BGPFilter
    ("BGPFilter", {"spec.exportV4": [{"cidr": "10.0.0.0/8", "matchOperator": "In"}]},
     "spec.exportV4[0].action", "missing"),
    ("BGPFilter", {"spec.exportV4": [{"action": "Drop"}]}, "spec.exportV4[0].action", "Accept"),
    ("BGPFilter", {"spec.importV4": [{"action": "Accept", "cidr": "10.0.0.0/8",
                                      "matchOperator": "Within"}]},
     "spec.importV4[0].matchOperator", "Equal"),
    ("BGPFilter", {"spec.importV4": [{"action": "Accept", "cidr": "10.0.0.0/8"}]},
     "spec.importV4[0].matchOperator", "together"),
    ("BGPFilter", {"spec.importV4": [{"action": "Accept", "matchOperator": "In"}]},
     "spec.importV4[0].cidr", "together"),
    ("BGPFilter", {"spec.exportV4": [{"action": "Accept", "cidr": "fd00::/64",
                                      "matchOperator": "In"}]},
     "spec.exportV4[0].cidr", "IPv4"),
    ("BGPFilter", {"spec.importV6": [{"action": "Accept", "cidr": "10.0.0.0/8",
                                      "matchOperator": "In"}]},
     "spec.importV6[0].cidr", "IPv6"),
    ("BGPFilter", {"spec.exportV6": [{"action": "Accept", "cidr": "fd00::x/64",
                                      "matchOperator": "In"}]},
     "spec.exportV6[0].cidr", "CIDR"),
    ("BGPFilter", {"spec.exportV4": [{"action": "Accept", "cidr": "10.0.0.0/8",
                                      "matchOperator": "In", "prefixLength": {"max": 33}}]},
     "spec.exportV4[0].prefixLength.max", "0-32"),
    ("BGPFilter", {"spec.exportV6": [{"action": "Accept", "cidr": "fd00::/64",
                                      "matchOperator": "In", "prefixLength": {"max": 129}}]},
     "spec.exportV6[0].prefixLength.max", "0-128"),
    ("BGPFilter", {"spec.exportV4": [{"action": "Accept", "cidr": "10.0.0.0/8",
                                      "matchOperator": "In",
                                      "prefixLength": {"min": 28, "max": 24}}]},
     "spec.exportV4[0].prefixLength.min", "exceed"),
    ("BGPFilter", {"spec.exportV4": [{"action": "Accept", "cidr": "10.0.0.0/16",
                                      "matchOperator": "In", "prefixLength": {"max": 8}}]},
     "spec.exportV4[0].prefixLength.max", "shorter"),
    # v3.32 rule fields
    ("BGPFilter", {"spec.importV4": [{"action": "Accept", "peerType": "ebgp"}]},
     "spec.importV4[0].peerType", "eBGP"),
    ("BGPFilter", {"spec.importV4": [{"action": "Accept", "communities": {"values": []}}]},
     "spec.importV4[0].communities.values", "exactly one"),
    ("BGPFilter", {"spec.importV4": [{"action": "Accept",
                                      "communities": {"values": ["1:2", "3:4"]}}]},
     "spec.importV4[0].communities.values", "exactly one"),
    ("BGPFilter", {"spec.importV4": [{"action": "Accept", "communities": {"values": ["70000:1"]}}]},
     "spec.importV4[0].communities.values[0]", "16-bit"),
    ("BGPFilter", {"spec.importV4": [{"action": "Accept", "asPathPrefix": ["x"]}]},
     "spec.importV4[0].asPathPrefix[0]", "digits"),
    ("BGPFilter", {"spec.importV4": [{"action": "Accept", "priority": 0}]},
     "spec.importV4[0].priority", "between 1"),
    ("BGPFilter", {"spec.importV4": [{"action": "Reject",
                                      "operations": [{"setPriority": {"value": 5}}]}]},
     "spec.importV4[0].operations", "only be used with action Accept"),
    ("BGPFilter", {"spec.importV4": [{"action": "Accept", "operations": [{}]}]},
     "spec.importV4[0].operations[0]", "exactly one"),
    ("BGPFilter", {"spec.importV4": [{"action": "Accept", "operations": [
        {"setPriority": {"value": 5}, "addCommunity": {"value": "1:1"}}]}]},
     "spec.importV4[0].operations[0]", "exactly one"),
    ("BGPFilter", {"spec.importV4": [{"action": "Accept", "operations": [
        {"prependASPath": {"prefix": []}}]}]},
     "spec.importV4[0].operations[0].prependASPath.prefix", "1 to 10"),
    ("BGPFilter", {"spec.importV4": [{"action": "Accept", "operations": [
        {"setPriority": {"value": 2147483647}}]}]},
     "spec.importV4[0].operations[0].setPriority.value", "between 1"),
    ("BGPFilter", {"spec.exportV4": [{"action": "Accept", "prefixLength": {"min": 8}}]},
     "spec.exportV4[0].prefixLength", "needs cidr"),
    ("BGPFilter", {"spec.exportV4": [{"action": "Accept", "cidr": "10.0.0.0/8",
                                      "matchOperator": "In", "prefixLength": {"min": "8"}}]},
     "spec.exportV4[0].prefixLength.min", "integer"),
    ("BGPFilter", {"spec.exportV4": [{"action": "Accept", "source": "Local"}]},
     "spec.exportV4[0].source", "RemotePeers"),
    ("BGPFilter", {"spec.exportV4": [{"action": "Accept", "interface": "eth 0"}]},
     "spec.exportV4[0].interface", "interface"),
    ("BGPFilter", {"spec.exportV4": [{"action": "Accept", "interface": "x" * 16}]},
     "spec.exportV4[0].interface", "15"),
    ("BGPFilter", {"spec.exportV4": [{"action": "Accept", "community": "1:2"}]},
     "spec.exportV4[0].community", "unknown field"),
    ("BGPFilter", {"spec.exportV5": []}, "spec.exportV5", "unknown field"),
    ("BGPConfiguration", {"spec.programClusterRoutes": "Yes"}, "spec.programClusterRoutes",
     "Enabled"),
    ("BGPConfiguration", {"spec.serviceLoadBalancerAggregation": "On"},
     "spec.serviceLoadBalancerAggregation", "Enabled"),
    ("BGPConfiguration", {"spec.ipv4NormalRoutePriority": 0}, "spec.ipv4NormalRoutePriority",
     "between 1"),
    ("BGPConfiguration", {"spec.ipv6NormalRoutePriority": "5"}, "spec.ipv6NormalRoutePriority",
     "integer"),
    ("BGPPeer", {"spec.reversePeering": "Never"}, "spec.reversePeering", "Auto"),
    ("BGPPeer", {"spec.localWorkloadSelector": "color == 'red'"}, "spec.peerIP",
     "localWorkloadSelector"),
    ("BGPPeer", {"spec.peerIP": DELETE, "spec.asNumber": DELETE,
                 "spec.localWorkloadSelector": "color == 'red'"}, "spec.asNumber", "required"),
    ("BGPPeer", {"spec.peerIP": DELETE, "spec.localWorkloadSelector": "has("},
     "spec.localWorkloadSelector", "position"),
    ("BGPPeer", {"spec.peerIP": DELETE, "spec.asNumber": DELETE, "spec.peerSelector": "all()",
                 "spec.reachableBy": "10.0.0.1"}, "spec.reachableBy", "peerIP is empty"),
    ("IPPool", {"spec.namespaceSelector": "has("}, "spec.namespaceSelector", "position"),
    ("IPPool", {"status": {"conditions": [{"type": "Ready"}]}}, "status.conditions[0].status",
     "missing"),
    # --- Node
    ("Node", {"spec.interfaces": [{"name": 5}]}, "spec.interfaces[0].name", "string"),
    ("Node", {"spec.interfaces": "eth0"}, "spec.interfaces", "list"),
    ("Node", {"spec.bgp.ipv4Address": "fd00::1/64"}, "spec.bgp.ipv4Address", "IPv4"),
    ("Node", {"spec.bgp.ipv4Address": "10.0.0.1/40"}, "spec.bgp.ipv4Address", "address"),
    ("Node", {"spec.bgp.ipv6Address": "10.0.0.1/24"}, "spec.bgp.ipv6Address", "IPv6"),
    ("Node", {"spec.bgp.asNumber": "1.2.3"}, "spec.bgp.asNumber", "digits"),
    ("Node", {"spec.bgp.routeReflectorClusterID": "1.2.3"},
     "spec.bgp.routeReflectorClusterID", "IP address"),
    ("Node", {"spec.bgp.routeReflectorClusterID": "fd00::1"},
     "spec.bgp.routeReflectorClusterID", "IPv4"),
    ("Node", {"spec.bgp.ipv4IPIPTunnelAddr": "tunnel"}, "spec.bgp.ipv4IPIPTunnelAddr",
     "IP address"),
    ("Node", {"spec.bgp.port": 179}, "spec.bgp.port", "unknown field"),
    ("Node", {"spec.addresses": [{"address": "nope"}]}, "spec.addresses[0].address",
     "IP address"),
    ("Node", {"spec.addresses": [{"address": "10.0.0.1", "type": "Public"}]},
     "spec.addresses[0].type", "InternalIP"),
    ("Node", {"spec.ipv4VXLANTunnelAddr": "x"}, "spec.ipv4VXLANTunnelAddr", "IP address"),
    ("Node", {"spec.wireguard": {"interfaceIPv4Address": "x"}},
     "spec.wireguard.interfaceIPv4Address", "IP address"),
    ("Node", {"spec.orchRefs": [{"nodeName": "n", "orch": "k8s"}]}, "spec.orchRefs[0].orch",
     "unknown field"),
    ("Node", {"status": {"podCIDRs": "10.0.0.0/24"}}, "status.podCIDRs", "list"),
    # --- BlockAffinity
    ("BlockAffinity", {"spec.state": "bogus"}, "spec.state", "confirmed"),
    ("BlockAffinity", {"spec.deleted": "maybe"}, "spec.deleted", "true or false"),
    ("BlockAffinity", {"spec.deleted": 0}, "spec.deleted", "true or false"),
    ("BlockAffinity", {"spec.cidr": "10.0.0.1/26"}, "spec.cidr", "host bits"),
    ("BlockAffinity", {"spec.cidr": "10.0.0.0"}, "spec.cidr", "CIDR"),
    ("BlockAffinity", {"spec.node": DELETE}, "spec.node", "missing"),
    ("BlockAffinity", {"spec.node": "Node 1"}, "spec.node", "node name"),
    ("BlockAffinity", {"spec.type": "pet"}, "spec.type", "host"),
]


@pytest.mark.parametrize(
    ("base", "patch", "field", "fragment"),
    BAD,
    ids=[f"{b}:{f}:{frag}" for b, _, f, frag in BAD],
)
def test_rejected_with_field_and_reason(base, patch, field, fragment):
    doc = build(base, patch)
    with pytest.raises(ConfigError) as info:
        parse_resource(doc, strict=True)  # what bgpctl apply does (an unknown field is an error)
    err = info.value
    assert err.field == field, str(err)
    assert fragment.lower() in err.reason.lower(), str(err)
    text = str(err)
    assert text.startswith(f'{err.kind} "{doc["metadata"]["name"]}"' if isinstance(
        doc.get("metadata"), dict) and isinstance(doc["metadata"].get("name"), str)
        and doc["metadata"]["name"] else err.kind)
    assert field in text


UNKNOWN = [case for case in BAD if case[3] == "unknown field"]


@pytest.mark.parametrize(
    ("base", "patch", "field", "fragment"), UNKNOWN, ids=[f"{b}:{f}" for b, _, f, _ in UNKNOWN]
)
def test_unknown_field_is_kept_when_reading(base, patch, field, fragment):
    # Reading the datastore (strict=False) keeps the resource, names the field, and
    # writes it back where it was: read leniently, write faithfully.
    doc = build(base, patch)
    res = parse_resource(doc)
    assert [path for path, _ in unknown_fields(res)] == [field]
    assert res == parse_resource(build(base, patch)), "parsing is deterministic"
    out = to_calico_dict(res)
    node_in, node_out = doc, out
    for part in field.replace("[0]", ".0").split("."):
        key = int(part) if part.isdigit() else part
        node_in, node_out = node_in[key], node_out[key]
    assert node_out == node_in
    assert parse_resource(out) == res  # a second round trip changes nothing


def test_unknown_null_and_empty_values_survive_the_round_trip():
    # exclude_none and Calico's ""-means-unset must not drop fields podbgp does not model.
    doc = build("Node", {"spec.futureField": None, "spec.bgp.futureEmpty": "",
                         "spec.bgp.ipv6Address": ""})
    out = to_calico_dict(parse_resource(doc))
    assert out["spec"]["futureField"] is None
    assert out["spec"]["bgp"]["futureEmpty"] == ""
    assert "ipv6Address" not in out["spec"]["bgp"]  # a known field's "" still means unset


def test_error_string_format_matches_contract():
    doc = build("IPPool", {"metadata.name": "p1", "spec.cidr": "10.0.0.1/16"})
    with pytest.raises(ConfigError) as info:
        parse_resource(doc)
    assert str(info.value).startswith("IPPool \"p1\": spec.cidr: '10.0.0.1/16': ")
    assert info.value.kind == "IPPool" and info.value.name == "p1"
    assert info.value.value == "10.0.0.1/16"


def test_all_problems_are_collected():
    doc = build("IPPool", {"spec.natOutgoing": "x", "spec.disabled": "y"})
    with pytest.raises(ConfigError) as info:
        parse_resource(doc)
    fields = {p.field for p in info.value.problems}
    assert fields == {"spec.natOutgoing", "spec.disabled"}
    assert "also" in str(info.value)


# ------------------------------------------------------------ leniencies and defaults


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(64512, 64512), ("64512", 64512), ("1.10", 65546), ("0.1", 1), (4200000000, 4200000000),
     ("4294967295", 4294967295), ("65535.65535", 4294967295)],
)
def test_as_number_forms(raw, expected):
    assert parse_as_number(raw) == expected
    res = parse_resource(build("BGPPeer", {"spec.asNumber": raw}))
    assert res.spec.as_number == expected


@pytest.mark.parametrize(
    ("raw", "ip", "port"),
    [("10.192.0.1", "10.192.0.1", None), ("10.192.0.1:166", "10.192.0.1", 166),
     ("ac13::57", "ac13::57", None), ("[ac13::57]:50", "ac13::57", 50),
     ("[ac13::57]", "ac13::57", None)],
)
def test_peer_ip_with_port(raw, ip, port):
    assert split_peer_ip(raw) == (ip, port)
    res = parse_resource(build("BGPPeer", {"spec.peerIP": raw}))
    assert (res.spec.peer_address, res.spec.peer_port) == (ip, port)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("120s", 120), ("2m", 120), ("1h30m", 5400), ("1.5s", 1.5), ("250ms", 0.25), ("0", 0)],
)
def test_durations(text, seconds):
    assert duration_seconds(text) == pytest.approx(seconds)


def test_ippool_defaults_follow_family():
    v4 = parse_resource(BASES["IPPool"]).spec
    v6 = parse_resource(BASES["IPPool6"]).spec
    assert (v4.block_size, v6.block_size) == (26, 122)
    assert v4.ipip_mode == v4.vxlan_mode == "Never"
    assert v4.node_selector == "all()"
    assert v4.allowed_uses == ("Workload", "Tunnel")
    assert not (v4.nat_outgoing or v4.disabled or v4.disable_bgp_export)


def test_ippool_empty_mode_and_selector_mean_defaults():
    spec = parse_resource(build("IPPool", {"spec.ipipMode": "", "spec.nodeSelector": ""})).spec
    assert spec.ipip_mode == "Never" and spec.node_selector == "all()"


def test_ippool_cidr_is_canonical():
    spec = parse_resource(build("IPPool6", {"spec.cidr": "FD00:0001:0::/112"})).spec
    assert spec.cidr == "fd00:1::/112"


def test_null_spec_and_empty_service_entries():
    conf = parse_resource(build("BGPConfiguration", {"spec": None}))
    assert conf.spec.as_number is None
    conf = parse_resource(build("BGPConfiguration", {"spec.serviceClusterIPs": [{}]}))
    assert conf.spec.service_cluster_ips[0].cidr is None


def test_yaml_booleans_in_labels_become_strings():
    node = parse_resource(build("Node", {"metadata.labels": {"rr": True, "off": False, "n": 3}}))
    assert node.metadata.labels == {"rr": "true", "off": "false", "n": "3"}


@pytest.mark.parametrize(("raw", "expected"), [(False, False), ("false", False),
                                               ("true", True), (True, True), ("", False)])
def test_block_affinity_deleted_forms(raw, expected):
    res = parse_resource(build("BlockAffinity", {"spec.deleted": raw, "spec.state": ""}))
    assert res.spec.deleted is expected
    assert res.to_affinity().advertised is (not expected)


def test_models_are_frozen():
    pool = parse_resource(BASES["IPPool"])
    with pytest.raises(Exception):  # noqa: B017 - pydantic raises ValidationError on frozen set
        pool.spec.cidr = "10.1.0.0/16"


def test_peer_scope_helpers():
    assert parse_resource(BASES["BGPPeer"]).spec.is_global
    assert not parse_resource(build("BGPPeer", {"spec.node": "n1"})).spec.is_global
    # Calico's Go structs write "" for unset strings; that is not "node and nodeSelector".
    peer = parse_resource(build("BGPPeer", {"spec.node": "n1", "spec.nodeSelector": ""}))
    assert peer.spec.node == "n1" and peer.spec.node_selector is None


def test_community_names_resolve():
    conf = parse_resource(build("BGPConfiguration", {
        "spec.communities": [{"name": "c1", "value": "100:200"}],
        "spec.prefixAdvertisements": [{"cidr": "10.0.0.0/8", "communities": ["c1", "7:8"]}],
    }))
    adv = conf.spec.prefix_advertisements[0]
    assert conf.spec.community_values(adv.communities) == ("100:200", "7:8")
