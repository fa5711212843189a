"""Tunnel address allocation (ipam.tunnel) against a real etcd, the way
calico-node's node/pkg/allocateip/allocateip.go does it: Calico's handle
names and attributes, keep / reassign / release, and publishing in the Node
resource without losing a field podbgp does not model."""

from __future__ import annotations

import json

import pytest

from config.etcd_store import EtcdDatastore
from config.parse import parse_json
from ipam.allocator import Allocator, bridge_reserved
from ipam.etcd import EtcdSettings, connect
from ipam.tunnel import (
    IPIP,
    VXLAN,
    ensure_tunnel_address,
    handle_for,
    node_tunnel_fields,
    owner_of,
    publish,
    release_tunnel_address,
    tunnel_pools,
    vtep_mac,
)

pytestmark = pytest.mark.etcd

RES = "/calico/resources/v3/projectcalico.org/"


def pool(name, cidr, **spec):
    return {"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
            "metadata": {"name": name}, "spec": {"cidr": cidr, "blockSize": 26, **spec}}


@pytest.fixture
async def client(etcd):
    c = await connect(EtcdSettings(etcd.endpoint))
    try:
        yield c
    finally:
        await c.close()


async def put(client, kind_plural, doc):
    await client.put(f"{RES}{kind_plural}/{doc['metadata']['name']}".encode(),
                     json.dumps(doc).encode())


def test_vtep_mac_is_felixs() -> None:
    # felix/calc/vxlan_resolver.go vtepMACForHost: 'f' + sha1(name)[0:5]; a locally
    # administered unicast MAC (0x66 = 0b01100110).
    import hashlib

    mac = vtep_mac("node1")
    assert mac == "66:" + hashlib.sha1(b"node1").digest()[:5].hex(":")
    assert vtep_mac("node1", v6=True) != mac and vtep_mac("node2") != mac


async def test_pools_for_a_tunnel_kind() -> None:
    pools = [parse_json(f"{RES}ippools/{d['metadata']['name']}", json.dumps(d)) for d in (
        pool("a-vx", "10.10.0.0/16", vxlanMode="Always"),
        pool("b-vx-cross", "10.11.0.0/16", vxlanMode="CrossSubnet"),
        pool("c-vx-disabled", "10.12.0.0/16", vxlanMode="Always", disabled=True),
        pool("d-vx-workload-only", "10.13.0.0/16", vxlanMode="Always",
             allowedUses=["Workload"]),
        pool("e-vx-other-nodes", "10.14.0.0/16", vxlanMode="Always",
             nodeSelector="zone == 'b'"),
        pool("f-ipip", "10.15.0.0/16", ipipMode="Always"),
        pool("g-plain", "10.16.0.0/16"),
    )]
    assert [p.metadata.name for p in tunnel_pools(pools, VXLAN, {"zone": "a"})] == [
        "a-vx", "b-vx-cross"]
    assert [p.metadata.name for p in tunnel_pools(pools, VXLAN, {"zone": "b"})] == [
        "a-vx", "b-vx-cross", "e-vx-other-nodes"]
    assert [p.metadata.name for p in tunnel_pools(pools, IPIP, {})] == ["f-ipip"]


async def test_assign_keep_reassign_release(client) -> None:
    await put(client, "ippools", pool("vx", "10.10.0.0/16", vxlanMode="Always"))
    await put(client, "ippools", pool("vx2", "10.20.0.0/16", vxlanMode="Always"))
    alloc = Allocator(client, release_grace=0, reserve=bridge_reserved)
    a = await ensure_tunnel_address(alloc, "node1", VXLAN, ["vx"], ["10.10.0.0/16"], None)
    assert a.startswith("10.10.")
    own = await owner_of(alloc, a)
    # Calico's handle and attributes (allocateip.go generateHandleAndAttributes).
    assert own.handle == "vxlan-tunnel-addr-node1"
    assert own.attrs == {"node": "node1", "type": "vxlanTunnelAddress"}
    # Still ours and in a valid pool: kept.
    assert await ensure_tunnel_address(alloc, "node1", VXLAN, ["vx"], ["10.10.0.0/16"], a) == a
    # The pool is no longer a VXLAN pool: released, a new one from the other pool.
    b = await ensure_tunnel_address(alloc, "node1", VXLAN, ["vx2"], ["10.20.0.0/16"], a)
    assert b.startswith("10.20.") and await owner_of(alloc, a) is None
    # The Node names an address someone else holds (a pod's): theirs stays.
    pod, _ = await alloc.auto_assign("net.pod1", "node1", v4_pools=["vx2"])
    pod_ip = str(pod[0].address)
    c = await ensure_tunnel_address(alloc, "node1", VXLAN, ["vx2"], ["10.20.0.0/16"], pod_ip)
    assert c == b and (await owner_of(alloc, pod_ip)).handle == "net.pod1"
    # IPIP has its own handle.
    d = await ensure_tunnel_address(alloc, "node1", IPIP, ["vx"], ["10.10.0.0/16"], None)
    assert (await owner_of(alloc, d)).handle == handle_for(IPIP, "node1") != handle_for(
        VXLAN, "node1")
    assert await release_tunnel_address(alloc, "node1", VXLAN) == [b]
    assert await owner_of(alloc, b) is None and await owner_of(alloc, d) is not None


async def test_publish_changes_tunnel_fields_only(client, etcd) -> None:
    # A Node as a newer calico-node writes it: fields podbgp does not model
    # (spec.futureField, metadata.annotations, status.*) must survive.
    stored = {
        "apiVersion": "projectcalico.org/v3", "kind": "Node",
        "metadata": {"name": "node1", "labels": {"zone": "a"},
                     "annotations": {"projectcalico.org/kube-labels": "{}"},
                     "uid": "1d2c", "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"bgp": {"ipv4Address": "10.99.0.11/24", "asNumber": 64512},
                 "orchRefs": [{"orchestrator": "k8s", "nodeName": "node1"}],
                 "futureField": {"x": [1, 2]},
                 "interfaces": [{"name": "eth0", "addresses": ["10.99.0.11"]}]},
        "status": {"podCIDRs": ["10.244.0.0/24"], "futureStatus": True},
    }
    await client.put(f"{RES}nodes/node1".encode(), json.dumps(stored).encode())
    store = EtcdDatastore(etcd.endpoint)
    try:
        mac = vtep_mac("node1")
        fields = {"ipv4_vxlan_tunnel_addr": "10.10.3.2", "vxlan_tunnel_mac_addr": mac,
                  "ipv4_ipip_tunnel_addr": "10.15.0.7"}
        assert await publish(store, "node1", fields) is True
        assert await publish(store, "node1", fields) is False  # already there: no write
        got = json.loads((await client.get(f"{RES}nodes/node1".encode())).value)
        want = json.loads(json.dumps(stored))
        want["spec"]["ipv4VXLANTunnelAddr"] = "10.10.3.2"
        want["spec"]["vxlanTunnelMACAddr"] = mac
        want["spec"]["bgp"]["ipv4IPIPTunnelAddr"] = "10.15.0.7"
        assert got == want
        # Removing one (no IPIP pool left) removes that key only.
        await publish(store, "node1", {"ipv4_ipip_tunnel_addr": None})
        got = json.loads((await client.get(f"{RES}nodes/node1".encode())).value)
        del want["spec"]["bgp"]["ipv4IPIPTunnelAddr"]
        assert got == want
        node = await store.get("Node", "node1")
        assert node_tunnel_fields(node)["ipv4_vxlan_tunnel_addr"] == "10.10.3.2"
    finally:
        await store.close()
