"""The node's data plane, planned: tunnels, VTEP entries, cluster routes, NAT.

Owned by bgpd/. Pure functions over a config Snapshot and plain facts (no I/O,
no clock): the daemon (its core) calls `plan_dataplane` on every snapshot and
every device-state change and hands the pieces to their owners:
``devices``/``entries`` to fib_sync.overlay.OverlaySyncer, ``cluster_routes``
to rib (RibConfig), ``nat`` to fib_sync.nat.NatSyncer, ``tunnel_needs`` to the
tunnel-address allocation (ipam.tunnel), ``problems`` to the log and /status.

Who owns the data plane (docs/architecture.md, "The node's data plane"):
- standalone (``--dataplane on``, the default: systemd unit, the standalone
  DaemonSet, the demo): podbgp is BIRD and Felix at once. It makes the VXLAN
  device and ``tunl0``, programs every cluster route (Calico's
  ``programClusterRoutes`` splits them between the two halves; both are
  podbgp here), and masquerades natOutgoing pools;
- sidecar next to calico-node (``--dataplane off``): Felix keeps tunnels,
  VXLAN routes and NAT. podbgp programs what BIRD would:
  ``BGPConfiguration.programClusterRoutes`` (confd bgp_processor.go
  ``clusterRoutePolicyFromBGPConfig``; default EnabledNoEncapOnly,
  unrecognised values fall back to it), never VXLAN pools.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field

import rib
from config.snapshot import Snapshot
from fib_sync.link import DeviceSpec, IpipSpec, VxlanSpec, format_mac, parse_mac
from fib_sync.nat import NatSpec
from fib_sync.neigh import FdbEntry, Neighbour
from fib_sync.overlay import OK, DeviceState
from ipam.tunnel import IPIP, MAC_FIELD, NODE_FIELD, VXLAN, VXLAN_V6, tunnel_pools, vtep_mac

# Calico's defaults (FelixConfiguration vxlanVNI, vxlanPort; Felix's device names).
VXLAN_DEVICE = "vxlan.calico"
VXLAN6_DEVICE = "vxlan-v6.calico"
IPIP_DEVICE = "tunl0"
VXLAN_VNI = 4096
VXLAN_PORT = 4789

# programClusterRoutes -> (BIRD programs unencapsulated pools, BIRD programs IPIP pools)
_POLICY = {
    "Enabled": (True, True),
    "Disabled": (False, False),
    "EnabledIPIPOnly": (False, True),
    "EnabledNoEncapOnly": (True, False),
}
DEFAULT_POLICY = "EnabledNoEncapOnly"


@dataclass(frozen=True, slots=True)
class DataplaneSettings:
    """What the daemon's options say about the data plane."""

    manage: bool = True
    vxlan_vni: int = VXLAN_VNI
    vxlan_port: int = VXLAN_PORT
    vxlan_mtu: int = 0  # 0: the uplink's less 50 (70 over IPv6)
    ipip_mtu: int = 0  # 0: the uplink's less 20


@dataclass(frozen=True, slots=True)
class TunnelNeed:
    """The pools one tunnel address may come from (empty: none is needed)."""

    kind: str
    pool_names: tuple[str, ...] = ()
    pool_cidrs: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class DataplanePlan:
    devices: tuple[DeviceSpec, ...] = ()
    entries: tuple[Neighbour | FdbEntry, ...] = ()
    cluster_routes: rib.ClusterRoutes = field(default_factory=rib.ClusterRoutes)
    nat: NatSpec | None = None  # None: NAT is not podbgp's (sidecar)
    tunnel_needs: tuple[TunnelNeed, ...] = ()
    problems: tuple[str, ...] = ()
    # pool name -> why its remote blocks cannot be programmed here (IPIP without tunl0...)
    pool_problems: Mapping[str, str] = field(default_factory=dict)


def cluster_route_policy(snap: Snapshot) -> tuple[bool, bool, str]:
    """(no-encap pools, IPIP pools, the value in force) BIRD's half programs,
    from the global BGPConfiguration (confd reads the default one only)."""
    conf = snap.bgp_configurations.get("default")
    value = getattr(conf.spec, "program_cluster_routes", None) if conf else None
    if value not in _POLICY:
        value = DEFAULT_POLICY
    no_encap, ipip = _POLICY[value]
    return no_encap, ipip, value


