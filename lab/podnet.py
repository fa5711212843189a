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

import contextlib
import os
import shutil
import signal
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


def sh(*cmd: str, ns: str | None = None) -> str:
    full = ["ip", "netns", "exec", ns, *cmd] if ns else list(cmd)
    r = subprocess.run(full, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(full)}: {r.stderr.strip()}")
    return r.stdout


@dataclass
class PodNet:
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    node: str = ""
    outside: Peer | None = None
    pods: dict[str, Peer] = field(default_factory=dict)
    made: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.node = self.node or f"pn{self.tag}"

    def __enter__(self) -> PodNet:
        try:
            self.up()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.down()

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

    def add_pod(self, namespace: str, name: str, ip: str, labels: dict | None = None,
                wire: bool = True) -> Peer:
        """A pod namespace with its veth; `wire=False` leaves out the node's route (a pod
        whose CNI ADD is half done)."""
        pod_ns = self._ns(f"pp{self.tag}{len(self.made)}")
        host_if = host_interface_name(namespace, name)
        sh("ip", "-n", self.node, "link", "add", host_if, "type", "veth", "peer", "name", "eth0",
           "netns", pod_ns)
        sh("sysctl", "-qw", f"net.ipv4.conf.{host_if}.proxy_arp=1", ns=self.node)
        sh("sysctl", "-qw", f"net.ipv4.neigh.{host_if}.proxy_delay=0", ns=self.node)
        sh("ip", "-n", self.node, "link", "set", host_if, "up")
        sh("ip", "-n", pod_ns, "addr", "add", f"{ip}/32", "dev", "eth0")
        sh("ip", "-n", pod_ns, "link", "set", "eth0", "up")
        sh("ip", "-n", pod_ns, "route", "add", "169.254.1.1", "dev", "eth0", "scope", "link")
        sh("ip", "-n", pod_ns, "route", "add", "default", "via", "169.254.1.1", "dev", "eth0")
        if wire:
            sh("ip", "-n", self.node, "route", "add", f"{ip}/32", "dev", host_if, "scope",
               "link")
        peer = Peer(namespace, name, pod_ns, ip, "", tuple(sorted((labels or {}).items())))
        self.pods[peer.id] = peer
        return peer

    def iface(self, peer: Peer) -> str:
        return host_interface_name(peer.ns, peer.name)

    def down(self) -> None:
        for ns in reversed(self.made):
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True,
                                  text=True).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self.made.clear()
        if getattr(self, "_state", None) is not None:
            self._state.unlink(missing_ok=True)
            shutil.rmtree(self._workdir, ignore_errors=True)
