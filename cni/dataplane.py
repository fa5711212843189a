"""A pod's interface in Calico's routed model: veth, /32 (/128), link-local gateway.

Owned by cni/. What it builds is what Calico's CNI plugin builds
(``cni-plugin/pkg/dataplane/linux/dataplane_linux.go``):

* a veth pair: ``CNI_IFNAME`` in the pod, the host side named from the pod
  (``cali`` + 11 hex digits) with the fixed MAC ``ee:ee:ee:ee:ee:ee``;
* in the pod: each address as /32 or /128 (no L2 neighbours at all), the
  route ``169.254.1.1 dev eth0 scope link`` and the default (or the IPAM
  result's) routes via 169.254.1.1; for IPv6 via the host side's link-local
  address (``fe80::ecee:eeff:feee:eeee``), DAD off. One addition to
  Calico's model: a permanent neighbour entry 169.254.1.1 -> the host side's
  MAC in the pod. Calico relies on proxy ARP alone for it, and the kernel
  answers a proxy ARP request only when the host has a route to the target,
  i.e. only on hosts with a default route; the entry removes that condition
  (and an ARP round trip from every pod start);
* on the host side: ``proxy_arp`` (answers for 169.254.1.1 and everything
  else), ``proxy_delay`` 0, ``forwarding``; for IPv6 ``proxy_ndp``,
  ``forwarding``, ``accept_dad`` 0, ``accept_ra`` 0;
* on the host: one route per address, ``POD_IP/32 dev cali... scope link``,
  with the route protocol of the network config (default ``boot`` like
  Calico). podbgp's FIB sync manages only its own protocol (201), so it never
  touches these; the own block's blackhole stays behind them (longest match).

Everything in the pod namespace goes away with the veth; so do the host
routes. ``teardown`` therefore deletes the pod side in the pod's namespace
(never the host side by name: a newer sandbox of the same pod has the same
host name), as Calico's CleanUpNamespace does.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import time
from dataclasses import dataclass

from cni import rtnl
from cni.rtnl import NamespaceError, NetlinkError, Route
from cni.spec import E_BAD_ENV, E_CHECK_MISMATCH, E_DATAPLANE, CNIError

HOST_SIDE_MAC = "ee:ee:ee:ee:ee:ee"
GATEWAY_V4 = ipaddress.ip_address("169.254.1.1")
# The EUI-64 link-local address of HOST_SIDE_MAC (U/L bit flipped: ee -> ec).
GATEWAY_V6 = ipaddress.ip_address("fe80::ecee:eeff:feee:eeee")
DEFAULT_ROUTES = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))

Net = ipaddress.IPv4Network | ipaddress.IPv6Network
Iface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


@dataclass(frozen=True)
class Plan:
    """What one pod interface should be."""

    netns: str
    ifname: str
    host_name: str
    addresses: tuple[Iface, ...]  # /32 and /128
    mtu: int
    pod_routes: tuple[Net, ...] = DEFAULT_ROUTES
    route_protocol: int = rtnl.RTPROT_BOOT
    allow_ip_forwarding: bool = False

    @property
    def families(self) -> set[int]:
        return {a.version for a in self.addresses}


@dataclass(frozen=True)
class Built:
    host_name: str
    host_index: int
    host_mac: str
    pod_mac: str
    mtu: int


def host_prefix(addr: Iface) -> Iface:
    """The address as a single-address interface (/32 or /128), as Calico sets it."""
    return ipaddress.ip_interface(f"{addr.ip}/{addr.max_prefixlen}")


def _sysctl(path: str, value: str, required: bool = True) -> None:
    try:
        rtnl.write_sysctl(path, value)
    except OSError as exc:
        if required:
            raise CNIError(E_DATAPLANE, f"sysctl {path.removeprefix('/proc/sys/')}={value}: "
                           f"{exc.strerror}") from None


def _host_sysctls(name: str, families: set[int]) -> None:
    if 4 in families:
        _sysctl(f"/proc/sys/net/ipv4/neigh/{name}/proxy_delay", "0", required=False)
        _sysctl(f"/proc/sys/net/ipv4/conf/{name}/proxy_arp", "1")
        _sysctl(f"/proc/sys/net/ipv4/conf/{name}/forwarding", "1")
    if 6 in families:
        _sysctl(f"/proc/sys/net/ipv6/conf/{name}/accept_dad", "0")
        _sysctl(f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6", "0")
        _sysctl(f"/proc/sys/net/ipv6/conf/{name}/proxy_ndp", "1")
        _sysctl(f"/proc/sys/net/ipv6/conf/{name}/forwarding", "1")
    _sysctl(f"/proc/sys/net/ipv6/conf/{name}/accept_ra", "0", required=False)


def _pod_sysctls(plan: Plan) -> None:
    """Inside the pod namespace (the caller has entered it)."""
    forward = "1" if plan.allow_ip_forwarding else "0"
    if 4 in plan.families:
        _sysctl("/proc/sys/net/ipv4/ip_forward", forward)
    if 6 in plan.families:
        for conf in ("all", "default", "lo"):
            _sysctl(f"/proc/sys/net/ipv6/conf/{conf}/disable_ipv6", "0")
        _sysctl(f"/proc/sys/net/ipv6/conf/{plan.ifname}/accept_dad", "0")
        _sysctl("/proc/sys/net/ipv6/conf/all/forwarding", forward)


def _dataplane_error(exc: OSError) -> CNIError:
    if isinstance(exc, NamespaceError):
        return CNIError(E_BAD_ENV, f"CNI_NETNS: {exc.strerror}")
    return CNIError(E_DATAPLANE, str(exc))


def _open_pod(netns: str) -> rtnl.Rtnl:
    try:
        return rtnl.open_rtnl(netns)
    except NamespaceError as exc:
        raise _dataplane_error(exc) from None


def setup(plan: Plan) -> Built:
    """Build the pod interface; on any failure nothing of it is left behind.

    An interface ``plan.ifname`` already in the pod that is the peer of our
    host side (an earlier, interrupted ADD of this pod) is rebuilt; any other
    interface of that name is an error (the spec's MUST).
    """
    pod = _open_pod(plan.netns)
    host = rtnl.open_rtnl()
    created = False
    try:
        old_pod = pod.link(plan.ifname)
        old_host = host.link(plan.host_name)
        if old_pod is not None:
            ours = (old_host is not None and old_host.kind == "veth"
                    and old_host.peer_index == old_pod.index
                    and old_pod.peer_index == old_host.index)
            if not ours:
                raise CNIError(E_DATAPLANE, f"interface {plan.ifname!r} already exists in "
                               f"the container ({plan.netns})")
        if old_host is not None:
            if old_host.kind != "veth":
                raise CNIError(E_DATAPLANE, f"host interface {plan.host_name!r} exists and is "
                               f"not a veth ({old_host.kind or 'unknown kind'}): not ours")
            # A previous sandbox of this pod (same name) or an interrupted ADD: replace it.
            host.del_link(old_host.index)
        fd = os.open(plan.netns, os.O_RDONLY | os.O_CLOEXEC)
        try:
            host.add_veth(plan.host_name, plan.ifname, fd, mtu=plan.mtu, mac=HOST_SIDE_MAC)
        finally:
            os.close(fd)
        created = True
        hlink = host.link(plan.host_name)
        plink = pod.link(plan.ifname)
        if hlink is None or plink is None:
            raise CNIError(E_DATAPLANE, f"veth {plan.host_name}/{plan.ifname} vanished after "
                           "creation")
        if hlink.mac != HOST_SIDE_MAC:
            # The kernel does not always honour the MAC of a new link (Calico retries too).
            host.set_link(hlink.index, mac=HOST_SIDE_MAC)
        _host_sysctls(plan.host_name, plan.families)
        host.set_link(hlink.index, up=True)
        with rtnl.in_netns(plan.netns):
            _pod_sysctls(plan)
        pod.set_link(plink.index, up=True)
        for addr in plan.addresses:
            pod.add_address(plink.index, host_prefix(addr), nodad=addr.version == 6)
        _pod_routes(pod, plink.index, plan, host, hlink.index)
        for addr in plan.addresses:
            _host_route(host, hlink.index, plan, addr)
        hlink = host.link(plan.host_name) or hlink
        return Built(plan.host_name, hlink.index, hlink.mac, plink.mac, plink.mtu)
    except BaseException as exc:
        if created:
            with contextlib.suppress(OSError):
                gone = host.link(plan.host_name)
                if gone is not None:
                    host.del_link(gone.index)  # the peer, its addresses and routes go with it
        if isinstance(exc, OSError):
            raise _dataplane_error(exc) from None
        raise
    finally:
        pod.close()
        host.close()


def _gateway6(host: rtnl.Rtnl, index: int, wait: float = 2.0) -> str:
    """The host side's IPv6 link-local address (the pod's IPv6 next hop)."""
    deadline = time.monotonic() + wait
    while True:
        lls = [a.address.ip for a in host.addresses(index)
               if a.address.version == 6 and a.address.ip.is_link_local]
        if GATEWAY_V6 in lls:
            return str(GATEWAY_V6)
        if lls and time.monotonic() >= deadline:
            return str(lls[0])
        if time.monotonic() >= deadline:
            raise CNIError(E_DATAPLANE, "the host side of the pod interface got no IPv6 "
                           "link-local address (is IPv6 disabled on this host?)")
        time.sleep(0.01)


def _pod_routes(pod: rtnl.Rtnl, index: int, plan: Plan, host: rtnl.Rtnl, hindex: int) -> None:
    if 4 in plan.families:
        pod.add_route(Route(dst=ipaddress.ip_network(f"{GATEWAY_V4}/32"), oif=index,
                            scope=rtnl.RT_SCOPE_LINK))
        host_mac = (host.link(plan.host_name) or rtnl.Link(0, "", HOST_SIDE_MAC, 0, False)).mac
        pod.add_neighbour(index, str(GATEWAY_V4), host_mac)
    gw6 = _gateway6(host, hindex) if 6 in plan.families else None
    for dst in plan.pod_routes:
        if dst.version not in plan.families:
            continue
        gw = str(GATEWAY_V4) if dst.version == 4 else gw6
        pod.add_route(Route(dst=dst, oif=index, gateway=gw))


def _host_route(host: rtnl.Rtnl, index: int, plan: Plan, addr: Iface) -> None:
    dst = host_prefix(addr).network
    try:
        host.add_route(Route(dst=dst, oif=index, scope=rtnl.RT_SCOPE_LINK,
                             protocol=plan.route_protocol))
    except NetlinkError as exc:
        if exc.errno != 17:  # EEXIST
            raise
        found = host.route_get(dst)
        if found is not None and found.dst == dst and found.oif == index:
            return  # already ours (Calico: "route already exists", likely Felix's)
        holders = [r for r in host.routes(dst.version) if r.dst == dst]  # rare: name them
        names = {link.index: link.name for link in host.links()}
        other = ", ".join(f"dev {names.get(r.oif, r.oif)} proto {r.protocol}" for r in holders)
        raise CNIError(E_DATAPLANE, f"host route {dst} already exists for another interface "
                       f"than {plan.host_name} ({other})") from None


def teardown(netns: str, ifname: str) -> bool:
    """Delete the pod side (and so the pair, its addresses and host routes).

    True if something was deleted; a missing namespace or interface is not
    an error (DEL is best effort and may be repeated).
    """
    if not netns:
        return False
    try:
        pod = rtnl.open_rtnl(netns)
    except NamespaceError:
        return False
    try:
        link = pod.link(ifname)
        if link is None:
            return False
        try:
            pod.del_link(link.index)
        except NetlinkError as exc:
            if exc.errno == 19:  # ENODEV: gone meanwhile
                return False
            raise _dataplane_error(exc) from None
        return True
    finally:
        pod.close()


def inspect(plan: Plan) -> list[str]:
    """What differs between the kernel and ``plan`` (empty: all as planned)."""
    problems: list[str] = []
    try:
        pod = rtnl.open_rtnl(plan.netns)
    except NamespaceError as exc:
        return [f"pod namespace {plan.netns}: {exc.strerror}"]
    host = rtnl.open_rtnl()
    try:
        plink, hlink = pod.link(plan.ifname), host.link(plan.host_name)
        if plink is None:
            return [f"no interface {plan.ifname} in the pod"]
        if hlink is None:
            return [f"no host interface {plan.host_name}"]
        if hlink.kind != "veth" or hlink.peer_index != plink.index \
                or plink.peer_index != hlink.index:
            problems.append(f"{plan.ifname} and {plan.host_name} are not one veth pair")
        if not plink.up or not hlink.up:
            problems.append(f"{plan.ifname if not plink.up else plan.host_name} is down")
        want = {host_prefix(a) for a in plan.addresses}
        have = {a.address for a in pod.addresses(plink.index)
                if not (a.address.version == 6 and a.address.ip.is_link_local)}
        if have != want:
            problems.append(f"pod addresses {sorted(map(str, have))} != "
                            f"{sorted(map(str, want))}")
        for version in sorted(plan.families):
            routes = pod.routes(version)
            if version == 4 and not any(r.dst == ipaddress.ip_network("169.254.1.1/32")
                                        and r.oif == plink.index for r in routes):
                problems.append("pod route 169.254.1.1 dev " + plan.ifname + " is missing")
            for dst in plan.pod_routes:
                if dst.version == version and not any(
                        r.dst == dst and r.oif == plink.index and r.gateway for r in routes):
                    problems.append(f"pod route {dst} via the host side is missing")
            for a in plan.addresses:
                if a.version != version:
                    continue
                dst = host_prefix(a).network
                # One lookup per address, not a dump: a node may hold 100k BGP routes.
                found = host.route_get(dst)
                if found is None or found.dst != dst or found.oif != hlink.index:
                    problems.append(f"host route {dst} dev {plan.host_name} is missing")
        if 4 in plan.families:
            with contextlib.suppress(OSError):
                if rtnl.read_sysctl(f"/proc/sys/net/ipv4/conf/{plan.host_name}/proxy_arp") != "1":
                    problems.append(f"proxy_arp is off on {plan.host_name}")
        return problems
    finally:
        pod.close()
        host.close()


def check(plan: Plan) -> None:
    problems = inspect(plan)
    if problems:
        raise CNIError(E_CHECK_MISMATCH, f"pod interface is not as set up: {problems[0]}",
                       "; ".join(problems))


def existing(plan: Plan) -> Built | None:
    """The interface as ``plan`` wants it, if it is already there complete (a retried ADD)."""
    if inspect(plan):
        return None
    with rtnl.open_rtnl() as host, rtnl.open_rtnl(plan.netns) as pod:
        hlink, plink = host.link(plan.host_name), pod.link(plan.ifname)
        if hlink is None or plink is None:
            return None
        _host_sysctls(plan.host_name, plan.families)  # cheap, and repairs a reset
        return Built(plan.host_name, hlink.index, hlink.mac, plink.mac, plink.mtu)
