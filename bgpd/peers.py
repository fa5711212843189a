"""Peer planning: config Snapshot + this node's name -> the BGP sessions it wants.

Pure (no I/O except reading password files through an injected callable).
Owned by bgpd/; the daemon calls `plan_peers` on every snapshot and hands the
result to the speaker, which diffs it against the running sessions.

The rules are confd's, rule by rule (projectcalico/calico commit 87c15906,
``confd/pkg/backends/calico/client.go`` ``updatePeersV1`` and
``bgp_processor.go`` ``processPeers``/``buildPeerFromData``); the citations
below name the function each rule comes from. Calico's own test suite
(``confd/tests``) is checked against this module in tests/unit/test_confd_cases.py.

Sessions and their names (bgp_processor.go):
- Mesh (``processMeshPeers``): unless this node has a routeReflectorClusterID
  or the global ``nodeToNodeMeshEnabled`` is false, one session per other node
  with a BGP address of the family and no cluster id, named
  ``Mesh_<ip>``. The peer's AS is its own ``spec.bgp.asNumber``, else *this*
  node's AS; the port is the peer node's listen port (``node.<peer>``
  BGPConfiguration, else the global one, else 179). This node is passive
  toward a greater address, compared as Go compares strings
  (``if peerIP > currentNodeIP { peer.Passive = true }``): the greater
  address dials.
- BGPPeers (``updatePeersV1``), keyed by (peer IP, port): global ones
  (neither ``node`` nor ``nodeSelector``) first, then node-specific ones, then
  automatic reverse peerings; the first definition of a key wins and a
  node-specific one is dropped where a global one has the key. Global sessions
  are ``Global_<ip>``, node-specific and reverse ones ``Node_<ip>``, with
  ``_port_<n>`` when a port is set.
- A port is set by ``peerIP: ip:port``, or, for a peerIP that is a Calico
  node with the peer's AS, that node's listen port; ``peerSelector`` and
  reverse peerings take the selected node's listen port.
- Passive (``buildPeerFromData``): a *global* peerIP session to a Calico node
  waits when the peer's address compares greater; node-specific and
  selector sessions always dial.
- Route-reflector client: this node has a cluster id, the session is iBGP
  (peer AS = the local AS used for it), and the peer is not known to share the
  cluster id (only selector and reverse peerings know the peer's).
- ``sourceAddress: None``: no source address (the kernel picks one);
  otherwise this node's address of the family.
- ``keepOriginalNextHop`` is Keep for eBGP sessions only; ``nextHopMode``
  wins over it.
- ``reversePeering: Manual`` suppresses the automatic reverse peering.
- ``localWorkloadSelector`` peers are not planned (podbgp has no local
  workload peering); each is reported as a problem.

Where confd would emit several sessions podbgp cannot run side by side (its
speaker and RIB know a peer by address: two ports to one address, or a mesh
and a BGPPeer session to one node), one runs — the most specific (node, then
global, then mesh), then the lower port — and the others are returned in
``PeerPlan.rejected`` with the reason, shown as "not configured" in /status.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import structlog

from bgpd.peerspec import NextHopMode, PeerSpec, PeerType
from config.model import DEFAULT_AS_NUMBER, BGPPeer, duration_seconds, split_peer_ip
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

    def address(self, version: int) -> str | None:
        return self.ipv4 if version == 4 else self.ipv6


@dataclass(frozen=True)
class PeerPlan:
    node: LocalNode | None  # None: this node has no Node resource / BGP address yet
    peers: tuple[PeerSpec, ...]  # the sessions to run
    problems: tuple[str, ...] = ()  # readable reasons for peers that were left out
    # Sessions Calico would configure that cannot run here, each with the reason.
    rejected: tuple[tuple[PeerSpec, str], ...] = ()

    @property
    def planned(self) -> tuple[PeerSpec, ...]:
        """Every session confd's rules give, runnable or not."""
        return (*self.peers, *(spec for spec, _ in self.rejected))


