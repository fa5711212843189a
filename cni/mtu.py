"""Pod MTU: given, or Calico's auto-MTU (host MTU minus the encapsulation in use).

Owned by cni/. Calico's rule (felix/dataplane/linux/int_dataplane.go,
ConfigureDefaultMTUs and the pod-MTU choice beside it): the host MTU is the
smallest MTU of the host's uplinks, the interfaces matching Felix's
``MTUIfacePattern`` (felix/config/config_params.go); each encapsulation in
use costs its overhead (IPIP 20, VXLAN 50 over IPv4, 70 over IPv6) and the
pod MTU is the smallest host MTU minus an enabled overhead, or the host MTU
when no pool encapsulates. When Calico's own Felix runs beside podbgp it
writes its answer to /var/lib/calico/mtu, and Calico's CNI plugin reads that
file first; so does this one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from cni import rtnl

MTU_IFACE_PATTERN = re.compile(r"^((en|wl|ww|sl|ib)[Pcopsvx].*|(eth|wlan|wwan).*)")
CALICO_MTU_FILE = "/var/lib/calico/mtu"
DEFAULT_HOST_MTU = 1500
IPIP_OVERHEAD = 20
VXLAN_OVERHEAD = 50
VXLAN_V6_OVERHEAD = 70


def host_mtu(links: Iterable[rtnl.Link]) -> int:
    """Smallest MTU of the up uplink interfaces (Calico's pattern); 1500 if none."""
    mtus = [link.mtu for link in links
            if link.up and link.mtu and MTU_IFACE_PATTERN.match(link.name)]
    return min(mtus) if mtus else DEFAULT_HOST_MTU


def encap_overhead(pools: Iterable[object]) -> int:
    """The largest overhead among the encapsulations enabled pools use (0: none)."""
    overhead = 0
    for pool in pools:
        spec = pool.spec  # config.model.IPPool
        if spec.disabled:
            continue
        if spec.ipip_mode != "Never":
            overhead = max(overhead, IPIP_OVERHEAD)
        if spec.vxlan_mode != "Never":
            v6 = ":" in spec.cidr
            overhead = max(overhead, VXLAN_V6_OVERHEAD if v6 else VXLAN_OVERHEAD)
    return overhead


def calico_mtu_file(path: str = CALICO_MTU_FILE) -> int | None:
    try:
        with open(path) as f:
            value = int(f.read().strip())
    except (OSError, ValueError):
        return None
    return value if 68 <= value <= 65535 else None


def auto_mtu(pools: Iterable[object], links: Iterable[rtnl.Link],
             mtu_file: str = CALICO_MTU_FILE) -> int:
    from_felix = calico_mtu_file(mtu_file)
    if from_felix is not None:
        return from_felix
    return host_mtu(links) - encap_overhead(pools)
