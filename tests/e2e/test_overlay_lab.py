"""End to end: VXLAN (CrossSubnet / Always / Never), natOutgoing and a kill -9
restart, on a lab of two subnets joined by a router that routes node
addresses only (lab/routed.py):

    node1 10.99.0.11, node2 10.99.0.12  (subnet A)  --router--  node3 10.99.1.13 (subnet B)
                                                       |
                                                    outside 203.0.113.2

Real bgpd processes with --dataplane on (the default), pods from podbgp-cni +
podbgp-ipam, real captures (tcpdump) on the segments and at
the router. One lab for the module; the tests run in file order and each
leaves the pool as CrossSubnet + natOutgoing. What they prove is the issue's
list: same-subnet pods talk natively, cross-subnet through VXLAN (the router
sees UDP 4789 between node addresses only), Always encapsulates everything,
Never cannot cross the router; natOutgoing masquerades to the node's address
(and only towards outside every pool), takes effect within a second, and its
table is repaired within the resync interval; the seed's own pool (IPIP Always +
natOutgoing) masquerades real traffic and, on this kernel without `ipip`, fails
clearly with nothing else affected; kill -9 under 50 ms probes loses
none and the restarted daemon adopts what it finds.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import require, require_binary, require_root

pytestmark = [pytest.mark.root, pytest.mark.etcd, pytest.mark.slow]

POOL = "10.244.0.0/16"
RESYNC = 2  # --resync-interval: the NAT table check runs this often


def pool_doc(vxlan: str = "CrossSubnet", nat: bool = True, name: str = "pods",
             cidr: str = POOL, ipip: str = "Never") -> str:
    return json.dumps({"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
                       "metadata": {"name": name},
                       "spec": {"cidr": cidr, "blockSize": 26, "vxlanMode": vxlan,
                                "ipipMode": ipip, "natOutgoing": nat}})


@pytest.fixture(scope="module")
def lab():
    require_root()
    require_binary("etcd")
    require_binary("tcpdump")
    require(subprocess.run(["test", "-x", "/usr/lib/cni/bridge"]).returncode == 0,
            "needs containernetworking-plugins (/usr/lib/cni/bridge)")
    from lab.routed import RoutedLab

    t0 = time.monotonic()
    lab = RoutedLab(subnets=(0, 0, 1), ipam_options={"empty_block_release_seconds": 0})
    with lab:
        # One bgpctl run for every resource (each run is a Python start).
        nodes = [{"apiVersion": "projectcalico.org/v3", "kind": "Node",
                  "metadata": {"name": n.name}, "spec": {"bgp": {"ipv4Address": f"{n.ip}/24"}}}
                 for n in lab.nodes.values()]
        bgp = {"apiVersion": "projectcalico.org/v3", "kind": "BGPConfiguration",
               "metadata": {"name": "default"},
               "spec": {"asNumber": 64512, "nodeToNodeMeshEnabled": True,
                        "nodeMeshMaxRestartTime": "30s"}}
        lab.apply("\n---\n".join([pool_doc(), json.dumps(bgp), *map(json.dumps, nodes)]))
        t_conf = time.monotonic()
        for name in lab.nodes:
            lab.start_daemon(name, "--resync-interval", str(RESYNC))
        for name in lab.nodes:
            lab.add_pod(name)
        t_pods = time.monotonic()
        try:
            wait_vxlan_mode(lab, "CrossSubnet")
        except TimeoutError:
            for n in lab.nodes:
                print(f"--- {n} ---\n{lab.daemon_log(n, 60)}")
            raise
        print(f"\nlab up and converged in {time.monotonic() - t0:.1f} s (namespaces+etcd+"
              f"resources {t_conf - t0:.1f} s, daemons+pods {t_pods - t_conf:.1f} s, routes "
              f"{time.monotonic() - t_pods:.1f} s)")
        yield lab


# ------------------------------------------------------------------ helpers


def pod(lab, node: str):
    return lab.nodes[node].pods["p1"]


def vtep_of(lab, node: str) -> str | None:
    """The node's VTEP: the address on its vxlan.calico (what its Node publishes)."""
    r = subprocess.run(["ip", "-n", lab.nodes[node].ns, "-j", "-4", "addr", "show", "dev",
                        "vxlan.calico"], capture_output=True, text=True)
    if r.returncode:
        return None
    infos = json.loads(r.stdout or "[]")
    addrs = [a["local"] for i in infos for a in i.get("addr_info", [])]
    return addrs[0] if addrs else None


