"""Network policy over the real stack: bgpd, podbgp-cni, podbgp-ipam, podbgp-policy.

tests/e2e/test_policy_e2e.py proves the whole truth table of issue 20 on pods
wired like podbgp-cni wires them, routed by static /32s. This module proves
that the pieces meet: three nodes of lab.harness, each running a real `bgpd`
(full mesh; pod blocks learned over BGP, protocol 201) and a real
`podbgp-policy`; pods made by the real `podbgp-cni` + `podbgp-ipam` (CNI ADD
with K8S_POD_NAMESPACE and args.cni.labels, so the WorkloadEndpoints the
agents police are the plugin's own); policies in through `bgpctl`. Cases, the
representative ones: no policy (every pair across nodes), the seed's deny-all,
a podSelector + namespaceSelector peer, a Calico GlobalNetworkPolicy order
beating a namespaced Allow in the egress direction, a pod added under a
policy (held until programmed, then policed on the plugin's labels), and
kill -9 of every node's agent at once under probing.

Truth tables follow Kubernetes' network-policy e2e method (kubernetes/
kubernetes test/e2e/network/netpol), via lab.netpol.
"""

from __future__ import annotations

import ipaddress
import json
import signal
import time

import pytest

from lab.harness import run
from lab.netpol import PORTS, Continuous, Peer, Prober, eventually, longest_run
from tests.e2e.conftest import bgp_config_yaml, make_pod_lab, peers_up, pool_yaml, wait_routes

pytestmark = [pytest.mark.root, pytest.mark.etcd, pytest.mark.slow]

NAMESPACES = ("x", "y", "z")
PODS = ("a", "b")
ALL_PROTOCOLS = (*PORTS, ("sctp", 80), ("icmp", 8))
DENY_ALL_X = """apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: x}
spec: {podSelector: {}, policyTypes: [Ingress]}
"""


class Stack:
    def __init__(self, lab) -> None:
        self.lab = lab
        self.peers: dict[str, Peer] = {}
        self.probers: dict[str, Prober] = {}

    def add(self, node: str, ns: str, name: str, labels: dict[str, str]) -> Peer:
        """A pod through the real CNI ADD, with a prober inside it."""
        pod = self.lab.add_pod(node, f"{ns}{name}", labels=labels, namespace=ns)
        peer = Peer(ns, name, pod.ns, pod.ip, node, tuple(sorted(labels.items())))
        self.peers[peer.id] = peer
        self.probers[peer.id] = Prober(pod.ns, sctp="80")
        return peer

    def remove(self, peer: Peer) -> None:
        self.probers.pop(peer.id).close()
        del self.peers[peer.id]
        self.lab.del_pod(peer.node, f"{peer.ns}{peer.name}")

    def reset(self) -> None:
        for plural in ("networkpolicies", "globalnetworkpolicies"):
            run("etcdctl", "--endpoints", "http://127.0.0.1:2379", "del", "--prefix",
                f"/calico/resources/v3/projectcalico.org/{plural}/", ns=self.lab.etcd_ns)

    def check(self, allowed, ports=PORTS, timeout: float = 30) -> None:
        report = eventually(self.probers, self.peers.values(), allowed, ports, timeout)
        assert report is None, f"{report}\n{self.logs()}"

    def metric(self, node: str, name: str, **labels: str) -> float:
        """A metric of the node's podbgp-policy."""
        return self.lab.metric(node, name, self.lab.nodes[node].policy_http, **labels)

    def logs(self) -> str:
        out = []
        for n in self.lab.nodes:
            p = self.lab.workdir / f"{n}-policy.log"
            if p.exists():
                out.append(f"--- {n} podbgp-policy ---\n" + "\n".join(
                    p.read_text(errors="replace").splitlines()[-15:]))
        return "\n".join(out)


@pytest.fixture(scope="module")
def stack():
    lab = make_pod_lab(nodes=3)
    with lab:
        lab.apply(pool_yaml())
        lab.apply(bgp_config_yaml())
        lab.apply("".join(f"---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}, "
                          f"labels: {{ns: {ns}}}}}\n" for ns in NAMESPACES))
        names = list(lab.nodes)
        for name in names:
            lab.register_node(lab.nodes[name])
            lab.start_daemon(name)
            # before any pod: a pod's interface is held until its chains exist
            lab.start_policy_agent(name, "--resync-interval", "2")
        s = Stack(lab)
        try:
            lab.wait_for(lambda: all(lab.policy_ready(n) for n in names), 60,
                         "every node's policy agent to be ready")
            for i, ns in enumerate(NAMESPACES):
                for j, pod in enumerate(PODS):
                    # x/a, y/b, z/a... : every node holds pods of two namespaces
                    s.add(names[(i + j) % 3], ns, pod, {"pod": pod})
            lab.wait_for(lambda: all(len(peers_up(lab, n)) == 2 for n in names), 90,
                         "the 3-node mesh to come up")
            wait_routes(lab, names)
            yield s
        except BaseException:
            print(s.logs())
            raise
        finally:
            for pr in s.probers.values():
                pr.close()


