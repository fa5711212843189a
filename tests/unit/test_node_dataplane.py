"""Who programs which cluster route, in-process (tests/helpers/node_lab.py: the
real shell, node core and RIB against fakes; the data-plane shell left out).

- ``--dataplane off`` (the sidecar next to calico-node): podbgp programs what
  BIRD would, per BGPConfiguration.programClusterRoutes (confd
  bgp_processor.go clusterRoutePolicyFromBGPConfig), never a VXLAN pool's
  blocks (Felix's); /status says the data plane is not podbgp's.
- ``--dataplane on``: every kind; VXLAN blocks via the next hop's VTEP from
  its Node resource; the data plane's word (``dataplane_changed``) changes the
  kernel intent at once.
"""

from __future__ import annotations

import dataclasses

import rib
from fib_sync import NextHop
from tests.helpers.cluster import bgp_config, node, pool, snapshot
from tests.helpers.node_lab import NodeLab

N1, N2 = "10.0.0.1", "10.0.0.2"
PLAIN, IPIP, VX = "10.244.2.0/26", "10.245.2.0/26", "10.246.2.0/26"


def cluster(*extra, vteps: bool = True):
    n1, n2 = node("n1", N1), node("n2", N2)
    n1["spec"]["bgp"]["ipv4IPIPTunnelAddr"] = "10.245.1.0"  # tunl0 can be planned
    if vteps:
        n1["spec"]["ipv4VXLANTunnelAddr"] = "10.246.1.0"
        n2["spec"]["ipv4VXLANTunnelAddr"] = "10.246.2.0"
    return snapshot(n1, n2, pool("plain", "10.244.0.0/16"),
                    pool("ipip", "10.245.0.0/16", ipipMode="Always"),
                    pool("vx", "10.246.0.0/16", vxlanMode="Always"), *extra,
                    blocks={"n1": ["10.244.1.0/26"], "n2": [PLAIN, IPIP, VX]})


async def learn(lab: NodeLab) -> dict:
    lab.speaker.session_up(N2)
    lab.speaker.announce(N2, [PLAIN, IPIP, VX])
    lab.speaker.peer_end_of_rib(N2)
    await lab.settle()
    return {d: r for d, r in lab.kernel_routes().items() if r.nexthops}


async def test_sidecar_programs_what_bird_would_by_default(tmp_path) -> None:
    async with NodeLab(tmp_path, args=["--dataplane", "off"]) as lab:
        lab.publish(cluster())
        await lab.settle()
        routes = await learn(lab)
        # EnabledNoEncapOnly (the default): Felix takes IPIP and VXLAN blocks.
        assert set(routes) == {PLAIN}
        st = lab.daemon.status()["dataplane"]
        assert st["managed"] is False and st["program_cluster_routes"] == "EnabledNoEncapOnly"


async def test_sidecar_enabled_programs_ipip_via_tunl0_too(tmp_path) -> None:
    async with NodeLab(tmp_path, args=["--dataplane", "off"]) as lab:
        lab.publish(cluster(bgp_config(programClusterRoutes="Enabled")))
        await lab.settle()
        routes = await learn(lab)
        assert set(routes) == {PLAIN, IPIP}
        assert routes[IPIP].nexthops == (NextHop(N2, dev="tunl0", onlink=True),)
        # The field changes at run time: IPIP blocks go back to Felix.
        lab.publish(cluster(bgp_config(programClusterRoutes="EnabledNoEncapOnly"), ))
        await lab.settle()
        assert {d for d, r in lab.kernel_routes().items() if r.nexthops} == {PLAIN}


async def test_standalone_programs_vxlan_via_the_vtep_and_follows_the_dataplane(
        tmp_path) -> None:
    async with NodeLab(tmp_path) as lab:  # --dataplane on (the default)
        lab.publish(cluster())
        await lab.settle()
        routes = await learn(lab)
        assert set(routes) == {PLAIN, IPIP, VX}
        assert routes[VX].nexthops == (NextHop("10.246.2.0", dev="vxlan.calico", onlink=True),)
        # The data plane says tunl0 cannot be made here and VXLAN is down: the
        # routes that would fail go; the plain one stays.
        node = lab.daemon.node
        cur = node.cluster_routes or rib.ClusterRoutes(vxlan=True)
        lab.daemon._cluster_routes_changed(rib.ClusterRoutes(
            ipip_ready=False, vxlan=False, vteps=cur.vteps))
        await lab.settle()
        assert {d for d, r in lab.kernel_routes().items() if r.nexthops} == {PLAIN}
        lab.daemon._cluster_routes_changed(rib.ClusterRoutes(
            vxlan=True, vteps=((N2, "10.246.2.9"),)))  # n2's VTEP moved
        await lab.settle()
        routes = {d: r for d, r in lab.kernel_routes().items() if r.nexthops}
        assert routes[VX].nexthops[0].gateway == "10.246.2.9" and IPIP in routes


async def test_standalone_without_a_vtep_for_the_next_hop_programs_no_vxlan_route(
        tmp_path) -> None:
    async with NodeLab(tmp_path) as lab:
        lab.publish(cluster(vteps=False))
        await lab.settle()
        routes = await learn(lab)
        assert VX not in routes and {PLAIN, IPIP} <= set(routes)


async def test_standalone_without_a_tunnel_address_programs_no_ipip_route(tmp_path) -> None:
    # No IPIP address for this node (not allocated yet): no tunl0, and a route via
    # tunl0 would fail; the plain pool is unaffected.
    snap = cluster()
    me = snap.nodes["n1"]
    bgp = me.spec.bgp.model_copy(update={"ipv4_ipip_tunnel_addr": None})
    nodes = {**snap.nodes, "n1": me.model_copy(update={"spec": me.spec.model_copy(
        update={"bgp": bgp})})}
    async with NodeLab(tmp_path) as lab:
        lab.publish(dataclasses.replace(snap, nodes=nodes))
        await lab.settle()
        routes = await learn(lab)
        assert IPIP not in routes and {PLAIN, VX} <= set(routes)
