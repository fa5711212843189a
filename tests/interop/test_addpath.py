"""ADD-PATH (RFC 7911) with a real BIRD 2 route reflector: ECMP through the reflector.

Calico's BIRD template sets ``add paths on`` on every session (confd's
bird.cfg.template ``bgp_template``), so a Calico route reflector sends every path
of a prefix, each with its path identifier. Here BIRD 2 reflects for two BIRD
clients that both originate one anycast prefix, and for podbgp (``--max-paths
2``). Without ADD-PATH the reflector passes only its best path and podbgp gets
one next hop; with it podbgp keeps both paths apart and installs both next hops.
When one client withdraws, only its path goes (the withdrawal names the path's
identifier), and the route falls back to the other next hop.
"""

from __future__ import annotations

import pytest

from lab.harness import Lab, run
from tests.conftest import require_binary
from tests.interop.conftest import (
    NODE_AS,
    kernel,
    peer_state,
    peer_yaml,
    require_interop_root,
    start_lab,
    wait,
)

pytestmark = [pytest.mark.root, pytest.mark.etcd, pytest.mark.slow]

ANYCAST = "10.244.77.0/26"


def bird_conf(me: str, neighbors: list[tuple[str, bool]], originate: bool) -> str:
    """BIRD 2: iBGP, `add paths on` in both directions; (address, is an rr client)."""
    static = (f"protocol static st {{\n  ipv4;\n  route {ANYCAST} blackhole;\n}}\n"
              if originate else "")
    protos = "".join(
        f"protocol bgp p_{addr.replace('.', '_')} {{\n"
        f"  local {me} as {NODE_AS};\n  neighbor {addr} as {NODE_AS};\n"
        "  direct;\n  connect delay time 1;\n  error wait time 1, 2;\n  hold time 9;\n"
        + ("  rr client;\n" if client else "")
        + "  ipv4 { import all; export all; add paths on; };\n}\n"
        for addr, client in neighbors)
    return f"router id {me};\nprotocol device {{}}\n{static}{protos}"


class Bird2:
    def __init__(self, lab: Lab, name: str, idx: int, neighbors, originate: bool) -> None:
        self.ext = lab.add_external(name, idx)
        self.ip = self.ext.ip
        d = lab.workdir / f"addpath-{name}"
        d.mkdir()
        self.sock = d / "bird.ctl"
        (d / "bird.conf").write_text(bird_conf(self.ip, neighbors, originate))
        self.bird, self.birdc_bin = require_binary("bird"), require_binary("birdc")
        self.proc = lab.spawn_in(self.ext.ns, [self.bird, "-f", "-c", str(d / "bird.conf"),
                                               "-s", str(self.sock), "-P", str(d / "bird.pid")],
                                 f"addpath-{name}.log")
        wait(lab, lambda: self.sock.exists() and "BIRD" in self.birdc("show", "status"),
             f"BIRD 2 {name}", 15)

    def birdc(self, *args: str) -> str:
        return run(self.birdc_bin, "-s", str(self.sock), *args, check=False).stdout


def next_hops(lab: Lab, node: str, prefix: str) -> list[str]:
    for r in lab.routes(node, "201"):
        if r["dst"] == prefix:
            if "nexthops" in r:
                return sorted(h["gateway"] for h in r["nexthops"])
            return [r["gateway"]] if "gateway" in r else []
    return []


def test_reflected_paths_stay_apart_and_give_ecmp() -> None:
    require_interop_root()
    with Lab(nodes=1) as lab:
        node_ip = lab.nodes["node1"].ip
        rr_ip, c1_ip, c2_ip = "10.99.0.101", "10.99.0.102", "10.99.0.103"
        rr = Bird2(lab, "rr", 1, [(node_ip, True), (c1_ip, True), (c2_ip, True)], False)
        c1 = Bird2(lab, "c1", 2, [(rr_ip, False)], True)
        c2 = Bird2(lab, "c2", 3, [(rr_ip, False)], True)
        start_lab(lab, ["node1"], "--max-paths", "2", mesh=False, resources=[
            peer_yaml("rr", peerIP=rr_ip, asNumber=NODE_AS)])
        wait(lab, lambda: peer_state(lab, "node1", rr_ip) == "up", "session to the RR", 40,
             node="node1")
        # Both clients' paths arrive through the one reflector session: ECMP.
        wait(lab, lambda: next_hops(lab, "node1", ANYCAST) == [c1_ip, c2_ip],
             "both next hops of the anycast prefix", 30, node="node1")
        st = next(p for p in lab.status("node1")["peers"] if p["address"] == rr_ip)
        assert st["prefixes_received"] == 2 and st["prefixes_accepted"] == 2, st
        # One client stops originating: only its path is withdrawn.
        c2.proc.kill()
        c2.proc.wait(5)
        wait(lab, lambda: next_hops(lab, "node1", ANYCAST) == [c1_ip],
             "the other path stays", 30, node="node1")
        assert ANYCAST in kernel(lab, "node1")
        assert rr.proc.poll() is None and c1.proc.poll() is None