def _own_tunnels(snap: Snapshot, node: str) -> dict[str, str | None]:
    res = snap.nodes.get(node)
    if res is None:
        return {}
    bgp = res.spec.bgp
    return {
        VXLAN: res.spec.ipv4_vxlan_tunnel_addr,
        VXLAN_V6: res.spec.ipv6_vxlan_tunnel_addr,
        IPIP: bgp.ipv4_ipip_tunnel_addr if bgp is not None else None,
    }


def node_mac(snap: Snapshot, node: str, v6: bool = False) -> str:
    """A node's VTEP MAC: its Node resource's, else Felix's deterministic one."""
    res = snap.nodes.get(node)
    mac = None
    if res is not None:
        mac = res.spec.vxlan_tunnel_mac_addr_v6 if v6 else res.spec.vxlan_tunnel_mac_addr
    if mac:
        try:
            return format_mac(parse_mac(mac))  # canonical lowercase
        except ValueError:
            pass  # a malformed MAC in someone's Node: use the derived one (Felix logs it)
    return vtep_mac(node, v6)


def plan_dataplane(snap: Snapshot, node: str, settings: DataplaneSettings, *,
                   labels: Mapping[str, str] | None = None,
                   tunnels: Mapping[str, str | None] | None = None,
                   devices: Mapping[str, DeviceState] | None = None) -> DataplanePlan:
    """The data plane of ``node`` for ``snap``.

    ``tunnels``: this node's tunnel addresses by kind when the caller knows
    better than the snapshot (just allocated, not yet read back from the
    datastore). ``devices``: how the overlay syncer's devices stand (None:
    not looked at yet; a device is then assumed usable, as it will be made).
    """
    no_encap, ipip_bird, _value = cluster_route_policy(snap)
    if not settings.manage:
        return DataplanePlan(cluster_routes=rib.ClusterRoutes(no_encap=no_encap, ipip=ipip_bird))
    me = snap.nodes.get(node)
    if labels is None:
        labels = dict(me.metadata.labels or {}) if me is not None else {}
    pools = list(snap.ippools.values())
    needs = tuple(
        TunnelNeed(kind, tuple(p.metadata.name for p in chosen),
                   tuple(str(ipaddress.ip_network(p.spec.cidr)) for p in chosen))
        for kind in (VXLAN, VXLAN_V6, IPIP)
        for chosen in [tunnel_pools(pools, kind, labels)]
    )
    need = {n.kind: n for n in needs}
    own = dict(_own_tunnels(snap, node))
    own.update({k: v for k, v in (tunnels or {}).items() if v})
    v4, v6 = snap.node_bgp_addresses(node)
    specs: list[DeviceSpec] = []
    problems: list[str] = []
    entries: list[Neighbour | FdbEntry] = []
    vteps: dict[str, str] = {}
    dev_names: list[str] = []

    for kind, local, devname, v6fam in ((VXLAN, v4, VXLAN_DEVICE, False),
                                         (VXLAN_V6, v6, VXLAN6_DEVICE, True)):
        if not need[kind].pool_names:
            continue
        addr = own.get(kind)
        fam = "IPv6" if v6fam else "IPv4"
        if not local:
            problems.append(f"VXLAN ({fam}) pools {', '.join(need[kind].pool_names)}: node "
                            f"{node} has no {fam} BGP address to bind {devname} to")
            continue
        if not addr:
            problems.append(f"VXLAN ({fam}): node {node} has no VTEP address yet "
                            f"(handle {NODE_FIELD[kind]} not allocated or published)")
            continue
        specs.append(VxlanSpec(devname, settings.vxlan_vni, settings.vxlan_port, local,
                               node_mac(snap, node, v6fam), settings.vxlan_mtu, addr))
        dev_names.append(devname)
        for other, res in sorted(snap.nodes.items()):
            if other == node:
                continue
            o4, o6 = snap.node_bgp_addresses(other)
            o_addr = o6 if v6fam else o4
            o_vtep = getattr(res.spec, NODE_FIELD[kind])
            if not o_addr or not o_vtep:
                continue
            mac = node_mac(snap, other, v6fam)
            try:
                entries.append(Neighbour(devname, o_vtep, mac))
                entries.append(FdbEntry(devname, mac, o_addr))
            except ValueError as e:
                problems.append(f"Node {other}: VTEP not usable: {e}")
                continue
            vteps[o_addr] = str(ipaddress.ip_address(o_vtep))
    if need[IPIP].pool_names:
        addr = own.get(IPIP)
        if not v4:
            problems.append(f"IPIP pools {', '.join(need[IPIP].pool_names)}: node {node} has "
                            "no IPv4 BGP address")
        elif not addr:
            problems.append(f"IPIP: node {node} has no IPIP tunnel address yet")
        else:
            specs.append(IpipSpec(IPIP_DEVICE, settings.ipip_mtu, addr, v4))
            dev_names.append(IPIP_DEVICE)

    def usable(name: str) -> bool:
        if devices is None or name not in devices:
            return name in dev_names
        return devices[name].state == OK

    vxlan_ok = usable(VXLAN_DEVICE) or usable(VXLAN6_DEVICE)
    ipip_ok = usable(IPIP_DEVICE)
    pool_problems: dict[str, str] = {}
    for p in sorted(pools, key=lambda p: p.metadata.name):
        spec = p.spec
        if spec.ipip_mode != "Never" and not ipip_ok:
            why = (devices[IPIP_DEVICE].reason if devices and IPIP_DEVICE in devices
                   else "tunl0 is not configured (no IPIP tunnel address)")
            pool_problems[p.metadata.name] = (
                f"IPPool {p.metadata.name} ({spec.cidr}) has ipipMode {spec.ipip_mode}: its "
                f"remote blocks cannot be programmed: {why}")
        elif spec.vxlan_mode != "Never" and not vxlan_ok:
            name = VXLAN6_DEVICE if ":" in str(spec.cidr) else VXLAN_DEVICE
            why = (devices[name].reason if devices and name in devices
                   else f"{name} is not configured (no VTEP address)")
            pool_problems[p.metadata.name] = (
                f"IPPool {p.metadata.name} ({spec.cidr}) has vxlanMode {spec.vxlan_mode}: its "
                f"remote blocks cannot be programmed: {why}")
    missing = sorted(
        other for other, res in snap.nodes.items()
        if other != node and vxlan_ok and snap.node_bgp_addresses(other)[0]
        and not res.spec.ipv4_vxlan_tunnel_addr and need[VXLAN].pool_names)
    if missing:
        problems.append("VXLAN: no VTEP published yet by node " + ", ".join(missing)
                        + " (routes to their blocks wait for it)")
    nat = NatSpec.from_pools(
        (str(ipaddress.ip_network(p.spec.cidr)), bool(p.spec.nat_outgoing))
        for p in pools
        if tuple(getattr(p.spec, "allowed_uses", None) or ()) != ("LoadBalancer",))
    cluster = rib.ClusterRoutes(
        no_encap=True, ipip=True, vxlan=vxlan_ok, ipip_ready=ipip_ok,
        vxlan_device=VXLAN_DEVICE, vxlan6_device=VXLAN6_DEVICE,
        vteps=tuple(vteps.items()))
    return DataplanePlan(tuple(specs), tuple(entries), cluster, nat, needs, tuple(problems),
                         pool_problems)


def cluster_routes_for(snap: Snapshot, node: str, settings: DataplaneSettings,
                       reported: rib.ClusterRoutes | None = None) -> rib.ClusterRoutes:
    """The cluster routes the RIB should follow: with the data plane on, what the
    data-plane shell last reported (it knows which devices are up); before it
    has, and with the data plane off, planned from the snapshot alone."""
    if settings.manage and reported is not None:
        return reported
    return plan_dataplane(snap, node, settings).cluster_routes


def published_fields(snap: Snapshot, node: str, addresses: Mapping[str, str | None]
                     ) -> dict[str, str | None]:
    """The Node fields this node publishes for its tunnel ``addresses`` (kind ->
    address, None: released): the address fields and the VTEP MACs."""
    out: dict[str, str | None] = {}
    for kind, addr in addresses.items():
        out[NODE_FIELD[kind]] = addr
        if kind in MAC_FIELD:
            out[MAC_FIELD[kind]] = node_mac(snap, node, kind == VXLAN_V6) if addr else None
    return out
