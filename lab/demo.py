"""`make demo`: a 3-node podbgp cluster with pods, in network namespaces.

Brings up etcd, three nodes on two subnets joined by a router (lab/routed.py:
the router knows node addresses only) each running a real `bgpd`, applies the
seed's kind of IPPool (encapsulation + natOutgoing) and a BGPConfiguration
with `bgpctl`, creates two pods per node with `podbgp-cni` (Calico's routed
data plane: a veth per pod, a /32, one host route each) and `podbgp-ipam`,
then shows what a Calico user would look at: the mesh, the routes, the VXLAN
device podbgp made with its VTEP entries, a capture proving cross-node pod
traffic is encapsulated, pod-to-pod TCP by pod IP (never NATed), a pod
reaching a host outside every pool with its node's address, and network
policy taking effect across nodes: `podbgp-policy` runs on every node, the
seed's deny-all NetworkPolicy closes a pod, an allow from one label reopens
it for one client only, deleting them restores everything.

    python -m lab.demo            # run, show, tear down
    python -m lab.demo --keep     # leave it running (prints how to use it)
    python -m lab.demo --down     # remove what a --keep run left behind
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time

from lab.harness import Lab, cleanup_leftovers, run
from lab.netpol import Prober
from lab.routed import OUTSIDE_IP, RoutedLab, summarise

IPPOOL = """\
apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: demo-pods
spec:
  cidr: 10.244.0.0/16
  blockSize: 26
  # The seed's pool is ipipMode: Always + natOutgoing: true. This kernel has no
  # `ipip` module (podbgp would report tunl0 as failed), so the demo encapsulates
  # with VXLAN instead: same semantics, vxlan.calico instead of tunl0.
  ipipMode: Never
  vxlanMode: Always
  natOutgoing: true
"""

BGPCONFIG = """\
apiVersion: projectcalico.org/v3
kind: BGPConfiguration
metadata:
  name: default
spec:
  asNumber: 64512
  nodeToNodeMeshEnabled: true
  nodeMeshMaxRestartTime: 30s
  logSeverityScreen: Info
