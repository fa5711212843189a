"""Golden netlink requests for podbgp's tunnel devices (fib_sync.link).

The expected bytes are the kernel's uapi layouts, written out by hand:
nlmsghdr (include/uapi/linux/netlink.h), ifinfomsg and IFLA_* (rtnetlink.h,
if_link.h: IFLA_LINKINFO/IFLA_INFO_KIND/IFLA_INFO_DATA, IFLA_VXLAN_ID=1,
LINK=3, LOCAL=4, LEARNING=7, PORT=15 in network byte order), ifaddrmsg and
IFA_LOCAL/IFA_ADDRESS (if_addr.h). Each is also cross-checked against
pyroute2's independent encoder, so a wrong constant in either shows up.

The IPIP request cannot be exercised on this kernel (no `ipip` module, see
docs/testing.md): its golden bytes are what stands between podbgp and a kernel
that has the module. The VXLAN request is also checked against the real
kernel in tests/integration/test_overlay_netns.py.
"""

from __future__ import annotations

import pytest
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

from fib_sync.link import (
    OWNER_ALIAS,
    IpipSpec,
    LinkInfo,
    VxlanSpec,
    addr_request,
    ipip_create,
    link_delete,
    link_set,
    parse_link,
    parse_mac,
    vxlan_create,
    vxlan_fields,
    vxlan_incompatible,
)

# Felix's test VTEP MAC (felix/calc/resources_for_test.go remoteHostVXLANTunnelMAC).
MAC = "66:74:c5:72:3f:01"
SPEC = VxlanSpec("vxlan.calico", 4096, 4789, "10.99.0.11", MAC, 1450, "10.244.1.0")

NLM_CREATE_EXCL_ACK = 0x0605  # REQUEST | ACK | EXCL | CREATE

VXLAN_GOLDEN = bytes.fromhex(
    "84000000" "1000" "0506" "00000000" "00000000"  # nlmsghdr: len 132, RTM_NEWLINK
    "00" "00" "0000" "00000000" "00000000" "00000000"  # ifinfomsg: AF_UNSPEC, index 0
    "1100" "0300" "76786c616e2e63616c69636f00" "000000"  # IFLA_IFNAME "vxlan.calico\0"
    "0800" "0400" "aa050000"  # IFLA_MTU 1450
    "0a00" "0100" "6674c5723f01" "0000"  # IFLA_ADDRESS
    "3c00" "1200"  # IFLA_LINKINFO (60 bytes)
    "0a00" "0100" "76786c616e00" "0000"  # IFLA_INFO_KIND "vxlan\0"
    "2c00" "0200"  # IFLA_INFO_DATA (44 bytes)
    "0800" "0100" "00100000"  # IFLA_VXLAN_ID 4096
    "0800" "0300" "03000000"  # IFLA_VXLAN_LINK ifindex 3
    "0800" "0400" "0a63000b"  # IFLA_VXLAN_LOCAL 10.99.0.11
    "0500" "0700" "00" "000000"  # IFLA_VXLAN_LEARNING 0 (nolearning)
    "0600" "0f00" "12b5" "0000"  # IFLA_VXLAN_PORT 4789, big-endian
)

IPIP_GOLDEN = bytes.fromhex(
    "40000000" "1000" "0506" "00000000" "00000000"  # len 64, RTM_NEWLINK
    "00" "00" "0000" "00000000" "00000000" "00000000"
    "0a00" "0300" "74756e6c3000" "0000"  # IFLA_IFNAME "tunl0\0"
    "1400" "1200"  # IFLA_LINKINFO (20 bytes)
    "0900" "0100" "6970697000" "000000"  # IFLA_INFO_KIND "ipip\0"
    "0400" "0200"  # IFLA_INFO_DATA, empty: link/local/remote "any"
)

ADDR_GOLDEN = bytes.fromhex(
    "28000000" "1400" "0505" "00000000" "00000000"  # len 40, RTM_NEWADDR, REPLACE|CREATE|ACK
    "02" "20" "00" "00" "07000000"  # ifaddrmsg: AF_INET /32 scope global, index 7
    "0800" "0200" "0af40100"  # IFA_LOCAL 10.244.1.0
    "0800" "0100" "0af40100"  # IFA_ADDRESS 10.244.1.0
)


def _pyroute2(msg) -> bytes:
    msg.encode()
    return bytes(msg.data[: msg["header"]["length"]])


def test_vxlan_create_golden_and_pyroute2() -> None:
    got = vxlan_create(SPEC, 3)
    assert got == VXLAN_GOLDEN
    m = ifinfmsg()
    m["header"]["type"] = 16
    m["header"]["flags"] = NLM_CREATE_EXCL_ACK
    m["attrs"] = [
        ("IFLA_IFNAME", "vxlan.calico"), ("IFLA_MTU", 1450), ("IFLA_ADDRESS", MAC),
        ("IFLA_LINKINFO", {"attrs": [
            ("IFLA_INFO_KIND", "vxlan"),
            ("IFLA_INFO_DATA", {"attrs": [
                ("IFLA_VXLAN_ID", 4096), ("IFLA_VXLAN_LINK", 3),
                ("IFLA_VXLAN_LOCAL", "10.99.0.11"), ("IFLA_VXLAN_LEARNING", 0),
                ("IFLA_VXLAN_PORT", 4789)]})]})]
    assert _pyroute2(m) == got