@pytest.fixture
def st(stack):
    stack.reset()
    yield stack
    stack.reset()


def test_00_every_pair_talks_across_nodes_over_bgp_routes(st):
    lab = st.lab
    # the remote pods are reached by BGP-learned block routes (proto 201), not /32s
    for peer in st.peers.values():
        for other in lab.nodes:
            if other == peer.node:
                continue
            r = json.loads(run("ip", "-j", "route", "get", peer.ip,
                                ns=lab.nodes[other].ns).stdout)[0]
            assert r.get("gateway") == lab.nodes[peer.node].ip, (other, peer.id, r)
            learned = [x for x in lab.routes(other, "201")
                       if x.get("type", "unicast") == "unicast"
                       and ipaddress.ip_address(peer.ip) in ipaddress.ip_network(x["dst"])]
            assert learned and ipaddress.ip_network(learned[0]["dst"]).prefixlen == 26
    # the agents police the plugin's endpoints: each node has its two pods' chains
    for n in lab.nodes:
        status = json.loads(lab.http_get(n, "/status", lab.nodes[n].policy_http)[1])
        have = {e["endpoint"].split("/")[0] for e in status["local_endpoints"]}
        assert len(status["local_endpoints"]) == 2 and len(have) == 2, status
    st.check(lambda s, d, proto, port: True, ALL_PROTOCOLS)


def test_deny_all_then_pod_and_namespace_selector_then_deleted(st):
    st.lab.apply(DENY_ALL_X)
    st.check(lambda s, d, proto, port: d.ns != "x", ALL_PROTOCOLS)
    st.lab.apply("""apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-y-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {ns: y}}
      podSelector: {matchLabels: {pod: b}}
    ports: [{protocol: TCP, port: 80}]
""")
    st.check(lambda s, d, proto, port: d.ns != "x"
             or (d.id == "x/a" and s.id == "y/b" and (proto, port) == ("tcp", 80)))
    st.lab.bgpctl("delete", "-f", "-", input=DENY_ALL_X)
    st.lab.bgpctl("delete", "networkpolicy", "knp.default.allow-y-b", "-n", "x")
    st.check(lambda s, d, proto, port: True)


def test_global_egress_deny_by_order_beats_namespaced_allow(st):
    st.lab.apply("""apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: z-may-not-reach-a}
spec:
  order: 10
  namespaceSelector: ns == 'z'
  types: [Egress]
  egress: [{action: Deny, destination: {selector: pod == 'a'}}]
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: allow-all-out, namespace: z}
spec:
  order: 100
  types: [Egress]
  egress: [{action: Allow}]
""")
    st.check(lambda s, d, proto, port: s.ns != "z" or lab_of(d) != "a")


def lab_of(p: Peer) -> str | None:
    return dict(p.labels).get("pod")


def test_pod_added_under_a_policy_is_policed_by_its_cni_labels(st):
    lab = st.lab
    st.lab.apply("""apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: clients-only, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{namespaceSelector: {}, podSelector: {matchLabels: {role: client}}}]}]
""")
    st.check(lambda s, d, proto, port: d.id != "x/a")
    xa = st.peers["x/a"]
    other = next(n for n in lab.nodes if n != xa.node)
    added = []
    try:
        # two new pods on another node: a client and a stranger, from their first packet
        for name, labels in (("cl", {"pod": "cl", "role": "client"}), ("st", {"pod": "st"})):
            added.append(st.add(other, "y", name, labels))
        with Continuous(st.probers, {"stranger": ("y/st", xa.ip),
                                     "client": ("y/cl", xa.ip)}) as probe:
            lab.wait_for(lambda: any(probe.results["client"]), 30,
                         "the new client pod to reach x/a")
            time.sleep(1.0)
        assert probe.results["stranger"] and not any(probe.results["stranger"]), \
            "a pod the policy does not allow reached x/a"
        assert longest_run(probe.results["client"][probe.results["client"].index(True):],
                           False) <= 1, probe.results["client"]
        st.check(lambda s, d, proto, port: d.id != "x/a" or dict(s.labels).get("role")
                 == "client")
    finally:
        for peer in added:
            st.remove(peer)
    # the plugin's DEL took the endpoints away: each agent polices its original pods
    for n in lab.nodes:
        lab.wait_for(lambda n=n: len(json.loads(lab.http_get(
            n, "/status", lab.nodes[n].policy_http)[1])["local_endpoints"]) == 2, 20,
            f"{n}'s agent to forget the deleted pods")


