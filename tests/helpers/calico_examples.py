"""Calico resources as Calico's tests and docs write them: our own compact examples.

Each example states the facts of one Calico source — its kind, name and the spec
fields with their values and YAML shape (quoted or not, lists, ``[ip]:port``) —
written here for podbgp's tests, with the source it follows (path, lines, commit).
``C`` is projectcalico/calico at 87c15906f20c4ca1fda55af92295e7678b0cc0b2.
(Tests once read copies of these sources from outside the repository, which a fresh
clone does not have.)
"""

from __future__ import annotations

import json
from dataclasses import dataclass

C = "projectcalico/calico@87c15906"
MOCK = f"{C} confd/tests/mock_data/calicoctl"


@dataclass(frozen=True)
class Example:
    id: str
    source: str
    text: str  # one projectcalico.org/v3 document, YAML
    field: str | None = None  # invalid examples: the field Calico's error names


def _doc(kind: str, name: str, body: str) -> str:
    return f"apiVersion: projectcalico.org/v3\nkind: {kind}\nmetadata:\n  name: {name}\n{body}"


VALID: tuple[Example, ...] = (
    Example("bgpconfiguration-explicit-peering", f"{MOCK}/explicit_peering/global/input.yaml:1-10",
            _doc("BGPConfiguration", "default",
                 "spec:\n  nodeToNodeMeshEnabled: false\n  logSeverityScreen: Debug\n"
                 "  asNumber: 64567\n  listenPort: 150\n  bindMode: NodeIP\n")),
    Example("bgpconfiguration-empty-spec", f"{MOCK}/mesh/bgp-export/input.yaml:1-5",
            _doc("BGPConfiguration", "default", "spec:\n")),
    # Communities by name and by value; a prefix lists a value "5663:12" unquoted
    # (YAML 1.1 would read it as the base-60 integer 339792; Go's YAML keeps the string).
    Example("bgpconfiguration-communities", f"{MOCK}/mesh/communities/input.yaml:1-22",
            _doc("BGPConfiguration", "default",
                 "spec:\n  logSeverityScreen: Info\n  communities:\n"
                 "    - name: bgp-comm-standard\n      value: 100:6532\n"
                 "    - name: bgp-comm-large\n      value: 100:555:107\n"
                 "  prefixAdvertisements:\n"
                 "    - cidr: 192.168.0.0/16\n      communities:\n"
                 "        - bgp-comm-standard\n        - 5663:12\n        - bgp-comm-large\n"
                 "    - cidr: fd00:96::/112\n      communities:\n"
                 "        - bgp-comm-large\n        - bgp-comm-large\n"
                 "  listenPort: 177\n")),
    # Service CIDR lists with an empty entry between two real ones.
    Example("bgpconfiguration-service-ips", f"{MOCK}/mesh/static-routes/input.yaml:1-12",
            _doc("BGPConfiguration", "default",
                 "spec:\n  serviceClusterIPs:\n    - cidr: 10.101.0.0/16\n    - {}\n"
                 "    - cidr: fd00:96::/112\n  serviceLoadBalancerIPs:\n"
                 "    - cidr: 80.15.0.0/24\n    - {}\n")),
    # A rule of each shape: cidr + matchOperator, source only, interface (quoted, with
    # wildcards), action only; for both families and directions.
    Example("bgpfilter-rule-shapes", f"{MOCK}/bgpfilter/single_filter/global_peer/input.yaml:41-93",
            _doc("BGPFilter", "test-filter",
                 "spec:\n  exportV4:\n"
                 "    - {action: Accept, matchOperator: In, cidr: 77.0.0.0/16}\n"
                 "    - {action: Reject, source: RemotePeers, matchOperator: In,"
                 " cidr: 77.1.0.0/16}\n"
                 "    - {action: Accept, interface: \"eth0\", source: RemotePeers}\n"
                 "    - {action: Reject}\n"
                 "  importV4:\n"
                 "    - {action: Accept, source: RemotePeers}\n"
                 "    - {action: Reject, interface: \"eth*\"}\n"
                 "  exportV6:\n"
                 "    - {action: Reject, interface: \"vxlan.calico\", source: RemotePeers,"
                 " matchOperator: In, cidr: 9000:1::0/64}\n"
                 "  importV6:\n"
                 "    - {action: Accept, interface: \"*.calico\", matchOperator: In,"
                 " cidr: 5000::0/64}\n")),
    Example("bgppeer-source-address-none",
            f"{MOCK}/explicit_peering/global/input.yaml:13-20",
            _doc("BGPPeer", "bgppeer-1",
                 "spec:\n  peerIP: 10.192.0.3\n  asNumber: 64567\n  sourceAddress: None\n")),
    Example("bgppeer-local-as", f"{MOCK}/explicit_peering/local-as/input.yaml:9-18",
            _doc("BGPPeer", "bgppeer-1",
                 "spec:\n  peerIP: 10.192.0.3\n  asNumber: 64512\n  localASNumber: 64512\n"
                 "  node: kube-master\n  numAllowedLocalASNumbers: 1\n")),
    Example("bgppeer-password-secret", f"{MOCK}/password/input.yaml:48-59",
            _doc("BGPPeer", "bgppeer-1",
                 "spec:\n  nodeSelector: has(node)\n  peerIP: 10.24.0.2\n  asNumber: 64512\n"
                 "  password:\n    secretKeyRef: {name: my-secrets-1, key: a}\n")),
    Example("bgppeer-selectors", f"{MOCK}/explicit_peering/route_reflector/input.yaml:34-42",
            _doc("BGPPeer", "bgppeer-other-nodes",
                 "spec:\n  nodeSelector: has(routeReflector)\n"
                 "  peerSelector: \"!has(routeReflector)\"\n")),
    # An IPv6 peer with a port, in Calico's "[ip]:port" form.
    Example("bgppeer-v6-port", f"{MOCK}/explicit_peering/route_reflector/input.yaml:22-31",
            _doc("BGPPeer", "bgppeer-v6",
                 "spec:\n  peerIP: \"[ac13::57]:50\"\n  asNumber: 64533\n"
                 "  nodeSelector: has(routeReflector)\n")),
    Example("bgppeer-filters", f"{MOCK}/bgpfilter/single_filter/global_peer/input.yaml:95-102",
            _doc("BGPPeer", "test-global-peer-with-filter",
                 "spec:\n  peerSelector: has(global-peer)\n  filters:\n    - test-filter\n")),
    Example("bgppeer-ttl-security", f"{MOCK}/ttl_security/peer_selector/input.yaml:43-50",
            _doc("BGPPeer", "ttl-selector-peers",
                 "spec:\n  node: kube-master\n  peerSelector: has(ttl-security-node)\n"
                 "  ttlSecurity: 1\n")),
    # The v3 BlockAffinity as Calico's KDD test data wrote it: state and a
    # string-typed "deleted", an empty namespace in the metadata.
    Example("blockaffinity-pending",
            "projectcalico/calico@81b29bdc confd/tests/mock_data/kdd/ipam_v3.yaml:12-21 "
            "(gone at 87c15906)",
            "apiVersion: projectcalico.org/v3\nkind: BlockAffinity\nmetadata:\n"
            "  name: kube-master-192-168-221-0-26\n  namespace: \"\"\n"
            "spec:\n  state: \"pending\"\n  node: kube-master\n  cidr: 192.168.221.0/26\n"
            "  deleted: false\n"),
    Example("ippool-block-size",
            "tigera/docs@04b54fcb calico/networking/ipam/change-block-size.mdx "
            "(Create a new IP pool with the desired block size)",
            _doc("IPPool", "default-ipv4-ippool",
                 "spec:\n  blockSize: 28\n  cidr: 192.0.0.0/16\n  ipipMode: Always\n"
                 "  natOutgoing: true\n")),
    Example("ippool-ipip", f"{MOCK}/explicit_peering/global/input.yaml:68-75",
            _doc("IPPool", "ippool-1",
                 "spec:\n  cidr: 192.168.0.0/16\n  ipipMode: Always\n  natOutgoing: true\n")),
    Example("ippool-vxlan", f"{MOCK}/mesh/vxlan-always/input.yaml:38-46",
            _doc("IPPool", "ippool-1",
                 "spec:\n  cidr: 192.168.0.0/16\n  ipipMode: Never\n  vxlanMode: Always\n"
                 "  natOutgoing: true\n")),
    Example("ippool-no-export", f"{MOCK}/mesh/bgp-export/input.yaml:45-53",
            _doc("IPPool", "ippool-2",
                 "spec:\n  cidr: 192.168.2.0/24\n  ipipMode: Never\n  natOutgoing: true\n"
                 "  disableBGPExport: true\n")),
    # The reference page's sample: a dotted name, every common field, disabled: false.
    Example("ippool-reference-sample",
            "tigera/docs@02819bb5 calico/reference/resources/ippool.mdx (Sample YAML)",
            _doc("IPPool", "my.ippool-1",
                 "spec:\n  cidr: 10.1.0.0/16\n  ipipMode: CrossSubnet\n  natOutgoing: true\n"
                 "  disabled: false\n  nodeSelector: all()\n"
                 "  allowedUses:\n    - Workload\n    - Tunnel\n")),
    # A YAML boolean label value (Calico stores "true") and a cluster id.
    Example("node-route-reflector", f"{MOCK}/explicit_peering/route_reflector/input.yaml:55-65",
            "apiVersion: projectcalico.org/v3\nkind: Node\nmetadata:\n  name: kube-master\n"
            "  labels:\n    routeReflector: true\n"
            "spec:\n  bgp:\n    ipv4Address: 10.192.0.2/16\n    ipv6Address: fe0a::2/96\n"
            "    routeReflectorClusterID: 10.0.0.1\n"),
    Example("node-quoted-label", f"{MOCK}/password/input.yaml:8-16",
            "apiVersion: projectcalico.org/v3\nkind: Node\nmetadata:\n  name: node1\n"
            "  labels:\n    node: \"yes\"\nspec:\n  bgp:\n    ipv4Address: 10.24.0.1/24\n"),
)

