"""Who holds an address: IPAM attributes record the node the pod runs on.

Calico's allocation attributes (libcalico-go ipam: AttributeNode "node",
AttributePod "pod", AttributeNamespace "namespace", plus the handle id) say
where an address lives. For an address borrowed from another node's block
(strictAffinity off, no block left to claim) the block's affinity names the
owner and only the attribute names the holder: that is what the /32
advertisement of a borrowed address (issue 13) reads, so it must be the
borrowing node's name, and the handle must be the pod's.
"""

from __future__ import annotations

import json

import pytest

from ipam.allocator import Allocator
from ipam.etcd import EtcdSettings, connect
from ipam.model import IPAMBlock

pytestmark = pytest.mark.etcd

RES = "/calico/resources/v3/projectcalico.org/"


async def test_borrowed_address_names_its_holder_and_handle(etcd):
    client = await connect(EtcdSettings(etcd.endpoint))
    try:
        pool = {"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
                "metadata": {"name": "one-block"},
                "spec": {"cidr": "10.81.0.0/26", "blockSize": 26}}
        await client.put(f"{RES}ippools/one-block".encode(), json.dumps(pool).encode())
        owner = Allocator(client, release_grace=0)
        v4, _ = await owner.auto_assign("podnet.c1", "node1",
                                        attrs={"namespace": "default", "pod": "a"})
        assert str(v4[0].block) == "10.81.0.0/26"  # the pool's only block, node1's
        holder = Allocator(client, release_grace=0, borrow=True)
        v4b, _ = await holder.auto_assign("podnet.c2", "node2",
                                          attrs={"namespace": "prod", "pod": "b"})
        assert v4b[0].block == v4[0].block  # borrowed from node1's block
        got = await client.get(b"/calico/ipam/v2/assignment/ipv4/block/10.81.0.0-26")
        raw = json.loads(got.value)
        assert raw["affinity"] == "host:node1"
        block = IPAMBlock.from_json(got.key.decode(), got.value)
        attr = block.attributes_of(v4b[0].address)
        assert attr.handle_id == "podnet.c2"
        assert dict(attr.secondary) == {"node": "node2", "namespace": "prod", "pod": "b"}
        assert dict(block.attributes_of(v4[0].address).secondary)["node"] == "node1"
        # What podbgp-ipam writes is what the daemon's /32 rule reads (issue 14 item 3):
        # the borrowed address, held by node2, lent by node1; node1's own pod is not lent.
        from config.parse import parse_block_lending

        lent = parse_block_lending(got.key.decode(), got.value)
        assert [(x.ip, x.holder, x.owner, x.prefix) for x in lent] == [
            (str(v4b[0].address), "node2", "node1", f"{v4b[0].address}/32")]
    finally:
        await client.close()
