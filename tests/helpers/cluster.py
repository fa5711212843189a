"""Calico resources for in-process tests, as the datastore would hold them.

Small builders of projectcalico.org/v3 documents (shapes as in Calico's
api/pkg/apis/projectcalico/v3 and this repository's config/ model) and
``snapshot(...)``, which parses them with the real ``config.parse`` into the
``Snapshot`` the daemon gets from a datastore.
"""

from __future__ import annotations

from config.model import Affinity
from config.parse import parse_resource
from config.snapshot import Snapshot

V3 = "projectcalico.org/v3"


def node(name: str, ipv4: str, asn: int | None = None, rr: str | None = None,
         labels: dict | None = None) -> dict:
    bgp: dict = {"ipv4Address": ipv4 if "/" in ipv4 else ipv4 + "/24"}
    if asn is not None:
        bgp["asNumber"] = asn
    if rr is not None:
        bgp["routeReflectorClusterID"] = rr
    return {"apiVersion": V3, "kind": "Node", "metadata": {"name": name, "labels": labels or {}},
            "spec": {"bgp": bgp}}


def pool(name: str, cidr: str, block_size: int = 26, disabled: bool = False,
         **spec) -> dict:
    return {"apiVersion": V3, "kind": "IPPool", "metadata": {"name": name},
            "spec": {"cidr": cidr, "blockSize": block_size, "ipipMode": "Never",
                     "vxlanMode": "Never", "disabled": disabled, **spec}}


def bgp_peer(name: str, **spec) -> dict:
    return {"apiVersion": V3, "kind": "BGPPeer", "metadata": {"name": name}, "spec": spec}


def bgp_config(name: str = "default", **spec) -> dict:
    return {"apiVersion": V3, "kind": "BGPConfiguration", "metadata": {"name": name},
            "spec": spec}


def bgp_filter(name: str, **spec) -> dict:
    return {"apiVersion": V3, "kind": "BGPFilter", "metadata": {"name": name}, "spec": spec}


def snapshot(*docs: dict, blocks: dict[str, list[str]] | None = None, revision: int = 1,
             rejected: dict[str, str] | None = None) -> Snapshot:
    """``blocks``: node name -> confirmed block affinities."""
    affs = [Affinity(n, cidr, "confirmed") for n, cidrs in (blocks or {}).items() for cidr in cidrs]
    return Snapshot.from_resources([parse_resource(d) for d in docs], affs, revision=revision,
                                   rejected=rejected)
