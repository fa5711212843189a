"""Auto-MTU as Calico computes it.

Source: projectcalico/calico felix/dataplane/linux/int_dataplane.go (overheads
IPIP 20, VXLAN 50, VXLAN over IPv6 70; pod MTU = smallest enabled
encapsulation MTU, else the host MTU), felix/config/config_params.go
(MTUIfacePattern), cni-plugin/internal/pkg/utils/utils.go (/var/lib/calico/mtu
is read first).
"""

from __future__ import annotations

from cni.mtu import auto_mtu, encap_overhead, host_mtu
from cni.rtnl import Link
from config.parse import parse_resource


def pool(name: str, cidr: str, **spec) -> object:
    return parse_resource({"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
                           "metadata": {"name": name}, "spec": {"cidr": cidr, **spec}})


LINKS = [Link(1, "lo", "", 65536, True), Link(2, "eth0", "", 9001, True),
         Link(3, "ens5", "", 1500, True), Link(4, "docker0", "", 1000, True),
         Link(5, "eth1", "", 1280, False), Link(6, "cali0123", "", 1400, True)]


def test_host_mtu_is_the_smallest_uplink():
    assert host_mtu(LINKS) == 1500  # lo, docker0, cali*, and the down eth1 do not count
    assert host_mtu([Link(1, "lo", "", 65536, True)]) == 1500  # no uplink: the default


def test_overheads():
    assert encap_overhead([pool("a", "10.0.0.0/16")]) == 0
    assert encap_overhead([pool("a", "10.0.0.0/16", ipipMode="Always")]) == 20
    assert encap_overhead([pool("a", "10.0.0.0/16", ipipMode="CrossSubnet"),
                           pool("b", "10.1.0.0/16", vxlanMode="Always")]) == 50
    assert encap_overhead([pool("a", "fd00::/64", vxlanMode="Always")]) == 70
    assert encap_overhead([pool("a", "10.0.0.0/16", vxlanMode="Always", disabled=True)]) == 0


def test_auto_mtu(tmp_path):
    missing = str(tmp_path / "none")
    assert auto_mtu([pool("a", "10.0.0.0/16")], LINKS, missing) == 1500
    assert auto_mtu([pool("a", "10.0.0.0/16", vxlanMode="Always")], LINKS, missing) == 1450
    felix = tmp_path / "mtu"
    felix.write_text("1430\n")
    assert auto_mtu([pool("a", "10.0.0.0/16")], LINKS, str(felix)) == 1430
    felix.write_text("garbage")
    assert auto_mtu([pool("a", "10.0.0.0/16", ipipMode="Always")], LINKS, str(felix)) == 1480