"""

BOLD = "\033[1m" if sys.stdout.isatty() else ""
GREEN = "\033[32m" if sys.stdout.isatty() else ""
RED = "\033[31m" if sys.stdout.isatty() else ""
RESET = "\033[0m" if sys.stdout.isatty() else ""
T0 = time.monotonic()


def step(text: str) -> None:
    print(f"\n{BOLD}[{time.monotonic() - T0:6.1f}s] {text}{RESET}", flush=True)


def show(text: str) -> None:
    for line in text.rstrip().splitlines():
        print(f"    {line}")
    sys.stdout.flush()


def routes_table(lab: Lab, node: str) -> str:
    lines = []
    for r in sorted(lab.routes(node, "201"), key=lambda r: r["dst"]):
        if r.get("type") == "blackhole":
            lines.append(f"blackhole {r['dst']}  (own block)")
        else:
            lines.append(f"{r['dst']} via {r.get('gateway')} dev {r.get('dev')}")
    return "\n".join(lines) or "(none)"


def pod_routes_table(lab: Lab, node: str) -> str:
    """The node's routes to its own pods (podbgp-cni's, protocol boot, one per pod)."""
    lines = []
    for r in sorted(lab.routes(node, "boot"), key=lambda r: r["dst"]):
        if r.get("dev", "").startswith("cali"):
            lines.append(f"{r['dst']} dev {r['dev']} scope {r.get('scope', 'global')}")
    return "\n".join(lines) or "(none)"


def _j(*cmd: str, ns: str) -> list:
    return json.loads(run(*cmd, ns=ns).stdout or "[]")


def overlay_section(lab: RoutedLab, failures: list[str]) -> None:
    """The tunnel podbgp made, a capture of pod traffic on the wire, natOutgoing."""
    n1 = lab.nodes["node1"]
    step("The VXLAN device podbgp made on node1, and its VTEP entries")
    dev = _j("ip", "-d", "-j", "link", "show", "vxlan.calico", ns=n1.ns)[0]
    info = dev["linkinfo"]["info_data"]
    addr = _j("ip", "-j", "-4", "addr", "show", "dev", "vxlan.calico", ns=n1.ns)[0]
    vtep = addr["addr_info"][0]["local"]
    show(f"vxlan.calico: VNI {info['id']}, UDP {info['port']}, local {info['local']} on "
         f"{info.get('link')}, learning {'on' if info.get('learning') else 'off'}, "
         f"MTU {dev['mtu']}, MAC {dev['address']}, VTEP {vtep}/32, alias {dev.get('ifalias')}")
    node = json.loads(lab.bgpctl("get", "node", "node1", "-o", "json").stdout)
    show(f"Node node1 publishes: spec.ipv4VXLANTunnelAddr {node['spec'].get('ipv4VXLANTunnelAddr')}"
         f", spec.vxlanTunnelMACAddr {node['spec'].get('vxlanTunnelMACAddr')}")
    show("$ ip neigh show dev vxlan.calico")
    show(run("ip", "neigh", "show", "dev", "vxlan.calico", ns=n1.ns).stdout or "(none)")
    show("$ bridge fdb show dev vxlan.calico")
    show(run("bridge", "fdb", "show", "dev", "vxlan.calico", ns=n1.ns).stdout or "(none)")

    step("Capture on node1's eth0 while pods talk across nodes (tcpdump)")
    cap = lab.capture(n1.ns, "eth0", "ip and not tcp port 179 and not tcp port 2379")
    p1 = n1.pods["p1"]
    for other in ("node2", "node3"):
        lab.tcp_exchange(p1, lab.nodes[other].pods["p1"], port=7600 + int(other[-1]))
    summary = summarise(cap.stop())
    vx, pod_net = summary["vxlan"], "10.244."
    pairs = sorted(set(vx))
    bare = [p for p in summary["other"] if p[0].startswith(pod_net) or p[1].startswith(pod_net)]
    show(f"{len(vx)} packets: UDP 4789 (VXLAN, VNI {info['id']}) between node addresses "
         + ", ".join(f"{a}->{b}" for a, b in pairs[:4]))
    show(f"{len(bare)} packets with a pod address outside the tunnel")
    if not vx or bare:
        failures.append("capture: cross-node pod traffic was not (only) VXLAN")

    step(f"natOutgoing: a pod on node1 sends to the outside host {OUTSIDE_IP}")
    seen = lab.udp_source_seen(p1)
    ok = seen == n1.ip
    show(f"pod {p1.ip} -> {OUTSIDE_IP}: the outside host saw source {seen} "
         + (f"{GREEN}(node1's address: masqueraded){RESET}" if ok else f"{RED}(wrong){RESET}"))
    show("$ nft list table inet podbgp-nat   (podbgp's own table)")
    show("\n".join(ln for ln in run("nft", "list", "table", "inet", "podbgp-nat",
                                     ns=n1.ns).stdout.splitlines() if "masquerade" in ln
                    or "elements" in ln))
    if not ok:
        failures.append(f"natOutgoing: outside saw {seen}, not {n1.ip}")


DENY_ALL = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: deny-all
  namespace: default
spec:
  podSelector: {}
  policyTypes: [Ingress]
"""

ALLOW_REPLICA_1 = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: allow-from-replica-1
  namespace: default
spec:
  podSelector: {matchLabels: {app: demo, replica: "1"}}
  ingress:
  - from: [{podSelector: {matchLabels: {replica: "1"}}}]
    ports: [{protocol: TCP, port: 80}]
