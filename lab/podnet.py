"""A one-node pod network in namespaces, wired the way podbgp-cni / Calico's CNI wires pods.

A "node" namespace (forwarding on) with one veth per pod: the pod side
``eth0`` holds the pod's /32 and a default route via 169.254.1.1, the node
side is named like Calico's (``cali`` + sha1(ns.pod)[:11], config.endpoints.
host_interface_name) with proxy ARP (and proxy_delay 0) and a /32 route to
the pod (cni-plugin pkg/dataplane/linux/dataplane_linux.go). An "outside"
host sits behind a plain interface (``ext0``), for traffic that does not come
from a local workload. Used by the policy tests and bench/policy.py, where
the whole cluster is not needed; every namespace is removed by `down()`.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from config.endpoints import host_interface_name
from lab import harness
from lab.netpol import Peer

OUTSIDE_IP = "10.78.0.1"
NODE_EXT_IP = "10.78.0.254"


def node_ip(i: int) -> str:
    return f"{SWITCH_NET}.{10 + i}"


def sh(*cmd: str, ns: str | None = None) -> str:
    full = ["ip", "netns", "exec", ns, *cmd] if ns else list(cmd)
    r = subprocess.run(full, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(full)}: {r.stderr.strip()}")
    return r.stdout


SWITCH_NET = "10.98.0"


@dataclass
class PodNet(harness.Throwaway):
    """`nodes` node namespaces; with more than one, they share an L2 segment (a
    bridge in a "switch" namespace, ``10.98.0.1X/24``) and route each other's pods
    by /32 via the owning node, as BGP would program them. The outside host
    hangs off the first node."""

    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    node: str = ""
    nodes: int = 1
    outside: Peer | None = None
    pods: dict[str, Peer] = field(default_factory=dict)
    made: list[str] = field(default_factory=list)
    node_names: list[str] = field(default_factory=list)
    pod_node: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.node = self.node or f"pn{self.tag}"
        self.switch = f"ps{self.tag}"

    def _ns(self, name: str) -> str:
        self.made.append(name)
        # recorded before it exists: a run killed half-way is cleaned up by the
        # next lab or benchmark run (lab.harness.cleanup_leftovers)
        harness.write_state(self._state, self.made, [], self._workdir)
        sh("ip", "netns", "add", name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def up(self) -> None:
        harness.cleanup_leftovers()
        self._workdir = Path(tempfile.mkdtemp(prefix="podbgp-podnet-"))
        self._state = harness.STATE_DIR / f"podnet-{self.tag}.json"
        self._ns(self.node)
        sh("sysctl", "-qw", "net.ipv4.ip_forward=1", ns=self.node)
        out = self._ns(f"po{self.tag}")
        sh("ip", "-n", self.node, "link", "add", "ext0", "type", "veth", "peer", "name", "eth0",
           "netns", out)
        sh("ip", "-n", self.node, "addr", "add", f"{NODE_EXT_IP}/24", "dev", "ext0")
        sh("ip", "-n", self.node, "link", "set", "ext0", "up")
        sh("ip", "-n", out, "addr", "add", f"{OUTSIDE_IP}/24", "dev", "eth0")
        sh("ip", "-n", out, "link", "set", "eth0", "up")
        sh("ip", "-n", out, "route", "add", "10.0.0.0/8", "via", NODE_EXT_IP)
        # Proxy ARP answers for 169.254.1.1 only when the node routes it elsewhere,
        # as a real node's default route does.
        sh("ip", "-n", self.node, "route", "add", "default", "via", OUTSIDE_IP)
        self.outside = Peer("ext", "host", out, OUTSIDE_IP)
        self.node_names = [self.node]
        if self.nodes > 1:
            self._ns(self.switch)
            sh("ip", "-n", self.switch, "link", "add", "br0", "type", "bridge")
            sh("ip", "-n", self.switch, "link", "set", "br0", "up")
            self.on_switch(self.node, node_ip(0), "sw0")
            for i in range(1, self.nodes):
                name = f"pn{self.tag}n{i}"
                self._ns(name)
                sh("sysctl", "-qw", "net.ipv4.ip_forward=1", ns=name)
                self.on_switch(name, node_ip(i), "sw0")
                sh("ip", "-n", name, "route", "add", "default", "via", node_ip(0))
                self.node_names.append(name)

    def on_switch(self, ns: str, ip: str, ifname: str = "eth0") -> None:
        """Plug namespace `ns` into the segment with address `ip`/24."""
        port = f"sw{self.tag}{len(self.made)}"[:15]
        sh("ip", "-n", self.switch, "link", "add", port, "type", "veth", "peer", "name",
           ifname, "netns", ns)
        sh("ip", "-n", self.switch, "link", "set", port, "master", "br0", "up")
        sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", ifname)
        sh("ip", "-n", ns, "link", "set", ifname, "up")

    def add_host(self, short: str, ip: str) -> str:
        """A namespace on the segment (etcd, say), reachable from every node."""
        ns = self._ns(f"ph{self.tag}{short}")
        self.on_switch(ns, ip)
        return ns

    def add_pod(self, namespace: str, name: str, ip: str, labels: dict | None = None,
                wire: bool = True, node: int = 0) -> Peer:
        """A pod namespace with its veth on node number `node`; `wire=False` leaves
        out the node's route (a pod whose CNI ADD is half done)."""
        host = self.node_names[node]
        pod_ns = self._ns(f"pp{self.tag}{len(self.made)}")
        host_if = host_interface_name(namespace, name)
        sh("ip", "-n", host, "link", "add", host_if, "type", "veth", "peer", "name", "eth0",
           "netns", pod_ns)
        sh("sysctl", "-qw", f"net.ipv4.conf.{host_if}.proxy_arp=1", ns=host)
        sh("sysctl", "-qw", f"net.ipv4.neigh.{host_if}.proxy_delay=0", ns=host)
        sh("ip", "-n", host, "link", "set", host_if, "up")
        sh("ip", "-n", pod_ns, "addr", "add", f"{ip}/32", "dev", "eth0")
        sh("ip", "-n", pod_ns, "link", "set", "eth0", "up")
        sh("ip", "-n", pod_ns, "route", "add", "169.254.1.1", "dev", "eth0", "scope", "link")
        sh("ip", "-n", pod_ns, "route", "add", "default", "via", "169.254.1.1", "dev", "eth0")
        if wire:
            sh("ip", "-n", host, "route", "add", f"{ip}/32", "dev", host_if, "scope", "link")
            for i, other in enumerate(self.node_names):
                if i != node:  # what BGP would teach the other nodes
                    sh("ip", "-n", other, "route", "add", f"{ip}/32", "via", node_ip(node))
        peer = Peer(namespace, name, pod_ns, ip, host, tuple(sorted((labels or {}).items())))
        self.pods[peer.id] = peer
        self.pod_node[peer.id] = node
        return peer

    def iface(self, peer: Peer) -> str:
        return host_interface_name(peer.ns, peer.name)

    def down(self) -> None:
        for ns in reversed(self.made):
            harness._del_ns(ns)  # its processes killed by PID, then the namespace
        self.made.clear()
        if getattr(self, "_state", None) is not None:
            self._state.unlink(missing_ok=True)
            shutil.rmtree(self._workdir, ignore_errors=True)
