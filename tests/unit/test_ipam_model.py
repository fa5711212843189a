"""Calico IPAM records: keys, JSON shape, assign/release invariants."""

from __future__ import annotations

import ipaddress
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipam.model import (
    IPAM_CONFIG_KEY,
    AffinityRecord,
    BlockFullError,
    IPAMBlock,
    IPAMConfig,
    IPAMHandle,
    IPAMModelError,
    affinity_key,
    block_key,
    cidr_from_key,
    handle_key,
    parse_affinity_key,
)
from tests.helpers import calico_examples as examples


def test_keys_are_calicos():
    assert block_key("10.0.0.0/26") == "/calico/ipam/v2/assignment/ipv4/block/10.0.0.0-26"
    assert block_key("fd00::/122") == "/calico/ipam/v2/assignment/ipv6/block/fd00::-122"
    assert affinity_key("node1", "10.0.0.0/26") == \
        "/calico/ipam/v2/host/node1/ipv4/block/10.0.0.0-26"
    assert handle_key("k8s-pod-network.abc") == "/calico/ipam/v2/handle/k8s-pod-network.abc"
    assert cidr_from_key("/calico/ipam/v2/assignment/ipv6/block/fd00::-122") == \
        ipaddress.ip_network("fd00::/122")
    assert parse_affinity_key("/calico/ipam/v2/host/my-node/ipv4/block/10.0.0.64-26") == \
        ("my-node", ipaddress.ip_network("10.0.0.64/26"))
    assert parse_affinity_key("/calico/ipam/v2/host/n/ipv4/other/10.0.0.0-26") is None
    with pytest.raises(IPAMModelError, match="host bits"):
        block_key("10.0.0.1/26")
    with pytest.raises(IPAMModelError, match="'a/b'"):
        handle_key("a/b")


def test_reads_a_block_from_a_real_calico_datastore():
    # The older block format of an etcd-backed Calico v3.4/v3.5 cluster
    # (tests/helpers/calico_examples.py says where its shape comes from).
    block = IPAMBlock.from_json(examples.OLD_BLOCK_KEY, examples.OLD_BLOCK_VALUE)
    assert block.cidr == ipaddress.ip_network("10.244.2.0/26")
    assert block.host is None and block.in_use == 1
    assert block.handle_of("10.244.2.0") is None  # handle_id null in Calico's data
    assert block.unallocated == tuple(range(1, 64))
    # Missing sequenceNumber/deleted default as in Calico.
    assert block.sequence_number == 0 and block.deleted is False


def test_new_block_json_shape_exact():
    b = IPAMBlock.new("10.0.0.0/26", "node1")
    b, ips = b.assign(1, "k8s-pod-network.abc",
                      {"namespace": "default", "node": "node1", "pod": "p"})
    assert ips == [ipaddress.ip_address("10.0.0.0")]
    assert json.loads(b.to_json()) == {
        "cidr": "10.0.0.0/26", "affinity": "host:node1",
        "allocations": [0] + [None] * 63, "unallocated": list(range(1, 64)),
        "attributes": [{"handle_id": "k8s-pod-network.abc",
                        "secondary": {"namespace": "default", "node": "node1", "pod": "p"}}],
        "strictAffinity": False, "sequenceNumber": 1,
        "sequenceNumberForAllocation": {"0": 0}, "deleted": False,
    }
    assert IPAMBlock.from_json(b.key, b.to_json()) == b


def test_affinity_handle_config_shapes():
    assert json.loads(AffinityRecord("confirmed").to_json()) == {"state": "confirmed",
                                                                 "deleted": False}
    # Calico's lenient forms: state "" and deleted as a string.
    a = AffinityRecord.from_json("k", b'{"state":"","deleted":"false"}')
    assert a.confirmed
    assert not AffinityRecord.from_json("k", b'{"state":"pending"}').confirmed
    with pytest.raises(IPAMModelError, match="state: 'bogus'"):
        AffinityRecord.from_json("k", b'{"state":"bogus"}')
    h = IPAMHandle("h").add("10.0.0.0/26", 2).remove("10.0.0.0/26", 1)
    assert json.loads(h.to_json()) == {"block": {"10.0.0.0/26": 1}, "deleted": False}
    assert h.remove("10.0.0.0/26", 1).empty
    cfg = IPAMConfig.from_json("c", b'{"strict_affinity":true,"maxBlocksPerHost":4}')
    assert cfg == IPAMConfig(strict_affinity=True, auto_allocate_blocks=True,
                             max_blocks_per_host=4)
    assert json.loads(cfg.to_json()) == {"strict_affinity": True, "auto_allocate_blocks": True,
                                         "maxBlocksPerHost": 4}
    with pytest.raises(IPAMModelError, match="maxBlocksPerHost"):
        IPAMConfig.from_json("c", b'{"maxBlocksPerHost":-1}')


@pytest.mark.parametrize("raw, field", [
    ('{"cidr":"10.0.0.0/26","allocations":[0]}', "allocations"),
    ('{"cidr":"10.0.0.1/26"}', "cidr"),
    ('{"cidr":"10.0.0.0/30","allocations":[5,null,null,null],"attributes":[]}', "allocations[0]"),
    ('{"cidr":"10.0.0.0/30","allocations":[null,null,null,null],"unallocated":[9]}',
     "unallocated"),
    ('[1]', "JSON object"),
])
def test_bad_blocks_name_the_field(raw, field):
    with pytest.raises(IPAMModelError, match=field.replace("[", r"\[").replace("]", r"\]")):
        IPAMBlock.from_json("/x", raw)


