"""Network policy end to end: 3 namespaces x 3 pods on 3 nodes, truth tables.

The model of Kubernetes' own network-policy conformance tests
(kubernetes/kubernetes test/e2e/network/netpol: namespaces x, y, z with pods
a, b, c; servers on TCP 80/81 and UDP; every ordered pair probed; one expected
truth table per policy), re-stated for podbgp: the pods are network namespaces
wired as podbgp-cni wires them (lab.podnet), spread over three node
namespaces that route each other's pods; etcd sits on the nodes' segment; a
real `podbgp-policy` runs in every node; policies go in with `bgpctl`. An
"outside" host (10.78.0.1) probes too, for ipBlock.

Cases are issue 20's: the seed's deny-all; allow from a podSelector, from a
namespaceSelector, from both in one peer; ipBlock with except; egress denied
with DNS-style UDP allowed; a port range (endPort); two policies adding up;
deleting restores; a Calico GlobalNetworkPolicy Deny with a lower order
beating a namespaced Allow; Pass; SCTP ports and ICMP (lab.prober's raw-socket
INIT / INIT ACK and echo probes), in Kubernetes and in Calico policies.
"""

from __future__ import annotations

import os
import signal
import subprocess

import pytest

from config.endpoints import endpoint_to_json, pod_endpoint
from config.keys import workload_endpoint_key
from lab.netpol import PORTS, Prober, eventually
from lab.podnet import PodNet
from tests.conftest import REPO, EtcdServer, free_ports, require_binary, require_root

pytestmark = [pytest.mark.slow]

BIN = REPO / ".venv" / "bin"
NAMESPACES = ("x", "y", "z")
PODS = ("a", "b", "c")
ETCD_IP = "10.98.0.3"
DNS = (("udp", 53),)
SCTP_ICMP = (("tcp", 80), ("sctp", 80), ("sctp", 81), ("icmp", 8))


class Cluster:
    def __init__(self, net: PodNet, etcd: EtcdServer, etcd_ns: str) -> None:
        self.net, self.etcd, self.etcd_ns = net, etcd, etcd_ns
        self.agents: list[subprocess.Popen] = []
        self.probers: dict[str, Prober] = {}

    def bgpctl(self, *args: str, stdin: str | None = None) -> str:
        env = {**os.environ, "ETCD_ENDPOINTS": self.etcd.endpoint}
        r = subprocess.run(["ip", "netns", "exec", self.etcd_ns, str(BIN / "bgpctl"), *args],
                           input=stdin, capture_output=True, text=True, env=env, timeout=60)
        assert r.returncode == 0, r.stderr
        return r.stdout

    def apply(self, yaml_text: str) -> None:
        self.bgpctl("apply", "-f", "-", stdin=yaml_text)

    def reset(self) -> None:
        for plural in ("networkpolicies", "globalnetworkpolicies"):
            self.etcd.etcdctl("del", "--prefix",
                              f"/calico/resources/v3/projectcalico.org/{plural}/")

    @property
    def everyone(self):
        return [*self.net.pods.values(), self.net.outside]

    def check(self, allowed, ports=PORTS, timeout: float = 20) -> None:
        """The observed table becomes the expected one and stays so."""
        report = eventually(self.probers, self.everyone, allowed, ports, timeout)
        assert report is None, report


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    require_root()
    for tool in ("nft", "etcd"):
        require_binary(tool)
    workdir = tmp_path_factory.mktemp("policy-e2e")
    with PodNet(nodes=3) as net:
        etcd_ns = net.add_host("etcd", ETCD_IP)
        client, peer = free_ports(2)
        etcd = EtcdServer(workdir / "etcd-data", client, peer, netns=etcd_ns, host=ETCD_IP)
        etcd.start()
        c = Cluster(net, etcd, etcd_ns)
        try:
            c.apply("".join(f"---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}, "
                            f"labels: {{ns: {ns}}}}}\n" for ns in NAMESPACES))
            for i, ns in enumerate(NAMESPACES):
                for j, pod in enumerate(PODS):
                    node = (i + j) % 3  # every node has a pod of every namespace
                    peer_ = net.add_pod(ns, pod, f"10.77.{i}.{10 + j}", {"pod": pod}, node=node)
                    wep = pod_endpoint(node=f"node{node}", namespace=ns, pod=pod,
                                       endpoint="eth0", container_id=f"c{ns}{pod}",
                                       interface_name=net.iface(peer_), mac=None,
                                       ip_networks=[f"{peer_.ip}/32"], labels={"pod": pod})
                    etcd.etcdctl("put", workload_endpoint_key(ns, wep.name),
                                 endpoint_to_json(wep).decode())
            for i, node_ns in enumerate(net.node_names):
                log = open(workdir / f"agent{i}.log", "wb")  # noqa: SIM115
                c.agents.append(subprocess.Popen(
                    ["ip", "netns", "exec", node_ns, str(BIN / "podbgp-policy"),
                     "--node", f"node{i}", "--etcd-endpoints", etcd.endpoint,
                     "--http-listen", "127.0.0.1:9180", "--resync-interval", "2",
                     "--log-format", "json"], stdout=log, stderr=log))
                log.close()
            for p in c.everyone:
                c.probers[p.id] = Prober(p.netns, udp="80,53", sctp="80,81")
            yield c
        finally:
            for a in c.agents:
                a.send_signal(signal.SIGKILL)
                a.wait(10)
            for pr in c.probers.values():
                pr.close()
            etcd.stop(sig_kill=True)