def wait_vxlan_mode(lab, mode: str, timeout: float = 60) -> None:
    """Until every node routes every other node's block the ``mode`` way: one
    `ip` call per node for its routes and one for its VTEP per poll."""
    names = list(lab.nodes)

    def ok() -> bool:
        routes = {n: lab.routes(n, "201") for n in names}
        blocks = {n: [r["dst"] for r in routes[n] if r.get("type") == "blackhole"]
                  for n in names}
        vteps = {n: vtep_of(lab, n) for n in names}
        for a in names:
            by_dst = {r["dst"]: r for r in routes[a]}
            for b in names:
                if a == b:
                    continue
                if len(blocks[b]) != 1:
                    return False
                same = lab.subnet_of(a) == lab.subnet_of(b)
                if mode == "Never" and not same:
                    continue  # unreachable gateway: the kernel refuses it (the control)
                if mode == "Never" or (mode == "CrossSubnet" and same):
                    want = (lab.nodes[b].ip, "eth0")
                else:
                    want = (vteps[b], "vxlan.calico")
                r = by_dst.get(blocks[b][0])
                if r is None or (r.get("gateway"), r.get("dev")) != want:
                    return False
        return True

    lab.wait_for(ok, timeout, f"every node to route every block the {mode} way", interval=0.2)


def exchange(lab, a: str, b: str, port: int) -> str:
    return lab.tcp_exchange(pod(lab, a), pod(lab, b), port=port, timeout=4)


def captured(cap_lines: list[str]) -> tuple[int, int]:
    """(VXLAN packets, other IP packets) in a tcpdump -n capture."""
    from lab.routed import summarise

    s = summarise(cap_lines)
    return len(s["vxlan"]), len(s["other"])


# ------------------------------------------------------------------ 1: CrossSubnet


def test_crosssubnet_native_on_the_segment_vxlan_across_the_router(lab) -> None:
    # The VTEPs are published in the Node resources, with Felix's MACs.
    for name, node in lab.nodes.items():
        doc = json.loads(lab.bgpctl("get", "node", name, "-o", "json").stdout)
        assert doc["spec"]["ipv4VXLANTunnelAddr"].startswith("10.244.")
        assert re.fullmatch(r"66(:[0-9a-f]{2}){5}", doc["spec"]["vxlanTunnelMACAddr"])
        dev = json.loads(subprocess.run(["ip", "-n", node.ns, "-d", "-j", "link", "show",
                                         "vxlan.calico"], capture_output=True, text=True,
                                        check=True).stdout)[0]
        assert dev["address"] == doc["spec"]["vxlanTunnelMACAddr"] and dev["mtu"] == 1450
        assert dev["linkinfo"]["info_data"]["local"] == node.ip
    # Same subnet: natively, no UDP 4789 on the segment.
    cap = lab.capture(lab.sw, "br0", "ip and not tcp port 179 and not tcp port 2379")
    reply = exchange(lab, "node1", "node2", 7301)
    lines = cap.stop()
    assert reply.endswith(f"peer={pod(lab, 'node1').ip}")  # pod to pod: no NAT
    vx, other = captured(lines)
    assert vx == 0 and other > 0, lines[:5]
    assert any(pod(lab, "node1").ip in ln and pod(lab, "node2").ip in ln for ln in lines)
    # Across the router: only UDP 4789 between node addresses; no pod address outside.
    cap = lab.capture(lab.router, "any", "ip and not tcp port 179 and not tcp port 2379")
    outer = lab.capture(lab.router, "any", "net 10.244.0.0/16")
    reply = exchange(lab, "node1", "node3", 7302)
    lines, pods_outside = cap.stop(), outer.stop()
    assert reply.endswith(f"peer={pod(lab, 'node1').ip}")
    vx, _ = captured(lines)
    assert vx > 0 and pods_outside == [], pods_outside[:5]
    from lab.routed import summarise

    node_ips = {n.ip for n in lab.nodes.values()}
    summary = summarise(lines)
    assert summary["other"] == [], summary["other"][:5]  # nothing but VXLAN crossed
    assert {a for pair in summary["vxlan"] for a in pair} <= node_ips
    print(f"\n  CrossSubnet: {len(lines)} packets at the router, all UDP 4789 between nodes")


