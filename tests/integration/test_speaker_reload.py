"""The speaker's start-up and reloads never reset a session they did not mean to.

ExaBGP (through bgpd.exabgp.speaker, as bgpd runs it) in namespace ``a``;
``tests.helpers.bgp_responders`` in namespace ``b`` answers as many peers as
there are addresses on its link. Issue 18 found two ways a session was reset
for nothing, both ending in ExaBGP's "EXABGP MISBEHAVED" and a reset without
NOTIFICATION (reactor/peer.py: ``'NoneType' object has no attribute
'changes'``): the speaker rewrote the config while ExaBGP was still reading it
at start and then sent a needless ``reload``; and any ``reload`` that reached a
session just Established but not yet in its main loop. Each test repeats its
scenario 50 times and counts resets from both sides (the speaker's SessionDown
events, the peers' ended sessions): zero.
"""

from __future__ import annotations

import asyncio
import random
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from bgpd import events as ev
from bgpd.exabgp.speaker import Speaker
from bgpd.peerspec import PeerSpec, PeerType
from tests.conftest import unique_name
from tests.helpers.bgp_responders import Responders

pytestmark = [pytest.mark.root, pytest.mark.slow]

A = "10.99.0.1"
LOCAL_AS = 64512
BASE = 30  # peers present from the start
ROUNDS = 50
RELOADS_PER_ROUND = 4  # peer-set changes while the dropped sessions come back
EXTRA = ROUNDS  # a peer added and removed by each round's reloads


def peer_ip(i: int) -> str:
    return f"10.99.{1 + i // 200}.{1 + i % 200}"


def spec(i: int) -> PeerSpec:
    return PeerSpec(peer_ip(i), 65100 + i, A, LOCAL_AS, A, PeerType.GLOBAL, passive=False,
                    hold_time=90, graceful_restart_time=0)


@dataclass
class Net:
    a: str
    b: str
    workdir: Path
    responders: Responders


@pytest.fixture
def net(netns_factory, workdir) -> Net:
    a, b = netns_factory("pbra"), netns_factory("pbrb")
    va, vb = unique_name("pva"), unique_name("pvb")
    subprocess.run(["ip", "link", "add", va, "type", "veth", "peer", "name", vb], check=True)
    subprocess.run(["ip", "link", "set", va, "netns", a], check=True)
    subprocess.run(["ip", "link", "set", vb, "netns", b], check=True)
    subprocess.run(["ip", "-n", a, "addr", "add", f"{A}/16", "dev", va], check=True)
    batch = "".join(f"addr add {peer_ip(i)}/16 dev {vb}\n" for i in range(BASE + EXTRA))
    subprocess.run(["ip", "-n", b, "-batch", "-"], input=batch, text=True, check=True)
    for ns, dev in ((a, va), (b, vb)):
        subprocess.run(["ip", "-n", ns, "link", "set", dev, "up"], check=True)
    responders = Responders(b, {peer_ip(i): 65100 + i for i in range(BASE + EXTRA)})
    try:
        yield Net(a, b, workdir, responders)
    finally:
        responders.close()


class Watch:
    """Every session event of one speaker, with the time it was seen."""

    def __init__(self, speaker: Speaker) -> None:
        self.events: list[tuple[float, ev.Event]] = []
        self.up: set[str] = set()
        self._task = asyncio.create_task(self._run(speaker))

    async def _run(self, speaker: Speaker) -> None:
        async for e in speaker.events():
            if isinstance(e, ev.SessionUp | ev.SessionDown):
                self.events.append((time.monotonic(), e))
                (self.up.add if isinstance(e, ev.SessionUp) else self.up.discard)(e.neighbor)

    def downs(self) -> list[ev.SessionDown]:
        return [e for _, e in self.events if isinstance(e, ev.SessionDown)]

    async def until_up(self, addresses: set[str], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not addresses <= self.up:
            assert time.monotonic() < deadline, f"not up: {sorted(addresses - self.up)[:5]}"
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


def _speaker(net: Net) -> Speaker:
    return Speaker("n1", A, [A], net.workdir / "exabgp", netns=net.a)


async def test_start_against_many_peers_50_times(net: Net) -> None:
    """As bgpd does: start() then set_peers() at once, 50 times: every session comes
    up and none is reset; at most one reload per start (the peers written once
    ExaBGP has read its first config: it then only adds neighbours)."""
    want = {peer_ip(i) for i in range(BASE)}
    for n in range(ROUNDS):
        sp = _speaker(net)
        watch = Watch(sp)
        t0 = time.monotonic()
        await sp.start()
        await sp.set_peers([spec(i) for i in range(BASE)])
        try:
            await watch.until_up(want)
            await asyncio.sleep(0.3)  # a late reset would show here
            assert watch.downs() == [], f"start {n}: {watch.downs()}"
            assert net.responders.ends_since(t0) == [], f"start {n}"
            assert sp.stats.reloads <= 1, f"start {n}: {sp.stats.reloads} reloads"
        finally:
            await watch.stop()
            await sp.stop(graceful_restart=True)
            net.responders.wait_all_ended()  # the old sessions' closes are not the next start's


async def test_peer_set_changes_while_sessions_establish_50_times(net: Net) -> None:
    """50 times: every peer drops its session at once (a ToR reboot), so all come back
    together, and while they do the peer set changes four times (a peer added,
    removed...) at random moments (seeded): a reload reaches sessions that are just
    becoming Established, the window where ExaBGP's reconfigure broke them. Each
    peer's session goes down exactly once per drop (connection-lost) and never for
    anything else: no reset without NOTIFICATION (cause internal-error)."""
    rng = random.Random(18)
    sp = _speaker(net)
    watch = Watch(sp)
    base = {peer_ip(i) for i in range(BASE)}
    await sp.start()
    try:
        await sp.set_peers([spec(i) for i in range(BASE)])
        await watch.until_up(base)
        extra: list[int] = []
        for n in range(ROUNDS):
            net.responders.drop_all()
            for _ in range(RELOADS_PER_ROUND):  # spread over the sessions' way back up
                await asyncio.sleep(rng.uniform(0, 0.06))
                extra = [] if extra else [BASE + n]
                await sp.set_peers([spec(i) for i in (*range(BASE), *extra)])
            await watch.until_up(base | {peer_ip(i) for i in extra})
        await asyncio.sleep(0.5)
        downs = watch.downs()
        broken = [e for e in downs if e.neighbor in base and e.cause != "connection-lost"]
        assert broken == [], broken[:5]
        per_peer = {a: sum(1 for e in downs if e.neighbor == a) for a in base}
        assert set(per_peer.values()) == {ROUNDS}, per_peer
        assert sp.stats.reloads >= ROUNDS
    finally:
        await watch.stop()
        await sp.stop(graceful_restart=True)
