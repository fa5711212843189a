"""The allocator against a real etcd: concurrency, Calico's stored shape, release."""

from __future__ import annotations

import asyncio
import ipaddress
import json

import pytest

from ipam.allocator import Allocator, NoFreeAddressError, bridge_reserved
from ipam.etcd import EtcdSettings, connect
from ipam.model import IPAMBlock, IPAMConfig

pytestmark = pytest.mark.etcd

POOL4 = "10.20.0.0/16"
POOL6 = "fd00:20::/112"
RES = "/calico/resources/v3/projectcalico.org/"


async def _put_pool(client, name, cidr, block_size=None, **spec):
    body = {"cidr": cidr, **spec}
    if block_size:
        body["blockSize"] = block_size
    obj = {"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
           "metadata": {"name": name}, "spec": body}
    await client.put(f"{RES}ippools/{name}".encode(), json.dumps(obj).encode())


async def _put_node(client, name, labels):
    obj = {"apiVersion": "projectcalico.org/v3", "kind": "Node",
           "metadata": {"name": name, "labels": labels}, "spec": {}}
    await client.put(f"{RES}nodes/{name}".encode(), json.dumps(obj).encode())


async def _dump(client, prefix):
    return {m.key.decode(): m.value for m in await client.get_prefix(prefix.encode())}


@pytest.fixture
async def clients(etcd):
    made = []

    async def make():
        c = await connect(EtcdSettings(etcd.endpoint))
        made.append(c)
        return c

    try:
        yield make
    finally:
        for c in made:
            await c.close()


async def test_200_concurrent_assignments_three_nodes(clients):
    first = await clients()
    await _put_pool(first, "pool4", POOL4, 26)
    allocators = [Allocator(await clients(), release_grace=0) for _ in range(4)]
    nodes = ["node1", "node2", "node3"]

    async def one(i):
        alloc = allocators[i % len(allocators)]
        node = nodes[i % 3]
        v4, _ = await alloc.auto_assign(f"net.c{i}", node, attrs={"pod": f"p{i}"})
        return node, v4[0].address

    got = await asyncio.gather(*(one(i) for i in range(200)))
    addrs = [a for _n, a in got]
    assert len(set(addrs)) == 200, "duplicate address handed out"

    # Every address lies in a block affine (confirmed) to the node that asked.
    blocks = [IPAMBlock.from_json(k, v) for k, v in
              (await _dump(first, "/calico/ipam/v2/assignment/ipv4/block/")).items()]
    affs = await _dump(first, "/calico/ipam/v2/host/")
    for node, addr in got:
        (block,) = [b for b in blocks if addr in b.cidr]
        assert block.host == node
        key = f"/calico/ipam/v2/host/{node}/ipv4/block/{str(block.cidr).replace('/', '-')}"
        assert json.loads(affs[key]) == {"state": "confirmed", "deleted": False}
    # Blocks, handles and counts agree: 200 in use, each handle holds one.
    assert sum(b.in_use for b in blocks) == 200
    handles = await _dump(first, "/calico/ipam/v2/handle/")
    assert len(handles) == 200
    assert all(sum(json.loads(v)["block"].values()) == 1 for v in handles.values())
    # ~67 per node in /26 blocks: 2 blocks each is enough; a new block is
    # claimed only when the node's blocks are full (at most one spare per client race).
    for node in nodes:
        mine = [b for b in blocks if b.host == node]
        assert 2 <= len(mine) <= 2 + len(allocators) - 1

    # Release everything concurrently: the pool is empty again, blocks given back.
    await asyncio.gather(*(allocators[i % 4].release_by_handle(f"net.c{i}") for i in range(200)))
    await allocators[0].release_empty_blocks(grace=0)
    left = await _dump(first, "/calico/ipam/v2/")
    assert left == {}, sorted(left)


async def test_stored_block_is_calicos_shape(clients):
    c = await clients()
    await _put_pool(c, "pool4", POOL4, 26)
    alloc = Allocator(c, release_grace=0)
    v4, _ = await alloc.auto_assign("k8s-pod-network.abc", "node1",
                                    attrs={"namespace": "default", "pod": "p"})
    block = v4[0].block
    key = "/calico/ipam/v2/assignment/ipv4/block/" + str(block).replace("/", "-")
    raw = (await c.get(key.encode())).value
    obj = json.loads(raw)
    assert list(obj) == ["cidr", "affinity", "allocations", "unallocated", "attributes",
                         "strictAffinity", "sequenceNumber", "sequenceNumberForAllocation",
                         "deleted"]
    ordinal = int(v4[0].address) - int(block.network_address)
    assert obj["cidr"] == str(block) and obj["affinity"] == "host:node1"
    assert len(obj["allocations"]) == 64 and obj["allocations"][ordinal] == 0
    assert sorted(obj["unallocated"]) == [i for i in range(64) if i != ordinal]
    assert obj["attributes"] == [{"handle_id": "k8s-pod-network.abc", "secondary": {
        "node": "node1", "namespace": "default", "pod": "p"}}]
    assert obj["sequenceNumber"] == 1
    assert obj["sequenceNumberForAllocation"] == {str(ordinal): 0}
    assert obj["deleted"] is False and obj["strictAffinity"] is False
    handle = json.loads((await c.get(b"/calico/ipam/v2/handle/k8s-pod-network.abc")).value)
    assert handle == {"block": {str(block): 1}, "deleted": False}