def router_id_for(ipv4: str | None, ipv6: str | None, name: str) -> str:
    """Calico: the IPv4 address; for IPv6-only nodes (where Calico's docs say to set
    CALICO_ROUTER_ID=hash) what confd then uses: the first 4 bytes of the SHA-256 of
    the node name, a first byte above 223 less 32 (confd/pkg/resource/template/util.go
    HashToIPv4, bgp_processor.go)."""
    if ipv4:
        return ipv4
    b = hashlib.sha256(name.encode()).digest()[:4]
    return ".".join(str(x) for x in (b[0] - 32 if b[0] > 223 else b[0], *b[1:]))


def _cluster_id(snap: Snapshot, name: str) -> str | None:
    res = snap.nodes.get(name)
    bgp = res.spec.bgp if res is not None else None
    return str(bgp.route_reflector_cluster_id) if bgp and bgp.route_reflector_cluster_id else None


def local_node(snap: Snapshot, name: str) -> LocalNode | None:
    res = snap.nodes.get(name)
    if res is None:
        return None
    v4, v6 = snap.node_bgp_addresses(name)
    if not v4 and not v6:
        return None
    return LocalNode(
        name=name, asn=snap.node_asn(name), router_id=router_id_for(v4, v6, name),
        ipv4=v4, ipv6=v6, cluster_id=_cluster_id(snap, name),
        labels=dict(res.metadata.labels or {}),
    )


def greater_dials(local: str, remote: str) -> bool:
    """True when this side waits (is passive): the remote address compares greater.

    Calico compares the address strings (bgp_processor.go ``peerIP > currentNodeIP``,
    Go string order = byte order), so 10.0.0.10 < 10.0.0.9; both sides of a
    mixed calico-node/podbgp mesh must agree, so podbgp compares the same way.
    """
    return remote > local


def _seconds(text: str | None) -> int | None:
    # confd rounds a duration to whole seconds (client.go setPeerConfigFieldsFromV3Resource)
    return None if not text else round(duration_seconds(text))


def _listen_port(snap: Snapshot, node: str) -> int | None:
    """The node's BGP listen port if configured (``node.<node>``, else ``default``)."""
    for name in (f"node.{node}", "default"):
        conf = snap.bgp_configurations.get(name)
        if conf is not None and conf.spec.listen_port:
            return conf.spec.listen_port
    return None


def _global_as(snap: Snapshot) -> int:
    conf = snap.bgp_configurations.get("default")
    return conf.spec.as_number if conf and conf.spec.as_number else DEFAULT_AS_NUMBER


def _label_nodes(snap: Snapshot, selector: str) -> list[str]:
    sel = parse_selector(selector)
    return [n for n in sorted(snap.nodes) if sel.matches(snap.nodes[n].metadata.labels or {})]


@dataclass
class _Peering:
    """One entry of confd's peering table (its backends.BGPPeer)."""

    ip: str
    port: int | None
    res: BGPPeer
    peer_as: int | None
    ptype: PeerType
    calico_node: bool = False
    cluster_id: str | None = None  # known only for selector / reverse peerings
    peer_node: str | None = None
    reverse: bool = False


def _ip_name(ip: str) -> str:
    return ip.replace(".", "_").replace(":", "_")


