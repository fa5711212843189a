"""Shared pieces of the pod-network end-to-end tests (tests/e2e/test_pod_*.py).

Owned by the pod-network e2e tests. ``PodLab`` is ``lab.harness.Lab`` with
one difference: the pods' CNI configuration sets podbgp-ipam's
``empty_block_release_seconds`` (default 0 here), so a block emptied by a pod
delete is released by that very CNI DEL instead of 300 s later.

``pod_lab`` (module scope) is a converged 3-node full mesh, two pods per node,
nodeMeshMaxRestartTime 10s (so a dead node's routes are kept only 10 s under
graceful restart). Every namespace and process it makes is removed by
``Lab.down()`` even when a test fails.
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Iterator

import pytest

from tests.conftest import require, require_binary, require_root

POOL = "10.244.0.0/16"
BLOCK_SIZE = 26
RESTART_TIME = 10  # nodeMeshMaxRestartTime / BGPPeer maxRestartTime, seconds


def _lab_module():
    require_root()
    require_binary("etcd")
    require(os.path.exists("/usr/lib/cni/bridge"),
            "needs containernetworking-plugins (/usr/lib/cni/bridge)")
    from lab import harness

    return harness


def pool_yaml(cidr: str = POOL) -> str:
    return json.dumps({
        "apiVersion": "projectcalico.org/v3", "kind": "IPPool",
        "metadata": {"name": "pods"},
        "spec": {"cidr": cidr, "blockSize": BLOCK_SIZE, "ipipMode": "Never",
                 "vxlanMode": "Never", "natOutgoing": False},
    })


def bgp_config_yaml(mesh: bool = True, restart: str | None = f"{RESTART_TIME}s") -> str:
    spec: dict = {"asNumber": 64512, "nodeToNodeMeshEnabled": mesh, "logSeverityScreen": "Info"}
    if mesh and restart:
        spec["nodeMeshMaxRestartTime"] = restart
    return json.dumps({"apiVersion": "projectcalico.org/v3", "kind": "BGPConfiguration",
                       "metadata": {"name": "default"}, "spec": spec})


def make_pod_lab(nodes: int = 3, release_seconds: float = 0):
    """A ``Lab`` whose pods' IPAM releases empty blocks after ``release_seconds``."""
    harness = _lab_module()

    return harness.Lab(nodes=nodes,
                       ipam_options={"empty_block_release_seconds": release_seconds})


def blocks_of(lab, node: str) -> set[str]:
    """The node's own pod blocks: podbgp installs a blackhole for each one it owns."""
    return {r["dst"] for r in lab.routes(node, "201")
            if r.get("type") == "blackhole" and r.get("dst") != "default"}


def learned(lab, node: str) -> dict[str, str]:
    """prefix -> gateway of the unicast podbgp routes in the node's kernel."""
    out = {}
    for r in lab.routes(node, "201"):
        if r.get("type", "unicast") != "unicast" or r.get("dst") == "default":
            continue
        out[r["dst"]] = r.get("gateway") or ",".join(
            h.get("gateway", "?") for h in r.get("nexthops", ()))
    return out


def peers_up(lab, node: str) -> set[str]:
    return {p["address"] for p in lab.status(node)["peers"] if p["state"] == "up"}


def wait_routes(lab, nodes, timeout: float = 60) -> None:
    """Until every running node's kernel routes every other node's blocks via that node."""
    def ok() -> bool:
        blocks = {n: blocks_of(lab, n) for n in nodes}
        if any(not b for n, b in blocks.items() if lab.nodes[n].pods):
            return False
        for n in nodes:
            have = learned(lab, n)
            for other in nodes:
                if other == n:
                    continue
                for b in blocks[other]:
                    if have.get(b) != lab.nodes[other].ip:
                        return False
        return True

    lab.wait_for(ok, timeout, f"every node of {sorted(nodes)} to route every other's blocks")


def in_pool(prefix: str) -> bool:
    return ipaddress.ip_network(prefix).subnet_of(ipaddress.ip_network(POOL))


@pytest.fixture(scope="module")
def pod_lab() -> Iterator:
    """A converged 3-node full mesh with two pods on each node (shared by a module)."""
    lab = make_pod_lab(nodes=3)
    with lab:
        lab.apply(pool_yaml())
        lab.apply(bgp_config_yaml())
        for name in lab.nodes:
            lab.register_node(lab.nodes[name], labels={"kubernetes.io/hostname": name})
        for name in lab.nodes:
            lab.start_daemon(name)
        for name in lab.nodes:
            lab.add_pod(name)
            lab.add_pod(name)
        names = list(lab.nodes)
        try:
            lab.wait_for(lambda: all(len(peers_up(lab, n)) == len(names) - 1 for n in names),
                         60, "the 3-node mesh to come up")
            wait_routes(lab, names)
        except TimeoutError:
            for n in names:
                proc = lab.nodes[n].proc
                print(f"--- {n} (bgpd exit status {proc.poll() if proc else None}) log ---\n"
                      f"{lab.daemon_log(n)}")
            raise
        yield lab
