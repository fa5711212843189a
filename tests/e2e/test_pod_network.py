"""End-to-end pod networking over a real multi-node lab (issue 8).

Real ``bgpd`` processes in node namespaces, pods made by the real CNI
``bridge`` plugin with ``podbgp-ipam``, traffic by pod IP. One lab is shared by
the module; the tests run in file order and the disturbing ones come last:

  all-pairs TCP -> BIRD top-of-rack -> node joins -> pod delete empties a
  block -> full mesh to route reflector (with a prober) -> a node dies.

The measured numbers (longest traffic gap during the RR switch, how long a
dead node's routes stay) are printed; run with ``-s`` to see them.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import require_binary
from tests.e2e.conftest import (
    RESTART_TIME,
    bgp_config_yaml,
    blocks_of,
    in_pool,
    learned,
    peers_up,
    wait_routes,
)

pytestmark = [pytest.mark.root, pytest.mark.etcd, pytest.mark.slow]

TOR_AS = 65000
# What BIRD exports to the nodes: none of it may reach a node's kernel.
TOR_TEST_ROUTES = ("0.0.0.0/0", "198.51.100.0/24", "10.99.0.0/24")


def _all_pods(lab):
    return [p for n in lab.nodes.values() for p in n.pods.values()]


def _exchange_all(lab, pairs) -> None:
    """Token echo for every (src, dst) pair; the server must see src's own IP."""
    def one(item):
        i, (src, dst) = item
        reply = lab.tcp_exchange(src, dst, port=7000 + i, timeout=8)
        return src, dst, reply

    failures = []
    with ThreadPoolExecutor(max_workers=4) as pool:
        for src, dst, reply in pool.map(one, enumerate(pairs)):
            want = f"echo:hello-from-{src.ip}-to-{dst.ip} peer={src.ip}"
            if reply != want:
                failures.append(f"{src.node}/{src.name} {src.ip} -> {dst.node}/{dst.name} "
                                f"{dst.ip}: got {reply!r}")
    assert not failures, "\n".join(failures)


def _cross_node_pairs(pods):
    return [(a, b) for a in pods for b in pods if a.node != b.node]


# ------------------------------------------------------------------ 1
def test_pod_to_pod_tcp_across_every_node_pair(pod_lab) -> None:
    lab = pod_lab
    pods = _all_pods(lab)
    assert len(pods) == 6 and len({p.ip for p in pods}) == 6
    # Each node's pods come from its own block, and every other node routes it there.
    for name, node in lab.nodes.items():
        own = blocks_of(lab, name)
        assert own and all(in_pool(b) for b in own)
        assert all(any(_ip_in(p.ip, b) for b in own) for p in node.pods.values())
        for other in lab.nodes:
            if other != name:
                assert {b: learned(lab, other).get(b) for b in own} == \
                    {b: node.ip for b in own}, f"{other} does not route {name}'s blocks"
    pairs = _cross_node_pairs(pods)
    assert len(pairs) == 24
    _exchange_all(lab, pairs)


def _ip_in(ip: str, prefix: str) -> bool:
    import ipaddress

    return ipaddress.ip_address(ip) in ipaddress.ip_network(prefix)


# ------------------------------------------------------------------ 6 (non-destructive)
def _bird_conf(lab, tor) -> str:
    protos = "\n".join(
        f"protocol bgp {n} from nodes {{ neighbor {node.ip} as 64512; }}"
        for n, node in lab.nodes.items())
    statics = "\n".join(f"  route {r} blackhole;" for r in TOR_TEST_ROUTES)
    return textwrap.dedent(f"""\
        router id {tor.ip};
        log "{lab.workdir}/bird.log" all;
        protocol device {{ scan time 10; }}
        protocol static tor_routes {{
          ipv4;
        """) + statics + textwrap.dedent(f"""
        }}
        template bgp nodes {{
          local {tor.ip} as {TOR_AS};
          connect delay time 1;
          connect retry time 2;
          error wait time 1, 5;
          ipv4 {{ import all; export where proto = "tor_routes"; }};
        }}
        """) + protos + "\n"


