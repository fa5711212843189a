"""A mixed Calico mesh: BIRD 1.6 configured as calico-node's confd renders it, beside podbgp.

A cluster migrating node by node from calico-node to podbgp has both kinds in one
full mesh. Two podbgp nodes and two "calico-node" nodes (BIRD 1.6, the version
Calico ships, in external namespaces, each with its Node resource and block in
etcd) mesh with ``listenPort: 1790``. The BIRD config is what Calico's template
renders for a mesh node (projectcalico/calico node/filesystem/etc/calico/confd/
templates/bird.cfg.template at 87c15906: ``listen bgp port``, ``bgp_template``
with ``add paths on``, ``graceful restart``; per peer ``neighbor <ip> port <p>``,
``source address``, ``ttl security off; multihop;``, and ``passive on`` toward a
greater address by Go's string comparison).

The addresses make the string rule matter: a BIRD node at 10.99.0.101 compares
*lower* than the podbgp node at 10.99.0.11 ("10.99.0.10" < "10.99.0.11"), though
numerically greater. With any other rule both sides would wait for each other.

Checked: every pair is Established on both sides; each side dialled exactly as
Calico's rule says; every node's block is in every other node's kernel via that
node; a ping crosses podbgp -> BIRD and BIRD -> podbgp over those routes.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from lab.harness import Lab, run
from tests.conftest import require
from tests.interop.conftest import (
    BIRD1_DIR,
    NODE_AS,
    POOL,
    add_affinity,
    kernel,
    ns_prefixes,
    pool_yaml,
    require_interop_root,
    wait,
)

pytestmark = [pytest.mark.root, pytest.mark.etcd, pytest.mark.slow]

PORT = 1790
PODBGP = ("node1", "node2")  # 10.99.0.11, 10.99.0.12
BIRDS = {"calico1": 1, "calico2": 2}  # 10.99.0.101, 10.99.0.102
BLOCKS = {"node1": "10.244.11.0/26", "node2": "10.244.12.0/26",
          "calico1": "10.244.101.0/26", "calico2": "10.244.102.0/26"}


def mesh_name(ip: str) -> str:
    return "Mesh_" + ip.replace(".", "_")


def calico_bird_config(me: str, peers: list[str], block: str) -> str:
    """BIRD 1.6 config for a mesh node, shaped as confd's bird.cfg.template renders it."""
    protos = []
    for ip in sorted(peers):
        protos.append(
            f"protocol bgp {mesh_name(ip)} from bgp_template {{\n"
            f"  neighbor {ip} port {PORT} as {NODE_AS};\n"
            f"  source address {me};  # The local address we use for the TCP connection\n"
            "  ttl security off;\n  multihop;\n"
            "  import all;\n"
            # calico_export_to_bgp_peers: pool routes only (own block included).
            f"  export filter {{ if ( net ~ {POOL} ) then {{ accept; }} reject; }};\n"
            + ("  passive on; # Mesh is unidirectional, peer will connect to us.\n"
               if ip > me else "")
            + "}\n")
    return (
        f"router id {me};\n"
        f"listen bgp port {PORT};\n"
        # bird_aggr.cfg.template: the node's own blocks as blackholes, exported.
        f"protocol static {{\n  route {block} blackhole;\n}}\n"
        "protocol kernel {\n  learn;\n  persist;\n  scan time 2;\n  import all;\n"
        "  export filter { if ( source = RTS_BGP ) then accept; reject; };\n"
        "  graceful restart;\n  merge paths on;\n}\n"
        "protocol device {\n  scan time 2;\n}\n"
        'protocol direct {\n  interface -"cali*", -"kube-ipvs*", "*";\n}\n'
        "template bgp bgp_template {\n"
        '  description "Connection to BGP peer";\n'
        f"  local as {NODE_AS};\n"
        "  gateway recursive; # This should be the default, but just in case.\n"
        "  add paths on;\n"
        "  graceful restart;\n"
        "  connect delay time 2;\n  connect retry time 5;\n  error wait time 5,30;\n"
        "}\n" + "".join(protos))


class CalicoBird:
    def __init__(self, lab: Lab, name: str, idx: int, peers: list[str]) -> None:
        self.lab = lab
        self.ext = lab.add_external(name, idx)
        self.ip = self.ext.ip
        self.dir = lab.workdir / f"calico-bird-{name}"
        self.dir.mkdir()
        self.sock = self.dir / "bird.ctl"
        (self.dir / "bird.cfg").write_text(calico_bird_config(self.ip, peers, BLOCKS[name]))
        self.proc = lab.spawn_in(self.ext.ns, [
            str(BIRD1_DIR / "bird"), "-f", "-c", str(self.dir / "bird.cfg"),
            "-s", str(self.sock), "-P", str(self.dir / "bird.pid")], f"calico-bird-{name}.log")
        # A "pod" address of this node's block, on its loopback, for the ping.
        self.pod_ip = BLOCKS[name].replace(".0/26", ".1")
        run("ip", "addr", "add", f"{self.pod_ip}/32", "dev", "lo", ns=self.ext.ns)

        def up() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError((lab.workdir / f"calico-bird-{name}.log").read_text())
            return self.sock.exists() and "BIRD" in self.birdc("show", "status")

        wait(lab, up, f"BIRD 1.6 on {name}", 15)

    def birdc(self, *args: str) -> str:
        return run(str(BIRD1_DIR / "birdc"), "-s", str(self.sock), *args, check=False).stdout

    def established(self, ip: str) -> bool:
        return "Established" in self.birdc("show", "protocols", mesh_name(ip))