# ------------------------------------------------------------------ 2: Always


def test_always_encapsulates_every_cross_node_packet(lab) -> None:
    lab.apply(pool_doc("Always"))
    try:
        wait_vxlan_mode(lab, "Always")
        cap = lab.capture(lab.sw, "br0", "net 10.244.0.0/16")  # outer headers only
        vxcap = lab.capture(lab.sw, "br0", "udp port 4789")
        reply = exchange(lab, "node1", "node2", 7311)
        assert reply.endswith(f"peer={pod(lab, 'node1').ip}")
        assert cap.stop() == [] and vxcap.stop() != []
    finally:
        lab.apply(pool_doc("CrossSubnet"))
        wait_vxlan_mode(lab, "CrossSubnet")


# ------------------------------------------------------------------ 3: Never (the control)


def test_never_cannot_cross_the_router(lab) -> None:
    lab.apply(pool_doc("Never"))
    try:
        wait_vxlan_mode(lab, "Never")
        assert exchange(lab, "node1", "node2", 7321).endswith(f"peer={pod(lab, 'node1').ip}")
        with pytest.raises(RuntimeError):
            exchange(lab, "node1", "node3", 7322)
    finally:
        lab.apply(pool_doc("CrossSubnet"))
        wait_vxlan_mode(lab, "CrossSubnet")
    assert exchange(lab, "node1", "node3", 7323).endswith(f"peer={pod(lab, 'node1').ip}")


# ------------------------------------------------------------------ 4: natOutgoing


def masq_set(lab, node: str) -> list:
    r = subprocess.run(["ip", "netns", "exec", lab.nodes[node].ns, "nft", "-j", "list", "set",
                        "inet", "podbgp-nat", "masq4"], capture_output=True, text=True)
    if r.returncode:
        return ["(missing)"]
    sets = [o["set"] for o in json.loads(r.stdout)["nftables"] if "set" in o]
    return sets[0].get("elem", []) if sets else []


def test_nat_outgoing_toggles_within_a_second(lab) -> None:
    p1, p3 = pod(lab, "node1"), pod(lab, "node3")
    assert lab.udp_source_seen(p1) == lab.nodes["node1"].ip
    assert lab.udp_source_seen(p3) == lab.nodes["node3"].ip
    took = {}
    for nat in (False, True):
        before = masq_set(lab, "node1")
        lab.apply(pool_doc(nat=nat))  # returns once etcd holds the change
        t0 = time.monotonic()
        lab.wait_for(lambda b=before: masq_set(lab, "node1") != b, 5,
                     f"natOutgoing {nat} in node1's nft set", interval=0.02)
        took[nat] = time.monotonic() - t0
        # And traffic shows it: the outside host sees the pod, then the node again.
        want = lab.nodes["node1"].ip if nat else p1.ip
        assert lab.udp_source_seen(p1) == want
    print(f"\n  natOutgoing off took effect in {took[False] * 1000:.0f} ms, on in "
          f"{took[True] * 1000:.0f} ms (etcd write -> nft set in the node)")
    assert max(took.values()) < 1.0
    # Pod to pod is never masqueraded (the echo reports the peer address it saw).
    assert exchange(lab, "node3", "node1", 7331).endswith(f"peer={p3.ip}")


