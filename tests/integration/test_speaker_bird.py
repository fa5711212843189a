"""Speaker (ExaBGP) against BIRD 2 between two network namespaces.

Each test: two throwaway namespaces on a veth pair; the Speaker's ExaBGP runs
in ``a`` (10.99.0.1, AS 65001), BIRD 2 in ``b`` (10.99.0.2, AS 65002). BIRD
touches no kernel table (no kernel protocol). Processes are ended by PID and
the namespaces removed even on failure (conftest fixtures).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path as FsPath

import pytest

from bgpd import events as ev
from bgpd.exabgp import launch as exabgp_launch
from bgpd.exabgp.speaker import Speaker
from bgpd.peerspec import PeerSpec, PeerType
from rib.path import Origin
from rib.policy import ExportAttrs
from tests.conftest import require_binary, unique_name
from tests.helpers.wait import until as _until

pytestmark = pytest.mark.root

A, B = "10.99.0.1", "10.99.0.2"
A6, B6 = "fd00:99::1", "fd00:99::2"
AS_A, AS_B = 65001, 65002


@dataclass
class Lab:
    a: str
    b: str
    workdir: FsPath


@pytest.fixture
def lab(netns_factory, workdir) -> Lab:
    require_binary("bird")
    a, b = netns_factory("pbsa"), netns_factory("pbsb")
    va, vb = unique_name("pva"), unique_name("pvb")
    subprocess.run(["ip", "link", "add", va, "type", "veth", "peer", "name", vb], check=True)
    for ns, dev, addr, addr6 in ((a, va, A, A6), (b, vb, B, B6)):
        subprocess.run(["ip", "link", "set", dev, "netns", ns], check=True)
        subprocess.run(["ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev], check=True)
        subprocess.run(["ip", "-n", ns, "addr", "add", f"{addr6}/64", "dev", dev, "nodad"],
                       check=True)
        subprocess.run(["ip", "-n", ns, "link", "set", dev, "up"], check=True)
    return Lab(a, b, workdir)


class Bird:
    """BIRD 2 in a namespace, in the foreground, ended by PID."""

    def __init__(self, lab: Lab, password: str | None = None, statics=None) -> None:
        self.lab = lab
        self.dir = lab.workdir / "bird"
        self.dir.mkdir(exist_ok=True)
        self.conf = self.dir / "bird.conf"
        self.sock = self.dir / "bird.ctl"
        self.password = password
        self.statics = statics if statics is not None else {
            "10.55.1.0/24": "bgp_community.add((65002,7)); bgp_large_community.add((65002,3,4));",
            "10.55.2.0/24": "",
        }
        self.write()
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", lab.b, require_binary("bird"), "-f", "-c", str(self.conf),
             "-s", str(self.sock), "-P", str(self.dir / "bird.pid")],
            stdout=subprocess.DEVNULL, stderr=open(self.dir / "bird.log", "wb"))  # noqa: SIM115

    def write(self) -> None:
        routes = "\n".join(
            f"  route {p} blackhole {{ {extra} }};" if extra else f"  route {p} blackhole;"
            for p, extra in self.statics.items())
        pw = f'  password "{self.password}";\n' if self.password else ""
        self.conf.write_text(f"""