def _bird_routes(lab, tor, sock) -> dict[str, str]:
    """prefix -> the lines BIRD shows for it (all protocols)."""
    out = lab_run(lab, tor.ns, "birdc", "-s", sock, "show", "route", "all")
    routes: dict[str, str] = {}
    current = None
    for line in out.splitlines():
        m = re.match(r"^(\d+\.\d+\.\d+\.\d+/\d+)\s", line)
        if m:
            current = m.group(1)
            routes[current] = line
        elif current and line.startswith((" ", "\t")):
            routes[current] += "\n" + line
    return routes


def _bird_proto(text: str) -> str:
    """The protocol a BIRD route came from: ``... [node1 12:00:01.000 from ...]``."""
    m = re.search(r"\[(\w+)\s", text)
    return m.group(1) if m else ""


def lab_run(lab, ns, *cmd) -> str:
    from lab.harness import run

    return run(*cmd, ns=ns, check=False).stdout


def test_tor_bird_learns_all_pod_blocks_and_nothing_else(pod_lab) -> None:
    require_binary("bird")
    require_binary("birdc")
    lab = pod_lab
    tor = lab.add_external("tor")
    conf = lab.workdir / "bird.conf"
    sock = str(lab.workdir / "bird.ctl")
    conf.write_text(_bird_conf(lab, tor))
    lab.spawn_in(tor.ns, ["bird", "-f", "-c", str(conf), "-s", sock,
                          "-P", str(lab.workdir / "bird.pid")], "bird.stdout")
    lab.apply(json.dumps({
        "apiVersion": "projectcalico.org/v3", "kind": "BGPPeer",
        "metadata": {"name": "tor"},
        "spec": {"peerIP": tor.ip, "asNumber": TOR_AS, "maxRestartTime": f"{RESTART_TIME}s"}}))
    all_blocks = set().union(*(blocks_of(lab, n) for n in lab.nodes))
    assert all_blocks

    def bird_has_all():
        r = _bird_routes(lab, tor, sock)
        return r if all_blocks <= set(r) else None

    try:
        routes = lab.wait_for(bird_has_all, 60, "BIRD to learn every pod block")
    except TimeoutError:
        print(lab_run(lab, tor.ns, "birdc", "-s", sock, "show", "protocols", "all"))
        raise
    # Give a wrongly exported extra route (node subnet, default...) time to show up too.
    lab.wait_for(lambda: all(tor.ip in peers_up(lab, n) for n in lab.nodes), 30,
                 "every node's session to the ToR")
    time.sleep(1.0)
    routes = _bird_routes(lab, tor, sock)
    learned_by_bgp = {p for p, text in routes.items() if _bird_proto(text) in lab.nodes}
    assert {p for p, text in routes.items() if _bird_proto(text) == "tor_routes"} == \
        set(TOR_TEST_ROUTES)
    assert learned_by_bgp == all_blocks, (
        f"BIRD learned {sorted(learned_by_bgp)}, the pod blocks are {sorted(all_blocks)}")
    for name, node in lab.nodes.items():
        # eBGP: each block's next hop is the node that owns it (or reaches it).
        for b in blocks_of(lab, name):
            assert node.ip in routes[b], f"{b} at the ToR:\n{routes[b]}"
    # And the ToR's own routes (default, a foreign prefix, the node subnet) are
    # refused by every node: none reaches a kernel.
    for name in lab.nodes:
        leaked = set(TOR_TEST_ROUTES) & set(learned(lab, name))
        assert not leaked, f"{name} installed {leaked} from the ToR"
    st = {p["address"]: p for p in lab.status("node1")["peers"]}[tor.ip]
    assert st["prefixes_received"] == len(TOR_TEST_ROUTES)
    assert st["prefixes_accepted"] == 0
