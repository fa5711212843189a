"""The data-plane plan (bgpd.dataplane): devices, VTEP entries, cluster routes,
NAT sets, tunnel-address needs — from real-shaped Calico resources.

References: Felix vxlan_mgr.go / vxlanfdb (one ARP + one FDB entry per remote
VTEP), calc/vxlan_resolver.go (MAC from the Node, else derived), rules/nat.go +
masq_mgr.go (all pools incl. disabled, LoadBalancer-only pools excluded),
allocateip.go determineEnabledPoolCIDRs (tunnel pools), confd
bgp_processor.go clusterRoutePolicyFromBGPConfig (programClusterRoutes).
"""

from __future__ import annotations

import json

import pytest

from bgpd.dataplane import (
    IPIP_DEVICE,
    VXLAN_DEVICE,
    DataplaneSettings,
    cluster_route_policy,
    plan_dataplane,
    published_fields,
)
from config.parse import parse_json
from config.snapshot import Snapshot
from fib_sync.link import IpipSpec, VxlanSpec
from fib_sync.neigh import FdbEntry, Neighbour
from fib_sync.overlay import ERROR, OK, DeviceState
from ipam.tunnel import IPIP, VXLAN, VXLAN_V6, vtep_mac

RES = "/calico/resources/v3/projectcalico.org/"
MAC2 = "66:74:c5:72:3f:01"  # felix/calc/resources_for_test.go remoteHostVXLANTunnelMAC


def res(kind: str, name: str, spec: dict, **meta) -> object:
    plural = {"IPPool": "ippools", "Node": "nodes", "BGPConfiguration": "bgpconfigurations"}
    doc = {"apiVersion": "projectcalico.org/v3", "kind": kind,
           "metadata": {"name": name, **meta}, "spec": spec}
    return parse_json(f"{RES}{plural[kind]}/{name}", json.dumps(doc))


def node(name: str, ip: str, vtep: str | None = None, mac: str | None = None,
         ipip: str | None = None, **meta) -> object:
    bgp = {"ipv4Address": f"{ip}/24"}
    if ipip:
        bgp["ipv4IPIPTunnelAddr"] = ipip
    spec: dict = {"bgp": bgp}
    if vtep:
        spec["ipv4VXLANTunnelAddr"] = vtep
    if mac:
        spec["vxlanTunnelMACAddr"] = mac
    return res("Node", name, spec, **meta)


def snap(*resources) -> Snapshot:
    return Snapshot.from_resources(resources)


SEED = res("IPPool", "default-ipv4-ippool",
           {"cidr": "192.168.0.0/16", "ipipMode": "Always", "natOutgoing": True})
VX = res("IPPool", "vx", {"cidr": "10.244.0.0/16", "vxlanMode": "CrossSubnet",
                          "natOutgoing": True})
NODES = (node("node1", "10.99.0.11", vtep="10.244.1.0"),
         node("node2", "10.99.1.12", vtep="10.244.2.0", mac=MAC2),
         node("node3", "10.99.1.13"))


def test_vxlan_standalone_plan() -> None:
    plan = plan_dataplane(snap(VX, *NODES), "node1", DataplaneSettings())
    assert plan.devices == (VxlanSpec(VXLAN_DEVICE, 4096, 4789, "10.99.0.11",
                                      vtep_mac("node1"), 0, "10.244.1.0"),)
    # node2's MAC from its Node; node3 has no VTEP yet: nothing for it, and said so.
    assert plan.entries == (Neighbour(VXLAN_DEVICE, "10.244.2.0", MAC2),
                            FdbEntry(VXLAN_DEVICE, MAC2, "10.99.1.12"))
    assert plan.cluster_routes.vteps == (("10.99.1.12", "10.244.2.0"),)
    assert plan.cluster_routes.vxlan and plan.cluster_routes.no_encap
    assert any("node3" in p and "no VTEP published" in p for p in plan.problems)
    need = {n.kind: n for n in plan.tunnel_needs}
    assert need[VXLAN].pool_names == ("vx",) and need[VXLAN].pool_cidrs == ("10.244.0.0/16",)
    assert need[IPIP].pool_names == () and need[VXLAN_V6].pool_names == ()
    assert plan.nat.masq4 == ("10.244.0.0/16",) and plan.nat.pools4 == ("10.244.0.0/16",)


def test_derived_mac_when_the_node_has_none() -> None:
    plan = plan_dataplane(snap(VX, *NODES), "node2", DataplaneSettings())
    assert Neighbour(VXLAN_DEVICE, "10.244.1.0", vtep_mac("node1")) in plan.entries
    assert plan.devices[0].mac == MAC2  # node2 keeps the MAC its Node publishes


def test_no_vtep_of_my_own_yet_means_no_device_and_no_vxlan_routes() -> None:
    plan = plan_dataplane(snap(VX, *NODES), "node3", DataplaneSettings())
    assert plan.devices == () and plan.entries == ()
    assert not plan.cluster_routes.vxlan
    assert "vx" in plan.pool_problems and "no VTEP address" in plan.pool_problems["vx"]
    # The address just allocated (not read back yet) is used at once.
    plan = plan_dataplane(snap(VX, *NODES), "node3", DataplaneSettings(),
                          tunnels={VXLAN: "10.244.3.0"})
    assert plan.devices[0].address == "10.244.3.0" and plan.cluster_routes.vxlan