def podbgp_peer(lab: Lab, node: str, ip: str) -> dict | None:
    return next((p for p in lab.status(node)["peers"] if p["address"] == ip), None)


@pytest.fixture(scope="module")
def mesh():
    require_interop_root()
    require(BIRD1_DIR.joinpath("bird").exists(), f"needs BIRD 1.6 at {BIRD1_DIR} (docs/testing.md)")
    with Lab(nodes=len(PODBGP)) as lab:
        ips = {n: lab.nodes[n].ip for n in PODBGP}
        ips.update({n: f"10.99.0.{100 + i}" for n, i in BIRDS.items()})
        birds = {n: CalicoBird(lab, n, i, [ip for m, ip in ips.items() if m != n])
                 for n, i in BIRDS.items()}
        lab.apply(pool_yaml())
        lab.apply('{"apiVersion": "projectcalico.org/v3", "kind": "BGPConfiguration", '
                  '"metadata": {"name": "default"}, '
                  f'"spec": {{"nodeToNodeMeshEnabled": true, "asNumber": {NODE_AS}, '
                  f'"listenPort": {PORT}}}}}')
        for name in (*PODBGP, *BIRDS):
            node = lab.nodes.get(name) or lab.externals[name]
            lab.register_node(node)  # calico-node writes the same Node for BIRD's nodes
            add_affinity(lab, name, BLOCKS[name])
        for name in PODBGP:
            lab.start_daemon(name)
        for name in PODBGP:
            wait(lab, lambda n=name: lab.ready(n), f"{name} ready", 40, node=name)
        yield lab, ips, birds


def test_every_pair_establishes_with_calicos_roles(mesh):
    lab, ips, birds = mesh
    for name in PODBGP:
        me = ips[name]
        for other, ip in ips.items():
            if other == name:
                continue
            wait(lab, lambda n=name, i=ip: (podbgp_peer(lab, n, i) or {}).get("state") == "up",
                 f"{name}: session to {other} ({ip}) up", 60, node=name)
            p = podbgp_peer(lab, name, ip)
            # Calico's rule, Go string order: passive toward a greater address.
            assert p["passive"] is (ip > me), (name, other, p)
            assert p["port"] == PORT and p["name"] == mesh_name(ip), p
            assert p["type"] == "node-to-node mesh"
    for name, bird in birds.items():
        for other, ip in ips.items():
            if other != name:
                wait(lab, lambda b=bird, i=ip: b.established(i),
                     f"BIRD {name}: {mesh_name(ip)} Established", 30)
    # The string rule is the one that decides here: numerically the BIRD node is greater.
    assert "10.99.0.101" < "10.99.0.11" and podbgp_peer(lab, "node1", "10.99.0.101")["passive"] \
        is False


def test_every_block_reaches_every_kernel_and_traffic_flows(mesh):
    lab, ips, birds = mesh
    for name in PODBGP:
        want = {b for n, b in BLOCKS.items() if n != name}
        wait(lab, lambda n=name, w=want: w <= kernel(lab, n), f"{name}: every block", 30,
             node=name)
        for route in lab.routes(name, "201"):
            owner = next((n for n, b in BLOCKS.items() if b == route["dst"]), None)
            if owner is not None and owner != name:
                assert route.get("gateway") == ips[owner], route
    for name, bird in birds.items():
        want = {b for n, b in BLOCKS.items() if n != name}
        wait(lab, lambda b=bird, w=want: w <= ns_prefixes(b.ext.ns, "bird"),
             f"BIRD {name}: every block in its kernel", 30)
    # A "pod" on a podbgp node (an address of its block on lo) and the BIRD nodes' ones.
    pod1 = BLOCKS["node1"].replace(".0/26", ".1")
    run("ip", "addr", "add", f"{pod1}/32", "dev", "lo", ns=lab.nodes["node1"].ns)
    podbgp_pod = SimpleNamespace(ns=lab.nodes["node1"].ns, ip=pod1)
    node2 = SimpleNamespace(ns=lab.nodes["node2"].ns, ip=ips["node2"])
    for name, bird in birds.items():
        calico_pod = SimpleNamespace(ns=bird.ext.ns, ip=bird.pod_ip)
        # podbgp node2 -> a calico-node's pod, over the route BIRD advertised
        assert lab.tcp_exchange(node2, calico_pod).startswith("echo:hello"), name
        # a calico-node -> podbgp node1's pod, over the route podbgp advertised
        assert lab.tcp_exchange(SimpleNamespace(ns=bird.ext.ns, ip=bird.ip),
                                podbgp_pod).startswith("echo:hello"), name


def test_reachable_by_puts_an_exact_route_to_the_peer_in_the_kernel(mesh):
    # BGPPeer reachableBy (Calico adds a /32 static route toward the peer via the
    # gateway): podbgp owns the route (its protocol), and removes it with the peer.
    lab, ips, _ = mesh
    gw = ips["calico1"]
    lab.apply('{"apiVersion": "projectcalico.org/v3", "kind": "BGPPeer", '
              '"metadata": {"name": "far-tor"}, "spec": {"node": "node1", '
              f'"peerIP": "192.0.2.77", "asNumber": 65077, "reachableBy": "{gw}"}}}}')

    def route():
        return next((r for r in lab.routes("node1", "201") if r["dst"] == "192.0.2.77"), None)

    r = wait(lab, route, "reachableBy route in node1's kernel", 30, node="node1")
    assert r.get("gateway") == gw, r
    assert not any(x["dst"] == "192.0.2.77" for x in lab.routes("node2", "201"))  # node1's only
    lab.bgpctl("delete", "bgppeer", "far-tor")
    wait(lab, lambda: route() is None, "reachableBy route removed with the peer", 30,
         node="node1")
