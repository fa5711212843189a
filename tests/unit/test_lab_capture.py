"""lab.routed.summarise: tcpdump -n lines (tcpdump 4.99, Debian) as packets.

A VXLAN packet is one timestamped line for the outer header followed by an
untimestamped line for the inner packet; on ``-i any`` the interface and
direction come between the timestamp and ``IP``. Counting the wrong lines
would make "no pod address outside the tunnel" pass or fail for nothing."""

from lab.routed import summarise

LINES = [
    "07:27:44.846712 IP 10.99.0.11.44771 > 10.99.1.13.4789: VXLAN, flags [I] (0x08), vni 4096",
    "IP 10.244.202.66.57734 > 10.244.165.67.7777: Flags [S], seq 1, win 64240, length 0",
    "07:27:44.846800 eth1  Out IP 10.99.1.13.55540 > 10.99.0.11.4789: VXLAN, flags [I] (0x08), "
    "vni 4096",
    "IP 10.244.165.67.7777 > 10.244.202.66.57734: Flags [S.], seq 2, ack 2, length 0",
    "07:27:44.900000 IP 10.244.1.5.33000 > 10.244.2.5.80: Flags [S], seq 9, length 0",
    "07:27:44.950000 eth0  In  IP 10.99.0.11 > 10.99.1.13: ICMP echo request, id 1, seq 1",
]


def test_vxlan_outer_headers_counted_inner_lines_not() -> None:
    s = summarise(LINES)
    assert s["vxlan"] == [("10.99.0.11", "10.99.1.13"), ("10.99.1.13", "10.99.0.11")]
    assert s["other"] == [("10.244.1.5", "10.244.2.5"), ("10.99.0.11", "10.99.1.13")]
    assert summarise([]) == {"vxlan": [], "other": []}
