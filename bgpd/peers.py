"""Peer planning: config Snapshot + this node's name -> the BGP sessions it wants.

Pure (no I/O except reading password files through an injected callable).
Owned by bgpd/; the daemon calls `plan_peers` on every snapshot and hands the
result to the speaker, which diffs it against the running sessions.

Calico semantics (confd's BIRD templates / bgp processor):
- Full mesh (BGPConfiguration nodeToNodeMeshEnabled, default on) between all
  Nodes with a BGP address of the same family. Only the lower address of a
  pair dials; the higher is passive, so graceful restart is not aborted by
  connection collisions. A node with a routeReflectorClusterID is outside the
  mesh on both sides.
- BGPPeer: applies to this node when ``node`` names it, ``nodeSelector``
  matches its labels, or neither is set (global). It peers with ``peerIP``
  or with every other podbgp node that ``peerSelector`` selects (those use the
  lower-dials rule too, and take the selected node's AS when asNumber is unset).
- iBGP peers are route-reflector clients when this node has a cluster id and
  the peer node does not share it.
- The most specific definition of one peer address wins: node-specific over
  global over mesh.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import structlog

from bgpd.peerspec import NextHopMode, PeerSpec, PeerType
from config.model import BGPPeer, duration_seconds, split_peer_ip
from config.selector import SelectorError, parse_selector
from config.snapshot import Snapshot

log = structlog.get_logger(__name__)

MAX_PREFIXES_ANNOTATION = "podbgp.io/max-prefixes"
MAX_PREFIX_ACTION_ANNOTATION = "podbgp.io/max-prefix-action"
DEFAULT_HOLD_TIME = 90
DEFAULT_RESTART_TIME = 120

PasswordReader = Callable[[str, str], str | None]


@dataclass(frozen=True)
class LocalNode:
    """What this node is, as the plan saw it."""

    name: str
    asn: int
    router_id: str
    ipv4: str | None
    ipv6: str | None
    cluster_id: str | None
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def addresses(self) -> tuple[str, ...]:
        return tuple(a for a in (self.ipv4, self.ipv6) if a)


@dataclass(frozen=True)
class PeerPlan:
    node: LocalNode | None  # None: this node has no Node resource / BGP address yet
    peers: tuple[PeerSpec, ...]
    problems: tuple[str, ...] = ()  # readable reasons for peers that were left out


def router_id_for(ipv4: str | None, ipv6: str | None, name: str) -> str:
    """Calico: the IPv4 address; for IPv6-only nodes a stable 32-bit hash of the name."""
    if ipv4:
        return ipv4
    digest = hashlib.sha256((ipv6 or name).encode()).digest()[:4]
    return str(ipaddress.IPv4Address(digest))


def local_node(snap: Snapshot, name: str) -> LocalNode | None:
    res = snap.nodes.get(name)
    if res is None:
        return None
    v4, v6 = snap.node_bgp_addresses(name)
    if not v4 and not v6:
        return None
    bgp = res.spec.bgp
    return LocalNode(
        name=name, asn=snap.node_asn(name), router_id=router_id_for(v4, v6, name),
        ipv4=v4, ipv6=v6,
        cluster_id=str(bgp.route_reflector_cluster_id) if bgp and bgp.route_reflector_cluster_id
        else None,
        labels=dict(res.metadata.labels or {}),
    )


def _lower_dials(local: str, remote: str) -> bool:
    """True when we are passive (the remote has the lower address and dials)."""
    return ipaddress.ip_address(remote) < ipaddress.ip_address(local)


def _seconds(text: str | None, default: int) -> int:
    return int(duration_seconds(text)) if text else default


def plan_peers(snap: Snapshot, node_name: str,
               read_password: PasswordReader | None = None) -> PeerPlan:
    me = local_node(snap, node_name)
    if me is None:
        return PeerPlan(None, (), (f"node {node_name!r} has no Node resource with a BGP address",))
    bgpconf = snap.effective_bgp_config(node_name)
    problems: list[str] = []
    by_key: dict[tuple[str, int], PeerSpec] = {}
    rank = {PeerType.MESH: 0, PeerType.GLOBAL: 1, PeerType.NODE: 2}

    def add(spec: PeerSpec, reverse: bool = False) -> None:
        if spec.address in me.addresses:
            return  # never peer with ourselves
        old = by_key.get(spec.key)
        if reverse:
            # A reverse peering fills a gap; any explicit definition stays (confd emits
            # reverse peerings last and never over an existing one).
            if old is None or old.peer_type == PeerType.MESH:
                by_key[spec.key] = spec
        elif old is None or rank[spec.peer_type] > rank[old.peer_type]:
            by_key[spec.key] = spec

    def password(ref, what: str) -> str | None:
        if ref is None or ref.secret_key_ref is None:
            return None
        r = ref.secret_key_ref
        value = read_password(r.name, r.key) if read_password else None
        if value is None:
            problems.append(f"{what}: password secret {r.name}/{r.key} not found")
        return value

    def other_node_info(name: str):
        res = snap.nodes[name]
        v4, v6 = snap.node_bgp_addresses(name)
        bgp = res.spec.bgp
        cid = str(bgp.route_reflector_cluster_id) if bgp and bgp.route_reflector_cluster_id else None
        return v4, v6, cid, snap.node_asn(name)

    def rr_client(peer_asn: int, peer_cluster: str | None) -> bool:
        return bool(me.cluster_id) and peer_asn == me.asn and peer_cluster != me.cluster_id

    # ---- full mesh
    if bgpconf.node_to_node_mesh_enabled and not me.cluster_id:
        mesh_pw = password(bgpconf.node_mesh_password, "node-to-node mesh")
        restart = _seconds(bgpconf.node_mesh_max_restart_time, DEFAULT_RESTART_TIME)
        for other in sorted(snap.nodes):
            if other == node_name:
                continue
            v4, v6, cid, asn = other_node_info(other)
            if cid:
                continue
            for mine, theirs in ((me.ipv4, v4), (me.ipv6, v6)):
                if not mine or not theirs:
                    continue
                add(PeerSpec(
                    address=theirs, peer_as=asn, local_address=mine, local_as=me.asn,
                    router_id=me.router_id, peer_type=PeerType.MESH,
                    passive=_lower_dials(mine, theirs), password=mesh_pw,
                    graceful_restart_time=restart, name=f"Mesh_{other}", peer_node=other,
                ))

    def peer_fields(name: str, res: BGPPeer, ptype: PeerType) -> dict:
        """The session settings a BGPPeer gives, whichever side of it we are on."""
        spec = res.spec
        pw = password(spec.password, f"BGPPeer {name!r}")
        common = dict(
            router_id=me.router_id, peer_type=ptype, password=pw,
            graceful_restart_time=_seconds(spec.max_restart_time, DEFAULT_RESTART_TIME),
            ttl_security=spec.ttl_security or 0,
            num_allowed_local_as=spec.num_allowed_local_as_numbers or 0,
            next_hop_mode=NextHopMode.KEEP if spec.keep_original_next_hop
            else NextHopMode(spec.next_hop_mode or "Auto"),
            filters=tuple(spec.filters or ()), name=name,
        )
        if spec.keepalive_time:
            ka = max(1, _seconds(spec.keepalive_time, 30))
            common.update(keepalive_time=ka, hold_time=max(3, ka * 3))
        ann = res.metadata.annotations or {}
        if MAX_PREFIXES_ANNOTATION in ann:
            try:
                common["max_prefixes"] = int(ann[MAX_PREFIXES_ANNOTATION])
                if common["max_prefixes"] < 1:
                    raise ValueError
            except ValueError:
                problems.append(f"BGPPeer {name!r}: annotation {MAX_PREFIXES_ANNOTATION}="
                                f"{ann[MAX_PREFIXES_ANNOTATION]!r} is not a positive integer")
                common.pop("max_prefixes", None)
        action = ann.get(MAX_PREFIX_ACTION_ANNOTATION, "stop")
        if action not in ("stop", "teardown"):
            problems.append(f"BGPPeer {name!r}: annotation {MAX_PREFIX_ACTION_ANNOTATION}="
                            f"{action!r} is not stop or teardown; using stop")
            action = "stop"
        common["max_prefix_action"] = action
        return common

    # ---- BGPPeer resources
    for name in sorted(snap.bgp_peers):
        res: BGPPeer = snap.bgp_peers[name]
        spec = res.spec
        try:
            if spec.node:
                if spec.node != node_name:
                    continue
                ptype = PeerType.NODE
            elif spec.node_selector:
                if not parse_selector(spec.node_selector).matches(me.labels):
                    continue
                ptype = PeerType.NODE
            else:
                ptype = PeerType.GLOBAL
        except SelectorError as e:  # validated on parse; kept for safety
            problems.append(f"BGPPeer {name!r}: {e}")
            continue
        common = peer_fields(name, res, ptype)
        local_as = spec.local_as_number or me.asn

        if spec.peer_ip:
            ip, port = split_peer_ip(spec.peer_ip)
            mine = me.ipv6 if ":" in ip else me.ipv4
            if not mine:
                problems.append(f"BGPPeer {name!r}: peer {ip} but this node has no "
                                f"{'IPv6' if ':' in ip else 'IPv4'} BGP address")
                continue
            peer_as = spec.as_number
            if peer_as is None:
                problems.append(f"BGPPeer {name!r}: peerIP {ip} without asNumber")
                continue
            peer_node = next((n for n in snap.nodes if ip in snap.node_bgp_addresses(n)), None)
            pcid = other_node_info(peer_node)[2] if peer_node else None
            add(PeerSpec(address=ip, port=port or 179, peer_as=peer_as, local_address=mine,
                         local_as=local_as, passive=False,
                         rr_client=rr_client(peer_as, pcid), peer_node=peer_node, **common))
        elif spec.peer_selector:
            sel = parse_selector(spec.peer_selector)
            for other in sorted(snap.nodes):
                if other == node_name:
                    continue
                labels = snap.nodes[other].metadata.labels or {}
                if not sel.matches(labels):
                    continue
                v4, v6, cid, asn = other_node_info(other)
                peer_as = spec.as_number or asn
                for mine, theirs in ((me.ipv4, v4), (me.ipv6, v6)):
                    if mine and theirs:
                        add(PeerSpec(address=theirs, peer_as=peer_as, local_address=mine,
                                     local_as=local_as, passive=_lower_dials(mine, theirs),
                                     rr_client=rr_client(peer_as, cid), peer_node=other,
                                     **common))
    # ---- reverse peerings (Calico confd's second pass): a BGPPeer whose peerSelector
    # selects this node, or whose peerIP/asNumber is this node, makes this node peer
    # back with the nodes it applies to (node / nodeSelector / all for a global one).
    # Without it `nodeSelector: all(), peerSelector: route-reflector == 'true'` (the
    # documented RR setup) leaves the reflector with no sessions to its clients.
    for name in sorted(snap.bgp_peers):
        res = snap.bgp_peers[name]
        spec = res.spec
        try:
            if spec.peer_selector:
                if not parse_selector(spec.peer_selector).matches(me.labels):
                    continue
                families = (4, 6)
            elif spec.peer_ip:
                ip, _port = split_peer_ip(spec.peer_ip)
                if ip not in me.addresses or (spec.as_number or me.asn) != me.asn:
                    continue
                families = (6,) if ":" in ip else (4,)
            else:
                continue
            if spec.node:
                sources = [spec.node]
            elif spec.node_selector:
                sel = parse_selector(spec.node_selector)
                sources = [n for n in sorted(snap.nodes)
                           if sel.matches(snap.nodes[n].metadata.labels or {})]
            else:
                sources = sorted(snap.nodes)
        except SelectorError as e:  # validated on parse; kept for safety
            problems.append(f"BGPPeer {name!r}: {e}")
            continue
        sources = [n for n in sources if n != node_name and n in snap.nodes]
        if not sources:
            continue
        common = peer_fields(name, res, PeerType.NODE)
        for other in sources:
            v4, v6, cid, asn = other_node_info(other)
            for fam, mine, theirs in ((4, me.ipv4, v4), (6, me.ipv6, v6)):
                if fam in families and mine and theirs:
                    add(PeerSpec(address=theirs, peer_as=asn, local_address=mine,
                                 local_as=me.asn, passive=_lower_dials(mine, theirs),
                                 rr_client=rr_client(asn, cid), peer_node=other, **common),
                        reverse=True)
    peers = tuple(sorted(by_key.values(), key=lambda s: (ipaddress.ip_address(s.address).version,
                                                          ipaddress.ip_address(s.address), s.port)))
    return PeerPlan(me, peers, tuple(problems))


def secret_file_reader(secrets_dir: str) -> PasswordReader:
    """Passwords from files laid out like a mounted Kubernetes secret: DIR/<name>/<key>."""
    import os

    def read(name: str, key: str) -> str | None:
        if "/" in name or "/" in key or name.startswith(".") or key.startswith("."):
            return None
        path = os.path.join(secrets_dir, name, key)
        try:
            with open(path, encoding="utf-8") as f:
                return f.read().rstrip("\n")
        except OSError:
            return None

    return read