def test_key_cidr_mismatch_is_rejected():
    b = IPAMBlock.new("10.0.0.0/26", None)
    with pytest.raises(IPAMModelError, match="does not match the key"):
        IPAMBlock.from_json(block_key("10.0.0.64/26"), b.to_json())


def test_release_compacts_attributes_and_reuses_late():
    b = IPAMBlock.new("10.0.0.0/30", "n")
    b, a = b.assign(1, "h1", {"pod": "a"})
    b, _ = b.assign(2, "h2", {"pod": "b"})
    assert len(b.attributes) == 2
    b2, per_handle, ips = b.release(handle_id="h1")
    assert per_handle == {"h1": 1} and ips == a
    assert b2.attributes == (b.attributes[1],) and b2.allocations[1] == 0
    assert b2.unallocated == (3, 0), "released ordinals go to the back"
    b3, per, ips = b2.release(ips=[a[0]])  # already free: no-op
    assert (b3, per, ips) == (b2, {}, [])
    with pytest.raises(BlockFullError):
        b2.assign(3, "h3", {})
    assert b2.assign(1, "h3", {}, skip=frozenset({3}))[1] == [ipaddress.ip_address("10.0.0.0")]


ops = st.lists(st.tuples(st.sampled_from(["assign", "release"]), st.integers(0, 5),
                         st.integers(1, 3)), max_size=40)


@settings(max_examples=150, deadline=None)
@given(ops)
def test_assign_release_invariants(seq):
    b = IPAMBlock.new("10.0.0.0/28", "n")
    held: dict[str, set] = {}
    for op, h, n in seq:
        hid = f"h{h}"
        if op == "assign":
            try:
                b, ips = b.assign(n, hid, {"pod": hid})
            except BlockFullError:
                assert b.free_count() < n
                continue
            assert not (set(ips) & set().union(*held.values())), "address handed out twice"
            held.setdefault(hid, set()).update(ips)
        else:
            b, _per, ips = b.release(handle_id=hid)
            assert set(ips) == held.pop(hid, set())
        # allocations and unallocated partition the block; attributes all used.
        free = {o for o, a in enumerate(b.allocations) if a is None}
        assert set(b.unallocated) == free and len(b.unallocated) == len(free)
        assert {a for a in b.allocations if a is not None} == set(range(len(b.attributes)))
        for hid2, ips in held.items():
            assert set(b.ips_of(hid2)) == ips
        assert IPAMBlock.from_json(b.key, b.to_json()) == b


def test_fields_podbgp_does_not_model_survive_every_operation():
    # Calico v3.31+ block and attribute fields (libcalico-go lib/backend/model/block.go:
    # affinity_claim_time, AllocationAttribute.alternateOwnerAttrs and releasedAt;
    # ipam_config.go: ipCooldownSeconds, kubeVirtVMAddressPersistence) must not be lost
    # when podbgp assigns or releases another address in the same block.
    key = "/calico/ipam/v2/assignment/ipv4/block/10.0.0.0-30"
    migrating = {"handle_id": "k8s-pod-network.vm1", "secondary": {"node": "n2"},
                 "alternateOwnerAttrs": {"namespace": "ns", "pod": "virt-launcher-b"},
                 "releasedAt": None}
    cooling = {"handle_id": "k8s-pod-network.old", "secondary": None,
               "releasedAt": "2025-11-02T10:00:00Z"}
    raw = json.dumps({
        "cidr": "10.0.0.0/30", "affinity": "host:n1",
        "affinity_claim_time": "2025-11-01T09:00:00Z",
        "allocations": [0, 1, None, None], "unallocated": [2, 3],
        "attributes": [migrating, cooling], "strictAffinity": False,
        "sequenceNumber": 7, "sequenceNumberForAllocation": {"0": 1, "1": 2}, "deleted": False,
        "futureBlockField": {"x": [1]},
    })
    block = IPAMBlock.from_json(key, raw)
    grown, ips = block.assign(1, "h3", {"node": "n1"})
    shrunk, _, _ = grown.release(ips)
    for b in (block, grown, shrunk):
        out = json.loads(b.to_json())
        assert out["affinity_claim_time"] == "2025-11-01T09:00:00Z"
        assert out["futureBlockField"] == {"x": [1]}
        assert out["attributes"][:2] == [migrating, cooling]
    # released ordinals go to the back of unallocated (reused as late as possible)
    assert json.loads(shrunk.to_json()) == json.loads(raw) | {"sequenceNumber": 9,
                                                              "unallocated": [3, 2]}

    hkey = "/calico/ipam/v2/handle/h1"
    handle = IPAMHandle.from_json(hkey, b'{"block":{"10.0.0.0/30":1},"deleted":false,"x":1}')
    assert json.loads(handle.add("10.0.0.0/30", 1).to_json())["x"] == 1
    cfg = IPAMConfig.from_json(IPAM_CONFIG_KEY, json.dumps({
        "strict_affinity": True, "auto_allocate_blocks": True, "maxBlocksPerHost": 4,
        "ipCooldownSeconds": 30, "kubeVirtVMAddressPersistence": "Enabled"}))
    out = json.loads(cfg.to_json())
    assert out["ipCooldownSeconds"] == 30 and out["kubeVirtVMAddressPersistence"] == "Enabled"
    aff = AffinityRecord.from_json("/calico/ipam/v2/host/n1/ipv4/block/10.0.0.0-30",
                                   b'{"state":"confirmed","deleted":false,"x":"y"}')
    assert json.loads(aff.to_json()) == {"state": "confirmed", "deleted": False, "x": "y"}