async def test_same_handle_same_address_and_release_by_ip(clients):
    c = await clients()
    await _put_pool(c, "pool4", POOL4, 26)
    alloc = Allocator(c, release_grace=0)
    first, _ = await alloc.auto_assign("net.x", "node1")
    # Same handle, even concurrently from two clients: the same single address.
    other = Allocator(await clients(), release_grace=0)
    again = await asyncio.gather(alloc.auto_assign("net.x", "node1"),
                                 other.auto_assign("net.x", "node1"))
    assert [r[0][0].address for r in again] == [first[0].address] * 2
    blk, _ = await alloc.read_block(first[0].block)
    assert blk.in_use == 1

    second, _ = await alloc.auto_assign("net.y", "node1")
    assert second[0].address != first[0].address
    assert await alloc.release_ip(second[0].address) == "net.y"
    assert await alloc.release_ip(second[0].address) is None  # already free
    h, _ = await alloc.read_handle("net.y")
    assert h is None, "handle of the last released address is removed"
    blk, _ = await alloc.read_block(first[0].block)
    assert blk.in_use == 1 and blk.handle_of(first[0].address) == "net.x"


async def test_cas_conflict_is_retried(clients, monkeypatch):
    c = await clients()
    await _put_pool(c, "pool4", POOL4, 26)
    a = Allocator(c, release_grace=0)
    b = Allocator(await clients(), release_grace=0)
    await a.auto_assign("net.seed", "node1")  # the block exists

    # b writes the block between a's read and a's transaction, exactly once.
    orig = a.read_block
    raced = []

    async def racing_read(cidr):
        got = await orig(cidr)
        if not raced:
            raced.append(await b.auto_assign("net.b", "node1"))
        return got

    monkeypatch.setattr(a, "read_block", racing_read)
    va, _ = await a.auto_assign("net.a", "node1")
    assert a.stats.conflicts >= 1, "the stale write must have been refused"
    vb = raced[0][0]
    assert va[0].address != vb[0].address
    blk, _ = await a.read_block(va[0].block)
    assert blk.handle_of(va[0].address) == "net.a" and blk.handle_of(vb[0].address) == "net.b"
    assert blk.in_use == 3


async def test_grace_period_keeps_empty_block_until_expired(clients):
    c = await clients()
    await _put_pool(c, "pool4", POOL4, 26)
    now = [1000.0]
    alloc = Allocator(c, release_grace=60, clock=lambda: now[0])
    v4, _ = await alloc.auto_assign("net.g", "node1")
    cidr = v4[0].block
    await alloc.release_by_handle("net.g")
    assert await alloc.release_empty_blocks() == []
    blk, _ = await alloc.read_block(cidr)
    assert blk is not None and blk.is_empty
    # Reused within the grace period: the block stays and is not released later.
    await alloc.auto_assign("net.h", "node1")
    now[0] += 120
    assert await alloc.release_empty_blocks() == []
    await alloc.release_by_handle("net.h")
    now[0] += 59
    assert await alloc.release_empty_blocks() == []
    now[0] += 2
    assert await alloc.release_empty_blocks() == [cidr]
    assert await _dump(c, "/calico/ipam/v2/") == {}


async def test_max_blocks_per_host_and_node_selector(clients):
    c = await clients()
    await _put_pool(c, "small", "10.30.0.0/24", 28)
    await _put_pool(c, "rack2", "10.31.0.0/24", 28, nodeSelector="rack == '2'")
    await _put_node(c, "node1", {"rack": "1"})
    alloc = Allocator(c, release_grace=0)
    await alloc.set_config(IPAMConfig(max_blocks_per_host=1))
    got = [(await alloc.auto_assign(f"n.{i}", "node1"))[0][0].address for i in range(16)]
    assert all(a in ipaddress.ip_network("10.30.0.0/24") for a in got), \
        "rack2's pool must not be used for a node in rack 1"
    assert len({ipaddress.ip_network(f"{a}/28", strict=False) for a in got}) == 1
    with pytest.raises(NoFreeAddressError, match="maxBlocksPerHost 1"):
        await alloc.auto_assign("n.16", "node1")
    with pytest.raises(ValueError, match="rack2"):
        await alloc.auto_assign("n.17", "node1", v4_pools=["rack2"])


async def test_ipv6_blocks_and_bridge_reservation(clients):
    c = await clients()
    await _put_pool(c, "pool6", POOL6, 122)
    await _put_pool(c, "pool4", "10.40.0.0/26", 26)
    alloc = Allocator(c, release_grace=0, reserve=bridge_reserved)
    v4s, v6s = [], []
    for i in range(61):
        v4, v6 = await alloc.auto_assign(f"n.{i}", "node1", num_v4=1, num_v6=1)
        v4s += v4
        v6s += v6
    block6 = v6s[0].block
    assert block6.prefixlen == 122 and block6.subnet_of(ipaddress.ip_network(POOL6))
    key = "/calico/ipam/v2/assignment/ipv6/block/" + str(block6).replace("/", "-")
    assert (await c.get(key.encode())) is not None
    # A /26 pool with one block: 64 - network, gateway, broadcast = 61 pods.
    net4 = ipaddress.ip_network("10.40.0.0/26")
    taken = {a.address for a in v4s}
    assert len(taken) == 61 and not taken & {net4[0], net4[1], net4[-1]}
    with pytest.raises(NoFreeAddressError):
        await alloc.auto_assign("n.full", "node1")
