"""podbgp-cni's pod interface in real namespaces: Calico's shape, undo, and FIB sync.

Each test makes a "node" and a "pod" namespace (conftest `netns_factory`);
the dataplane runs with this thread inside the node namespace, so nothing is
created in the host's. What is checked is Calico's data plane
(projectcalico/calico cni-plugin/pkg/dataplane/linux/dataplane_linux.go, read
at commit 87c15906f20c4ca1fda55af92295e7678b0cc0b2):
- host side MAC ee:ee:ee:ee:ee:ee (``hostSideMAC``) and the IPv6 gateway its
  EUI-64 link-local address (``hostSideMACAsIPv6LL``);
- pod addresses /32 and /128 (``DoWorkloadNetnsSetUp``: the mask is forced),
  ``169.254.1.1`` scope link + the default route via it, IPv6 default via the
  host side's link-local address, DAD off in the pod (``disableDAD``);
- host side sysctls (``configureSysctls``): proxy_delay 0, proxy_arp 1,
  forwarding 1; IPv6 accept_dad 0, disable_ipv6 0, proxy_ndp 1, forwarding 1,
  accept_ra 0. route_localnet=1 is the one Calico sysctl not set (podbgp has
  no NAT to localhost; docs in cni/dataplane.py);
- in the pod, ip_forward 0 unless ``allow_ip_forwarding``
  (``configureContainerSysctls``);
- one host route per address, scope link, protocol boot (``SetupRoutes``:
  vishvananda/netlink's RouteAdd sends RTPROT_BOOT when no protocol is set).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import subprocess
import sys

import pytest

from cni import dataplane, rtnl
from cni.spec import E_CHECK_MISMATCH, E_DATAPLANE, CNIError
from tests.conftest import require_root

V4 = ipaddress.ip_interface("10.65.0.5/32")
V6 = ipaddress.ip_interface("fd00:65::5/128")


def ip(ns: str, *args: str, check: bool = True) -> str:
    return subprocess.run(["ip", "-n", ns, *args], check=check, capture_output=True,
                          text=True).stdout


def jip(ns: str, *args: str) -> list[dict]:
    return json.loads(ip(ns, "-j", *args) or "[]")


def sysctl(ns: str, key: str) -> str:
    return subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-n", key], check=True,
                          capture_output=True, text=True).stdout.strip()


@pytest.fixture
def nodepod(netns_factory):
    require_root()
    node, pod = netns_factory("pbcn"), netns_factory("pbcp")
    ip(node, "addr", "add", "10.99.9.1/32", "dev", "lo")
    ip(node, "addr", "add", "fd00:99::1/128", "dev", "lo")
    subprocess.run(["ip", "netns", "exec", node, "sysctl", "-qw", "net.ipv4.ip_forward=1"],
                   check=True)
    return node, pod


def plan(pod: str, *addrs, name: str = "calitest000001", mtu: int = 1400) -> dataplane.Plan:
    return dataplane.Plan(netns=f"/var/run/netns/{pod}", ifname="eth0", host_name=name,
                          addresses=tuple(addrs), mtu=mtu)


def in_node(node: str, fn, *args):
    with rtnl.in_netns(f"/var/run/netns/{node}"):
        return fn(*args)


def tcp_ok(src_ns: str, dst: str, dst_ns: str, port: int = 7777) -> bool:
    fam = "socket.AF_INET6" if ":" in dst else "socket.AF_INET"
    server = subprocess.Popen(
        ["ip", "netns", "exec", dst_ns, sys.executable, "-c",
         f"import socket\ns=socket.socket({fam});s.setsockopt(socket.SOL_SOCKET,"
         f"socket.SO_REUSEADDR,1)\ns.bind(('{dst}',{port}));s.listen(1);s.settimeout(5)\n"
         "print('ready',flush=True)\nc,_=s.accept();c.sendall(b'ok');c.close()\n"],
        stdout=subprocess.PIPE, text=True)
    try:
        server.stdout.readline()
        r = subprocess.run(["ip", "netns", "exec", src_ns, sys.executable, "-c",
                            f"import socket\nc=socket.create_connection(('{dst}',{port}),"
                            "timeout=5)\nprint(c.recv(10).decode())"],
                           capture_output=True, text=True, timeout=10)
        return r.stdout.strip() == "ok"
    finally:
        server.kill()
        server.wait()


def test_pod_interface_is_calicos_shape_dual_stack(nodepod):
    node, pod = nodepod
    p = plan(pod, V4, V6)
    built = in_node(node, dataplane.setup, p)
    host = jip(node, "link", "show", "calitest000001")[0]
    assert host["address"] == "ee:ee:ee:ee:ee:ee" and host["mtu"] == 1400
    assert "UP" in host["flags"] and built.host_mac == "ee:ee:ee:ee:ee:ee"
    # One host route per address: scope link, protocol boot (never podbgp's 201).
    # (`ip -j` leaves out "protocol" when it is boot: select by it instead.)
    r4 = jip(node, "-4", "route", "show", "10.65.0.5/32", "proto", "boot")
    r6 = jip(node, "-6", "route", "show", "fd00:65::5/128", "proto", "boot")
    assert [(r["dev"], r["scope"]) for r in r4] == [("calitest000001", "link")]
    assert [r["dev"] for r in r6] == ["calitest000001"]
    assert jip(node, "-4", "route", "show", "10.65.0.5/32", "proto", "201") == []
    for key, want in (("net.ipv4.conf.calitest000001.proxy_arp", "1"),
                      ("net.ipv4.conf.calitest000001.forwarding", "1"),
                      ("net.ipv4.neigh.calitest000001.proxy_delay", "0"),
                      ("net.ipv6.conf.calitest000001.proxy_ndp", "1"),
                      ("net.ipv6.conf.calitest000001.forwarding", "1"),
                      ("net.ipv6.conf.calitest000001.accept_ra", "0"),
                      ("net.ipv6.conf.calitest000001.accept_dad", "0"),
                      ("net.ipv6.conf.calitest000001.disable_ipv6", "0")):
        assert sysctl(node, key) == want, key
    assert sysctl(pod, "net.ipv6.conf.eth0.accept_dad") == "0"
    assert sysctl(node, "net.ipv4.conf.calitest000001.route_localnet") == "0"
    eth0 = jip(pod, "addr", "show", "eth0")[0]
    assert eth0["mtu"] == 1400 and eth0["address"] == built.pod_mac
    assert {(a["local"], a["prefixlen"]) for a in eth0["addr_info"]
            if a["scope"] == "global"} == {("10.65.0.5", 32), ("fd00:65::5", 128)}
    routes4 = {r["dst"]: r for r in jip(pod, "-4", "route")}
    assert routes4["default"]["gateway"] == "169.254.1.1"
    assert routes4["169.254.1.1"]["scope"] == "link"
    routes6 = {r["dst"]: r for r in jip(pod, "-6", "route")}
    assert routes6["default"]["gateway"] == "fe80::ecee:eeff:feee:eeee"
    neigh = jip(pod, "neigh", "show", "169.254.1.1")
    assert neigh and neigh[0]["lladdr"] == "ee:ee:ee:ee:ee:ee" and "PERMANENT" in neigh[0]["state"]
    assert sysctl(pod, "net.ipv4.ip_forward") == "0"
    # Traffic both ways, both families, with no default route on the "node".
    assert tcp_ok(node, "10.65.0.5", pod) and tcp_ok(pod, "10.99.9.1", node)
    assert tcp_ok(node, "fd00:65::5", pod) and tcp_ok(pod, "fd00:99::1", node)
    assert in_node(node, dataplane.inspect, p) == []
    again = in_node(node, dataplane.existing, p)
    assert again is not None and again.pod_mac == built.pod_mac


def test_teardown_removes_everything_and_repeats(nodepod):
    node, pod = nodepod
    p = plan(pod, V4)
    in_node(node, dataplane.setup, p)
    assert in_node(node, dataplane.teardown, p.netns, "eth0") is True
    assert ip(node, "link", "show", "calitest000001", check=False) == ""
    assert jip(node, "-4", "route", "show", "10.65.0.5/32") == []
    assert jip(pod, "link", "show", "eth0") == [] if ip(pod, "link", "show", "eth0",
                                                       check=False) else True
    assert in_node(node, dataplane.teardown, p.netns, "eth0") is False
    assert in_node(node, dataplane.teardown, "/var/run/netns/pbc-no-such-ns", "eth0") is False
    assert in_node(node, dataplane.teardown, "", "eth0") is False


def test_half_built_interface_is_rebuilt(nodepod):
    node, pod = nodepod
    p = plan(pod, V4)
    in_node(node, dataplane.setup, p)
    ip(pod, "addr", "del", "10.65.0.5/32", "dev", "eth0")
    problems = in_node(node, dataplane.inspect, p)
    assert problems and "pod addresses" in problems[0]
    assert in_node(node, dataplane.existing, p) is None
    in_node(node, dataplane.setup, p)  # the interrupted ADD's veth is ours: replaced
    assert in_node(node, dataplane.inspect, p) == []
    assert len([x for x in jip(node, "link") if x["ifname"].startswith("calitest")]) == 1


def test_foreign_interface_in_the_pod_is_refused_and_nothing_left(nodepod):
    node, pod = nodepod
    ip(pod, "link", "add", "eth0", "type", "veth", "peer", "name", "other0")
    with pytest.raises(CNIError, match="already exists in the container") as exc:
        in_node(node, dataplane.setup, plan(pod, V4))
    assert exc.value.code == E_DATAPLANE
    assert ip(node, "link", "show", "calitest000001", check=False) == ""
    assert jip(pod, "link", "show", "other0")  # the foreign pair is untouched


def test_host_route_conflict_rolls_back(nodepod):
    node, pod = nodepod
    ip(node, "link", "add", "squat0", "type", "veth", "peer", "name", "squat1")
    ip(node, "link", "set", "squat0", "up")
    ip(node, "route", "add", "10.65.0.5/32", "dev", "squat0", "proto", "static")
    with pytest.raises(CNIError, match="dev squat0 proto 4"):
        in_node(node, dataplane.setup, plan(pod, V4))
    assert ip(node, "link", "show", "calitest000001", check=False) == ""
    assert ip(pod, "link", "show", "eth0", check=False) == ""
    assert [r["dev"] for r in jip(node, "-4", "route", "show", "10.65.0.5/32")] == ["squat0"]


def test_check_names_what_is_missing(nodepod):
    node, pod = nodepod
    p = plan(pod, V4)
    in_node(node, dataplane.setup, p)
    in_node(node, dataplane.check, p)
    ip(node, "route", "del", "10.65.0.5/32", "dev", "calitest000001")
    with pytest.raises(CNIError, match=r"host route 10\.65\.0\.5/32") as exc:
        in_node(node, dataplane.check, p)
    assert exc.value.code == E_CHECK_MISMATCH
    ip(node, "link", "set", "calitest000001", "down")
    assert any("down" in x for x in in_node(node, dataplane.inspect, p))


def test_netlink_errors_carry_the_kernels_reason(nodepod):
    node, _ = nodepod
    with rtnl.in_netns(f"/var/run/netns/{node}"), rtnl.open_rtnl() as h, \
            pytest.raises(rtnl.NetlinkError) as exc:
        h.add_route(rtnl.Route(dst=ipaddress.ip_network("10.1.0.0/24"), oif=424242))
    assert exc.value.errno == 19 and "add route 10.1.0.0/24" in str(exc.value)


async def test_fib_sync_leaves_pod_routes_alone_and_keeps_the_block_blackhole(nodepod):
    """bgpd's FIB sync (protocol 201) beside podbgp-cni's routes (protocol boot): the own
    block's blackhole sits behind the /32s, nothing is reported as a conflict, nothing of
    the CNI's is changed by a sync or a resync, and the pods stay reachable."""
    from fib_sync import FibSyncer, Route, RouteKind

    node, pod = nodepod
    p = plan(pod, ipaddress.ip_interface("10.65.0.5/32"))
    in_node(node, dataplane.setup, p)
    s = FibSyncer(netns=node, protocol=201, retry_interval=0.1)
    await s.start()
    try:
        await s.set_desired([Route("10.65.0.0/26", RouteKind.BLACKHOLE)])
        await s.resync()
        await asyncio.sleep(0.2)
        await s.resync()
        assert s.stats.conflicts == 0 and not s.conflicting_prefixes
        boot = {(r["dst"], r["dev"]) for r in jip(node, "-4", "route", "show", "proto", "boot")}
        assert boot == {("10.65.0.5", "calitest000001")}
        ours = {(r["dst"], r.get("type")) for r in jip(node, "-4", "route", "show", "proto",
                                                      "201")}
        assert ours == {("10.65.0.0/26", "blackhole")}
        assert tcp_ok(node, "10.65.0.5", pod)
        # The pod's address resolves to its interface; another address of the block
        # (no pod there) to the blackhole, which `ip route get` reports as an error.
        assert jip(node, "-4", "route", "get", "10.65.0.5")[0]["dev"] == "calitest000001"
        hole = subprocess.run(["ip", "-n", node, "route", "get", "10.65.0.6"],
                              capture_output=True, text=True)
        assert hole.returncode != 0 and "Invalid argument" in hole.stderr
        await s.set_desired([])
        assert {r["dst"] for r in jip(node, "-4", "route", "show", "proto", "boot")} == {
            "10.65.0.5"}
    finally:
        await s.stop()


