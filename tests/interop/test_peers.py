"""podbgp against real eBGP top-of-rack peers: BIRD 2, BIRD 1.6, FRR 8, GoBGP 3.

One lab for the module: one podbgp node (AS 64512) and four external namespaces,
each with one real daemon in its own AS, all peering with the node through
global BGPPeers at the same time. Each test works with its own prefixes, so the
four runs do not interfere:

- the session is up on both sides;
- a block the node owns (a BlockAffinity) reaches the peer's BGP table and, for
  BIRD/FRR, its kernel; releasing it withdraws it from the peer;
- the peer's route inside the IPPool reaches podbgp's kernel (proto 201) via the
  peer; its routes outside every pool (203.0.113.0/24, the default route) never
  do and are counted in podbgp_bgp_prefixes_rejected_total by reason;
- the peer withdrawing its route removes it from podbgp's kernel.
"""

from __future__ import annotations

import contextlib

import pytest

from lab.harness import Lab
from tests.interop.conftest import (
    NODE_AS,
    Bird,
    Frr,
    GoBgp,
    add_affinity,
    del_affinity,
    kernel,
    metric,
    peer_state,
    peer_yaml,
    require_interop_root,
    start_lab,
    wait,
)

pytestmark = [pytest.mark.root, pytest.mark.etcd, pytest.mark.slow]

NODE = "node1"
OUT_OF_POOL = "203.0.113.0/24"
DEFAULT = "0.0.0.0/0"
# kind -> (external index, AS, the block podbgp owns for this test, the peer's pool route)
PEERS = {
    "bird2": (1, 65001, "10.244.1.0/26", "10.244.101.0/26"),
    "bird1": (2, 65002, "10.244.2.0/26", "10.244.102.0/26"),
    "frr": (3, 65003, "10.244.3.0/26", "10.244.103.0/26"),
    "gobgp": (4, 65004, "10.244.4.0/26", "10.244.104.0/26"),
}


@pytest.fixture(scope="module")
def tor():
    """(lab, {kind: peer}) with every peer configured and podbgp running."""
    require_interop_root()
    peers: dict = {}
    with Lab(nodes=1) as lab:
        try:
            node_ip = lab.nodes[NODE].ip
            for kind, (idx, asn, _, _) in PEERS.items():
                ext = lab.add_external(kind, idx)
                nbrs = [(node_ip, NODE_AS)]
                if kind == "bird2":
                    peers[kind] = Bird(lab, ext, asn, nbrs, version=2)
                elif kind == "bird1":
                    peers[kind] = Bird(lab, ext, asn, nbrs, version=1)
                elif kind == "frr":
                    peers[kind] = Frr(lab, ext, asn, nbrs)
                else:
                    peers[kind] = GoBgp(lab, ext, asn, nbrs)
            start_lab(lab, [NODE], resources=[
                peer_yaml(f"tor-{kind}", peerIP=peers[kind].ip, asNumber=asn)
                for kind, (_, asn, _, _) in PEERS.items()])
            yield lab, peers
        finally:
            for p in peers.values():
                with contextlib.suppress(Exception):
                    if isinstance(p, Frr):
                        p.cleanup()


@pytest.mark.parametrize("kind", list(PEERS))
def test_ebgp_tor(tor, kind):
    lab, peers = tor
    peer = peers[kind]
    _, _, block, pool_route = PEERS[kind]
    node_ip = lab.nodes[NODE].ip

    # Session up on both sides.
    wait(lab, lambda: peer_state(lab, NODE, peer.ip) == "up", f"podbgp: {kind} up", 40,
         node=NODE)
    wait(lab, peer.established, f"{kind} says Established", 20, node=NODE)

    # podbgp's block reaches the peer (BGP table and, if it has one, kernel via the node).
    add_affinity(lab, NODE, block)
    wait(lab, lambda: block in peer.table(), f"{block} in {kind}'s table", 20, node=NODE)
    if kind != "gobgp":
        wait(lab, lambda: block in peer.kernel(), f"{block} in {kind}'s kernel", 20)
        assert peer.kernel_route(block).get("gateway") == node_ip
    assert block in kernel(lab, NODE)  # our own block: a blackhole, proto 201

    # The peer's routes: in-pool accepted into the kernel, the others rejected and counted.
    def rejected(reason: str) -> float:
        return metric(lab, NODE, "podbgp_bgp_prefixes_rejected_total", peer=peer.ip,
                      reason=reason)

    before = {r: rejected(r) for r in ("not-in-pool", "default-route")}
    for p in (pool_route, OUT_OF_POOL, DEFAULT):
        peer.announce(p)
    wait(lab, lambda: pool_route in kernel(lab, NODE), f"{pool_route} in podbgp's kernel",
         20, node=NODE)
    via = next(r for r in lab.routes(NODE, "201") if r["dst"] == pool_route)
    assert via.get("gateway") == peer.ip, via
    wait(lab, lambda: all(rejected(r) > n for r, n in before.items()),
         f"rejections counted (before: {before})", 20, node=NODE)
    routes = lab.routes(NODE)
    assert OUT_OF_POOL not in {r["dst"] for r in routes}
    assert not [r for r in routes if r["dst"] == "default"], routes
    st = next(p for p in lab.status(NODE)["peers"] if p["address"] == peer.ip)
    assert st["prefixes_received"] >= 3 and st["prefixes_accepted"] >= 1, st
    assert st["prefixes_received"] - st["prefixes_accepted"] >= 2, st

    # Withdrawals: the peer's route leaves podbgp's kernel; our released block leaves the peer.
    peer.withdraw(pool_route)
    wait(lab, lambda: pool_route not in kernel(lab, NODE), f"{pool_route} withdrawn", 20,
         node=NODE)
    del_affinity(lab, NODE, block)
    wait(lab, lambda: block not in peer.table(), f"{block} withdrawn from {kind}", 20,
         node=NODE)
    if kind != "gobgp":
        wait(lab, lambda: block not in peer.kernel(), f"{block} gone from {kind}'s kernel", 20)
    wait(lab, lambda: block not in kernel(lab, NODE), "own blackhole removed", 20, node=NODE)
    for p in (OUT_OF_POOL, DEFAULT):
        peer.withdraw(p)