@pytest.fixture
def cl(cluster):
    cluster.reset()
    yield cluster
    cluster.reset()


def lab(p, key):
    return dict(p.labels).get(key)


def test_00_no_policy_everyone_talks_across_nodes(cl):
    cl.check(lambda s, d, proto, port: True)


def test_deny_all_ingress_the_seed_example(cl):
    cl.apply("""apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: x}
spec: {podSelector: {}, policyTypes: [Ingress]}
""")
    cl.check(lambda s, d, proto, port: d.ns != "x")


def test_allow_ingress_from_a_pod_selector(cl):
    cl.apply("""apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]
""")
    cl.check(lambda s, d, proto, port: d.id != "x/a" or s.id == "x/b")


def test_allow_ingress_from_a_namespace_selector(cl):
    cl.apply("""apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-ns-y, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]
""")
    cl.check(lambda s, d, proto, port: d.id != "x/a" or s.ns == "y")


def test_pod_and_namespace_selector_in_one_peer(cl):
    cl.apply("""apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-y-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {ns: y}}
      podSelector: {matchLabels: {pod: b}}
""")
    cl.check(lambda s, d, proto, port: d.id != "x/a" or s.id == "y/b")


def test_ip_block_with_except(cl):
    yb = cl.net.pods["y/b"].ip
    cl.apply(f"""apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: ipblock, namespace: x}}
spec:
  podSelector: {{matchLabels: {{pod: a}}}}
  ingress: [{{from: [{{ipBlock: {{cidr: 10.77.0.0/16, except: [{yb}/32]}}}}]}}]
""")
    # every pod but y/b (and not the outside host, 10.78.0.1)
    cl.check(lambda s, d, proto, port: d.id != "x/a"
             or (s.ip.startswith("10.77.") and s.id != "y/b"))


def test_egress_denied_but_dns_style_udp(cl):
    cl.apply("""apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: egress-dns-only, namespace: y}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress: [{ports: [{protocol: UDP, port: 53}]}]
""")
    ports = (*PORTS, *DNS)
    cl.check(lambda s, d, proto, port: s.ns != "y" or (proto, port) == ("udp", 53), ports)


def test_port_range_with_end_port(cl):
    cl.apply("""apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: range, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{ports: [{protocol: TCP, port: 81, endPort: 90}]}]
""")
    cl.check(lambda s, d, proto, port: d.id != "x/a" or (proto, port) == ("tcp", 81))


def test_two_policies_add_up_and_deleting_restores(cl):
    cl.apply("""apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-z, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: z}}}]}]
""")
    cl.check(lambda s, d, proto, port: d.id != "x/a" or s.id == "x/b" or s.ns == "z")
    cl.bgpctl("delete", "networkpolicy", "knp.default.from-b", "-n", "x")
    cl.check(lambda s, d, proto, port: d.id != "x/a" or s.ns == "z")
    cl.bgpctl("delete", "networkpolicy", "knp.default.from-z", "-n", "x")
    cl.check(lambda s, d, proto, port: True)


def test_global_deny_with_lower_order_beats_namespaced_allow(cl):
    cl.apply("""apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: deny-c-into-x}
spec:
  order: 10
  selector: projectcalico.org/namespace == 'x'
  ingress: [{action: Deny, source: {selector: pod == 'c'}}]
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: allow-all, namespace: x}
spec:
  order: 100
  ingress: [{action: Allow}]
""")
    cl.check(lambda s, d, proto, port: d.ns != "x" or lab(s, "pod") != "c")


def test_pass_skips_to_the_namespace_profile(cl):
    cl.apply("""apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: pass-from-y}
spec:
  order: 1
  namespaceSelector: ns == 'x'
  ingress: [{action: Pass, source: {namespaceSelector: ns == 'y'}}]
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: deny-into-x}
spec:
  order: 2
  namespaceSelector: ns == 'x'
  ingress: [{action: Deny}]
""")
    # y's pods pass the order-2 Deny and kns.x (allow) decides; everyone else is denied
    cl.check(lambda s, d, proto, port: d.ns != "x" or s.ns == "y")


def test_sctp_port_in_a_kubernetes_policy_isolates_icmp_too(cl):
    cl.apply("""apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: sctp-80, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{ports: [{protocol: SCTP, port: 80}]}]
""")
    # x/a takes SCTP 80 from anyone and nothing else (an isolated pod: ICMP too)
    cl.check(lambda s, d, proto, port: d.id != "x/a" or (proto, port) == ("sctp", 80),
             SCTP_ICMP)


def test_calico_icmp_type_and_not_protocol(cl):
    cl.apply("""apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: ping-and-not-tcp, namespace: x}
spec:
  selector: pod == 'a'
  types: [Ingress]
  ingress:
  - {action: Allow, protocol: ICMP, icmp: {type: 8, code: 0}}
  - {action: Allow, notProtocol: TCP, source: {namespaceSelector: ns == 'y'}}
""")
    # into x/a: echo requests from anyone, and from y everything but TCP
    cl.check(lambda s, d, proto, port: d.id != "x/a" or proto == "icmp"
             or (s.ns == "y" and proto != "tcp"), SCTP_ICMP)
