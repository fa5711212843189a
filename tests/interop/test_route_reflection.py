"""Route reflection with real BIRD 2 on both sides of the RFC 4456 relationship.

- podbgp as RR *client*: BIRD 2 is the route reflector (``rr client`` towards
  both podbgp nodes, mesh disabled, nodes peer only with BIRD). Each node must
  learn the other's pod block with the ORIGINAL next hop (the other node, not
  BIRD) and pods on the two nodes talk TCP by pod IP.
- podbgp as the *route reflector*: node1 has ``routeReflectorClusterID``; its
  clients are two BIRD 2 routers and podbgp node2. Every client sees the
  others' routes with ORIGINATOR_ID = the originating client, CLUSTER_LIST
  holding the cluster id, and the originating client as next hop.
"""

from __future__ import annotations

import ipaddress
import re

import pytest

from lab.harness import Lab
from tests.interop.conftest import (
    NODE_AS,
    Bird,
    kernel,
    peer_state,
    peer_yaml,
    require_interop_root,
    start_lab,
    wait,
)

pytestmark = [pytest.mark.root, pytest.mark.etcd, pytest.mark.slow]

CLUSTER_ID = "244.0.0.1"


def _block(ip: str) -> str:
    return str(ipaddress.ip_network(f"{ip}/26", strict=False))


def _gateway(lab: Lab, node: str, prefix: str) -> str | None:
    for r in lab.routes(node, "201"):
        if r["dst"] == prefix:
            return r.get("gateway")
    return None


def _attr(text: str, name: str) -> str | None:
    m = re.search(rf"BGP\.{re.escape(name)}:\s*(.+)", text)
    return m.group(1).strip() if m else None


# ------------------------------------------------------------- BIRD is the RR


@pytest.fixture(scope="module")
def bird_rr():
    require_interop_root()
    with Lab(nodes=2) as lab:
        ext = lab.add_external("rr", 1)
        rr = Bird(lab, ext, NODE_AS, [(n.ip, NODE_AS) for n in lab.nodes.values()],
                  rr_client=True, rr_cluster_id="10.99.0.101", kernel_export=False)
        start_lab(lab, ["node1", "node2"], mesh=False,
                  resources=[peer_yaml("tor-rr", peerIP=rr.ip, asNumber=NODE_AS)])
        yield lab, rr


def test_podbgp_is_rr_client_of_bird(bird_rr):
    lab, rr = bird_rr
    for name in ("node1", "node2"):
        wait(lab, lambda n=name: peer_state(lab, n, rr.ip) == "up", f"{name} -> BIRD RR up",
             40, node=name)
        # Mesh disabled: BIRD is the node's only peer.
        assert [p["address"] for p in lab.status(name)["peers"]] == [rr.ip]
    p1, p2 = lab.add_pod("node1"), lab.add_pod("node2")
    b1, b2 = _block(p1.ip), _block(p2.ip)
    n1, n2 = lab.nodes["node1"].ip, lab.nodes["node2"].ip
    wait(lab, lambda: _gateway(lab, "node2", b1) == n1,
         f"node2 has {b1} via node1 ({n1}), not via BIRD", 30, node="node2")
    wait(lab, lambda: _gateway(lab, "node1", b2) == n2,
         f"node1 has {b2} via node2 ({n2}), not via BIRD", 30, node="node1")
    # What BIRD reflected is what the client sent: next hop untouched.
    assert _attr(rr.route_all(b1), "next_hop") == n1, rr.route_all(b1)
    out = lab.tcp_exchange(p1, p2)
    assert out.startswith(f"echo:hello-from-{p1.ip}-to-{p2.ip}") and f"peer={p1.ip}" in out, out
    out = lab.tcp_exchange(p2, p1)
    assert f"peer={p2.ip}" in out, out


# ----------------------------------------------------------- podbgp is the RR


@pytest.fixture(scope="module")
def podbgp_rr():
    require_interop_root()
    with Lab(nodes=2) as lab:
        rr_ip = lab.nodes["node1"].ip
        birds = [Bird(lab, lab.add_external(f"c{i}", i), NODE_AS, [(rr_ip, NODE_AS)],
                      originate=[f"10.244.{200 + i}.0/26"]) for i in (1, 2)]
        labels = {"node1": {"route-reflector": "true"}, "node2": {"rack": "a"}}
        start_lab(lab, ["node1", "node2"], mesh=False, labels=labels,
                  cluster_ids={"node1": CLUSTER_ID}, resources=[
                      *(peer_yaml(f"rr-to-bird{i}", node="node1", peerIP=b.ip,
                                  asNumber=NODE_AS) for i, b in enumerate(birds, 1)),
                      peer_yaml("clients-to-rr", nodeSelector="!has(route-reflector)",
                                peerSelector="has(route-reflector)"),
                      peer_yaml("rr-to-clients", nodeSelector="has(route-reflector)",
                                peerSelector="!has(route-reflector)"),
                  ])
        yield lab, birds


def test_podbgp_reflects_for_three_clients(podbgp_rr):
    lab, (c1, c2) = podbgp_rr
    rr, n2 = lab.nodes["node1"], lab.nodes["node2"]
    st = lab.status("node1")
    assert st["route_reflector_cluster_id"] == CLUSTER_ID
    wait(lab, lambda: all(p["state"] == "up" and p["rr_client"]
                          for p in lab.status("node1")["peers"])
         and len(lab.status("node1")["peers"]) == 3, "RR: 3 clients up", 40, node="node1")
    r1, r2 = "10.244.201.0/26", "10.244.202.0/26"
    pod = lab.add_pod("node2")
    b2 = _block(pod.ip)
    n2_rid = lab.status("node2")["router_id"]

    # BIRD client 2 gets client 1's route (and vice versa) reflected by podbgp.
    for src, dst, prefix in ((c1, c2, r1), (c2, c1, r2)):
        wait(lab, lambda d=dst, p=prefix: p in d.table(rr.ip), f"{prefix} reflected to "
             f"{dst.ip}", 30, node="node1")
        text = dst.route_all(prefix)
        assert _attr(text, "originator_id") == src.ip, text
        assert CLUSTER_ID in (_attr(text, "cluster_list") or "").split(), text
        assert _attr(text, "next_hop") == src.ip, text
    # node2's pod block reaches both BIRD clients, attributed to node2.
    for dst in (c1, c2):
        wait(lab, lambda d=dst: b2 in d.table(rr.ip), f"{b2} reflected to {dst.ip}", 30,
             node="node1")
        text = dst.route_all(b2)
        assert _attr(text, "originator_id") == n2_rid, text
        assert CLUSTER_ID in (_attr(text, "cluster_list") or "").split(), text
        assert _attr(text, "next_hop") == n2.ip, text
        wait(lab, lambda d=dst: b2 in d.kernel(), f"{b2} in {dst.ip}'s kernel", 20)
        assert dst.kernel_route(b2).get("gateway") == n2.ip
    # podbgp client node2 gets both BIRD routes with their original next hops.
    wait(lab, lambda: _gateway(lab, "node2", r1) == c1.ip and _gateway(lab, "node2", r2)
         == c2.ip, "node2 has the BIRD clients' routes via them", 30, node="node2")
    assert peer_state(lab, "node2", rr.ip) == "up"
    # The RR itself forwards via the clients too (it is a node, not a pure RR server).
    assert _gateway(lab, "node1", r1) == c1.ip and b2 in kernel(lab, "node1")
