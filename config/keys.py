"""Calico's etcd key layout, in both directions, and kind-name normalization.

Owned by config/. Pure string functions; used by the etcd datastore (keys to
read/watch/write), by bgpctl (kind names typed by users) and by `config.parse`
(to check a value against the key it was stored under).

Layout (Calico etcd mode)::

    /calico/resources/v3/projectcalico.org/<plural>/<name>
    /calico/ipam/v2/host/<node>/ipv4/block/10.0.0.0-26      (block affinity)
    /calico/ipam/v2/assignment/ipv4/block/10.0.0.0-26       (IPAM block)
    /calico/ipam/v2/handle/<handle id>                       (IPAM handle)
    /calico/resources/v3/projectcalico.org/workloadendpoints/<namespace>/<name>
                                                   (namespaced kinds: one more segment)
"""

from __future__ import annotations

import ipaddress

RESOURCES_PREFIX = "/calico/resources/v3/projectcalico.org/"
IPAM_HOST_PREFIX = "/calico/ipam/v2/host/"
IPAM_BLOCK_PREFIX = "/calico/ipam/v2/assignment/"
IPAM_HANDLE_PREFIX = "/calico/ipam/v2/handle/"

# kind -> plural used in the etcd key (Calico's lowercase plural).
PLURALS: dict[str, str] = {
    "IPPool": "ippools",
    "BGPConfiguration": "bgpconfigurations",
    "BGPPeer": "bgppeers",
    "BGPFilter": "bgpfilters",
    "Node": "nodes",
    "BlockAffinity": "blockaffinities",
    "GlobalNetworkPolicy": "globalnetworkpolicies",
    "Profile": "profiles",
}
KINDS_BY_PLURAL: dict[str, str] = {plural: kind for kind, plural in PLURALS.items()}

# Namespaced kinds: their key has a namespace segment before the name. They are
# not part of the daemon's Snapshot (`parse_resource_key` does not name them).
NAMESPACED_PLURALS: dict[str, str] = {
    "WorkloadEndpoint": "workloadendpoints",
    "NetworkPolicy": "networkpolicies",
}
NAMESPACED_KINDS_BY_PLURAL: dict[str, str] = {
    plural: kind for kind, plural in NAMESPACED_PLURALS.items()
}

# Spellings calicoctl accepts (and a few obvious ones), all lower case.
_ALIASES: dict[str, str] = {}
for _kind, _names in {
    "IPPool": ("ippool", "ippools", "ipp", "ipps", "pool", "pools"),
    "BGPConfiguration": (
        "bgpconfiguration", "bgpconfigurations", "bgpconfig", "bgpconfigs", "bgpc", "bgpcs",
    ),
    "BGPPeer": ("bgppeer", "bgppeers", "bgpp", "bgpps", "bp", "bps"),
    "BGPFilter": ("bgpfilter", "bgpfilters", "bgpf", "bgpfs"),
    "Node": ("node", "nodes", "no", "nos"),
    "BlockAffinity": (
        "blockaffinity", "blockaffinities", "blockaff", "blockaffs", "affinity", "affinities",
        "ba", "bas",
    ),
    # calicoctl's names for the policy kinds and workload endpoints
    "NetworkPolicy": ("networkpolicy", "networkpolicies", "policy", "policies", "np", "nps",
                      "netpol", "netpols", "cnp", "caliconetworkpolicy"),
    "GlobalNetworkPolicy": ("globalnetworkpolicy", "globalnetworkpolicies", "gnp", "gnps",
                            "globalpolicy", "globalpolicies", "cgnp"),
    "Profile": ("profile", "profiles", "pro", "pros"),
    "WorkloadEndpoint": ("workloadendpoint", "workloadendpoints", "wep", "weps"),
}.items():
    for _name in _names:
        _ALIASES[_name] = _kind


def normalize_kind(kind: str) -> str:
    """``ippool``/``ippools``/``IPPool``/``ipp``... -> ``IPPool``; ValueError if unknown."""
    if isinstance(kind, str):
        found = _ALIASES.get(kind.strip().lower())
        if found:
            return found
    raise ValueError(
        f"unknown resource kind {kind!r} (known: {', '.join([*PLURALS, *NAMESPACED_PLURALS])})"
    )


def is_namespaced(kind: str) -> bool:
    return kind in NAMESPACED_PLURALS


def key_for(kind: str, name: str, namespace: str | None = None) -> str:
    """The etcd key of one resource, namespaced kinds included (their namespace required)."""
    if is_namespaced(kind):
        if not namespace:
            raise ValueError(f"a {kind} is namespaced: a namespace is required")
        return namespaced_key(kind, namespace, name)
    return resource_key(kind, name)


def resource_prefix(kind: str) -> str:
    """Key prefix (with trailing slash) holding every resource of ``kind``."""
    return f"{RESOURCES_PREFIX}{PLURALS[normalize_kind(kind)]}/"


def resource_key(kind: str, name: str) -> str:
    if not name or "/" in name:
        raise ValueError(f"invalid resource name {name!r}")
    return resource_prefix(kind) + name