"""


def policy_section(lab: Lab, failures: list[str]) -> None:
    """A policy taking effect: node1/p1 closed by deny-all, opened to replica 1 only."""
    server = lab.nodes["node1"].pods["p1"]
    clients = [lab.nodes["node2"].pods["p1"], lab.nodes["node3"].pods["p2"]]
    # lab.prober in each pod: serves TCP 80 (the server) and probes (the clients)
    probers = {c.name + c.node: Prober(c.ns) for c in [server, *clients]}

    def reach(c) -> bool:
        slot = probers[c.name + c.node].start("tcp", server.ip, 80, 0.3)
        return slot[0].wait(5) and bool(slot[1]["ok"])

    def expect(what: str, *want: bool) -> None:
        """Until client i's probe is allowed exactly when want[i]; print each."""
        t0 = time.monotonic()
        try:
            lab.wait_for(lambda: all(reach(c) == w
                                     for c, w in zip(clients, want, strict=True)),
                         20, what, interval=0.02)
        except TimeoutError as e:
            failures.append(f"policy: {e}")
        took = (time.monotonic() - t0) * 1000
        word = {True: "allowed", False: "blocked"}
        for c, w in zip(clients, want, strict=True):
            got = reach(c)
            mark = (f"{GREEN}{word[got]}{RESET}" if got == w
                    else f"{RED}{word[got]} (expected {word[w]}){RESET}")
            show(f"{c.node}/{c.name} (replica {c.labels['replica']}) {c.ip} -> "
                 f"node1/{server.name} {server.ip} TCP 80: {mark}")
        show(f"(observed {took:.0f} ms after bgpctl returned; a blocked probe waits 0.3 s)")

    try:
        step("Network policy: every pod reaches node1/p1 before any policy")
        expect("both clients to reach node1/p1", True, True)
        step("Applying the seed's deny-all NetworkPolicy (bgpctl apply)")
        show(DENY_ALL)
        lab.apply(DENY_ALL)
        expect("deny-all to block both clients", False, False)
        step("Allowing TCP 80 from pods labelled replica=1 only")
        show(ALLOW_REPLICA_1)
        lab.apply(ALLOW_REPLICA_1)
        expect("replica 1 allowed, replica 2 still blocked", True, False)
        show("$ bgpctl get networkpolicies -n default")
        show(lab.bgpctl("get", "networkpolicies", "-n", "default").stdout)
        show("$ bgpctl policy show -n default   (which policies select each endpoint)")
        show(lab.bgpctl("policy", "show", "-n", "default").stdout)
        n1 = lab.nodes["node1"]
        status = json.loads(lab.http_get("node1", "/status", n1.policy_http)[1])
        show(f"node1's podbgp-policy: {len(status['local_endpoints'])} local endpoints, "
             f"table inet podbgp-policy (nft list table inet podbgp-policy)")
        step("Deleting both policies: everything is reachable again")
        lab.bgpctl("delete", "-f", "-", input=DENY_ALL + "---\n" + ALLOW_REPLICA_1)
        expect("both clients to reach node1/p1 again", True, True)
    finally:
        for pr in probers.values():
            pr.close()


