"""`Snapshot`: one whole, validated view of the configuration at a revision.

Owned by config/. Built by a datastore (etcd watcher or file datastore) from
parsed resources and handed, frozen, to the daemon; consumers never mutate it,
a change produces a new Snapshot. ``rejected`` lists keys whose *current*
value is invalid, while the maps keep the last good version of that resource.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from config.model import (
    DEFAULT_AS_NUMBER,
    DEFAULT_LISTEN_PORT,
    Affinity,
    BGPConfiguration,
    BGPConfigurationSpec,
    BGPFilter,
    BGPPeer,
    BlockAffinity,
    IPPool,
    Lent,
    Node,
    Resource,
)

_EMPTY: Mapping = MappingProxyType({})

# Where a per-node BGPConfiguration does not say, Calico takes the global one;
# where neither says, Calico's defaults apply.
_DEFAULTS = {
    "log_severity_screen": "Info",
    "node_to_node_mesh_enabled": True,
    "as_number": DEFAULT_AS_NUMBER,
    "listen_port": DEFAULT_LISTEN_PORT,
    "bind_mode": "None",
}


# BGPConfiguration fields a ``node.<name>`` resource sets for its node (confd
# client.go updateBGPConfigCache); Calico ignores the others there.
PER_NODE_FIELDS = ("listen_port", "log_severity_screen", "prefix_advertisements", "communities")


def _frozen(mapping: Mapping | None) -> Mapping:
    return MappingProxyType(dict(mapping)) if mapping else _EMPTY


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Frozen configuration at etcd ``revision`` (file datastore: a reload counter)."""

    revision: int = 0
    ippools: Mapping[str, IPPool] = field(default_factory=lambda: _EMPTY)
    bgp_configurations: Mapping[str, BGPConfiguration] = field(default_factory=lambda: _EMPTY)
    bgp_peers: Mapping[str, BGPPeer] = field(default_factory=lambda: _EMPTY)
    bgp_filters: Mapping[str, BGPFilter] = field(default_factory=lambda: _EMPTY)
    nodes: Mapping[str, Node] = field(default_factory=lambda: _EMPTY)
    affinities: tuple[Affinity, ...] = ()
    rejected: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    # Addresses of one node's blocks held by pods on another (IPAM "borrowing").
    lent: tuple[Lent, ...] = ()

    def __post_init__(self) -> None:
        # Read-only views, so a consumer cannot change a shared snapshot by accident.
        for name in ("ippools", "bgp_configurations", "bgp_peers", "bgp_filters", "nodes",
                     "rejected"):
            value = getattr(self, name)
            if not isinstance(value, MappingProxyType):
                object.__setattr__(self, name, _frozen(value))
        if not isinstance(self.affinities, tuple):
            object.__setattr__(self, "affinities", tuple(self.affinities))
        if not isinstance(self.lent, tuple):
            object.__setattr__(self, "lent", tuple(self.lent))

    @classmethod
    def from_resources(
        cls,
        resources: Iterable[Resource],
        affinities: Iterable[Affinity] = (),
        *,
        revision: int = 0,
        rejected: Mapping[str, str] | None = None,
    ) -> Snapshot:
        """Sort resources into their maps (later duplicates win); BlockAffinities become
        `Affinity` records alongside ``affinities``."""
        maps: dict[type, dict[str, Resource]] = {
            IPPool: {}, BGPConfiguration: {}, BGPPeer: {}, BGPFilter: {}, Node: {},
        }
        affs = list(affinities)
        for res in resources:
            if isinstance(res, BlockAffinity):
                affs.append(res.to_affinity())
            else:
                maps[type(res)][res.metadata.name] = res
        return cls(
            revision=revision,
            ippools=maps[IPPool],
            bgp_configurations=maps[BGPConfiguration],
            bgp_peers=maps[BGPPeer],
            bgp_filters=maps[BGPFilter],
            nodes=maps[Node],
            affinities=tuple(affs),
            rejected=rejected or {},
        )

    # ------------------------------------------------------------ helpers

    def effective_bgp_config(self, node: str) -> BGPConfigurationSpec:
        """The BGP configuration in force on ``node``.

        Global ``default``, overlaid by ``node.<node>`` for the fields Calico
        honours per node (confd client.go ``updateBGPConfigCache``: listenPort,
        logSeverityScreen, prefixAdvertisements with the communities they name);
        every other field of a per-node resource is ignored, as Calico ignores
        it. Then Calico's defaults for whatever neither sets: AS 64512, mesh on,
        port 179, log Info, bindMode None. The result has no None in those
        defaulted fields.
        """
        values: dict[str, object] = {}
        for name in ("default", f"node.{node}"):
            conf = self.bgp_configurations.get(name)
            if conf is None:
                continue
            fields = BGPConfigurationSpec.model_fields if name == "default" else PER_NODE_FIELDS
            for attr in fields:
                value = getattr(conf.spec, attr)
                if value is not None:
                    values[attr] = value
        for attr, default in _DEFAULTS.items():
            values.setdefault(attr, default)
        # Built with model_construct: every value came from a validated spec or a default.
        return BGPConfigurationSpec.model_construct(**values)

    def node_blocks(self, node: str) -> tuple[str, ...]:
        """CIDRs of the blocks ``node`` owns and advertises (confirmed or state-less)."""
        seen: dict[str, None] = {}
        for aff in self.affinities:
            if aff.node == node and aff.advertised:
                seen.setdefault(aff.cidr, None)
        return tuple(sorted(seen, key=lambda c: ipaddress.ip_network(c).compressed))

    def node_bgp_addresses(self, node: str) -> tuple[str | None, str | None]:
        """(IPv4, IPv6) BGP addresses of ``node`` without prefix lengths (None if unset)."""
        res = self.nodes.get(node)
        bgp = res.spec.bgp if res is not None else None
        if bgp is None:
            return (None, None)
        return (bgp.ipv4, bgp.ipv6)

    def node_asn(self, node: str) -> int:
        """The node's own ``spec.bgp.asNumber``, else the effective global AS number."""
        res = self.nodes.get(node)
        if res is not None and res.spec.bgp is not None and res.spec.bgp.as_number is not None:
            return res.spec.bgp.as_number
        asn = self.effective_bgp_config(node).as_number
        return asn if asn is not None else DEFAULT_AS_NUMBER

    def enabled_pools(self) -> tuple[IPPool, ...]:
        """IPPools not ``disabled``, in name order."""
        return tuple(p for _, p in sorted(self.ippools.items()) if not p.spec.disabled)