router id {B};
protocol device {{}}
protocol static st4 {{
  ipv4;
{routes}
}}
protocol bgp exa {{
  local {B} as {AS_B};
  neighbor {A} as {AS_A};
  connect delay time 1;
  error wait time 1, 2;
{pw}  ipv4 {{ import all; export all; }};
}}
protocol static st6 {{
  ipv6;
  route fd00:55::/64 blackhole {{ bgp_large_community.add((65002,6,6)); }};
}}
protocol bgp exa6 {{
  local {B6} as {AS_B};
  neighbor {A6} as {AS_A};
  connect delay time 1;
  ipv6 {{ import all; export all; }};
}}
""")

    def birdc(self, *args: str) -> str:
        return subprocess.run(["birdc", "-s", str(self.sock), *args], capture_output=True,
                              text=True, timeout=10).stdout

    def reconfigure(self) -> None:
        self.write()
        out = self.birdc("configure")
        assert "Reconfigured" in out or "Reconfiguration" in out, out

    def routes_from_exa(self) -> str:
        return self.birdc("show", "route", "protocol", "exa", "all")

    def established(self) -> bool:
        return "Established" in self.birdc("show", "protocols", "exa")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture
def bird_factory(lab):
    made: list[Bird] = []

    def make(**kw) -> Bird:
        b = Bird(lab, **kw)
        made.append(b)
        return b

    yield make
    for b in made:
        b.stop()


def spec(password: str | None = None, address: str = B, peer_as: int = AS_B) -> PeerSpec:
    return PeerSpec(address=address, peer_as=peer_as, local_address=A, local_as=AS_A,
                    router_id=A, peer_type=PeerType.GLOBAL, passive=False, password=password,
                    hold_time=9)


@pytest.fixture
async def speaker(lab):
    sp = Speaker("node-a", A, [A], lab.workdir / "speaker", netns=lab.a,
                 backoff_initial=0.2, command_timeout=20)
    try:
        yield sp
    finally:
        await sp.stop()


async def wait_for_event(sp: Speaker, kind, timeout: float, pred=lambda e: True):
    deadline = time.monotonic() + timeout
    seen = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {kind.__name__} in {timeout}s; saw {seen[-20:]}")
        try:
            e = await sp.next_event(left)
        except TimeoutError:
            continue
        seen.append(e)
        if isinstance(e, kind) and pred(e):
            return e, seen


async def until(cond, timeout: float, what: str, interval: float = 0.1):
    """Every 0.1 s by default: a condition here asks birdc, a process per poll."""
    return await _until(cond, timeout, what, interval=interval)


ATTRS = ExportAttrs(next_hop=A, origin=Origin.IGP, as_path=(AS_A,), med=10,
                    communities=((65001, 100),), large_communities=((65001, 1, 2),))


async def test_session_routes_both_ways_and_withdraws(speaker, bird_factory) -> None:
    bird = bird_factory()
    t0 = time.monotonic()
    await speaker.start()
    await speaker.set_peers([spec()])
    await wait_for_event(speaker, ev.SessionUp, 15, lambda e: e.neighbor == B)
    up_after = time.monotonic() - t0
    print(f"start() -> SessionUp vs BIRD: {up_after:.2f}s")

    # BIRD's statics arrive with their attributes.
    got: dict[str, object] = {}

    def collect(e):
        if isinstance(e, ev.Update):
            got.update({p.prefix: p for p in e.announced})
            for w in e.withdrawn:
                got.pop(w.prefix, None)
        return {"10.55.1.0/24", "10.55.2.0/24"} <= got.keys()

    await wait_for_event(speaker, ev.Update, 10, collect)
    p = got["10.55.1.0/24"]
    assert p.next_hop == B
    assert p.as_path == (AS_B,)
    assert p.large_communities == ((65002, 3, 4),)
    assert p.communities == ((65002, 7),)
    assert p.peer.asn == AS_B and p.peer.router_id == B

    # Ours appear in BIRD's table.
    await speaker.set_exports(("10.99.0.2", 179), {
        "10.244.1.0/26": ATTRS, "10.244.1.64/26": ATTRS})
    await until(lambda: "10.244.1.64/26" in bird.routes_from_exa(), 10, "routes in BIRD")
    table = bird.routes_from_exa()
    assert "10.244.1.0/26" in table
    assert "BGP.as_path: 65001" in table
    assert "(65001,100)" in table
    assert "(65001, 1, 2)" in table

    # Our withdraw (the whole set minus one) leaves BIRD's table.
    await speaker.set_exports(("10.99.0.2", 179), {"10.244.1.0/26": ATTRS})
    await until(lambda: "10.244.1.64/26" not in bird.routes_from_exa(), 10, "withdraw in BIRD")
    assert "10.244.1.0/26" in bird.routes_from_exa()

    # BIRD's withdraw arrives as a Withdraw.
    del bird.statics["10.55.2.0/24"]
    bird.reconfigure()
    e, _ = await wait_for_event(speaker, ev.Update, 10,
                                lambda e: any(w.prefix == "10.55.2.0/24" for w in e.withdrawn))
    assert e.withdrawn[0].peer.address == B
    assert speaker.stats.commands_failed == 0
    assert speaker.stats.garbage_lines == 0


async def test_adding_a_peer_keeps_the_first_session(speaker, bird_factory, lab) -> None:
    bird = bird_factory()
    await speaker.start()
    await speaker.set_peers([spec()])
    await wait_for_event(speaker, ev.SessionUp, 15, lambda e: e.neighbor == B)
    await until(bird.established, 5, "BIRD established")
    await speaker.set_exports(("10.99.0.2", 179), {"10.244.2.0/26": ATTRS})
    await until(lambda: "10.244.2.0/26" in bird.routes_from_exa(), 10, "route in BIRD")
    since = bird.birdc("show", "protocols", "exa").splitlines()[-1]
    reloads = speaker.stats.reloads

    # An unrelated (never reachable) peer is added, then removed again.
    await speaker.set_peers([spec(), spec(address="10.99.0.77", peer_as=65077)])
    assert speaker.stats.reloads == reloads + 1
    await asyncio.sleep(1.5)
    await speaker.set_peers([spec()])
    await asyncio.sleep(1.0)
    drained = []
    while True:
        try:
            drained.append(await speaker.next_event(0.05))
        except TimeoutError:
            break
    downs = [e for e in drained if isinstance(e, ev.SessionDown) and e.neighbor == B]
    assert downs == [], downs
    assert bird.birdc("show", "protocols", "exa").splitlines()[-1] == since
    assert "10.244.2.0/26" in bird.routes_from_exa()
    # The same peer set again is a no-op: no reload.
    reloads = speaker.stats.reloads
    await speaker.set_peers([spec()])
    assert speaker.stats.reloads == reloads


async def test_md5_match_and_mismatch(speaker, bird_factory) -> None:
    bird_factory(password="Sec'r;et}")
    await speaker.start()
    await speaker.set_peers([spec(password="Sec'r;et}")])
    await wait_for_event(speaker, ev.SessionUp, 15, lambda e: e.neighbor == B)
    log_text = (speaker.conf_path).read_text()
    assert "Sec'r;et}" not in log_text

    await speaker.set_peers([spec(password="wrong")])
    # The changed session is re-established with the wrong key: it must never come up.
    with pytest.raises(AssertionError, match="no SessionUp"):
        await wait_for_event(speaker, ev.SessionUp, 6, lambda e: e.neighbor == B)


async def test_exabgp_killed_is_restarted_and_routes_return(speaker, bird_factory) -> None:
    bird = bird_factory()
    await speaker.start()
    await speaker.set_peers([spec()])
    await wait_for_event(speaker, ev.SessionUp, 15, lambda e: e.neighbor == B)
    await speaker.set_exports(("10.99.0.2", 179), {"10.244.3.0/26": ATTRS})
    await until(lambda: "10.244.3.0/26" in bird.routes_from_exa(), 10, "route in BIRD")

    old_pid = speaker.pid
    os.kill(old_pid, signal.SIGKILL)
    await wait_for_event(speaker, ev.SessionDown, 10,
                         lambda e: e.neighbor == B and e.reason == "exabgp exited")
    await wait_for_event(speaker, ev.SessionUp, 15, lambda e: e.neighbor == B)
    assert speaker.pid not in (None, old_pid)
    assert speaker.stats.restarts == 1
    await until(lambda: "10.244.3.0/26" in bird.routes_from_exa(), 10, "route back in BIRD")
    # The pid file names the new child.
    assert int(speaker.pid_path.read_text()) == speaker.pid


async def test_set_exports_10k_prefixes_reach_bird(speaker, bird_factory) -> None:
    bird = bird_factory(statics={})
    await speaker.start()
    await speaker.set_peers([spec()])
    await wait_for_event(speaker, ev.SessionUp, 15, lambda e: e.neighbor == B)
    other = ExportAttrs(next_hop=A, as_path=(AS_A, AS_A))
    routes = {f"10.{100 + i // 4096}.{(i // 16) % 256}.{(i % 16) * 16}/28": ATTRS
              for i in range(10_000)}
    for prefix in list(routes)[::10]:
        routes[prefix] = other  # two attribute groups
    t0 = time.monotonic()
    await speaker.set_exports(("10.99.0.2", 179), routes)
    acked = time.monotonic() - t0

    def count() -> int:
        out = bird.birdc("show", "route", "protocol", "exa", "count")
        for word, nxt in zip(out.split(), out.split()[1:], strict=False):
            if nxt == "of" and word.isdigit():
                return int(word)
        return -1

    await until(lambda: count() == 10_000, 15, "10k routes in BIRD", interval=0.2)
    in_bird = time.monotonic() - t0
    print(f"set_exports 10k: acked in {acked:.2f}s ({10_000 / acked:.0f}/s), "
          f"all in BIRD after {in_bird:.2f}s ({10_000 / in_bird:.0f}/s)")
    # The pinned ExaBGP takes podbgp-send (bgpd.exabgp.launch group "raw") and BIRD 2
    # speaks 4-octet AS: the 10k routes are encoded once, ~62 KiB of UPDATEs in ONE
    # command (+ the podbgp-hello probe), not 9000/500 + 1000/500 = 20 text commands.
    assert speaker._raw_ok
    assert speaker.stats.commands_sent - speaker.stats.reloads == 2
    assert speaker.stats.commands_failed == 0


@pytest.mark.parametrize("raw", [True, False], ids=["podbgp-send", "text"])
async def test_peer_flap_notification_and_routes_resent(speaker, bird_factory, raw,
                                                        monkeypatch) -> None:
    if not raw:  # an ExaBGP without the "raw" patches: text commands, its adj-rib-out
        monkeypatch.setenv(exabgp_launch.UNPATCHED_ENV, "raw")
    bird = bird_factory()
    await speaker.start()
    await speaker.set_peers([spec()])
    await wait_for_event(speaker, ev.SessionUp, 15, lambda e: e.neighbor == B)
    await speaker.set_exports(("10.99.0.2", 179), {"10.244.4.0/26": ATTRS})
    await until(lambda: "10.244.4.0/26" in bird.routes_from_exa(), 10, "route in BIRD")
    sent = speaker.stats.commands_sent

    assert "disabled" in bird.birdc("disable", "exa")
    note, _ = await wait_for_event(speaker, ev.Notification, 10)
    assert (note.neighbor, note.direction, note.code) == (B, "receive", 6)  # Cease
    await wait_for_event(speaker, ev.SessionDown, 10, lambda e: e.neighbor == B)
    assert "enabled" in bird.birdc("enable", "exa")
    await wait_for_event(speaker, ev.SessionUp, 15, lambda e: e.neighbor == B)
    await until(lambda: "10.244.4.0/26" in bird.routes_from_exa(), 10, "route re-sent")
    assert speaker._raw_ok is raw
    # ExaBGP keeps nothing it got as podbgp-send bytes: the speaker itself sends the
    # session that came back its whole set, in one command. Text commands went into
    # ExaBGP's adj-rib-out, which it re-announces itself: the speaker sends nothing.
    assert speaker.stats.commands_sent == sent + (1 if raw else 0)


async def test_ipv6_session(lab, bird_factory) -> None:
    bird = bird_factory()
    sp = Speaker("node-a", A, [A, A6], lab.workdir / "speaker6", netns=lab.a)
    try:
        await sp.start()
        v6 = PeerSpec(address=B6, peer_as=AS_B, local_address=A6, local_as=AS_A, router_id=A,
                      peer_type=PeerType.GLOBAL, passive=False)
        await sp.set_peers([v6])
        open_msg, _ = await wait_for_event(sp, ev.Open, 15, lambda e: e.neighbor == B6)
        assert open_msg.families == (("ipv6", "unicast"),)
        await wait_for_event(sp, ev.SessionUp, 15, lambda e: e.neighbor == B6)
        upd, _ = await wait_for_event(sp, ev.Update, 10, lambda e: bool(e.announced))
        p = upd.announced[0]
        assert (p.prefix, p.large_communities, p.peer.address) == (
            "fd00:55::/64", ((65002, 6, 6),), B6)
        await sp.set_exports((B6, 179), {"fd00:244::/122": ExportAttrs(next_hop=A6)})
        await until(lambda: "fd00:244::/122" in bird.birdc("show", "route", "protocol", "exa6"),
                    10, "v6 route in BIRD")
        assert sp.stats.commands_failed == 0
    finally:
        await sp.stop()
