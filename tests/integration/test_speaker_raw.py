"""The speaker as a route reflector's: real (patched) ExaBGP, 20 simulated iBGP clients, loopback.

The speaker drives ExaBGP 5.0.15 through bgpd.exabgp.launch (groups "api", "raw",
"poll"); bench.rrclients plays 20 clients, each checking every route it gets
(RFC 4456 §8: next hop kept, ORIGINATOR_ID, CLUSTER_LIST) and dropping a session
whose reflector stays silent for the negotiated hold time (RFC 4271 §6.5). The
sessions use a 3 s hold time, so ExaBGP must send a keepalive every second to
each parked (idle) peer while the clients send theirs only every 2.9 s, and the
test idles past the hold time. Every address is
on 127/8 and the ports are free high ones: no namespace, nothing outside loopback.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.rrclients import address, block
from bgpd import events as ev
from bgpd.exabgp.speaker import Speaker
from bgpd.peerspec import PeerSpec, PeerType
from rib.policy import ExportAttrs
from tests.conftest import free_ports

REPO = Path(__file__).resolve().parents[2]
N = 20
FIRST = "127.0.1.1"
RR = "127.0.0.1"
CLUSTER = "244.0.0.1"
ASN = 64512

pytestmark = [pytest.mark.slow]


class Clients:
    def __init__(self, port: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.rrclients", "--first", FIRST, "--count", str(N),
             "--port", str(port), "--asn", str(ASN), "--cluster-id", CLUSTER, "--hold", "3",
             "--keepalive", "2.9"],
            cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        self.asked = 0
        self.expect_sync("listening")

    def expect_sync(self, event: str, tag: str | None = None) -> dict:
        """The next line of ``event`` (and, given ``tag``, answering the command of that id)."""
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            msg = json.loads(line)
            if msg["event"] == event and (tag is None or msg.get("id") == tag):
                return msg
        raise AssertionError(f"clients exited before {event!r}")

    def send(self, cmd: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()

    async def expect(self, event: str, timeout: float = 30) -> dict:
        return await asyncio.wait_for(asyncio.to_thread(self.expect_sync, event), timeout)

    async def status(self, timeout: float = 30) -> dict:
        """The clients' counters now: the answer to THIS request, never one printed for an
        earlier command and left unread (each request has its own id)."""
        self.asked += 1
        tag = str(self.asked)
        self.send(f"status {tag}")
        return await asyncio.wait_for(asyncio.to_thread(self.expect_sync, "status", tag),
                                      timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


async def test_reflected_routes_keepalives_and_withdrawal(tmp_path) -> None:
    client_port, listen_port = free_ports(2)
    clients = Clients(client_port)
    sp = Speaker("rr", RR, [RR], tmp_path / "sp", listen_port=listen_port, command_timeout=30)
    addrs = [address(FIRST, i) for i in range(N)]
    keys = [(a, client_port) for a in addrs]
    try:
        await sp.start()
        await sp.set_peers([PeerSpec(address=a, port=client_port, peer_as=ASN, local_address=RR,
                                     local_as=ASN, router_id=RR, peer_type=PeerType.GLOBAL,
                                     hold_time=3, rr_client=True) for a in addrs])
        up: set[str] = set()
        deadline = time.monotonic() + 60
        while len(up) < N:
            e = await sp.next_event(max(0.1, deadline - time.monotonic()))
            if isinstance(e, ev.SessionUp):
                up.add(e.neighbor)
        while sp._raw_ok is None:  # probed once the channel is up
            await asyncio.sleep(0.02)
        assert sp._raw_ok, "the pinned ExaBGP takes podbgp-send"
        # What a reflector sends: each client every other client's block, next hop and
        # ORIGINATOR_ID the originating client, our cluster id in CLUSTER_LIST.
        reflected = {block(j): ExportAttrs(next_hop=a, local_pref=100, originator_id=a,
                                           cluster_list=(CLUSTER,))
                     for j, a in enumerate(addrs)}
        # "converged" is the clients' own report. (The wait used to send "status" too: when
        # the clients converged before reading it, its answer came after "converged",
        # stayed unread, and the status below read it, printed before End-of-RIB arrived:
        # "0 of 20 clients got End-of-RIB", ~1 run in 20 under load.)
        conv_wait = asyncio.create_task(clients.expect("converged", 60))
        await sp.update_exports_many({
            k: (True, {p: at for j, (p, at) in enumerate(reflected.items()) if j != i})
            for i, k in enumerate(keys)})
        await sp.end_of_rib(keys)
        conv = await conv_wait
        assert conv["bad"] == 0 and conv["resets"] == 0, conv
        # Idle past the 3 s hold time: parked peers still get their keepalives.
        await asyncio.sleep(4.5)
        st = await clients.status()
        assert (st["up"], st["resets"], st["notifications"]) == (N, 0, 0), st
        assert st["routes_held"] == N * (N - 1)
        assert st["eor_received"] == N, "End-of-RIB (sent as bytes, behind the routes) reached all"
        # The clients speak only every 2.9 s, so their messages are not what wakes a
        # parked peer: ExaBGP's own 1 s keepalives (hold 3 / 3) must keep coming.
        assert st["max_rx_gap"] < 2.2, st
        # One withdrawal reaching all 19 other clients promptly (a parked peer wakes for
        # the bytes queued for it, not at its next timer).
        t0 = time.monotonic()
        await sp.update_exports_many({k: (False, {block(0): None}) for k in keys[1:]})
        while True:
            st = await clients.status()
            if st["routes_held"] == N * (N - 1) - (N - 1):
                break
            assert time.monotonic() - t0 < 5, st
            await asyncio.sleep(0.02)
        assert sum(len(sp._exports[k].sent) for k in keys) == N * (N - 1) - (N - 1)
    finally:
        await sp.stop()
        clients.close()


async def test_a_status_answer_is_never_one_left_by_an_earlier_command() -> None:
    """The clients answer every ``status`` they read; an answer nobody read stays in the
    pipe. ``Clients.status`` must return the answer to its own request, not that one
    (a stale answer made the test above fail with End-of-RIB at 0 of 20 clients)."""
    (client_port,) = free_ports(1)
    clients = Clients(client_port)
    try:
        clients.send("status")  # answered, never read
        await asyncio.sleep(0.5)  # ... and printed by now
        t0 = time.monotonic()
        st = await clients.status()
        assert st["t"] >= t0, "the answer to an earlier status"
        assert st["clients"] == N and st["up"] == 0
    finally:
        clients.close()