def parse_resource_key(key: str) -> tuple[str, str] | None:
    """``/calico/resources/v3/projectcalico.org/ippools/p1`` -> ("IPPool", "p1"); else None."""
    if not key.startswith(RESOURCES_PREFIX):
        return None
    rest = key[len(RESOURCES_PREFIX) :].split("/")
    # namespaced kinds carry a namespace segment; none of ours are namespaced
    if len(rest) != 2 or not rest[1]:
        return None
    kind = KINDS_BY_PLURAL.get(rest[0])
    if kind is None:
        return None
    return kind, rest[1]


def _segment(what: str, value: str) -> str:
    if not isinstance(value, str) or not value or "/" in value:
        raise ValueError(f"invalid {what} {value!r}")
    return value


def namespaced_prefix(kind: str, namespace: str | None = None) -> str:
    """Key prefix (trailing slash) of a namespaced kind, in every or in one namespace.

    ``namespaced_prefix("WorkloadEndpoint", "default")`` ->
    ``/calico/resources/v3/projectcalico.org/workloadendpoints/default/``.
    """
    plural = NAMESPACED_PLURALS.get(kind)
    if plural is None:
        raise ValueError(f"{kind!r} is not a namespaced kind")
    base = f"{RESOURCES_PREFIX}{plural}/"
    return base if namespace is None else f"{base}{_segment('namespace', namespace)}/"


def namespaced_key(kind: str, namespace: str, name: str) -> str:
    return namespaced_prefix(kind, namespace) + _segment("resource name", name)


def parse_namespaced_key(key: str) -> tuple[str, str, str] | None:
    """``.../workloadendpoints/ns/name`` -> ("WorkloadEndpoint", "ns", "name"); else None."""
    if not key.startswith(RESOURCES_PREFIX):
        return None
    rest = key[len(RESOURCES_PREFIX) :].split("/")
    if len(rest) != 3 or not rest[1] or not rest[2]:
        return None
    kind = NAMESPACED_KINDS_BY_PLURAL.get(rest[0])
    if kind is None:
        return None
    return kind, rest[1], rest[2]


def workload_endpoint_prefix(namespace: str | None = None) -> str:
    return namespaced_prefix("WorkloadEndpoint", namespace)


def workload_endpoint_key(namespace: str, name: str) -> str:
    return namespaced_key("WorkloadEndpoint", namespace, name)


def cidr_to_key_part(cidr: str) -> str:
    """``10.0.0.0/26`` -> ``10.0.0.0-26`` (Calico replaces the slash)."""
    net = ipaddress.ip_network(cidr)
    return f"{net.network_address}-{net.prefixlen}"


def key_part_to_cidr(part: str) -> str:
    """``10.0.0.0-26`` -> ``10.0.0.0/26``; ValueError if it is not a network."""
    addr, sep, length = part.rpartition("-")
    if not sep or not length.isdigit():
        raise ValueError(f"not a block name: {part!r}")
    return str(ipaddress.ip_network(f"{addr}/{length}"))


def _family(cidr: str) -> str:
    return f"ipv{ipaddress.ip_network(cidr).version}"


def affinity_key(node: str, cidr: str) -> str:
    if not node or "/" in node:
        raise ValueError(f"invalid node name {node!r}")
    return f"{IPAM_HOST_PREFIX}{node}/{_family(cidr)}/block/{cidr_to_key_part(cidr)}"


def affinity_prefix(node: str | None = None) -> str:
    return IPAM_HOST_PREFIX if node is None else f"{IPAM_HOST_PREFIX}{node}/"


def parse_affinity_key(key: str) -> tuple[str, str] | None:
    """``/calico/ipam/v2/host/n1/ipv4/block/10.0.0.0-26`` -> ("n1", "10.0.0.0/26"); else None.

    None also when the family segment does not match the CIDR's family.
    """
    if not key.startswith(IPAM_HOST_PREFIX):
        return None
    parts = key[len(IPAM_HOST_PREFIX) :].split("/")
    if len(parts) != 4 or not parts[0] or parts[2] != "block" or parts[1] not in ("ipv4", "ipv6"):
        return None
    try:
        cidr = key_part_to_cidr(parts[3])
    except ValueError:
        return None
    if _family(cidr) != parts[1]:
        return None
    return parts[0], cidr


def block_key(cidr: str) -> str:
    return f"{IPAM_BLOCK_PREFIX}{_family(cidr)}/block/{cidr_to_key_part(cidr)}"


def parse_block_key(key: str) -> str | None:
    """``/calico/ipam/v2/assignment/ipv4/block/10.0.0.0-26`` -> ``10.0.0.0/26``; else None."""
    if not key.startswith(IPAM_BLOCK_PREFIX):
        return None
    parts = key[len(IPAM_BLOCK_PREFIX) :].split("/")
    if len(parts) != 3 or parts[1] != "block" or parts[0] not in ("ipv4", "ipv6"):
        return None
    try:
        cidr = key_part_to_cidr(parts[2])
    except ValueError:
        return None
    return cidr if _family(cidr) == parts[0] else None


def handle_key(handle_id: str) -> str:
    if not handle_id or "/" in handle_id:
        raise ValueError(f"invalid handle id {handle_id!r}")
    return IPAM_HANDLE_PREFIX + handle_id
