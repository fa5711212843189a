"""A lab on two subnets joined by a router, with an "outside" network beyond it.

Used by the overlay/NAT end-to-end tests (tests/e2e/test_overlay_lab.py),
`make demo` and bench/overlay.py. Everything of `lab.harness.Lab` (etcd,
nodes running bgpd, pods, state file, cleanup by PID) plus:

    <p>sw  (br0)  subnet A 10.99.0.0/24: etcd .2, router .1, nodes on A .1X
    <p>sw2 (br0)  subnet B 10.99.1.0/24: router .1, nodes on B .1X
    <p>rt         the router: eth0 10.99.0.1, eth1 10.99.1.1, eth2 203.0.113.1;
                  ip_forward on; routes node addresses only (its connected
                  subnets): it has no route to any pod block, so pod traffic
                  crosses it only encapsulated (or NATed)
    <p>out        "outside" (a host that is no pod): 203.0.113.2/24, routes
                  the node subnets back via the router, nothing else

Nodes' default route is their subnet's router address (etcd and the other
subnet are reached through it). ``subnets`` lists each node's subnet in
order, e.g. ``(0, 0, 1)``: node1 and node2 on A, node3 on B.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time

from lab.harness import ETCD_IP, Lab, Node, Pod, run

SUBNETS = ("10.99.0", "10.99.1")
OUTSIDE_NET = "203.0.113"
OUTSIDE_IP = f"{OUTSIDE_NET}.2"
ROUTER_OUTSIDE_IP = f"{OUTSIDE_NET}.1"


class RoutedLab(Lab):
    def __init__(self, subnets: tuple[int, ...] = (0, 0, 1), **kw) -> None:
        # Pods get a default route (podbgp-ipam's default is the pools only): the
        # outside host is reached through the node, masqueraded or not.
        ipam = {"routes": [{"dst": "0.0.0.0/0"}], **(kw.pop("ipam_options", None) or {})}
        super().__init__(nodes=len(subnets), ipam_options=ipam, **kw)
        self.node_subnets = tuple(subnets)
        self.sw2 = f"{self.prefix}sw2"
        self.router = f"{self.prefix}rt"
        self.outside = f"{self.prefix}out"
        self._per_subnet = [0, 0]

    # ------------------------------------------------------------ topology
    def up(self) -> None:
        # Switch B, the router and the outside first (nodes on B plug into
        # switch B as Lab.up adds them); then Lab.up (switch A, etcd, nodes);
        # then the router's leg on switch A and etcd's way back to subnet B.
        from lab.harness import cleanup_leftovers

        cleanup_leftovers()
        self._save_state()
        self._add_ns(self.sw2)
        run("ip", "-n", self.sw2, "link", "add", "br0", "type", "bridge")
        run("ip", "-n", self.sw2, "link", "set", "br0", "up")
        self._add_ns(self.router)
        run("sysctl", "-qw", "net.ipv4.ip_forward=1", ns=self.router)
        self._veth_to(self.sw2, self.router, "eth1", f"{SUBNETS[1]}.1/24")
        self._add_ns(self.outside)
        run("ip", "link", "add", "eth2", "netns", self.router, "type", "veth", "peer", "name",
            "eth0", "netns", self.outside)
        run("ip", "-n", self.router, "addr", "add", f"{ROUTER_OUTSIDE_IP}/24", "dev", "eth2")
        run("ip", "-n", self.router, "link", "set", "eth2", "up")
        run("ip", "-n", self.outside, "addr", "add", f"{OUTSIDE_IP}/24", "dev", "eth0")
        run("ip", "-n", self.outside, "link", "set", "eth0", "up")
        for net in SUBNETS:
            run("ip", "-n", self.outside, "route", "add", f"{net}.0/24", "via",
                ROUTER_OUTSIDE_IP)
        super().up()
        self._veth_to(self.sw, self.router, "eth0", f"{SUBNETS[0]}.1/24")
        for ns in self.namespaces:  # etcd (every member): the way back to subnet B
            if ns.startswith(self.etcd_ns):
                run("ip", "-n", ns, "route", "add", "default", "via", f"{SUBNETS[0]}.1")

    def _veth_to(self, switch: str, ns: str, ifname: str, addr: str) -> None:
        self._next_link += 1
        outer = f"{self.prefix}v{self._next_link}"
        run("ip", "link", "add", outer, "type", "veth", "peer", "name", ifname, "netns", ns)
        run("ip", "link", "set", outer, "netns", switch)
        run("ip", "-n", switch, "link", "set", outer, "master", "br0", "up")
        run("ip", "-n", ns, "addr", "add", addr, "dev", ifname)
        run("ip", "-n", ns, "link", "set", ifname, "up")

    def add_node(self, name: str) -> Node:
        idx = len(self.nodes) + 1
        subnet = self.node_subnets[idx - 1] if idx <= len(self.node_subnets) else 0
        self._per_subnet[subnet] += 1
        ns = self._add_ns(f"{self.prefix}n{idx}")
        ip = f"{SUBNETS[subnet]}.{10 + idx}"
        self._veth_to(self.sw if subnet == 0 else self.sw2, ns, "eth0", f"{ip}/24")
        run("ip", "-n", ns, "route", "add", "default", "via", f"{SUBNETS[subnet]}.1")
        run("sysctl", "-qw", "net.ipv4.ip_forward=1", ns=ns)
        node = Node(name=name, index=idx, ns=ns, ip=ip)
        self.nodes[name] = node
        return node

    def subnet_of(self, node: str) -> int:
        return self.node_subnets[self.nodes[node].index - 1]

    # ------------------------------------------------------------ traffic
    def capture(self, ns: str, iface: str, bpf: str = "") -> Capture:
        """Start tcpdump in ``ns`` on ``iface`` (stop() returns the packets)."""
        return Capture(self, ns, iface, bpf)

    def udp_source_seen(self, pod: Pod, dst: str = OUTSIDE_IP, port: int = 9999,
                        server_ns: str | None = None, timeout: float = 3.0) -> str | None:
        """Send a UDP datagram from ``pod`` to ``dst``; the source address the
        receiver in ``server_ns`` (default: outside) saw, None if nothing came.
        No reply is needed, so this works where the way back does not."""
        ns = server_ns or self.outside
        server = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-c",
             "import socket\n"
             "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
             f"s.bind(('0.0.0.0',{port}));s.settimeout({timeout});print('ok',flush=True)\n"
             "try:\n d,a=s.recvfrom(100);print(a[0],flush=True)\n"
             "except OSError:\n print('-',flush=True)\n"],
            stdout=subprocess.PIPE, text=True)
        try:
            assert server.stdout is not None
            server.stdout.readline()
            run(sys.executable, "-c",
                "import socket\n"
                "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
                f"[s.sendto(b'x',('{dst}',{port})) for _ in range(3)]\n",
                ns=pod.ns, check=False)
            seen = server.stdout.readline().strip()
            return None if seen in ("", "-") else seen
        finally:
            server.kill()
            server.wait()


# "12:00:00.000001 IP a.b.c.d.p > ..." and, on -i any, "12:00:00.000001 eth0 Out IP ...".
_ADDR = r"(\d+\.\d+\.\d+\.\d+)(?:\.(\d+))?"
_PACKET = re.compile(
    rf"^\d\d:\d\d:\d\d\.\d+ (?:\S+ +(?:In|Out|M|B|P) +)?IP {_ADDR} > {_ADDR}: (.*)$")


def summarise(lines: list[str]) -> dict:
    """A tcpdump -n capture: VXLAN packets (UDP 4789) with their outer (src, dst),
    and every other IPv4 packet's (src, dst). tcpdump prints a VXLAN packet's
    inner packet on the following line, without a timestamp: not a packet."""
    vxlan: list[tuple[str, str]] = []
    other: list[tuple[str, str]] = []
    for ln in lines:
        m = _PACKET.match(ln)
        if m is None:
            continue
        src, _sport, dst, dport, rest = m.groups()
        if dport == "4789" and rest.startswith("VXLAN"):
            vxlan.append((src, dst))
        else:
            other.append((src, dst))
    return {"vxlan": vxlan, "other": other}


class Capture:
    """tcpdump in a namespace, to summarise what crossed a link."""

    def __init__(self, lab: Lab, ns: str, iface: str, bpf: str = "") -> None:
        self.lab = lab
        path = lab.workdir / f"cap-{ns}-{iface}-{time.monotonic_ns()}.txt"
        self.path = path
        cmd = ["ip", "netns", "exec", ns, "tcpdump", "-n", "-l", "-i", iface, "-U"]
        if bpf:
            cmd += bpf.split()
        self._out = open(path, "w")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(cmd, stdout=self._out, stderr=subprocess.PIPE, text=True)
        lab.pids.append(self.proc.pid)
        lab._save_state()
        # tcpdump says "listening on ..." on stderr once the capture is live.
        assert self.proc.stderr is not None
        self.proc.stderr.readline()

    def stop(self) -> list[str]:
        time.sleep(0.2)  # let the last packets land
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._out.close()
        return [ln for ln in self.path.read_text().splitlines() if ln.strip()]


__all__ = ["ETCD_IP", "OUTSIDE_IP", "SUBNETS", "Capture", "RoutedLab", "summarise"]
