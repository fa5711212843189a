"""The node's tunnel addresses (VXLAN VTEP, IPIP), allocated as calico-node does.

Owned by ipam/. Calico's node/pkg/allocateip/allocateip.go is the model:
- one address per tunnel kind per node, from the enabled pools of that kind
  that allow the ``Tunnel`` use and select the node
  (``determineEnabledPoolCIDRs``);
- held by a handle named ``vxlan-tunnel-addr-<node>``,
  ``vxlan-v6-tunnel-addr-<node>`` or ``ipip-tunnel-addr-<node>``, with the
  allocation attributes ``{"node": <node>, "type": <kind>}``
  (``generateHandleAndAttributes``), so Calico's tools see them as theirs;
- kept while still assigned to this node with those attributes and inside a
  valid pool; otherwise the handle's addresses are released and a new one
  assigned (``ensureHostTunnelAddress``); released when no pool of the kind
  is left (``removeHostTunnelAddr``);
- published in the Node resource (``spec.ipv4VXLANTunnelAddr`` and
  ``spec.vxlanTunnelMACAddr``, their v6 twins, ``spec.bgp.ipv4IPIPTunnelAddr``)
  by `publish`, which changes those fields only and writes every other field
  of the stored Node back as it was (read leniently, write faithfully).

Felix derives a node's VTEP MAC when the Node has none (calc/vxlan_resolver.go
``vtepMACForHost``: 0x66 then the first 5 bytes of sha1(node name [+ "-v6"]));
`vtep_mac` is that, so podbgp and Felix agree on every node's MAC.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from ipam.model import handle_key

if TYPE_CHECKING:  # the allocator is the caller's: a daemon with no IPAM never imports it
    from ipam.allocator import Allocator

log = structlog.get_logger(__name__)

VXLAN = "vxlanTunnelAddress"
VXLAN_V6 = "vxlanV6TunnelAddress"
IPIP = "ipipTunnelAddress"
KINDS = (IPIP, VXLAN, VXLAN_V6)
_HANDLE = {VXLAN: "vxlan-tunnel-addr-", VXLAN_V6: "vxlan-v6-tunnel-addr-",
           IPIP: "ipip-tunnel-addr-"}
# The Node resource's field (snake_case, config.model.NodeSpec / NodeBGPSpec) per kind.
NODE_FIELD = {VXLAN: "ipv4_vxlan_tunnel_addr", VXLAN_V6: "ipv6_vxlan_tunnel_addr",
              IPIP: "ipv4_ipip_tunnel_addr"}
MAC_FIELD = {VXLAN: "vxlan_tunnel_mac_addr", VXLAN_V6: "vxlan_tunnel_mac_addr_v6"}


def handle_for(kind: str, node: str) -> str:
    """Calico's handle name for ``node``'s tunnel address of ``kind``."""
    return _HANDLE[kind] + node


def version_of(kind: str) -> int:
    return 6 if kind == VXLAN_V6 else 4


def vtep_mac(node: str, v6: bool = False) -> str:
    """Felix's deterministic VTEP MAC for ``node`` (vtepMACForHost)."""
    sha = hashlib.sha1((node + ("-v6" if v6 else "")).encode()).digest()
    return (b"f" + sha[:5]).hex(":")


def tunnel_pools(pools: Iterable[Any], kind: str, node_labels: Mapping[str, str]) -> list[Any]:
    """The pools ``kind``'s address may come from (Calico's
    determineEnabledPoolCIDRs): enabled, the right family and encapsulation,
    ``Tunnel`` among ``allowedUses`` (when set), selecting the node. ``pools``
    are ``config.model.IPPool``s; sorted by name for a stable choice."""
    from config.selector import SelectorError, parse_selector

    out = []
    for p in pools:
        spec = p.spec
        net = ipaddress.ip_network(str(spec.cidr), strict=False)
        if spec.disabled or net.version != version_of(kind):
            continue
        mode = spec.ipip_mode if kind == IPIP else spec.vxlan_mode
        if mode not in ("Always", "CrossSubnet"):
            continue
        uses = getattr(spec, "allowed_uses", None)
        if uses and "Tunnel" not in uses:
            continue
        try:
            if not parse_selector(spec.node_selector or "all()").matches(node_labels):
                continue
        except SelectorError:
            continue
        out.append(p)
    return sorted(out, key=lambda p: p.metadata.name)


@dataclass(frozen=True, slots=True)
class Owner:
    """Who holds an address in IPAM: its handle and allocation attributes."""

    handle: str | None
    attrs: Mapping[str, str]


async def owner_of(alloc: Allocator, address: str) -> Owner | None:
    """The allocation holding ``address``, None when it is not allocated."""
    addr = ipaddress.ip_address(address)
    for cidr in await alloc.block_cidrs(addr.version):
        if addr in cidr:
            block, _ = await alloc.read_block(cidr)
            if block is None or block.allocations[block.ordinal(addr)] is None:
                return None
            attr = block.attributes_of(addr)
            if attr is None:
                return Owner(None, {})
            return Owner(attr.handle_id, dict(attr.secondary))
    return None


