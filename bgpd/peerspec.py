"""`PeerSpec`: one BGP session this node wants, as planned from config.

Produced by peer planning (bgpd/peers.py, pure) from a config Snapshot and this
node's name; consumed by the speaker backend (renders its config, diffs sessions on
reload) and by the daemon (peer types for /status, rib PeerRefs). Every field
is already validated; the renderer still quotes/rejects anything odd.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from rib.inputs import NextHopMode  # one enum for planning and policy

__all__ = ["NextHopMode", "PeerSpec", "PeerType"]


class PeerType(enum.StrEnum):
    MESH = "node-to-node mesh"
    GLOBAL = "global"
    NODE = "node specific"


@dataclass(frozen=True, slots=True)
class PeerSpec:
    address: str  # peer IP (v4 or v6), no port
    peer_as: int
    local_address: str  # our source address for this session
    local_as: int
    router_id: str
    peer_type: PeerType
    port: int = 179
    passive: bool = False  # True: wait for the peer to dial (mesh: the higher IP)
    password: str | None = None  # never logged / shown
    hold_time: int = 90
    keepalive_time: int | None = None  # planned (Calico keepaliveTime); ExaBGP: hold / 3
    graceful_restart_time: int = 120  # our restart time advertised (maxRestartTime)
    ttl_security: int = 0  # GTSM hops, 0 = off
    rr_client: bool = False  # we reflect routes for this peer
    rr_cluster_id: str | None = None  # the cluster id we reflect with (rr_client only)
    next_hop_mode: NextHopMode = NextHopMode.AUTO
    num_allowed_local_as: int = 0
    max_prefixes: int | None = None
    max_prefix_action: str = "stop"  # "stop" accepting, or "teardown"
    filters: tuple[str, ...] = ()  # BGPFilter names, in order
    name: str = ""  # Calico's BIRD protocol name: Mesh_10_0_0_2, Global_..., Node_..._port_N
    resource: str = ""  # the BGPPeer it comes from ("" for the mesh)
    peer_node: str | None = None  # the Calico/podbgp node on the other side, if one is
    bind_source: bool = True  # False: sourceAddress None, the kernel picks the source
    reachable_by: str | None = None  # gateway of a /32 route to the peer (BGPPeer reachableBy)
    add_paths: bool = True  # RFC 7911 ADD-PATH send/receive, as Calico's template sets

    @property
    def ipv6(self) -> bool:
        return ":" in self.address

    @property
    def key(self) -> tuple[str, int]:
        return (self.address, self.port)
