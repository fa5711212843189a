"""The speaker interface: what the node needs from a BGP implementation.

A backend (today ``bgpd.exabgp``, ExaBGP as a supervised child) runs the BGP
sessions: FSM, timers, OPEN negotiation, MD5, UPDATE encoding. The daemon
drives it only through the names below, so a second backend would be one more
folder beside ``bgpd/exabgp/`` (the way MetalLB's ``internal/bgp`` holds its
native and FRR session managers behind one interface). The composition root
(``bgpd.main``) is the one place that picks the backend.

What a backend provides (``Backend``):
- ``new_speaker(SpeakerConfig) -> Speaker``;
- ``build_info()``: labels for ``podbgp_build_info`` (e.g. the backend's version).

What a speaker does (``Speaker``):
- ``set_peers(specs)``: make the configured sessions ``specs``; unchanged ones keep
  running. Returns the sessions it could not configure, each with the reason (one
  bad session never stops the others; a running one keeps its old settings).
  Raises ``PeerConfigError`` (and changes nothing) when it cannot configure the
  node itself (router id, addresses);
- ``update_exports_many(changes, end_of_rib=keys)``: apply deltas to the sets of
  routes advertised to many peers at once: peer -> (full, {prefix: attributes, or
  None to withdraw}); ``full`` replaces the peer's whole set. The speaker sends only
  differences (a route going to many peers with the same attributes may be one
  command) and re-sends everything after its own restart. Each of ``end_of_rib``
  then gets End-of-RIB for its family (RFC 4724 §2) right behind its routes, in
  the same stream (the node names the sessions whose whole initial set this is:
  waiting for the routes' acknowledgements first took up to a minute at 200 peers);
- ``end_of_rib(keys)``: End-of-RIB alone, for each session's family;
- ``teardown(key)``: end one session (max-prefix);
- ``events()``: ``bgpd.events`` records, in the order the backend saw them;
- ``peer_ref(address)``: the ``rib.PeerRef`` the backend tags Paths from that
  neighbor with (None: not configured);
- optionally ``compact()`` (may be a coroutine): give back the room a large
  withdrawal left in the backend's tables (called by bgpd.ops.memory);
- ``start()``, ``stop(graceful_restart)``, and ``stats`` (plain counters read by
  the metrics: ``updates_received``, ``restarts``, ``garbage_lines``); optionally
  ``events_pending()``, events not yet taken, for ``podbgp_speaker_events_pending``).

See docs/architecture.md ("The speaker interface").
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Hashable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path as FsPath
from typing import Protocol

from bgpd import events as ev
from bgpd.peerspec import PeerSpec
from rib.path import PeerKind, PeerRef

PeerKey = tuple[str, int]


class PeerConfigError(ValueError):
    """A backend cannot configure a session as planned; the message names the session
    and the field. Raised by ``Speaker.set_peers`` before anything changed."""


@dataclass(frozen=True, slots=True)
class SpeakerConfig:
    """What a backend needs to start one node's speaker."""

    node_name: str
    router_id: str
    addresses: tuple[str, ...]  # local addresses to listen on and speak from
    listen_port: int
    state_dir: FsPath  # the daemon's state directory; a backend keeps its files below it


class SpeakerStats(Protocol):
    updates_received: int
    restarts: int
    garbage_lines: int


class Speaker(Protocol):
    stats: SpeakerStats

    async def start(self) -> None: ...

    async def stop(self, graceful_restart: bool = False) -> None: ...

    async def set_peers(self, specs: Iterable[PeerSpec]) -> list[tuple[PeerSpec, str]]: ...

    async def update_exports_many(
            self, changes: Mapping[PeerKey, tuple[bool, Mapping[str, Hashable | None]]],
            end_of_rib: Iterable[PeerKey] = ()) -> None: ...

    async def end_of_rib(self, keys: Iterable[PeerKey]) -> None: ...

    async def teardown(self, peer_key: PeerKey) -> None: ...

    def events(self) -> AsyncIterator[ev.Event]: ...

    def peer_ref(self, address: str) -> PeerRef | None: ...


class Backend(Protocol):
    """A BGP implementation podbgp can drive (a module such as ``bgpd.exabgp``)."""

    def new_speaker(self, config: SpeakerConfig) -> Speaker: ...

    def build_info(self) -> dict[str, str]: ...


def default_peer_ref(spec: PeerSpec, open_msg: ev.Open | None) -> PeerRef:
    """The PeerRef a backend tags one session's Paths with: one per session, with the
    peer's BGP identifier once its OPEN is seen."""
    return PeerRef(
        address=spec.address,
        asn=spec.peer_as,
        router_id=open_msg.router_id if open_msg else "0.0.0.0",
        kind=PeerKind.IBGP if spec.peer_as == spec.local_as else PeerKind.EBGP,
        rr_client=spec.rr_client,
        local_asn=spec.local_as,
    )
