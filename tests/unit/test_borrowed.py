"""Borrowed addresses: IPAM gave a pod on one node an address of another node's block.

Calico routes such an address as a /32 from the node that holds it (its local
workload route), which overrides the owner's block route. IPAM's allocation
attribute (``secondary.node``, libcalico-go lib/ipam: the attributes Calico's
plugin records for a pod) says which node holds it. podbgp: the holder advertises
the /32; the block's owner accepts it only from that holder — every other
more-specific of an own block is still refused (issue 13).
"""

from __future__ import annotations

import json

import rib
from bgpd.peers import local_node
from bgpd.translate import rib_config
from config.model import Affinity, Lent
from config.parse import parse_block_lending, parse_resource
from config.snapshot import Snapshot
from rib.path import Path

KEY = "/calico/ipam/v2/assignment/ipv4/block/10.244.1.0-30"


def block(allocs, attrs, affinity="host:n1") -> bytes:
    return json.dumps({
        "cidr": "10.244.1.0/30", "affinity": affinity, "allocations": allocs,
        "unallocated": [i for i, a in enumerate(allocs) if a is None],
        "attributes": attrs, "strictAffinity": False, "sequenceNumber": 3,
        "sequenceNumberForAllocation": {}, "deleted": False}).encode()


def attr(node, pod):
    return {"handle_id": f"k8s-pod-network.{pod}",
            "secondary": {"namespace": "default", "node": node, "pod": pod, "timestamp": "x"}}


def test_block_lending_names_the_holder_of_each_borrowed_address():
    raw = block([0, None, 1, 2], [attr("n1", "a"), attr("n2", "b"), attr("n3", "c")])
    assert parse_block_lending(KEY, raw) == (Lent("10.244.1.2", "n2", "n1"),
                                             Lent("10.244.1.3", "n3", "n1"))
    assert Lent("10.244.1.2", "n2", "n1").prefix == "10.244.1.2/32"
    # No owner (an unaffine block), or no node attribute: nothing is lent.
    assert parse_block_lending(KEY, block([0, None, None, None], [attr("n2", "b")],
                                          affinity=None)) == ()
    assert parse_block_lending(KEY, block([0, None, None, None],
                                          [{"handle_id": "h", "secondary": None}])) == ()


def node(name, ip):
    return parse_resource({"apiVersion": "projectcalico.org/v3", "kind": "Node",
                           "metadata": {"name": name},
                           "spec": {"bgp": {"ipv4Address": f"{ip}/24"}}})


POOL = parse_resource({"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
                       "metadata": {"name": "p"}, "spec": {"cidr": "10.244.0.0/16"}})
_BASE = Snapshot.from_resources(
    [node("n1", "10.1.0.1"), node("n2", "10.1.0.2"), node("n3", "10.1.0.3"), POOL],
    [Affinity("n1", "10.244.1.0/30", "confirmed")])
SNAP = Snapshot(revision=1, ippools=_BASE.ippools, nodes=_BASE.nodes,
                affinities=_BASE.affinities,
                lent=(Lent("10.244.1.2", "n2", "n1"), Lent("10.244.1.3", "n3", "n1")))


def test_holder_advertises_the_borrowed_address_and_owner_accepts_it_only_from_the_holder():
    n2 = rib_config(SNAP, local_node(SNAP, "n2"))
    assert n2.held == ("10.244.1.2/32",) and n2.lent == ()
    r2 = rib.Rib(n2)
    peer1 = rib.PeerRef("10.1.0.1", 64512, "10.1.0.1", rib.PeerKind.IBGP)
    ch = r2.peer_up(rib.PeerPolicy(key="10.1.0.1", peer=peer1, local_address="10.1.0.2"))
    sent = {p for _, ps in ch.exports["10.1.0.1"].batches() for p in ps}
    assert "10.244.1.2/32" in sent
    assert "10.244.1.2/32" not in r2.desired_routes()  # the pod route is the CNI's

    n1 = rib_config(SNAP, local_node(SNAP, "n1"))
    assert dict(n1.lent) == {"10.244.1.2/32": "10.1.0.2", "10.244.1.3/32": "10.1.0.3"}
    r1 = rib.Rib(n1)
    p2 = rib.PeerRef("10.1.0.2", 64512, "10.1.0.2", rib.PeerKind.IBGP)
    p3 = rib.PeerRef("10.1.0.3", 64512, "10.1.0.3", rib.PeerKind.IBGP)
    for p in (p2, p3):
        r1.peer_up(rib.PeerPolicy(key=p.address, peer=p))
    ch = r1.update("10.1.0.2", [Path("10.244.1.2/32", "10.1.0.2", p2),   # its own: accepted
                                Path("10.244.1.3/32", "10.1.0.2", p2),   # n3's: refused
                                Path("10.244.1.0/31", "10.1.0.2", p2)])  # no: refused
    assert [(x.prefix, x.reason.value) for x in ch.rejected] == [
        ("10.244.1.3/32", "own-block"), ("10.244.1.0/31", "own-block")]
    route = r1.desired_routes()["10.244.1.2/32"]
    assert route.next_hops == ("10.1.0.2",)  # traffic for the borrowed pod goes to n2
    assert r1.desired_routes()["10.244.1.0/30"].kind is rib.RouteKind.BLACKHOLE
