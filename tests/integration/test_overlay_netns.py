"""fib_sync.overlay against the real kernel in throwaway namespaces: the VXLAN
device (Felix's vxlan_mgr.go model), its neighbour and FDB entries
(felix/vxlanfdb), routes via VTEPs, repair after tampering, adoption across
a restart, the stale sweep, foreign objects left alone, and IPIP's clear
failure on a kernel without the `ipip` module (or the full path where it has
one).
"""

from __future__ import annotations

import asyncio
import json
import subprocess

import pytest

from fib_sync import FibSyncer, NextHop, Route
from fib_sync.link import IpipSpec, VxlanSpec
from fib_sync.neigh import FdbEntry, Neighbour
from fib_sync.overlay import ERROR, FOREIGN, OK, OverlaySyncer
from tests.helpers.wait import WaitTimeout, until

pytestmark = pytest.mark.root

DEV = "vxlan.calico"
MAC = "66:74:c5:72:3f:01"
PEER_MAC = "66:74:c5:72:3f:02"


def ip(ns: str, *args: str, check: bool = True) -> str:
    r = subprocess.run(["ip", "-n", ns, *args], capture_output=True, text=True)
    if check and r.returncode:
        raise RuntimeError(f"ip {' '.join(args)}: {r.stderr}")
    return r.stdout


def link_json(ns: str, dev: str) -> dict:
    return json.loads(ip(ns, "-d", "-j", "link", "show", dev))[0]


def neighbours(ns: str) -> dict[str, tuple[str, str]]:
    out = {}
    for n in json.loads(ip(ns, "-j", "neigh", "show", "dev", DEV, check=False) or "[]"):
        out[n["dst"]] = (n.get("lladdr"), ",".join(n.get("state", [])))
    return out


def fdb(ns: str) -> dict[str, str]:
    r = subprocess.run(["bridge", "-n", ns, "-j", "fdb", "show", "dev", DEV],
                       capture_output=True, text=True)
    if r.returncode:  # no such device (yet)
        return {}
    return {e["mac"]: e.get("dst") for e in json.loads(r.stdout or "[]")
            if "permanent" in e.get("state", "") or e.get("state") == "permanent"}


