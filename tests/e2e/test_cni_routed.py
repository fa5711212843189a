"""podbgp-cni end to end: real plugin, real podbgp-ipam, real bgpd, pods in namespaces.

The scenario of issue 14: one node with 130 pods on /26 IPAM blocks (so three
blocks; kubelet's default limit is 110 and the bridge setup broke at pod 62),
20 of them added concurrently, pods on two more nodes, >= 200 pod pairs
talking TCP by pod IP across nodes and within the node, then DEL of
everything leaving no veth, no host route, no IPAM handle or allocation, no
WorkloadEndpoint, and the emptied blocks withdrawn from every node.

What "right" means comes from Calico: its data plane (projectcalico/calico
cni-plugin/pkg/dataplane/linux/dataplane_linux.go: /32 per pod, one host
route each via the cali* interface), its WorkloadEndpoint layout and name
format (libcalico-go/lib/names/workloadendpoint.go, k8s.go), and the CNI
spec's error codes and DEL rules (containernetworking/cni SPEC.md).

Pods use the node's CNI agent (the way a node runs podbgp-cni); the fault
cases run the plugin in-process (no agent), so both paths are covered.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import random
import time

import pytest

from tests.conftest import require_binary
from tests.e2e.conftest import (
    POOL,
    _lab_module,
    bgp_config_yaml,
    blocks_of,
    learned,
    peers_up,
    pool_yaml,
)

pytestmark = [pytest.mark.root, pytest.mark.etcd]

WEP_PREFIX = "/calico/resources/v3/projectcalico.org/workloadendpoints/"


def etcd_keys(lab, prefix: str) -> list[str]:
    out = lab_run(lab, "etcdctl", "--endpoints", "http://127.0.0.1:2379", "get", "--prefix",
                  prefix, "--keys-only")
    return [k for k in out.split() if k]


def etcd_values(lab, prefix: str) -> dict[str, dict]:
    out = lab_run(lab, "etcdctl", "--endpoints", "http://127.0.0.1:2379", "get", "--prefix",
                  prefix, "-w", "json")
    import base64

    kvs = json.loads(out).get("kvs") or []
    return {base64.b64decode(kv["key"]).decode(): json.loads(base64.b64decode(kv["value"]))
            for kv in kvs}


def lab_run(lab, *cmd: str) -> str:
    from lab.harness import run

    return run(*cmd, ns=lab.etcd_ns).stdout


def cali_links(lab, node: str) -> set[str]:
    from lab.harness import run

    links = json.loads(run("ip", "-j", "link", "show", ns=lab.nodes[node].ns).stdout)
    return {link["ifname"] for link in links if link["ifname"].startswith("cali")}


def pod_routes(lab, node: str) -> dict[str, str]:
    """dst -> dev of the node's protocol-boot routes (podbgp-cni's host routes)."""
    return {r["dst"]: r.get("dev", "") for r in lab.routes(node, "boot")}


@pytest.fixture(scope="module")
def routed_lab():
    require_binary("etcd")
    harness = _lab_module()
    lab = harness.Lab(nodes=3, ipam_options={"empty_block_release_seconds": 0})
    with lab:
        lab.apply(pool_yaml())
        lab.apply(bgp_config_yaml())
        for name in lab.nodes:
            lab.register_node(lab.nodes[name])
            lab.start_daemon(name)
        names = list(lab.nodes)
        lab.wait_for(lambda: all(len(peers_up(lab, n)) == len(names) - 1 for n in names),
                     90, "the 3-node mesh to come up")
        yield lab


def test_130_pods_three_blocks_200_pairs_then_clean_delete(routed_lab):
    lab = routed_lab
    t0 = time.monotonic()
    labels = {"app": "web", "tier": "frontend"}
    sequential = lab.add_pods("node1", 110, labels=labels, concurrency=4)
    t_seq = time.monotonic() - t0
    t1 = time.monotonic()
    concurrent = lab.add_pods("node1", 20, labels={"app": "batch"}, concurrency=20,
                              prefix="c")
    t_conc = time.monotonic() - t1
    others = lab.add_pods("node2", 6, labels={"app": "db"}) + lab.add_pods("node3", 6)
    print(f"\n[e2e] 110 ADDs (4 at a time) {t_seq:.1f}s, 20 concurrent {t_conc:.1f}s")
    node1 = [*sequential, *concurrent]
    assert len(node1) == 130 and len({p.ip for p in node1}) == 130

    # Three /26 blocks, all this node's, every pod address inside one of them.
    blocks = blocks_of(lab, "node1")
    assert len(blocks) == 3, blocks
    nets = [ipaddress.ip_network(b) for b in blocks]
    assert all(net.prefixlen == 26 and net.subnet_of(ipaddress.ip_network(POOL))
               for net in nets)
    assert all(any(ipaddress.ip_address(p.ip) in n for n in nets) for p in node1)
    # Calico's data plane: one host interface and one /32 host route per pod.
    routes = pod_routes(lab, "node1")
    assert {p.ip: p.host_if for p in node1} == {ip: dev for ip, dev in routes.items()}
    assert cali_links(lab, "node1") == {p.host_if for p in node1}
    for p in random.Random(7).sample(node1, 5):
        assert p.result["ips"] == [{"address": f"{p.ip}/32", "interface": 1}]
        assert p.result["routes"] == [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}]

    # The other nodes route all three blocks to node1; nothing is a FIB conflict.
    def routed_everywhere() -> bool:
        return all(all(learned(lab, n).get(b) == lab.nodes["node1"].ip for b in blocks)
                   for n in ("node2", "node3"))

    lab.wait_for(routed_everywhere, 60, "node2 and node3 to route node1's three blocks")
    for n in lab.nodes:
        assert lab.status(n)["routes"]["conflicts"] == 0, n

    # WorkloadEndpoints in Calico's layout, with the pod's labels.
    weps = etcd_values(lab, WEP_PREFIX)
    assert len(weps) == 142
    sample = sequential[17]
    key = f"{WEP_PREFIX}default/node1-k8s-{sample.ns}-eth0"
    wep = weps[key]
    assert wep["metadata"]["labels"] == {
        "app": "web", "tier": "frontend", "projectcalico.org/namespace": "default",
        "projectcalico.org/orchestrator": "k8s"}
    assert wep["spec"]["interfaceName"] == sample.host_if
    assert wep["spec"]["ipNetworks"] == [f"{sample.ip}/32"]
    assert wep["spec"]["containerID"] == sample.container_id
    assert wep["spec"]["node"] == "node1" and wep["spec"]["profiles"] == ["kns.default"]
    assert weps[f"{WEP_PREFIX}default/node1-k8s-{concurrent[0].ns}-eth0"]["metadata"][
        "labels"]["app"] == "batch"
    # calicoctl's view of them (bgpctl get workloadendpoints, calicoctl's columns).
    out = lab.bgpctl("get", "workloadendpoints", "-n", "default").stdout
    head, *rows = out.strip().splitlines()
    assert head.split() == ["WORKLOAD", "NODE", "NETWORKS", "INTERFACE"]
    assert len(rows) == 142
    assert [sample.ns, "node1", f"{sample.ip}/32", sample.host_if] in [r.split() for r in rows]
    out = lab.bgpctl("get", "weps", "-A").stdout
    assert out.splitlines()[0].split()[0] == "NAMESPACE" and len(out.strip().splitlines()) == 143

    # >= 200 pairs by pod IP: node1 pods from every block <-> the other nodes' pods,
    # both ways, and pairs inside node1 across its blocks.
    rng = random.Random(14)
    by_block = {n: [p for p in node1 if ipaddress.ip_address(p.ip) in n] for n in nets}
    picks = [p for n in nets for p in rng.sample(by_block[n], min(4, len(by_block[n])))]
    remote = [*others]
    pairs = [(a, b) for a in picks for b in remote] + [(b, a) for a in picks for b in remote]
    pairs += [(a, b) for a, b in itertools.permutations(picks, 2)
              if ipaddress.ip_network(f"{a.ip}/26", strict=False)
              != ipaddress.ip_network(f"{b.ip}/26", strict=False)][:40]
    assert len(pairs) >= 200
    t2 = time.monotonic()
    replies = lab.tcp_exchange_many(pairs)
    bad = {k: v for k, v in replies.items() if not v.endswith(f"peer={k[0]}")}
    print(f"[e2e] {len(pairs)} pod pairs over TCP in {time.monotonic() - t2:.1f}s")
    assert not bad, f"{len(bad)} of {len(pairs)} pairs failed, e.g. {list(bad.items())[:3]}"

    # DEL of everything: the 20 concurrent ones concurrently, the rest 8 at a time.
    t3 = time.monotonic()
    lab.del_pods("node1", [p.name for p in concurrent], concurrency=20)
    for n in lab.nodes:
        lab.del_pods(n, concurrency=8)
    print(f"[e2e] {142} DELs in {time.monotonic() - t3:.1f}s")
    for n in lab.nodes:
        assert cali_links(lab, n) == set(), n
        assert pod_routes(lab, n) == {}, n
    assert etcd_keys(lab, WEP_PREFIX) == []
    assert etcd_keys(lab, "/calico/ipam/v2/handle/") == []
    assert etcd_keys(lab, "/calico/ipam/v2/assignment/") == []
    assert etcd_keys(lab, "/calico/ipam/v2/host/") == []
    # The emptied blocks (grace 0 here) leave node1 and every other node's kernel.
    lab.wait_for(lambda: not blocks_of(lab, "node1")
                 and not any(b in learned(lab, n) for n in ("node2", "node3") for b in blocks),
                 60, "node1's emptied blocks to be withdrawn everywhere")


def test_bridge_churn_is_refused_at_the_first_add_with_the_fix_named(routed_lab):
    """The same pods through the bridge plugin + podbgp-ipam block mode: refused at the
    first ADD (docs/testing.md, "CNI plugins": one IPv4 address per bridge), naming
    podbgp-cni; nothing left."""
    from lab.harness import CNI_BIN_DIR, run

    lab = routed_lab
    node = lab.nodes["node2"]
    pod_ns = lab._add_ns(f"{node.ns}brf")
    conf = {"cniVersion": "1.0.0", "name": "bridgenet", "type": "bridge", "bridge": "cni0",
            "isGateway": True, "etcd_endpoints": lab.etcd_endpoint, "nodename": node.name,
            "agent_socket": lab.agent_socket(node),
            "ipam": {"type": "podbgp-ipam", **lab.ipam_options}}
    env = lab.cni_env(node, "ADD", pod_ns, "bridgefirst", pod_ns)
    r = run(f"{CNI_BIN_DIR}/bridge", ns=node.ns, input=json.dumps(conf), env=env, check=False)
    err = json.loads(r.stdout)
    assert r.returncode != 0 and err["code"] == 7, err
    assert "podbgp-cni" in err["msg"] and "second block" in err["msg"]
    assert etcd_keys(lab, "/calico/ipam/v2/handle/bridgenet.") == []