def plan_peers(snap: Snapshot, node_name: str,
               read_password: PasswordReader | None = None) -> PeerPlan:
    me = local_node(snap, node_name)
    if me is None:
        return PeerPlan(None, (), (f"node {node_name!r} has no Node resource with a BGP address",))
    problems: list[str] = []
    glob = snap.bgp_configurations.get("default")
    gspec = glob.spec if glob is not None else None
    global_as = _global_as(snap)
    # Node IPs and their nodes (client.go c.nodeIPs, nodeToBGPFields).
    node_ips: dict[str, str] = {}
    for n in sorted(snap.nodes):
        for addr in snap.node_bgp_addresses(n):
            if addr:
                node_ips.setdefault(addr, n)

    def password(ref, what: str) -> str | None:
        if ref is None or ref.secret_key_ref is None:
            return None
        r = ref.secret_key_ref
        value = read_password(r.name, r.key) if read_password else None
        if value is None:
            problems.append(f"{what}: password secret {r.name}/{r.key} not found")
        return value

    sessions: list[PeerSpec] = []

    # ---- full mesh (bgp_processor.go processMeshPeers)
    mesh_on = not (gspec and gspec.node_to_node_mesh_enabled is False)
    if mesh_on and not me.cluster_id:
        mesh_pw = password(gspec.node_mesh_password if gspec else None, "node-to-node mesh")
        restart = _seconds(gspec.node_mesh_max_restart_time if gspec else None)
        for other in sorted(snap.nodes):
            if _cluster_id(snap, other):
                continue
            for version in (4, 6):
                mine = me.address(version)
                theirs = snap.node_bgp_addresses(other)[0 if version == 4 else 1]
                if not mine or not theirs or theirs == mine:
                    continue
                res = snap.nodes[other]
                own_as = res.spec.bgp.as_number if res.spec.bgp else None
                sessions.append(PeerSpec(
                    address=theirs, port=_listen_port(snap, other) or 179,
                    peer_as=own_as or me.asn, local_address=mine, local_as=me.asn,
                    router_id=me.router_id, peer_type=PeerType.MESH,
                    passive=greater_dials(mine, theirs), password=mesh_pw,
                    graceful_restart_time=restart or DEFAULT_RESTART_TIME,
                    name=f"Mesh_{_ip_name(theirs)}", peer_node=other,
                ))

    # ---- BGPPeer resources (client.go updatePeersV1, for this node)
    table: dict[tuple[str, int | None], _Peering] = {}
    global_keys: set[tuple[str, int | None]] = set()

    def node_peerings(name: str, res: BGPPeer, v4: bool, v6: bool, ptype: PeerType,
                      reverse: bool) -> list[_Peering]:
        """client.go nodeAsBGPPeers: a Calico node as the peer."""
        out = []
        v4addr, v6addr = snap.node_bgp_addresses(name)
        node_res = snap.nodes[name]
        own_as = node_res.spec.bgp.as_number if node_res.spec.bgp else None
        for want, addr in ((v4, v4addr), (v6, v6addr)):
            if want and addr:
                out.append(_Peering(addr, _listen_port(snap, name), res, own_as or global_as,
                                    ptype, cluster_id=_cluster_id(snap, name) or None,
                                    peer_node=name, reverse=reverse))
        return out

    def emit(key: tuple[str, int | None], peering: _Peering, is_global: bool) -> None:
        if key in table:
            return  # the first definition of a key wins
        if not is_global and key in global_keys:
            return  # a global peering to this ip/port exists
        table[key] = peering
        if is_global:
            global_keys.add(key)

    global_port = _listen_port(snap, "")  # no node is named "": the default's port

    def nodes_with_ip_port_and_as(ip: str, asn: int | None, port: int | None) -> list[str]:
        """client.go nodesWithIPPortAndAS (its if/else-if on the ports kept as it is)."""
        want_as = asn or global_as
        out = []
        for n in sorted(snap.nodes):
            if ip not in snap.node_bgp_addresses(n):
                continue
            bgp = snap.nodes[n].spec.bgp
            if ((bgp.as_number if bgp else None) or global_as) != want_as:
                continue
            if port is not None:
                conf = snap.bgp_configurations.get(f"node.{n}")
                node_port = conf.spec.listen_port if conf is not None else None
                if node_port and port != node_port:
                    continue
                elif global_port and port != global_port:
                    continue  # confd's else-if: also when the node's own port matched
            out.append(n)
        return out

    peers_by_name = sorted(snap.bgp_peers.items())
    for global_pass in (True, False):
        for name, res in peers_by_name:
            spec = res.spec
            if global_pass != spec.is_global:
                continue
            try:
                if spec.node_selector:
                    applies = node_name in _label_nodes(snap, spec.node_selector)
                elif spec.node:
                    applies = spec.node == node_name
                else:
                    applies = True
                if spec.local_workload_selector:
                    if applies:
                        problems.append(f"BGPPeer {name!r}: localWorkloadSelector (peering with "
                                        "workloads on this node) is not supported; left out")
                    continue
                ptype = PeerType.GLOBAL if global_pass else PeerType.NODE
                peerings: list[_Peering] = []
                if spec.peer_selector:
                    for other in _label_nodes(snap, spec.peer_selector):
                        peerings += node_peerings(other, res, True, True, ptype, False)
                elif spec.peer_ip:
                    ip, port = split_peer_ip(spec.peer_ip)
                    if port is None:
                        matches = nodes_with_ip_port_and_as(ip, spec.as_number, None)
                        if matches:
                            port = _listen_port(snap, matches[0])
                    peerings.append(_Peering(ip, port, res, spec.as_number, ptype,
                                             calico_node=ip in node_ips,
                                             peer_node=node_ips.get(ip)))
            except SelectorError as e:  # validated on parse; kept for safety
                problems.append(f"BGPPeer {name!r}: {e}")
                continue
            if not applies:
                continue
            for p in peerings:
                emit((p.ip, p.port), p, global_pass)

    # ---- automatic reverse peerings (client.go updatePeersV1, second pass)
    for name, res in peers_by_name:
        spec = res.spec
        if spec.reverse_peering == "Manual" or spec.local_workload_selector:
            continue
        try:
            if spec.peer_selector:
                locals_ = _label_nodes(snap, spec.peer_selector)
                v4 = v6 = True
            elif spec.peer_ip:
                ip, port = split_peer_ip(spec.peer_ip)
                locals_ = nodes_with_ip_port_and_as(ip, spec.as_number, port)
                v4, v6 = ":" not in ip, ":" in ip
            else:
                continue
            if node_name not in locals_:
                continue
            if spec.node_selector:
                sources = _label_nodes(snap, spec.node_selector)
            elif spec.node:
                sources = [spec.node] if spec.node in snap.nodes else []
            else:
                sources = sorted(snap.nodes)
        except SelectorError as e:
            problems.append(f"BGPPeer {name!r}: {e}")
            continue
        for other in sources:
            for p in node_peerings(other, res, v4, v6, PeerType.NODE, True):
                emit((p.ip, p.port), p, False)

    for p in table.values():
        spec = _build(p, me, snap, password, problems)
        if spec is not None:
            sessions.append(spec)
    runnable, rejected = _one_per_address(sessions)
    return PeerPlan(me, runnable, tuple(problems), rejected)