@pytest.fixture
def node(netns):
    """A namespace with an uplink eth0 = 10.1.0.1/24 (MTU 1500)."""
    ip(netns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
    ip(netns, "addr", "add", "10.1.0.1/24", "dev", "eth0")
    ip(netns, "link", "set", "eth0", "up")
    ip(netns, "link", "set", "eth0p", "up")
    return netns


def spec(**kw) -> VxlanSpec:
    base = dict(name=DEV, vni=4096, port=4789, local="10.1.0.1", mac=MAC, mtu=0,
                address="10.244.1.0")
    return VxlanSpec(**{**base, **kw})


ENTRIES = [Neighbour(DEV, "10.244.2.0", PEER_MAC), FdbEntry(DEV, PEER_MAC, "10.1.0.2")]


def run(coro):
    return asyncio.run(coro)


async def _wait(pred, timeout=3.0):
    """True once ``pred`` holds (``tests.helpers.wait.until``), False after ``timeout``."""
    try:
        await until(pred, timeout, "an overlay condition", interval=0.02)
    except WaitTimeout:
        return False
    return True


def test_vxlan_device_entries_and_routes_as_felix_makes_them(node) -> None:
    async def go():
        ov = OverlaySyncer(netns=node, resync_interval=60)
        fib = FibSyncer(netns=node, resync_interval=60)
        await ov.start()
        await fib.start()
        try:
            await ov.set_desired([spec()], ENTRIES)
            st = ov.devices[DEV]
            assert st.state == OK and st.mtu == 1450  # uplink 1500 - 50
            await fib.set_desired([Route("10.244.2.0/26", nexthops=(
                NextHop("10.244.2.0", dev=DEV, onlink=True),))])
            return st
        finally:
            await fib.stop()
            await ov.stop()

    st = run(go())
    dev = link_json(node, DEV)
    data = dev["linkinfo"]["info_data"]
    assert dev["address"] == MAC and dev["mtu"] == 1450 and dev["ifalias"] == "podbgp"
    assert (data["id"], data["port"], data["local"], data["link"], data["learning"]) == (
        4096, 4789, "10.1.0.1", "eth0", False)
    assert "UP" in dev["flags"] and dev["ifindex"] == st.ifindex
    addrs = json.loads(ip(node, "-j", "addr", "show", "dev", DEV))[0]["addr_info"]
    assert [(a["local"], a["prefixlen"]) for a in addrs if a["family"] == "inet"] == [
        ("10.244.1.0", 32)]
    assert neighbours(node)["10.244.2.0"] == (PEER_MAC, "PERMANENT")
    assert fdb(node) == {PEER_MAC: "10.1.0.2"}
    route = ip(node, "route", "show", "10.244.2.0/26")
    assert "via 10.244.2.0 dev vxlan.calico proto 201" in route and "onlink" in route
    # Everything stays after stop(): traffic keeps flowing across a restart.
    assert DEV in ip(node, "link", "show")


def test_tampering_is_repaired_and_restart_adopts_without_recreating(node) -> None:
    async def go():
        ov = OverlaySyncer(netns=node, resync_interval=60)
        await ov.start()
        await ov.set_desired([spec()], ENTRIES)
        index = ov.devices[DEV].ifindex
        ip(node, "neigh", "del", "10.244.2.0", "dev", DEV)
        subprocess.run(["bridge", "-n", node, "fdb", "del", PEER_MAC, "dev", DEV], check=True)
        assert await _wait(lambda: "10.244.2.0" in neighbours(node) and PEER_MAC in fdb(node))
        ip(node, "link", "set", DEV, "mtu", "1300")
        assert await _wait(lambda: link_json(node, DEV)["mtu"] == 1450)
        ip(node, "addr", "flush", "dev", DEV)
        assert await _wait(lambda: "10.244.1.0" in ip(node, "addr", "show", "dev", DEV))
        ip(node, "link", "set", DEV, "down")
        assert await _wait(lambda: "UP" in link_json(node, DEV)["flags"])
        assert ov.stats.repairs >= 2 and ov.stats.devices_repaired >= 2
        assert ov.devices[DEV].ifindex == index
        await ov.stop()

        # Restart: adopt what is there; nothing is created again.
        ov2 = OverlaySyncer(netns=node, resync_interval=60)
        await ov2.start()
        assert set(ov2.stale) == {e.key for e in ENTRIES}
        await ov2.set_desired([spec()], ENTRIES)
        assert ov2.devices[DEV].ifindex == index
        assert (ov2.stats.devices_created, ov2.stats.entries_installed) == (0, 0)
        assert ov2.stats.adopted == 2 and not ov2.stale
        # A device deleted by hand comes back, entries included.
        ip(node, "link", "del", DEV)
        assert await _wait(lambda: PEER_MAC in fdb(node) and "10.244.2.0" in neighbours(node))
        assert ov2.stats.devices_created == 1
        await ov2.stop()

    run(go())


def test_stale_entries_swept_only_after_convergence(node) -> None:
    async def go():
        ov = OverlaySyncer(netns=node, resync_interval=60)
        await ov.start()
        await ov.set_desired([spec()], ENTRIES)
        await ov.stop()
        ov = OverlaySyncer(netns=node, resync_interval=60)
        await ov.start()
        await ov.set_desired([spec()], ENTRIES[:1])  # the FDB entry is no longer wanted
        assert PEER_MAC in fdb(node), "adopted entries stay until convergence"
        await ov.converged()
        assert PEER_MAC not in fdb(node) and "10.244.2.0" in neighbours(node)
        assert ov.stats.swept == 1
        # After convergence a device nobody wants is removed (its entries with it).
        await ov.set_desired([], [])
        assert DEV not in ip(node, "link", "show")
        assert ov.stats.devices_removed == 1
        await ov.stop()

    run(go())


def test_foreign_objects_are_reported_and_left_alone(node) -> None:
    # Someone else's VXLAN device of our name (Felix's, say): different VNI, no alias.
    ip(node, "link", "add", DEV, "type", "vxlan", "id", "1", "dstport", "4789", "dev", "eth0")

    async def go():
        ov = OverlaySyncer(netns=node, resync_interval=60)
        await ov.start()
        await ov.set_desired([spec()], ENTRIES)
        st = ov.devices[DEV]
        assert st.state == FOREIGN and "not podbgp's" in st.reason and "vni 1" in st.reason
        assert link_json(node, DEV)["linkinfo"]["info_data"]["id"] == 1  # untouched
        assert neighbours(node) == {} and fdb(node) == {}
        await ov.set_desired([spec()], [])
        ip(node, "link", "del", DEV)
        assert await _wait(lambda: ov.devices[DEV].state == OK, 4)  # retried: ours now
        # An operator's permanent entry (protocol 0) on a key podbgp then wants.
        ip(node, "neigh", "add", "10.244.2.0", "lladdr", "66:00:00:00:00:99", "dev", DEV,
           "nud", "permanent")
        await ov.set_desired([spec()], ENTRIES)
        assert neighbours(node)["10.244.2.0"][0] == "66:00:00:00:00:99"  # left alone
        assert (DEV, "10.244.2.0") in ov.conflicts and ov.stats.conflicts == 1
        assert fdb(node) == {PEER_MAC: "10.1.0.2"}  # the rest is programmed
        ip(node, "neigh", "del", "10.244.2.0", "dev", DEV)  # the operator gives it up
        await ov.resync()
        assert neighbours(node)["10.244.2.0"][0] == PEER_MAC and not ov.conflicts
        # podbgp's own entry changed by hand (the kernel keeps its protocol): put back.
        ip(node, "neigh", "replace", "10.244.2.0", "lladdr", "66:00:00:00:00:98", "dev", DEV,
           "nud", "permanent")
        assert await _wait(lambda: neighbours(node)["10.244.2.0"][0] == PEER_MAC)
        await ov.stop()

    run(go())


def test_ipip_fails_clearly_without_the_module_or_works_with_it(node) -> None:
    has_ipip = subprocess.run(["ip", "-n", node, "link", "add", "probe0", "type", "ipip"],
                              capture_output=True).returncode == 0
    if has_ipip:
        ip(node, "link", "del", "probe0")

    async def go():
        ov = OverlaySyncer(netns=node, resync_interval=60)
        await ov.start()
        await ov.set_desired([spec(), IpipSpec("tunl0", 0, "10.245.0.1", "10.1.0.1")], ENTRIES)
        states = ov.devices
        await ov.stop()
        return states

    states = run(go())
    assert states[DEV].state == OK, "a failing tunl0 affects nothing else"
    assert "10.244.2.0" in neighbours(node)
    tun = states["tunl0"]
    if has_ipip:
        assert tun.state == OK and tun.mtu == 1480
        assert "10.245.0.1/32" in ip(node, "addr", "show", "dev", "tunl0")
    else:
        assert tun.state == ERROR and tun.errno == 95
        assert "no IP-in-IP support" in tun.reason and "'ipip' module" in tun.reason


def test_ten_thousand_vtep_routes_share_one_template(node) -> None:
    """Routes via a different VTEP each (one remote node per block) go through
    the template path with the gateway patched per route (netlink.py)."""
    async def go():
        ov = OverlaySyncer(netns=node, resync_interval=60)
        fib = FibSyncer(netns=node, resync_interval=60)
        await ov.start()
        await fib.start()
        await ov.set_desired([spec()], [])
        routes = [Route(f"10.{64 + i // 256}.{i % 256}.0/26", nexthops=(
            NextHop(f"10.{128 + i // 256}.{i % 256}.1", dev=DEV, onlink=True),))
            for i in range(10_000)]
        await fib.set_desired(routes)
        assert fib.stats.installed == 10_000 and not fib.failing_routes
        got = await fib.kernel_routes()
        await fib.stop()
        await ov.stop()
        return routes, got

    routes, got = run(go())
    assert {r.dst: r.nexthops[0].gateway for r in got.values()} == {
        r.dst: r.nexthops[0].gateway for r in routes}
    assert all(r.nexthops[0].dev == DEV and r.nexthops[0].onlink for r in got.values())