def test_nat_table_deleted_by_hand_is_repaired_within_the_resync_interval(lab) -> None:
    ns = lab.nodes["node2"].ns
    subprocess.run(["ip", "netns", "exec", ns, "nft", "delete", "table", "inet", "podbgp-nat"],
                   check=True)
    t0 = time.monotonic()
    lab.wait_for(lambda: subprocess.run(
        ["ip", "netns", "exec", ns, "nft", "list", "table", "inet", "podbgp-nat"],
        capture_output=True).returncode == 0, RESYNC + 3, "the NAT table to come back")
    print(f"\n  nft table repaired after {time.monotonic() - t0:.2f} s (resync {RESYNC} s)")
    assert lab.udp_source_seen(pod(lab, "node2")) == lab.nodes["node2"].ip
    st = lab.status("node2")["dataplane"]
    assert st["counters"]["nat_repairs"] >= 1
    _code, body = lab.http_get("node2", "/metrics")
    assert re.search(r"podbgp_nat_table_repairs_total [1-9]", body)


# ------------------------------------------------------------------ 5: the seed's pool


SEED_POOL = "192.168.0.0/16"  # the seed's one example pool: ipipMode Always, natOutgoing true


def kernel_has_ipip(ns: str) -> bool:
    r = subprocess.run(["ip", "-n", ns, "link", "add", "ipprobe0", "type", "ipip"],
                       capture_output=True)
    if r.returncode == 0:
        subprocess.run(["ip", "-n", ns, "link", "del", "ipprobe0"])
    return r.returncode == 0


def seed_routes(lab, node: str) -> list[dict]:
    return [r for r in lab.routes(node, "201") if r["dst"].startswith("192.168.")]