# Resources Calico's validation refuses, each with the field its error names. The
# sources are Go test cases (struct literals) and the CEL rules in
# api/pkg/apis/projectcalico/v3/*.go that produce the message.
INVALID: tuple[Example, ...] = (
    Example("bgpconfiguration-restart-time-mesh-disabled",
            f"{C} test/validation/bgpconfig_test.go:47-57; rule api/.../bgpconfig.go:70",
            _doc("BGPConfiguration", "bgpconfig-1",
                 "spec:\n  nodeToNodeMeshEnabled: false\n  nodeMeshMaxRestartTime: 120s\n"),
            "spec.nodeMeshMaxRestartTime"),
    Example("bgppeer-invalid-peerip",
            f"{C} libcalico-go/lib/validator/v3/validator_test.go:2454 (bad_ipv4_1, :80)",
            _doc("BGPPeer", "bad-peer-ip", "spec:\n  peerIP: 999.999.999.999\n"),
            "spec.peerIP"),
    Example("bgppeer-node-and-nodeselector",
            f"{C} test/validation/bgppeer_test.go:34-45; rule api/.../bgppeer.go:57",
            _doc("BGPPeer", "bgppeer-1",
                 "spec:\n  node: mynode\n  nodeSelector: all()\n  peerIP: 10.0.0.1\n"
                 "  asNumber: 64512\n"),
            "spec.nodeSelector"),
    Example("ippool-blocksize-below-range",
            f"{C} test/validation/ippool_test.go:313-322; rule api/.../ippool.go:98",
            _doc("IPPool", "ippool-2", "spec:\n  cidr: 10.100.0.0/16\n  blockSize: 19\n"),
            "spec.blockSize"),
    Example("ippool-cidr-not-strictly-masked",
            f"{C} test/validation/ippool_test.go:233-242; rule api/.../ippool.go:95",
            _doc("IPPool", "ippool-3", "spec:\n  cidr: 192.168.0.1/24\n"),
            "spec.cidr"),
    Example("ippool-ipip-on-ipv6",
            f"{C} test/validation/ippool_test.go:102-112; rule api/.../ippool.go:89",
            _doc("IPPool", "ippool-1", "spec:\n  cidr: fd00:1::/112\n  ipipMode: Always\n"),
            "spec.ipipMode"),
)


def by_id(examples: tuple[Example, ...] = VALID) -> dict[str, Example]:
    return {e.id: e for e in examples}


# An IPAM block as an etcd-backed Calico v3.4/v3.5 cluster stored it (the older
# format: strictAffinity, a null affinity, an attribute with a null handle_id; no
# deleted, no sequenceNumber), with one address (the first) allocated. The shape is
# that of an `etcdctl get` capture in shufanhao/ContainerNetwork@08857c01
# cni/1_calico.md, section 3.3 (a third-party cluster, not a Calico fixture).
OLD_BLOCK_KEY = "/calico/ipam/v2/assignment/ipv4/block/10.244.2.0-26"
OLD_BLOCK_VALUE = json.dumps({
    "cidr": "10.244.2.0/26", "affinity": None, "strictAffinity": False,
    "allocations": [0] + [None] * 63, "unallocated": list(range(1, 64)),
    "attributes": [{"handle_id": None, "secondary": None}],
}, separators=(",", ":"))
ETCD_VALUES: tuple[tuple[str, str], ...] = ((OLD_BLOCK_KEY, OLD_BLOCK_VALUE),)