def test_vxlan_create_takes_the_resolved_mtu_and_v6_local() -> None:
    auto = VxlanSpec("vxlan.calico", 4096, 4789, "10.99.0.11", MAC, 0, "10.244.1.0")
    with pytest.raises(ValueError, match="an MTU is needed"):
        vxlan_create(auto, 3)
    assert vxlan_create(auto, 3, 1450) == VXLAN_GOLDEN
    v6 = VxlanSpec("vxlan-v6.calico", 4096, 4789, "fd00::11", MAC, 1430, "fd10::1")
    info = parse_link(vxlan_create(v6, 3), 0, len(vxlan_create(v6, 3)))
    assert vxlan_fields(info)["local"] == "fd00::11"  # IFLA_VXLAN_LOCAL6


def test_ipip_create_golden_and_pyroute2() -> None:
    got = ipip_create("tunl0")
    assert got == IPIP_GOLDEN
    m = ifinfmsg()
    m["header"]["type"] = 16
    m["header"]["flags"] = NLM_CREATE_EXCL_ACK
    m["attrs"] = [("IFLA_IFNAME", "tunl0"),
                  ("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND", "ipip"),
                                               ("IFLA_INFO_DATA", {"attrs": []})]})]
    assert _pyroute2(m) == got


def test_addr_request_golden_and_pyroute2() -> None:
    got = addr_request(True, 7, "10.244.1.0")
    assert got == ADDR_GOLDEN
    m = ifaddrmsg()
    m["header"]["type"] = 20
    m["header"]["flags"] = 0x0505
    m["family"] = 2
    m["prefixlen"] = 32
    m["index"] = 7
    m["attrs"] = [("IFA_LOCAL", "10.244.1.0"), ("IFA_ADDRESS", "10.244.1.0")]
    assert _pyroute2(m) == got
    delete = addr_request(False, 7, "fd10::1")
    assert delete[4:6] == (21).to_bytes(2, "little")  # RTM_DELADDR
    assert delete[16:18] == bytes((10, 128))  # AF_INET6 /128


def test_link_set_and_delete() -> None:
    m = link_set(9, mtu=1450, up=True, alias=OWNER_ALIAS, seq=5)
    assert m[4:6] == (16).to_bytes(2, "little") and m[8:12] == (5).to_bytes(4, "little")
    # ifinfomsg: index 9, flags IFF_UP, change IFF_UP: only the admin state changes.
    assert m[16:32] == bytes.fromhex("0000000009000000" "01000000" "01000000")
    assert bytes.fromhex("0800" "0400" "aa050000") in m  # IFLA_MTU 1450
    assert bytes.fromhex("0b00" "1400") + b"podbgp\0" in m  # IFLA_IFALIAS
    down = link_set(9, up=False)
    assert down[24:32] == bytes.fromhex("00000000" "01000000")
    assert link_delete(9)[4:6] == (17).to_bytes(2, "little")


def test_parse_link_reads_back_what_create_writes() -> None:
    info = parse_link(VXLAN_GOLDEN, 0, len(VXLAN_GOLDEN))
    assert (info.name, info.kind, info.mtu, info.mac) == ("vxlan.calico", "vxlan", 1450, MAC)
    assert vxlan_fields(info) == {"vni": 4096, "link": 3, "local": "10.99.0.11",
                                  "learning": 0, "port": 4789}
    assert vxlan_incompatible(SPEC, info, 3) == ""
    ipip = parse_link(IPIP_GOLDEN, 0, len(IPIP_GOLDEN))
    assert (ipip.name, ipip.kind) == ("tunl0", "ipip")


@pytest.mark.parametrize("change, reason", [
    ({"vni": 4097}, "vni 4096 (want 4097)"),
    ({"port": 8472}, "port 4789 (want 8472)"),
    ({"local": "10.99.0.12"}, "local 10.99.0.11 (want 10.99.0.12)"),
    ({"mac": "66:74:c5:72:3f:02"}, "mac 66:74:c5:72:3f:01"),
])
def test_vxlan_incompatible_names_the_attribute(change, reason) -> None:
    info = parse_link(VXLAN_GOLDEN, 0, len(VXLAN_GOLDEN))
    fields = {f: getattr(SPEC, f) for f in SPEC.__slots__}
    want = VxlanSpec(**{**fields, **change})
    assert reason in vxlan_incompatible(want, info, 3)
    assert "link 3 (want 4)" in vxlan_incompatible(SPEC, info, 4)
    other = LinkInfo(info.index, info.name, "bridge", 1500, True, MAC, None)
    assert vxlan_incompatible(SPEC, other, 3) == "kind bridge is not vxlan"


@pytest.mark.parametrize("kwargs, message", [
    ({"vni": 0}, "VNI 0"),
    ({"vni": 1 << 24}, "VNI 16777216"),
    ({"port": 70000}, "port 70000"),
    ({"mtu": 40}, "MTU 40"),
    ({"mac": "66:74:c5:72:3f"}, "six hex pairs"),
    ({"mac": "zz:74:c5:72:3f:01"}, "six hex pairs"),
    ({"name": "a-name-longer-than-15"}, "1..15 characters"),
    ({"address": "fd10::1"}, "differ in address family"),
])
def test_vxlan_spec_rejects_bad_values(kwargs, message) -> None:
    fields = {f: getattr(SPEC, f) for f in SPEC.__slots__}
    with pytest.raises(ValueError, match=message):
        VxlanSpec(**{**fields, **kwargs})


def test_ipip_spec_is_ipv4_only() -> None:
    IpipSpec("tunl0", 0, "10.245.0.1", "10.99.0.11")
    with pytest.raises(ValueError, match="IPIP is IPv4 only"):
        IpipSpec("tunl0", 0, "fd10::1", "10.99.0.11")
    assert parse_mac("66:74:C5:72:3F:01") == bytes.fromhex("6674c5723f01")