def test_the_seeds_pool_as_written(lab) -> None:
    """The seed's pool, applied as is: {cidr: 192.168.0.0/16, ipipMode: Always,
    natOutgoing: true}, with pods of its own on node1 and node3 (across the router).
    natOutgoing works with real traffic whatever the kernel; IPIP works where the
    kernel has the module (IP protocol 4 between node addresses at the router) and
    fails clearly where it does not (here): one error naming the pool and the
    missing module, /status, metrics, no route to the remote blocks, and the VXLAN
    pool's pods unaffected."""
    n1, n3 = lab.nodes["node1"], lab.nodes["node3"]
    has_ipip = kernel_has_ipip(n1.ns)
    doc = json.loads(pool_doc(name="seed", cidr=SEED_POOL, vxlan="Never", ipip="Always"))
    doc["spec"] = {"cidr": SEED_POOL, "ipipMode": "Always", "natOutgoing": True,
                   "disabled": False}  # the seed's spec, word for word (blockSize: 26 default)
    lab.apply(json.dumps(doc))
    seed_pods = {}
    try:
        lab.ipam_options["ipv4_pools"] = ["seed"]  # CNI ipam ipv4_pools: these from the seed's
        try:
            for name in ("node1", "node3"):
                seed_pods[name] = lab.add_pod(name, "seed")
        finally:
            lab.ipam_options.pop("ipv4_pools")
        for p in seed_pods.values():
            assert p.ip.startswith("192.168."), p.ip

        # Every node holds a block of the seed's pool (its tunnel address, and pods on
        # node1 and node3) and advertises it: each node's loc-RIB has all three.
        def blocks_everywhere() -> bool:
            own = [[r for r in seed_routes(lab, n) if r.get("type") == "blackhole"]
                   for n in lab.nodes]
            return all(len(b) == 1 for b in own) and all(
                lab.status(n)["routes"]["loc_rib"] >= 6 for n in lab.nodes)

        lab.wait_for(blocks_everywhere, 30, "a seed block on every node, learned by all")
        n3_block = next(r["dst"] for r in seed_routes(lab, "node3") if r.get("type") == "blackhole")

        def reported() -> dict | None:
            st = lab.status("node1")["dataplane"]
            tun = st["devices"].get("tunl0")
            return st if tun and tun["state"] != "pending" else None

        st = lab.wait_for(reported, 30, "tunl0 to be tried")
        tun = st["devices"]["tunl0"]
        if has_ipip:
            # The full path: tunl0 with the node's tunnel address, routes via it, IPIP on
            # the wire between node addresses only.
            assert tun["state"] == "ok" and not st["not_programmable_pools"]
            node = json.loads(lab.bgpctl("get", "node", "node1", "-o", "json").stdout)
            tunnel_addr = node["spec"]["bgp"]["ipv4IPIPTunnelAddr"]
            assert tunnel_addr.startswith("192.168.")
            lab.wait_for(lambda: any(r["dst"] == n3_block and r.get("dev") == "tunl0"
                                     and r.get("gateway") == n3.ip
                                     for r in seed_routes(lab, "node1")),
                         30, f"{n3_block} via {n3.ip} dev tunl0 onlink on node1")
            bare = lab.capture(lab.router, "any", f"net {SEED_POOL}")  # outer headers only
            ipip = lab.capture(lab.router, "any", "ip proto 4")
            reply = lab.tcp_exchange(seed_pods["node1"], seed_pods["node3"], port=7342)
            assert reply.endswith(f"peer={seed_pods['node1'].ip}")  # pod to pod: no NAT
            assert bare.stop() == [] and ipip.stop() != []
        else:
            # The clear failure: what, which pool, which kernel feature; said once.
            assert tun["state"] == "error" and "'ipip' module" in tun["reason"]
            why = st["not_programmable_pools"]["seed"]
            assert why.startswith(f"IPPool seed ({SEED_POOL}) has ipipMode Always")
            assert "'ipip' module" in why
            _code, body = lab.http_get("node1", "/metrics")
            assert re.search(r'podbgp_dataplane_device_up\{device="tunl0",kind="ipip"\} 0', body)
            assert re.search(r'podbgp_dataplane_device_errors_total\{device="tunl0"\} [1-9]', body)
            assert re.search(r"^podbgp_dataplane_pools_not_programmable 1(\.0)?$", body, re.M)
            said = [ln for ln in lab.daemon_log("node1", 5000).splitlines()
                    if "dataplane_pool_not_programmable" in ln and "IPPool seed " in ln]
            assert len(said) == 1 and "'ipip' module" in said[0], said
            # node3's seed block is known but has no kernel route on node1 (the route via
            # tunl0 cannot exist), and nothing else of node1's routes changed.
            assert [r["dst"] for r in seed_routes(lab, "node1")
                    if r.get("type") != "blackhole"] == []
        # natOutgoing as written, with real traffic: the outside host sees each node's
        # address for its seed pod (and the seed pod's own address never).
        assert lab.udp_source_seen(seed_pods["node1"]) == n1.ip
        assert lab.udp_source_seen(seed_pods["node3"]) == n3.ip
        # Nothing else affected: the VXLAN pool's pods talk across the router, unNATed.
        assert exchange(lab, "node1", "node3", 7341).endswith(f"peer={pod(lab, 'node1').ip}")
        assert lab.status("node1")["dataplane"]["devices"]["vxlan.calico"]["state"] == "ok"
    finally:
        for name, p in seed_pods.items():
            lab.del_pod(name, p.name)
        lab.bgpctl("delete", "ippool", "seed")
    print(f"\n  seed pool: tunl0 {tun['state']}; natOutgoing: the outside host saw "
          f"{n1.ip} and {n3.ip}")


# ------------------------------------------------------------------ 6: kill -9