def test_seed_pool_ipip_without_kernel_support_is_reported_per_pool() -> None:
    nodes = (node("node1", "10.99.0.11", ipip="192.168.1.0"), node("node2", "10.99.0.12"))
    states = {IPIP_DEVICE: DeviceState(IPIP_DEVICE, "ipip", ERROR,
                                       "this kernel has no IP-in-IP support (no 'ipip' module)",
                                       95)}
    plan = plan_dataplane(snap(SEED, *nodes), "node1", DataplaneSettings(), devices=states)
    assert plan.devices == (IpipSpec(IPIP_DEVICE, 0, "192.168.1.0", "10.99.0.11"),)
    assert plan.cluster_routes.ipip and not plan.cluster_routes.ipip_ready
    why = plan.pool_problems["default-ipv4-ippool"]
    assert "192.168.0.0/16" in why and "ipipMode Always" in why and "'ipip' module" in why
    ok = {IPIP_DEVICE: DeviceState(IPIP_DEVICE, "ipip", OK)}
    plan = plan_dataplane(snap(SEED, *nodes), "node1", DataplaneSettings(), devices=ok)
    assert plan.cluster_routes.ipip_ready and not plan.pool_problems
    assert plan.nat.masq4 == ("192.168.0.0/16",)


def test_nat_sets_all_pools_including_disabled_not_loadbalancer_only() -> None:
    pools = (VX, res("IPPool", "off", {"cidr": "10.250.0.0/16", "disabled": True}),
             res("IPPool", "lb", {"cidr": "10.251.0.0/24", "allowedUses": ["LoadBalancer"]}),
             res("IPPool", "v6", {"cidr": "fd00:10::/64", "natOutgoing": True}))
    nat = plan_dataplane(snap(*pools, *NODES), "node1", DataplaneSettings()).nat
    assert nat.pools4 == ("10.244.0.0/16", "10.250.0.0/16") and nat.masq4 == ("10.244.0.0/16",)
    assert nat.pools6 == nat.masq6 == ("fd00:10::/64",)


@pytest.mark.parametrize("value, no_encap, ipip", [
    (None, True, False),  # the default: EnabledNoEncapOnly
    ("EnabledNoEncapOnly", True, False),
    ("Enabled", True, True),
    ("EnabledIPIPOnly", False, True),
    ("Disabled", False, False),
])
def test_sidecar_honours_program_cluster_routes(value, no_encap, ipip) -> None:
    spec = {"programClusterRoutes": value} if value else {}
    s = snap(SEED, VX, *NODES, res("BGPConfiguration", "default", spec))
    assert cluster_route_policy(s)[:2] == (no_encap, ipip)
    plan = plan_dataplane(s, "node1", DataplaneSettings(manage=False))
    assert (plan.devices, plan.entries, plan.nat, plan.tunnel_needs) == ((), (), None, ())
    cr = plan.cluster_routes
    assert (cr.no_encap, cr.ipip, cr.vxlan) == (no_encap, ipip, False)
    # Standalone, podbgp is both halves: every kind of cluster route is its own.
    cr = plan_dataplane(s, "node1", DataplaneSettings()).cluster_routes
    assert cr.no_encap and cr.ipip and cr.vxlan


def test_published_fields() -> None:
    s = snap(VX, *NODES)
    assert published_fields(s, "node3", {VXLAN: "10.244.3.0", IPIP: None}) == {
        "ipv4_vxlan_tunnel_addr": "10.244.3.0", "vxlan_tunnel_mac_addr": vtep_mac("node3"),
        "ipv4_ipip_tunnel_addr": None}
    assert published_fields(s, "node2", {VXLAN: "10.244.2.0"})["vxlan_tunnel_mac_addr"] == MAC2


def test_ipv6_vxlan_plan() -> None:
    # Calico's v6 fields: spec.ipv6VXLANTunnelAddr, spec.vxlanTunnelMACAddrV6; Felix's
    # device vxlan-v6.calico and the MAC derived from "<node>-v6".
    v6pool = res("IPPool", "v6", {"cidr": "fd10::/48", "blockSize": 122, "vxlanMode": "Always"})

    def n6(name: str, ip: str, vtep: str) -> object:
        return res("Node", name, {"bgp": {"ipv6Address": f"{ip}/64"},
                                  "ipv6VXLANTunnelAddr": vtep})

    s = snap(v6pool, n6("node1", "fd00::11", "fd10::1"), n6("node2", "fd00::12", "fd10::41"))
    plan = plan_dataplane(s, "node1", DataplaneSettings())
    assert plan.devices == (VxlanSpec("vxlan-v6.calico", 4096, 4789, "fd00::11",
                                      vtep_mac("node1", v6=True), 0, "fd10::1"),)
    assert plan.entries == (Neighbour("vxlan-v6.calico", "fd10::41", vtep_mac("node2", True)),
                            FdbEntry("vxlan-v6.calico", vtep_mac("node2", True), "fd00::12"))
    assert plan.cluster_routes.vteps == (("fd00::12", "fd10::41"),)
    need = {n.kind: n for n in plan.tunnel_needs}
    assert need[VXLAN_V6].pool_names == ("v6",) and need[VXLAN].pool_names == ()
