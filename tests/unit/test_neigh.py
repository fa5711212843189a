"""Neighbour and FDB entries of podbgp's overlay devices (fib_sync.neigh):
golden requests and the pure diff.

Golden bytes: nlmsghdr + ndmsg (include/uapi/linux/neighbour.h: family,
pad, ifindex, state, flags, type; NDA_DST=1, NDA_LLADDR=2, NDA_PROTOCOL=12,
NUD_PERMANENT=0x80, NTF_SELF=0x02), cross-checked against pyroute2's ndmsg
encoder. What they mean is Felix's (felix/vxlanfdb/vxlan_fdb.go): an ARP
entry VTEP IP -> VTEP MAC, an FDB entry VTEP MAC -> node IP.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pyroute2.netlink.rtnl.ndmsg import ndmsg

from fib_sync.neigh import (
    FdbEntry,
    Neighbour,
    diff_l2,
    encode_fdb,
    encode_neighbour,
)

MAC = "66:74:c5:72:3f:01"  # felix/calc/resources_for_test.go remoteHostVXLANTunnelMAC
DEV = "vxlan.calico"

NEIGH_GOLDEN = bytes.fromhex(
    "38000000" "1c00" "0105" "00000000" "00000000"  # len 56, RTM_NEWNEIGH, REQUEST|REPLACE|CREATE
    "02" "00" "0000" "07000000" "8000" "00" "00"  # AF_INET, ifindex 7, NUD_PERMANENT
    "0800" "0100" "0af40200"  # NDA_DST 10.244.2.0
    "0a00" "0200" "6674c5723f01" "0000"  # NDA_LLADDR
    "0500" "0c00" "c9" "000000"  # NDA_PROTOCOL 201
)

FDB_GOLDEN = bytes.fromhex(
    "30000000" "1c00" "0105" "00000000" "00000000"  # len 48, RTM_NEWNEIGH
    "07" "00" "0000" "07000000" "8000" "02" "00"  # AF_BRIDGE, NUD_PERMANENT, NTF_SELF
    "0a00" "0200" "6674c5723f01" "0000"  # NDA_LLADDR
    "0800" "0100" "0a63000c"  # NDA_DST 10.99.0.12 (the remote node)
)


def _pyroute2(fields: dict, attrs: list) -> bytes:
    m = ndmsg()
    m["header"]["type"] = 28
    m["header"]["flags"] = 0x0501
    for k, v in fields.items():
        m[k] = v
    m["attrs"] = attrs
    m.encode()
    return bytes(m.data[: m["header"]["length"]])


def test_neighbour_request_golden() -> None:
    got = encode_neighbour("add", Neighbour(DEV, "10.244.2.0", MAC), 7, 201)
    assert got == NEIGH_GOLDEN
    assert got == _pyroute2({"family": 2, "ifindex": 7, "state": 0x80},
                            [("NDA_DST", "10.244.2.0"), ("NDA_LLADDR", MAC),
                             ("NDA_PROTOCOL", 201)])
    # replace is the same message (create-or-replace); delete names the key only.
    assert encode_neighbour("replace", Neighbour(DEV, "10.244.2.0", MAC), 7, 201) == got
    delete = encode_neighbour("delete", Neighbour(DEV, "10.244.2.0", MAC), 7, 201, seq=9)
    assert delete[4:6] == (29).to_bytes(2, "little") and delete[8:12] == (9).to_bytes(4, "little")
    assert len(delete) == 36 and MAC.replace(":", "") not in delete.hex()


def test_fdb_request_golden() -> None:
    got = encode_fdb("add", FdbEntry(DEV, MAC, "10.99.0.12"), 7)
    assert got == FDB_GOLDEN
    assert got == _pyroute2({"family": 7, "ifindex": 7, "state": 0x80, "flags": 2},
                            [("NDA_LLADDR", MAC), ("NDA_DST", "10.99.0.12")])
    v6 = encode_fdb("delete", FdbEntry(DEV, MAC, "fd00::12"), 7)
    assert v6[4:6] == (29).to_bytes(2, "little") and len(v6) == 60


def test_records_canonicalise_and_reject() -> None:
    n = Neighbour(DEV, "fd10:0::1", "66:74:C5:72:3F:01")
    assert (n.ip, n.mac) == ("fd10::1", MAC)
    with pytest.raises(ValueError, match="not an IP address"):
        Neighbour(DEV, "10.244.2", MAC)
    with pytest.raises(ValueError, match="six hex pairs"):
        FdbEntry(DEV, "66:74:c5:72:3f", "10.99.0.12")
    with pytest.raises(ValueError, match="not an IP address"):
        FdbEntry(DEV, MAC, "node2")


def test_diff_add_replace_delete_and_held() -> None:
    a = Neighbour(DEV, "10.244.2.0", MAC)
    b = FdbEntry(DEV, MAC, "10.99.0.12")
    moved = FdbEntry(DEV, MAC, "10.99.0.99")  # the node changed address
    old = Neighbour(DEV, "10.244.9.0", "66:00:00:00:00:09")  # a node that left
    theirs = Neighbour(DEV, "10.244.3.0", "66:00:00:00:00:03")
    plan = diff_l2([a, moved, theirs], {b.key: b, old.key: old},
                   {theirs.key: "a permanent entry of protocol 0", ("x", "y"): "unwanted"})
    assert plan.add == (a,) and plan.replace == (moved,) and plan.delete == (old,)
    assert plan.held == (theirs,)
    assert len(plan) == 3 and plan
    assert not diff_l2([a], {a.key: a})


entries = st.builds(
    Neighbour, st.just(DEV),
    st.integers(0, 20).map(lambda i: f"10.244.{i}.0"),
    st.integers(0, 3).map(lambda i: f"66:00:00:00:00:{i:02x}"),
) | st.builds(
    FdbEntry, st.just(DEV),
    st.integers(0, 20).map(lambda i: f"66:00:00:00:01:{i:02x}"),
    st.integers(0, 3).map(lambda i: f"10.99.0.{i}"),
)


@given(st.lists(entries), st.lists(entries), st.sets(st.integers(0, 20)))
def test_diff_applied_gives_desired(desired, actual, foreign_idx) -> None:
    want = {e.key: e for e in desired}
    ours = {e.key: e for e in actual}
    foreign = {(DEV, f"10.244.{i}.0"): "someone" for i in foreign_idx}
    foreign = {k: v for k, v in foreign.items() if k not in ours}
    plan = diff_l2(want.values(), ours, foreign)
    result = dict(ours)
    for e in plan.delete:
        del result[e.key]
    for e in plan.replace + plan.add:
        result[e.key] = e
    held = {e.key for e in plan.held}
    assert held == {k for k in want if k in foreign}
    assert result == {k: e for k, e in want.items() if k not in held}
    # Nothing held by someone else is ever added, replaced or deleted.
    assert not {e.key for e in plan.add + plan.replace + plan.delete} & set(foreign)