async def ensure_tunnel_address(alloc: Allocator, node: str, kind: str,
                                pool_names: Sequence[str], pool_cidrs: Sequence[str],
                                current: str | None) -> str:
    """This node's address of ``kind``: ``current`` (the Node resource's) while
    it is still allocated to this node as that kind and inside ``pool_cidrs``;
    else a new one from ``pool_names``. Raises IPAMError (NoFreeAddressError...)."""
    handle = handle_for(kind, node)
    version = version_of(kind)
    nets = [ipaddress.ip_network(c) for c in pool_cidrs]

    def in_pools(a: str) -> bool:
        return any(ipaddress.ip_address(a) in n for n in nets)

    if current:
        own = await owner_of(alloc, current)
        if own is not None and own.attrs.get("type") == kind and own.attrs.get("node") == node:
            if in_pools(current):
                return current
            log.info("ipam_tunnel_address_wrong_pool", kind=kind, address=current)
            await alloc.release_by_handle(handle)
        elif own is None:
            await alloc.release_by_handle(handle)  # defensive, as Calico
        else:
            # Someone else's address (a pod's, or an older tunnel address): keep
            # theirs, take a new one.
            log.warning("ipam_tunnel_address_taken", kind=kind, address=current,
                        holder=own.handle or "unknown")
    # The handle may already hold an address (idempotent auto_assign returns it):
    # keep it only if it is inside a valid pool.
    held, _ = await alloc.read_handle(handle)
    if held is not None and held.block:
        for cidr in list(held.block):
            if not any(ipaddress.ip_network(cidr).subnet_of(n) for n in nets):
                await alloc.release_by_handle(handle)
                break
    v4, v6 = await alloc.auto_assign(
        handle, node, num_v4=1 if version == 4 else 0, num_v6=1 if version == 6 else 0,
        attrs={"type": kind}, v4_pools=list(pool_names) if version == 4 else None,
        v6_pools=list(pool_names) if version == 6 else None)
    got = (v4 or v6)[0].address
    log.info("ipam_tunnel_address_assigned", kind=kind, node=node, address=str(got),
             handle=handle)
    return str(got)


async def release_tunnel_address(alloc: Allocator, node: str, kind: str) -> list[str]:
    """Give back ``node``'s address of ``kind`` (no pool of that kind left)."""
    released = await alloc.release_by_handle(handle_for(kind, node))
    if released:
        log.info("ipam_tunnel_address_released", kind=kind, node=node,
                 addresses=[str(a) for a in released])
    return [str(a) for a in released]


def handle_exists_key(kind: str, node: str) -> str:
    """The etcd key of ``node``'s ``kind`` handle (tests, bgpctl ipam show)."""
    return handle_key(handle_for(kind, node))


# ---------------------------------------------------------------- the Node resource


def node_tunnel_fields(node: Any) -> dict[str, str | None]:
    """The tunnel fields of a ``config.model.Node``, by snake_case name."""
    spec = node.spec
    bgp = spec.bgp
    return {
        NODE_FIELD[VXLAN]: spec.ipv4_vxlan_tunnel_addr,
        MAC_FIELD[VXLAN]: spec.vxlan_tunnel_mac_addr,
        NODE_FIELD[VXLAN_V6]: spec.ipv6_vxlan_tunnel_addr,
        MAC_FIELD[VXLAN_V6]: spec.vxlan_tunnel_mac_addr_v6,
        NODE_FIELD[IPIP]: bgp.ipv4_ipip_tunnel_addr if bgp is not None else None,
    }


def with_tunnel_fields(node: Any, fields: Mapping[str, str | None]) -> Any:
    """``node`` with the given tunnel fields set (None: removed), every other
    field, known or not, unchanged."""
    spec_update = {k: v for k, v in fields.items() if k != NODE_FIELD[IPIP]}
    spec = node.spec.model_copy(update=spec_update)
    if NODE_FIELD[IPIP] in fields:
        ipip = fields[NODE_FIELD[IPIP]]
        bgp = spec.bgp
        if bgp is not None:
            spec = spec.model_copy(update={"bgp": bgp.model_copy(
                update={NODE_FIELD[IPIP]: ipip})})
        elif ipip is not None:
            from config.model import NodeBGPSpec

            spec = spec.model_copy(update={"bgp": NodeBGPSpec(ipv4_ipip_tunnel_addr=ipip)})
    return node.model_copy(update={"spec": spec})


async def publish(store: Any, node_name: str, fields: Mapping[str, str | None],
                  attempts: int = 5) -> bool:
    """Write ``fields`` into the stored Node ``node_name`` (compare-and-swap on
    its resourceVersion, retried on a lost race). Returns False when it
    already held them. Raises config.datastore.DatastoreError."""
    from config.datastore import ResourceConflict

    for _ in range(attempts):
        node = await store.get("Node", node_name)
        have = node_tunnel_fields(node)
        if all(have.get(k) == v for k, v in fields.items()):
            return False
        try:
            await store.replace(with_tunnel_fields(node, fields))
        except ResourceConflict:
            continue  # someone else wrote the Node meanwhile: read it again
        log.info("node_tunnel_fields_published", node=node_name,
                 **{k: v for k, v in fields.items()})
        return True
    from ipam.allocator import IPAMError

    raise IPAMError(f"Node {node_name}: changed concurrently {attempts} times; "
                    "tunnel fields not published")