def _build(p: _Peering, me: LocalNode, snap: Snapshot, password, problems: list[str]
           ) -> PeerSpec | None:
    """bgp_processor.go buildPeerFromData (plus setPeerConfigFieldsFromV3Resource)."""
    version = 6 if ":" in p.ip else 4
    mine = me.address(version)
    name = p.res.metadata.name
    if not mine:
        if not p.reverse and p.peer_node is None:
            problems.append(f"BGPPeer {name!r}: peer {p.ip} but this node has no "
                            f"IPv{version} BGP address")
        return None
    if p.ip == mine:
        return None  # never peer with ourselves
    spec = p.res.spec
    if p.peer_as is None:
        problems.append(f"BGPPeer {name!r}: peerIP {p.ip} without asNumber")
        return None
    prefix = "Global" if p.ptype is PeerType.GLOBAL else "Node"
    bird_name = f"{prefix}_{_ip_name(p.ip)}" + (f"_port_{p.port}" if p.port else "")
    local_as = spec.local_as_number or me.asn
    if spec.next_hop_mode is not None:
        nh = NextHopMode(spec.next_hop_mode)
    elif spec.keep_original_next_hop and p.peer_as != local_as:
        nh = NextHopMode.KEEP  # the legacy field counts for eBGP only
    else:
        nh = NextHopMode.AUTO
    rr_client = bool(me.cluster_id) and p.peer_as == local_as and (
        p.cluster_id is None or p.cluster_id != me.cluster_id)
    # Passive: global (and local-workload) sessions to a Calico node with a greater address.
    passive = p.ptype is PeerType.GLOBAL and p.calico_node and greater_dials(mine, p.ip)
    fields = dict(
        address=p.ip, port=p.port or 179, peer_as=p.peer_as, local_address=mine,
        local_as=local_as, router_id=me.router_id, peer_type=p.ptype, passive=passive,
        password=password(spec.password, f"BGPPeer {name!r}"),
        graceful_restart_time=_seconds(spec.max_restart_time) or DEFAULT_RESTART_TIME,
        keepalive_time=_seconds(spec.keepalive_time),
        ttl_security=spec.ttl_security or 0,
        num_allowed_local_as=spec.num_allowed_local_as_numbers or 0,
        next_hop_mode=nh, rr_client=rr_client,
        rr_cluster_id=me.cluster_id if rr_client else None,
        bind_source=spec.source_address != "None",
        reachable_by=spec.reachable_by,
        filters=tuple(spec.filters or ()), name=bird_name, resource=name,
        peer_node=p.peer_node,
    )
    fields.update(_annotations(p.res, problems))
    return PeerSpec(**fields)


