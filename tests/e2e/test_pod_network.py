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

import ipaddress
import itertools
import json
import re
import signal
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from lab.harness import _kill_pid, _ns_pids, run
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
    _TOR["sock"], _TOR["node"] = sock, tor


_TOR: dict = {}  # the BIRD ToR of this module's lab, once test 6 made it


# ------------------------------------------------------------------ 2
def test_new_node_joins_mesh_and_its_pods_are_reachable(pod_lab) -> None:
    lab = pod_lab
    old = list(lab.nodes)
    node4 = lab.add_node("node4")
    lab.register_node(node4, labels={"kubernetes.io/hostname": "node4"})
    lab.start_daemon("node4")
    new_pods = [lab.add_pod("node4"), lab.add_pod("node4")]
    names = [*old, "node4"]
    try:
        lab.wait_for(lambda: all(node4.ip in peers_up(lab, n) for n in old), 60,
                     "every old node's /status to list node4 up")
        lab.wait_for(lambda: {lab.nodes[n].ip for n in old} <= peers_up(lab, "node4"), 60,
                     "node4 to peer with every old node")
        wait_routes(lab, names)
    except TimeoutError:
        print(f"--- node4 log ---\n{lab.daemon_log('node4')}")
        raise
    others = [p for n in old for p in lab.nodes[n].pods.values()]
    pairs = [(a, b) for a in new_pods for b in others] + [(b, a) for a in new_pods for b in others]
    _exchange_all(lab, pairs)


# ------------------------------------------------------------------ 4
def test_deleted_pods_empty_block_is_withdrawn_everywhere(pod_lab) -> None:
    lab = pod_lab
    assert "node4" in lab.nodes, "runs after the join test (uses node4's pods)"
    node4 = lab.nodes["node4"]
    (block,) = blocks_of(lab, "node4")
    assert all(_ip_in(p.ip, block) for p in node4.pods.values())
    holders = [n for n in lab.nodes if n != "node4"]
    assert all(learned(lab, n).get(block) == node4.ip for n in holders)
    assert block in lab.bgpctl("ipam", "show", "--show-blocks").stdout
    pods = list(node4.pods)
    lab.del_pod("node4", pods[0])
    # One pod left: the block is not empty, nothing is withdrawn.
    assert block in blocks_of(lab, "node4")
    t0 = time.monotonic()
    lab.del_pod("node4", pods[1])

    def withdrawn() -> bool:
        if block in blocks_of(lab, "node4"):
            return False
        if any(block in learned(lab, n) for n in holders):
            return False
        return not (_TOR and block in _bird_routes(lab, _TOR["node"], _TOR["sock"]))

    lab.wait_for(withdrawn, 30, f"{block} to leave every kernel (and the ToR)")
    print(f"\n[e2e] emptied block {block} withdrawn everywhere {time.monotonic() - t0:.2f}s "
          "after the last pod's CNI DEL started")
    # IPAM gave the block back (grace 0), which is what made the daemons withdraw it.
    assert block not in lab.bgpctl("ipam", "show", "--show-blocks").stdout
    # The other nodes' blocks stay where they were.
    wait_routes(lab, holders, timeout=5)


# ------------------------------------------------------------------ 5
PROBER = r"""
import socket, sys, time
mode, ip, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
if mode == "server":
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((ip, port)); s.listen(64)
    while True:
        c, a = s.accept()
        try:
            c.settimeout(1); c.sendall(c.recv(64))
        except OSError:
            pass
        c.close()
else:
    # One TCP connect + echo every 50 ms; one line per attempt, wall-clock stamped.
    nxt = time.monotonic()
    while True:
        t = time.time()
        try:
            c = socket.create_connection((ip, port), timeout=0.3)
            c.settimeout(0.3); c.sendall(b"p"); ok = c.recv(8) == b"p"; c.close()
        except OSError:
            ok = False
        print(("ok " if ok else "fail ") + repr(t), flush=True)
        nxt += 0.05
        time.sleep(max(0.0, nxt - time.monotonic()))
"""


def _start_probers(lab, a, b, port=7600):
    """Servers in both pods, a client in each probing the other: returns [(name, proc)]."""
    procs = []
    for srv in (a, b):
        procs.append((None, lab.spawn_in(srv.ns, [sys.executable, "-c", PROBER, "server",
                                                  srv.ip, str(port)], f"probe-srv-{srv.ns}.log")))
    for src, dst in ((a, b), (b, a)):
        name = f"probe-{src.node}-{dst.node}.log"
        procs.append((name, lab.spawn_in(src.ns, [sys.executable, "-c", PROBER, "client",
                                                  dst.ip, str(port)], name)))
    return procs


def _probe_results(lab, name) -> list[tuple[bool, float]]:
    out = []
    for line in (lab.workdir / name).read_text().splitlines():
        kind, _, stamp = line.partition(" ")
        if kind in ("ok", "fail") and stamp:
            out.append((kind == "ok", float(stamp)))
    return out


def _longest_gap(results, start: float, end: float) -> float:
    """Longest time without a successful probe inside [start, end]."""
    oks = [t for ok, t in results if ok and start <= t <= end]
    points = [start, *oks, end]
    return max(b - a for a, b in itertools.pairwise(points))


