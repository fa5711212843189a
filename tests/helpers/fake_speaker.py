"""A fake BGP backend for in-process tests of the node and the daemon shell.

``FakeBackend`` implements ``bgpd.speaker.Backend``; each ``FakeSpeaker`` it
makes implements ``bgpd.speaker.Speaker`` the way the real one behaves towards
the daemon: ``set_peers`` replaces the session set (or raises
``PeerConfigError`` when told to), ``update_exports_many`` applies deltas to
peers' desired export sets, End-of-RIB and teardowns are recorded, events come
out of ``events()`` in the order the test emits them. Test-side drivers
(``session_up``, ``announce``, ``peer_end_of_rib``, ...) build the events a real peer would cause,
with Paths tagged by the speaker's own ``peer_ref`` like the real parser does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass

from bgpd import events as ev
from bgpd.peerspec import PeerSpec
from bgpd.speaker import PeerConfigError, SpeakerConfig, default_peer_ref
from rib.path import Path, PeerRef, Withdraw, paths_for

PeerKey = tuple[str, int]


@dataclass
class FakeStats:
    updates_received: int = 0
    restarts: int = 0
    garbage_lines: int = 0


class FakeSpeaker:
    def __init__(self, config: SpeakerConfig) -> None:
        self.config = config
        self.stats = FakeStats()
        self.peers: dict[PeerKey, PeerSpec] = {}
        self.exports: dict[PeerKey, dict[str, Hashable]] = {}  # desired set per peer
        self.export_calls: list[tuple[PeerKey, int, int, bool]] = []  # key, +n, -n, full
        self.eor_sent: list[PeerKey] = []
        self.teardowns: list[PeerKey] = []
        self.set_peers_calls = 0
        self.reject: str | None = None  # the next set_peers raises PeerConfigError(reject)
        self.unconfigurable: dict[str, str] = {}  # address -> why set_peers leaves it out
        self.fail_teardown: Exception | None = None
        self.fail_exports: Exception | None = None
        self.started = False
        self.start_error: Exception | None = None
        self.stopped: bool | None = None  # graceful_restart of stop(), None: running
        self._opens: dict[str, ev.Open] = {}
        self._events: asyncio.Queue[ev.Event] = asyncio.Queue()

    # ------------------------------------------------------- the interface
    async def start(self) -> None:
        if self.start_error is not None:
            raise self.start_error
        self.started = True

    async def stop(self, graceful_restart: bool = False) -> None:
        self.stopped = graceful_restart

    async def set_peers(self, specs: Iterable[PeerSpec]) -> list[tuple[PeerSpec, str]]:
        self.set_peers_calls += 1
        specs = tuple(specs)
        if self.reject is not None:
            why, self.reject = self.reject, None
            raise PeerConfigError(why)
        left_out = [(s, self.unconfigurable[s.address]) for s in specs
                    if s.address in self.unconfigurable]
        new = {s.key: s for s in specs if s.address not in self.unconfigurable}
        for spec, _ in left_out:  # a running session keeps its last good settings
            if spec.key in self.peers:
                new[spec.key] = self.peers[spec.key]
        self.peers = new
        for key in [k for k in self.exports if k not in self.peers]:
            del self.exports[key]
        return left_out

    async def update_exports_many(
            self, changes: Mapping[PeerKey, tuple[bool, Mapping[str, Hashable | None]]],
            end_of_rib: Iterable[PeerKey] = ()) -> None:
        if self.fail_exports is not None:
            raise self.fail_exports
        for key, (full, routes) in changes.items():
            desired = self.exports.setdefault(key, {})
            if full:
                desired.clear()
            added = withdrawn = 0
            for p, attrs in routes.items():
                if attrs is None:
                    desired.pop(p, None)
                    withdrawn += 1
                else:
                    desired[p] = attrs
                    added += 1
            self.export_calls.append((key, added, withdrawn, full))
        self.eor_sent.extend(end_of_rib)

    async def end_of_rib(self, keys: Iterable[PeerKey]) -> None:
        self.eor_sent.extend(keys)

    async def teardown(self, peer_key: PeerKey) -> None:
        self.teardowns.append(peer_key)
        if self.fail_teardown is not None:
            raise self.fail_teardown

    async def events(self):
        while True:
            yield await self._events.get()

    def peer_ref(self, address: str) -> PeerRef | None:
        spec = self._spec(address)
        return None if spec is None else default_peer_ref(spec, self._opens.get(address))

    # ------------------------------------------------------- test drivers
    def _spec(self, address: str) -> PeerSpec | None:
        for key, spec in self.peers.items():
            if key[0] == address:
                return spec
        return None

    def emit(self, *events: ev.Event) -> None:
        for e in events:
            if isinstance(e, ev.Update):
                self.stats.updates_received += 1
            self._events.put_nowait(e)

    def session_up(self, address: str, gr_time: int = 0, router_id: str | None = None) -> None:
        """The peer's OPEN (with a graceful-restart capability if ``gr_time``), then Established."""
        spec = self._spec(address)
        assert spec is not None, f"{address}: not a configured peer"
        gr = ev.GracefulRestartCap(gr_time, False, (("ipv4", "unicast"),), ()) if gr_time else None
        op = ev.Open(address, "receive", spec.peer_as, 90, router_id or address,
                     (("ipv4", "unicast"),), gr, True)
        self._opens[address] = op
        self.emit(op, ev.SessionUp(address, spec.local_address, spec.peer_as, spec.local_as))

    def session_down(self, address: str, reason: str = "peer closed") -> None:
        self.emit(ev.SessionDown(address, reason))

    def paths(self, address: str, prefixes: Iterable[str], next_hop: str | None = None,
              **attrs) -> list[Path]:
        ref = self.peer_ref(address)
        assert ref is not None, f"{address}: not a configured peer"
        if ref.kind.name == "EBGP" and "as_path" not in attrs:
            attrs["as_path"] = (ref.asn,)
        template = Path(prefix="0.0.0.0/0", next_hop=next_hop or address, peer=ref, **attrs)
        return paths_for(list(prefixes), template)

    def announce(self, address: str, prefixes: Iterable[str], next_hop: str | None = None,
                 **attrs) -> None:
        self.emit(ev.Update(address, self.paths(address, prefixes, next_hop, **attrs), []))

    def withdraw(self, address: str, prefixes: Iterable[str]) -> None:
        ref = self.peer_ref(address)
        assert ref is not None
        self.emit(ev.Update(address, [], [Withdraw(p, ref) for p in prefixes]))

    def peer_end_of_rib(self, address: str) -> None:
        """The peer finished its initial UPDATEs."""
        self.emit(ev.EndOfRib(address, "ipv4", "unicast"))

    def idle(self) -> bool:
        """Every emitted event has been taken by the daemon."""
        return self._events.empty()


class FakeBackend:
    """``bgpd.speaker.Backend``: remembers every speaker it made (the last one is current)."""

    def __init__(self) -> None:
        self.speakers: list[FakeSpeaker] = []
        self.start_error: Exception | None = None  # the next speaker's start() raises it

    def new_speaker(self, config: SpeakerConfig) -> FakeSpeaker:
        sp = FakeSpeaker(config)
        sp.start_error, self.start_error = self.start_error, None
        self.speakers.append(sp)
        return sp

    def build_info(self) -> dict[str, str]:
        return {"exabgp_version": "fake"}

    @property
    def speaker(self) -> FakeSpeaker:
        assert self.speakers, "no speaker started yet"
        return self.speakers[-1]