def run_demo(keep: bool, etcd_members: int = 1) -> int:
    if os.geteuid() != 0:
        print("make demo needs root (network namespaces)", file=sys.stderr)
        return 1
    removed = cleanup_leftovers()
    if removed:
        print(f"removed leftovers of an earlier run: {len(removed)} namespaces")
    failures: list[str] = []
    lab = RoutedLab(subnets=(0, 0, 1), etcd_members=etcd_members)
    try:
        step("Creating 3 nodes on two subnets, a router, an outside host and etcd in "
             "network namespaces" + (f" ({etcd_members} etcd members)"
                                     if etcd_members > 1 else ""))
        lab.up()
        for n in lab.nodes.values():
            show(f"{n.name}: namespace {n.ns}, eth0 {n.ip}/24")
        show(f"router: namespace {lab.router} (routes node addresses only, no pod block)")
        show(f"outside host: namespace {lab.outside}, {OUTSIDE_IP} (no pod, in no pool)")
        show(f"etcd: namespace {lab.etcd_ns}, {lab.etcd_endpoint}")

        step("Applying an IPPool and the BGPConfiguration with bgpctl")
        lab.apply(IPPOOL)
        lab.apply(BGPCONFIG)
        for n in lab.nodes.values():
            lab.register_node(n)
        show("$ bgpctl get ippools -o wide")
        show(lab.bgpctl("get", "ippools", "-o", "wide").stdout)
        show("$ bgpctl get nodes -o wide")
        show(lab.bgpctl("get", "nodes", "-o", "wide").stdout)

        step("Starting bgpd on every node")
        for name in lab.nodes:
            lab.start_daemon(name)
        lab.wait_for(lambda: all(lab.ready(n) for n in lab.nodes), 60, "daemons ready")
        show("all daemons ready (/readyz)")

        step("Starting podbgp-policy (the network-policy agent) on every node")
        for name in lab.nodes:
            lab.start_policy_agent(name)
        lab.wait_for(lambda: all(lab.policy_ready(n) for n in lab.nodes), 60,
                     "policy agents ready")
        show("all policy agents ready (/readyz on :9180): no policy yet, so every pod is "
             "open; a new pod's interface is held until its chains exist")

        step("Creating two pods per node (podbgp-cni + podbgp-ipam)")
        for name in lab.nodes:
            for i in range(2):
                p = lab.add_pod(name, labels={"app": "demo", "replica": str(i + 1)})
                show(f"{name}/{p.name}: {p.ip}/32 on eth0, host side {p.host_if}")
        for name in lab.nodes:
            show(f"{name}: routes to its pods (ip route show proto boot)")
            show("  " + pod_routes_table(lab, name).replace("\n", "\n  "))

        step("Waiting for the full mesh and routes")

        def converged() -> bool:
            for name in lab.nodes:
                st = lab.status(name)
                if not st["peers"] or any(p["state"] != "up" for p in st["peers"]):
                    return False
                if len(lab.route_prefixes(name, "201")) < len(lab.nodes):
                    return False
            return True

        lab.wait_for(converged, 60, "mesh established and routes installed", interval=0.2)
        for name, node in lab.nodes.items():
            show(f"$ ip netns exec {node.ns} bgpctl node status")
            show(lab.bgpctl("node", "status", node=name).stdout)
        for name in lab.nodes:
            show(f"{name}: podbgp routes (ip route show proto 201)")
            show("  " + routes_table(lab, name).replace("\n", "\n  "))

        overlay_section(lab, failures)

        step("Pod-to-pod TCP across nodes, by pod IP (every cross-node pair: VXLAN, "
             "never NATed)")
        pods = [p for n in lab.nodes.values() for p in n.pods.values()]
        pairs = [(a, b) for a, b in itertools.permutations(pods, 2) if a.node != b.node]
        replies = lab.tcp_exchange_many(pairs)
        for a, b in pairs:
            reply = replies[(a.ip, b.ip)]
            ok = f"peer={a.ip}" in reply
            show(f"{a.node}/{a.name} {a.ip} -> {b.node}/{b.name} {b.ip}: "
                 f"{GREEN + 'ok' + RESET if ok else RED + 'FAILED ' + reply + RESET}")
            if not ok:
                failures.append(f"{a.ip}->{b.ip}: {reply}")

        policy_section(lab, failures)
    except Exception as e:
        failures.append(str(e))
        print(f"\n{RED}error: {e}{RESET}", file=sys.stderr)
        for name in lab.nodes:
            log = lab.daemon_log(name, 15)
            if log:
                print(f"--- last lines of {name}'s log ---\n{log}", file=sys.stderr)
    finally:
        if failures:
            step(f"{RED}FAILED{RESET}: " + "; ".join(failures))
        else:
            n_pairs = sum(1 for n in lab.nodes.values() for _ in n.pods) * 4
            step(f"{GREEN}SUCCESS{RESET}: 3 nodes meshed over BGP, 6 pods on their own "
                 f"interfaces, all {n_pairs} cross-node pod pairs reached by pod IP through "
                 "podbgp's VXLAN routes, the outside host reached with the node's address "
                 "(natOutgoing), a NetworkPolicy enforced across nodes by podbgp-policy")
        if keep and not failures:
            n1 = lab.nodes["node1"]
            print(f"""
The lab is left running (prefix {lab.prefix}).
  enter node1:      ip netns exec {n1.ns} bash
  its routes:       ip netns exec {n1.ns} ip route show proto 201
  BGP status:       ip netns exec {n1.ns} {sys.prefix}/bin/bgpctl node status
  resources:        ip netns exec {n1.ns} {sys.prefix}/bin/bgpctl --etcd-endpoints {lab.etcd_endpoint} get bgppeers
  daemon logs:      {lab.workdir}/node1.log
  policy agent:     {lab.workdir}/node1-policy.log; ip netns exec {n1.ns} nft list table inet podbgp-policy
  tear it down:     make demo-down   (or: {sys.executable} -m lab.demo --down)""")
        else:
            lab.down()
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="lab.demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--keep", action="store_true", help="leave the lab running")
    ap.add_argument("--down", action="store_true", help="remove a lab left by --keep")
    ap.add_argument("--etcd-members", type=int, choices=(1, 3, 5), default=1,
                    help="etcd cluster size; every tool gets all endpoints (default 1)")
    a = ap.parse_args(argv)
    if a.down:
        removed = cleanup_leftovers()
        print(f"removed {len(removed)} namespaces" if removed else "nothing to remove")
        return 0
    return run_demo(a.keep, a.etcd_members)


if __name__ == "__main__":
    sys.exit(main())
