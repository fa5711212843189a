"""What a BGP speaker tells the node core: typed, backend-neutral events.

A speaker backend (today ``bgpd.exabgp``) turns its own wire format into these
records; the core (``bgpd.node``) consumes them and never sees JSON, bytes or
sockets. ``Update`` carries ``rib.Path``/``rib.Withdraw`` records ready for
``rib.Rib.update``. See docs/architecture.md ("The speaker interface").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from rib.path import Path, PeerRef, Withdraw

# ------------------------------------------------------------------ events


@dataclass(frozen=True, slots=True)
class SessionConnected:
    """TCP is up, OPEN not yet exchanged."""

    neighbor: str


@dataclass(frozen=True, slots=True)
class SessionUp:
    neighbor: str
    local_address: str
    peer_as: int
    local_as: int


@dataclass(frozen=True, slots=True)
class SessionDown:
    neighbor: str
    reason: str  # the backend's own words, for the log
    # Why, in a fixed vocabulary for metrics: notification-sent / notification-received
    # (code, subcode set), connection-lost, removed, shutdown, graceful-close,
    # collision, internal-error (the backend failed: no NOTIFICATION went out),
    # speaker-exited, other.
    cause: str = "other"
    code: int = 0
    subcode: int = 0


@dataclass(frozen=True, slots=True)
class GracefulRestartCap:
    """The peer's graceful-restart capability (RFC 4724 §3)."""

    time: int  # seconds the peer asks us to keep its routes
    restarting: bool  # R flag: the peer has just restarted
    families: tuple[tuple[str, str], ...]  # families the peer will preserve routes for
    forwarding: tuple[tuple[str, str], ...]  # families whose forwarding state survived


@dataclass(frozen=True, slots=True)
class Open:
    neighbor: str
    direction: str  # "receive" (the peer's OPEN) or "send"
    asn: int  # 4-octet AS if the peer sent one
    hold_time: int
    router_id: str
    families: tuple[tuple[str, str], ...]  # multiprotocol (afi, safi)
    graceful_restart: GracefulRestartCap | None
    route_refresh: bool
    asn4: bool = False  # the four-octet AS capability (RFC 6793)
    enhanced_route_refresh: bool = False  # RFC 7313
    # families the peer can receive several paths for (RFC 7911 ADD-PATH, its receive bit)
    add_path_receive: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class UpdateError:
    """One malformed part of an UPDATE and what was done with it (RFC 7606 §2, §3;
    RFC 4271 §4.3): the rest of the UPDATE was used.

    ``action``: ``treat-as-withdraw`` (its prefixes are withdrawn, not announced),
    ``attribute-discard`` (the attribute is dropped, the route kept),
    ``prefix-masked`` (host bits set beyond the length: cleared),
    ``nlri-discarded`` (an NLRI that is no prefix at all: dropped).
    """

    action: str
    reason: str  # what was wrong, naming the attribute or prefix
    prefixes: int = 0  # NLRI concerned


@dataclass(frozen=True, slots=True)
class Update:
    neighbor: str
    announced: list[Path]
    withdrawn: list[Withdraw]
    errors: tuple[UpdateError, ...] = ()


@dataclass(frozen=True, slots=True)
class EndOfRib:
    neighbor: str
    afi: str
    safi: str


@dataclass(frozen=True, slots=True)
class Notification:
    neighbor: str
    direction: str
    code: int
    subcode: int
    data: str  # text of the data field (shutdown communication), replaced if not UTF-8


@dataclass(frozen=True, slots=True)
class RouteRefresh:
    neighbor: str
    afi: str
    safi: str


@dataclass(frozen=True, slots=True)
class Shutdown:
    """The speaker process itself is stopping (its own notice, not a BGP NOTIFICATION)."""


@dataclass(frozen=True, slots=True)
class CommandAck:
    ok: bool  # "done" -> True, "error" -> False


@dataclass(frozen=True, slots=True)
class Ignored:
    """A well-formed message podbgp does not use (e.g. a keepalive)."""

    kind: str


@dataclass(frozen=True, slots=True)
class Garbage:
    line: str = field(repr=False)
    reason: str


Event = (
    SessionConnected | SessionUp | SessionDown | Open | Update | EndOfRib | Notification
    | RouteRefresh | Shutdown | CommandAck | Ignored | Garbage
)
PeerLookup = Callable[[str], PeerRef | None]