PROBER = """
import socket, sys, time
dst, port, interval, duration = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(interval * 0.9)
sent = got = 0
lost = []
t_end = time.monotonic() + duration
while time.monotonic() < t_end:
    t = time.monotonic()
    sent += 1
    s.sendto(str(sent).encode(), (dst, port))
    try:
        while True:
            d, _ = s.recvfrom(64)
            if int(d) == sent:
                got += 1
                break
    except socket.timeout:
        lost.append(sent)
    time.sleep(max(0.0, interval - (time.monotonic() - t)))
print(sent, got, ",".join(map(str, lost[:20])), flush=True)
"""

ECHO = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
print("ok", flush=True)
while True:
    d, a = s.recvfrom(64)
    s.sendto(d, a)
"""


def kernel_state(lab, node: str) -> dict:
    ns = lab.nodes[node].ns

    def j(*args):
        return json.loads(subprocess.run(args, capture_output=True, text=True,
                                         check=True).stdout or "[]")

    dev = j("ip", "-n", ns, "-d", "-j", "link", "show", "vxlan.calico")[0]
    return {
        "ifindex": dev["ifindex"],
        "routes": sorted((r["dst"], r.get("gateway"), r.get("dev")) for r in
                         j("ip", "-n", ns, "-j", "route", "show", "proto", "201")),
        "neigh": sorted((n["dst"], n.get("lladdr")) for n in
                        j("ip", "-n", ns, "-j", "neigh", "show", "dev", "vxlan.calico")
                        if "PERMANENT" in n.get("state", [])),
        "fdb": sorted((f["mac"], f.get("dst")) for f in
                      j("bridge", "-n", ns, "-j", "fdb", "show", "dev", "vxlan.calico")),
        "nat": subprocess.run(["ip", "netns", "exec", ns, "nft", "-j", "list", "table", "inet",
                               "podbgp-nat"], capture_output=True, text=True).returncode == 0,
    }


def test_kill_9_with_vxlan_traffic_loses_no_probe_and_adopts(lab) -> None:
    src, dst = pod(lab, "node1"), pod(lab, "node3")  # across the router: VXLAN
    before = kernel_state(lab, "node1")
    assert before["neigh"] and before["fdb"] and before["nat"]
    echo = subprocess.Popen(["ip", "netns", "exec", dst.ns, sys.executable, "-c", ECHO,
                             dst.ip, "7400"], stdout=subprocess.PIPE, text=True)
    try:
        assert echo.stdout is not None and echo.stdout.readline().strip() == "ok"
        prober = subprocess.Popen(["ip", "netns", "exec", src.ns, sys.executable, "-c", PROBER,
                                   dst.ip, "7400", "0.05", "12"], stdout=subprocess.PIPE,
                                  text=True)
        time.sleep(2)
        lab.stop_daemon("node1", signal.SIGKILL)
        time.sleep(1)
        lab.start_daemon("node1", "--resync-interval", str(RESYNC))
        lab.wait_for(lambda: lab.ready("node1"), 30, "node1 ready again")
        lab.wait_for(lambda: lab.status("node1")["converged"], 60, "node1 converged")
        out, _ = prober.communicate(timeout=30)
    finally:
        echo.kill()
        echo.wait()
    sent, got, lost = out.split() if len(out.split()) == 3 else (*out.split(), "")
    print(f"\n  kill -9 under probing: {sent} probes every 50 ms, {got} answered")
    assert int(sent) > 150 and int(got) == int(sent), f"lost probes: {lost}"
    after = kernel_state(lab, "node1")
    assert after == before, "routes, neighbours, FDB entries or the NAT table changed"
    dp = lab.status("node1")["dataplane"]
    assert dp["adopted"]["entries"] == len(before["neigh"]) + len(before["fdb"])
    assert dp["counters"]["entries_installed"] == 0 and dp["counters"]["devices_created"] == 0
    assert dp["nat"]["last_action"] in ("adopted", "unchanged")