def _rr_peer_yaml() -> str:
    # Calico's documented way: every node peers with the reflectors.
    return json.dumps({
        "apiVersion": "projectcalico.org/v3", "kind": "BGPPeer",
        "metadata": {"name": "peer-with-route-reflectors"},
        "spec": {"nodeSelector": "all()", "peerSelector": "route-reflector == 'true'",
                 "maxRestartTime": f"{RESTART_TIME}s"}})


def test_switch_full_mesh_to_route_reflector_keeps_pod_traffic(pod_lab) -> None:
    lab = pod_lab
    rr = lab.nodes["node1"]
    clients = [n for n in lab.nodes if n != "node1"]
    a = next(iter(lab.nodes["node2"].pods.values()))
    b = next(iter(lab.nodes["node3"].pods.values()))
    procs = _start_probers(lab, a, b)
    try:
        lab.wait_for(lambda: all(any(ok for ok, _ in _probe_results(lab, n))
                                 for n, _ in procs if n), 20, "the probers' first success")
        t_start = time.time()
        # Peers first, mesh off last: the reflector sessions carry every block before
        # the mesh sessions go, so no prefix is ever without a path.
        lab.apply(_rr_peer_yaml())
        lab.register_node(rr, labels={"kubernetes.io/hostname": "node1",
                                      "route-reflector": "true"}, rr_cluster_id="244.0.0.1")
        lab.wait_for(lambda: {lab.nodes[n].ip for n in clients} <= peers_up(lab, "node1"), 60,
                     "the reflector's sessions to every client")
        lab.apply(bgp_config_yaml(mesh=False))
        client_ips = {lab.nodes[n].ip for n in clients}

        def rr_only() -> bool:
            for n in clients:
                planned = {p["address"] for p in lab.status(n)["peers"]}
                if planned & (client_ips - {lab.nodes[n].ip}):
                    return False  # a mesh session between clients is still planned
                if rr.ip not in peers_up(lab, n):
                    return False
            return True

        lab.wait_for(rr_only, 60, "clients to peer with the reflector only")
        wait_routes(lab, list(lab.nodes), timeout=60)
        t_switched = time.time()
        time.sleep(2.0)  # keep probing a little after the switch settled
        t_end = time.time()
    finally:
        for _, p in reversed(procs):  # clients first: a dead server is no failed probe
            _kill_pid(p.pid)
    gaps = {n: _longest_gap(_probe_results(lab, n), t_start, t_end) for n, _ in procs if n}
    print(f"\n[e2e] mesh -> route reflector: switch took {t_switched - t_start:.2f}s, "
          f"longest probe gap " + ", ".join(f"{n[6:-4]}={g:.3f}s" for n, g in gaps.items()))
    for n, _ in procs:
        if n:
            after = [ok for ok, t in _probe_results(lab, n) if t_switched < t <= t_end]
            assert after and all(after[-10:]), f"{n}: probes failing after the switch"
    assert max(gaps.values()) < 30, f"traffic gap too long: {gaps}"
    # Nothing is learned from a client directly any more: every route a client
    # has came through the reflector (next hop unchanged: the owning node).
    st = {p["address"]: p for p in lab.status("node1")["peers"]}
    assert all(st[ip]["rr_client"] for ip in client_ips)
    pods = _all_pods(lab)
    from_rr = [(p, q) for p in pods for q in pods if p.node == "node1" and q.node != "node1"]
    _exchange_all(lab, [(a, b), (b, a), *from_rr[:4]])


# ------------------------------------------------------------------ 3 (last: kills node3)
def test_dead_node_routes_leave_other_kernels_within_restart_time(pod_lab) -> None:
    lab = pod_lab
    victim = lab.nodes["node3"]
    gone = blocks_of(lab, "node3")
    assert gone
    others = [n for n in lab.nodes if n != "node3" and lab.nodes[n].proc is not None]
    for n in others:
        assert gone <= set(learned(lab, n)), f"{n} lacks node3's blocks before the kill"
    t0 = time.monotonic()
    lab.stop_daemon("node3", signal.SIGKILL)
    # ExaBGP dies with its parent (PR_SET_PDEATHSIG): nothing of bgpd is left in the
    # node (its CNI agent, a separate process, stays).
    agent = {victim.cni_agent.pid} if victim.cni_agent else set()
    lab.wait_for(lambda: not set(_ns_pids(victim.ns)) - agent, 10,
                 "node3's ExaBGP to die with bgpd")
    times = {}

    def all_gone() -> bool:
        for n in others:
            if n not in times and not (gone & set(learned(lab, n))):
                times[n] = time.monotonic() - t0
        return len(times) == len(others)

    lab.wait_for(all_gone, RESTART_TIME + 20, f"node3's blocks {sorted(gone)} to leave "
                 f"{others}", interval=0.1)
    print("\n[e2e] SIGKILLed node3: its routes left the other kernels after "
          + ", ".join(f"{n}={t:.2f}s" for n, t in sorted(times.items()))
          + f" (restart time {RESTART_TIME}s)")
    assert max(times.values()) < RESTART_TIME + 15
    # The survivors still reach each other.
    pods = [p for n in others for p in lab.nodes[n].pods.values()]
    _exchange_all(lab, _cross_node_pairs(pods))