def _annotations(res: BGPPeer, problems: list[str]) -> dict:
    """podbgp's own per-peer knobs (max prefixes), from BGPPeer annotations."""
    name = res.metadata.name
    out: dict = {}
    ann = res.metadata.annotations or {}
    if MAX_PREFIXES_ANNOTATION in ann:
        try:
            out["max_prefixes"] = int(ann[MAX_PREFIXES_ANNOTATION])
            if out["max_prefixes"] < 1:
                raise ValueError
        except ValueError:
            problems.append(f"BGPPeer {name!r}: annotation {MAX_PREFIXES_ANNOTATION}="
                            f"{ann[MAX_PREFIXES_ANNOTATION]!r} is not a positive integer")
            out.pop("max_prefixes", None)
    action = ann.get(MAX_PREFIX_ACTION_ANNOTATION, "stop")
    if action not in ("stop", "teardown"):
        problems.append(f"BGPPeer {name!r}: annotation {MAX_PREFIX_ACTION_ANNOTATION}="
                        f"{action!r} is not stop or teardown; using stop")
        action = "stop"
    out["max_prefix_action"] = action
    return out


_RANK = {PeerType.NODE: 0, PeerType.GLOBAL: 1, PeerType.MESH: 2}


def _one_per_address(sessions: list[PeerSpec]) -> tuple[tuple[PeerSpec, ...],
                                                       tuple[tuple[PeerSpec, str], ...]]:
    """At most one session per peer address runs: node, then global, then mesh; then the
    lower port. The rest are rejected with the reason."""
    best: dict[str, PeerSpec] = {}
    for s in sorted(sessions, key=lambda s: (_RANK[s.peer_type], s.port, s.name)):
        best.setdefault(s.address, s)
    rejected = []
    for s in sessions:
        keep = best[s.address]
        if keep is not s:
            rejected.append((s, f"another session to {s.address} ({keep.name}) is configured; "
                             "podbgp runs one session per peer address"))

    def order(s: PeerSpec):
        ip = ipaddress.ip_address(s.address)
        return (ip.version, ip, s.port)

    return (tuple(sorted(best.values(), key=order)),
            tuple(sorted(rejected, key=lambda r: order(r[0]))))


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
