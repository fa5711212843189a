"""IP pools and node labels as IPAM needs them, read from Calico's resources.

Owned by ipam/. Parsing and validation are config/'s (``config.parse``); this
module keeps only the four pool fields allocation uses and decides which
pools a node may allocate from.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from config.selector import SelectorError, parse_selector

log = structlog.get_logger(__name__)

__all__ = ["PoolInfo", "load_node_labels", "load_pools", "pool_from_ippool", "select_pools"]

RESOURCES = "/calico/resources/v3/projectcalico.org/"
DEFAULT_BLOCK_SIZE = {4: 26, 6: 122}

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class PoolInfo:
    """What allocation needs of one IPPool."""

    name: str
    cidr: Network
    block_size: int
    disabled: bool = False
    node_selector: str = "all()"

    @property
    def version(self) -> int:
        return self.cidr.version

    def matches_node(self, labels: Mapping[str, str]) -> bool:
        try:
            return parse_selector(self.node_selector or "all()").matches(labels)
        except SelectorError as exc:
            # config/ rejects such pools already; a pool we cannot evaluate is
            # one we must not allocate from.
            log.warning("ipam_pool_bad_selector", pool=self.name, error=str(exc))
            return False


def pool_from_ippool(pool: Any) -> PoolInfo:
    """From a ``config.model.IPPool``."""
    spec = pool.spec
    cidr = ipaddress.ip_network(str(spec.cidr), strict=False)
    block = getattr(spec, "block_size", None) or DEFAULT_BLOCK_SIZE[cidr.version]
    return PoolInfo(
        name=pool.metadata.name,
        cidr=cidr,
        block_size=int(block),
        disabled=bool(getattr(spec, "disabled", False)),
        node_selector=getattr(spec, "node_selector", None) or "all()",
    )


async def load_pools(client: Any) -> list[PoolInfo]:
    """Every valid IPPool in etcd (invalid ones are logged and left out)."""
    from config.parse import parse_json  # config/ owns validation

    out = []
    for meta in await client.get_prefix(f"{RESOURCES}ippools/".encode()):
        key = meta.key.decode()
        try:
            out.append(pool_from_ippool(parse_json(key, meta.value)))
        except Exception as exc:  # a ConfigError, or a model we cannot use
            log.warning("ipam_pool_rejected", key=key, error=str(exc))
    return out


async def load_node_labels(client: Any, node: str) -> dict[str, str]:
    """The labels of the Node resource ``node``; {} when it does not exist."""
    from config.parse import parse_json

    got = await client.get(f"{RESOURCES}nodes/{node}".encode())
    if got is None:
        return {}
    try:
        res = parse_json(got.key.decode(), got.value)
    except Exception as exc:
        log.warning("ipam_node_rejected", node=node, error=str(exc))
        return {}
    return {str(k): str(v) for k, v in (res.metadata.labels or {}).items()}


def select_pools(pools: Sequence[PoolInfo], version: int, labels: Mapping[str, str],
                 requested: Sequence[str] | None = None) -> list[PoolInfo]:
    """Pools of ``version`` this node may use, in a stable order.

    ``requested`` (CNI ``ipv4_pools``/``ipv6_pools``) names pools by name or
    CIDR; each must exist, have the right family and be enabled, else
    ValueError naming it. Explicitly requested pools still have to match the
    node's labels: a nodeSelector is a placement rule, not a default.
    """
    if requested:
        chosen = []
        for want in requested:
            match = [p for p in pools if want in (p.name, str(p.cidr))]
            if not match:
                raise ValueError(f"requested IP pool {want!r} does not exist")
            pool = match[0]
            if pool.version != version:
                raise ValueError(f"requested IP pool {want!r} is not an IPv{version} pool")
            if pool.disabled:
                raise ValueError(f"requested IP pool {want!r} is disabled")
            if not pool.matches_node(labels):
                raise ValueError(
                    f"requested IP pool {want!r}: nodeSelector {pool.node_selector!r} "
                    "does not match this node"
                )
            chosen.append(pool)
        return chosen
    return sorted(
        (p for p in pools if p.version == version and not p.disabled and p.matches_node(labels)),
        key=lambda p: p.name,
    )