def test_links_filtered_by_name_are_the_same_links(netns):
    """Auto-MTU reads only the uplinks (cni.mtu's pattern): the links it gets with the
    name filter are field for field those of the full dump, and a pod veth is not among
    them (a node's pod veths are most of its links; they are not parsed)."""
    from cni.mtu import MTU_IFACE_PATTERN, host_mtu

    for cmd in (["link", "add", "eth7", "mtu", "1450", "type", "veth", "peer", "name", "p7"],
                ["link", "set", "eth7", "up"],
                ["link", "add", "cali1234", "mtu", "1400", "type", "veth", "peer", "name",
                 "tmp9"],
                ["link", "set", "cali1234", "up"],
                ["link", "add", "ens3", "mtu", "9000", "type", "veth", "peer", "name", "p3"]):
        subprocess.run(["ip", "-n", netns, *cmd], check=True)
    with rtnl.in_netns(f"/var/run/netns/{netns}"), rtnl.open_rtnl() as host:
        every = host.links()
        some = host.links(MTU_IFACE_PATTERN.match)
    assert sorted(link.name for link in some) == ["ens3", "eth7"]
    assert some == [link for link in every if link.name in ("ens3", "eth7")]
    assert host_mtu(some) == host_mtu(every) == 1450  # ens3 is down