def test_kill_9_of_every_agent_under_cross_node_probing(st):
    lab = st.lab
    st.lab.apply(DENY_ALL_X)
    st.check(lambda s, d, proto, port: d.ns != "x")
    xa, yb, zb = st.peers["x/a"], st.peers["y/b"], st.peers["z/b"]
    assert len({xa.node, yb.node, zb.node}) >= 2
    pairs = {"denied": ("z/b", xa.ip), "denied2": ("y/b", xa.ip),
             "allowed": ("x/a", yb.ip), "allowed2": ("x/a", zb.ip)}
    with Continuous(st.probers, pairs) as probe:
        time.sleep(0.5)
        for n in lab.nodes:
            lab.stop_policy_agent(n, signal.SIGKILL)
        time.sleep(1.0)  # no agent anywhere: every node's table stays in force
        for n in lab.nodes:
            lab.start_policy_agent(n, "--resync-interval", "2")
        lab.wait_for(lambda: all(lab.policy_ready(n) for n in lab.nodes), 60,
                     "the restarted agents to be ready")
        time.sleep(1.0)
    for n in lab.nodes:  # each restarted agent replaced its table in one full transaction
        assert st.metric(n, "podbgp_policy_transactions_total", type="full") == 1, n
    for k in ("denied", "denied2"):
        assert len(probe.results[k]) >= 10
        assert not any(probe.results[k]), f"{k}: a denied pair got through"
    for k in ("allowed", "allowed2"):
        assert longest_run(probe.results[k], False) <= 1, (k, probe.results[k])
    st.check(lambda s, d, proto, port: d.ns != "x")


def test_etcd_down_every_node_keeps_its_rules(st):
    lab = st.lab
    lab.apply(DENY_ALL_X)
    st.check(lambda s, d, proto, port: d.ns != "x")
    lab.stop_etcd()
    try:
        lab.wait_for(lambda: all(st.metric(n, "podbgp_datastore_connected") == 0
                                 for n in lab.nodes), 30, "every agent to see etcd gone")
        time.sleep(2.0)  # longer than the agents' 2 s resync: each has read back its table
        # every node enforces the last rules and says it is ready doing so
        report = eventually(st.probers, st.peers.values(),
                            lambda s, d, proto, port: d.ns != "x", timeout=5)
        assert report is None, f"{report}\n{st.logs()}"
        assert all(lab.policy_ready(n) for n in lab.nodes)
        assert all(lab.nodes[n].policy_agent.poll() is None for n in lab.nodes)
    finally:
        lab.start_etcd()
    lab.wait_for(lambda: all(st.metric(n, "podbgp_datastore_connected") == 1
                             for n in lab.nodes), 60, "every agent to reconnect")
    # back in step with the datastore: a delete made after the outage is enforced
    lab.bgpctl("delete", "-f", "-", input=DENY_ALL_X)
    st.check(lambda s, d, proto, port: True)


def test_routing_fault_never_opens_policy(st):
    """kill -9 of bgpd on x/a's node under probing: policy is another process and stays
    in force; bgpd restarts and converges. (The allowed pair may stop for a while: a
    restart slower than the lab's 10 s nodeMeshMaxRestartTime ends graceful restart on
    the peers and they withdraw the node's block -- routing, not policy.)"""
    lab = st.lab
    lab.apply(DENY_ALL_X)
    st.check(lambda s, d, proto, port: d.ns != "x")
    xa, yb = st.peers["x/a"], st.peers["y/b"]
    other = next(p for p in st.peers.values() if p.node not in (xa.node, yb.node))
    pairs = {"denied": (other.id, xa.ip), "allowed": ("x/a", yb.ip if yb.node != xa.node
                                                       else other.ip)}
    with Continuous(st.probers, pairs) as probe:
        time.sleep(0.5)
        lab.stop_daemon(xa.node, signal.SIGKILL)
        time.sleep(1.5)
        t0 = time.monotonic()
        lab.start_daemon(xa.node)
        lab.wait_for(lambda: len(peers_up(lab, xa.node)) == 2, 90, "bgpd back in the mesh")
        wait_routes(lab, list(lab.nodes))
        lab.wait_for(lambda: probe.results["allowed"][-3:] == [True] * 3, 30,
                     "the allowed pair to pass again")
    allowed = probe.results["allowed"]
    print(f"\n[policy-stack] bgpd back in the mesh {time.monotonic() - t0:.1f}s after its "
          f"restart; allowed pair: {allowed.count(False)} of {len(allowed)} probes blocked, "
          f"longest run {longest_run(allowed, False)}")
    assert len(probe.results["denied"]) >= 10
    assert not any(probe.results["denied"]), "a denied pair got through while bgpd restarted"
    st.check(lambda s, d, proto, port: d.ns != "x")
