"""bgpd.exabgp.launch: patches only ExaBGP 5.0.15, all or nothing, and changes no output byte.

Patching rebinds ExaBGP's classes for the whole process, so every case runs
in a fresh interpreter (the DECODER script below).
The UPDATEs are re-encoded from the events in golden/events_recorded.jsonl
(ExaBGP against BIRD 2, see golden/record/): the patched decoder must print
exactly the recorded "message" JSON, and patched and unpatched ExaBGP must
print identical events (compact and not) for those and for 800-NLRI UPDATEs
like the ones the convergence benchmark sends.
"""

from __future__ import annotations

import ipaddress
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from bgpd.exabgp import launch as exabgp_launch

GOLDEN = Path(__file__).parent / "golden"
ROOT = Path(__file__).resolve().parents[2]

# Decodes hex UPDATE bodies (argv[3:]) with ExaBGP as podbgp's child would,
# prints one event per line with time/pid/ppid blanked.
DECODER = r"""
import os, re, sys
mode, compact = sys.argv[1], sys.argv[2]
os.environ["exabgp.api.compact"] = compact
if mode == "patched":
    import bgpd.exabgp.launch as launch
    assert launch.patch(), "patch() refused"
from exabgp.environment import getenv
from exabgp.logger import log
from exabgp.configuration.configuration import Configuration
from exabgp.configuration.check import _negotiated
from exabgp.bgp.message.update import Update
from exabgp.bgp.message.direction import Direction
from exabgp.reactor.api.response import Response
env = getenv(); env.tcp.bind = ""; log.init(env)
conf = ("neighbor 10.99.0.3 { router-id 10.99.0.1; local-address 10.99.0.1; local-as 65000;"
        " peer-as 65003; family { ipv4 unicast; ipv6 unicast; } }")
configuration = Configuration([conf], text=True)
configuration.reload()
neighbor = list(configuration.neighbors.values())[0]
negotiated = _negotiated(neighbor)
encoder = Response.JSON("5.0.0")
for body in sys.argv[3:]:
    update = Update.unpack_message(bytes.fromhex(body), Direction.IN, negotiated)
    line = encoder.update(neighbor, "receive", update, None, "", "")
    print(re.sub(r'"(time|pid|ppid)" ?: [0-9.]+', r'"\1": X', line))
"""


def decode(mode: str, bodies: list[bytes], compact: bool = False) -> list[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", DECODER, mode, "true" if compact else "false",
                          *(b.hex() for b in bodies)],
                         capture_output=True, text=True, timeout=120, env=env, check=False)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == len(bodies), out.stdout + out.stderr
    return lines


# -- a minimal UPDATE encoder (RFC 4271, 4760, 1997, 8092), enough for the recorded events

def _attr(flags: int, code: int, value: bytes) -> bytes:
    if len(value) > 255:
        return struct.pack("!BBH", flags | 0x10, code, len(value)) + value
    return struct.pack("!BBB", flags, code, len(value)) + value


def _nlri(prefix: str) -> bytes:
    net = ipaddress.ip_network(prefix)
    size = (net.prefixlen + 7) // 8
    return bytes([net.prefixlen]) + net.network_address.packed[:size]


def _as_path(segments: dict) -> bytes:
    out = b""
    for _, seg in sorted(segments.items(), key=lambda kv: int(kv[0])):
        kind = {"as-set": 1, "as-sequence": 2}[seg["element"]]
        out += struct.pack("!BB", kind, len(seg["value"])) + b"".join(
            struct.pack("!I", asn) for asn in seg["value"])
    return out


def _attributes(attrs: dict, nexthop: str | None) -> bytes:
    out = _attr(0x40, 1, bytes([{"igp": 0, "egp": 1, "incomplete": 2}[attrs["origin"]]]))
    out += _attr(0x40, 2, _as_path(attrs.get("as-path", {})))
    if nexthop and ipaddress.ip_address(nexthop).version == 4:
        out += _attr(0x40, 3, ipaddress.ip_address(nexthop).packed)
    if "med" in attrs:
        out += _attr(0x80, 4, struct.pack("!I", attrs["med"]))
    if "local-preference" in attrs:
        out += _attr(0x40, 5, struct.pack("!I", attrs["local-preference"]))
    if "community" in attrs:
        out += _attr(0xC0, 8, b"".join(struct.pack("!HH", *c) for c in attrs["community"]))
    if "originator-id" in attrs:
        out += _attr(0x80, 9, ipaddress.ip_address(attrs["originator-id"]).packed)
    if "cluster-list" in attrs:
        out += _attr(0x80, 10, b"".join(ipaddress.ip_address(c).packed
                                         for c in attrs["cluster-list"]))
    if "large-community" in attrs:
        out += _attr(0xC0, 32, b"".join(struct.pack("!III", *c)
                                         for c in attrs["large-community"]))
    return out


def _update(withdrawn: bytes, attributes: bytes, announced: bytes) -> bytes:
    return (struct.pack("!H", len(withdrawn)) + withdrawn
            + struct.pack("!H", len(attributes)) + attributes + announced)


def encode(message: dict) -> bytes:
    """The UPDATE body (no BGP header) that ExaBGP decodes to this recorded "message"."""
    if "eor" in message:
        if message["eor"]["afi"] == "ipv4":
            return _update(b"", b"", b"")
        return _update(b"", _attr(0x80, 15, struct.pack("!HB", 2, 1)), b"")
    upd = message["update"]
    withdrawn = announced = attributes = b""
    for family, prefixes in upd.get("withdraw", {}).items():
        packed = b"".join(_nlri(p["nlri"]) for p in prefixes)
        if family == "ipv4 unicast":
            withdrawn += packed
        else:
            attributes += _attr(0x80, 15, struct.pack("!HB", 2, 1) + packed)
    for family, by_nexthop in upd.get("announce", {}).items():
        ((nexthop, prefixes),) = by_nexthop.items()
        packed = b"".join(_nlri(p["nlri"]) for p in prefixes)
        if family == "ipv4 unicast":
            attributes = _attributes(upd["attribute"], nexthop) + attributes
            announced += packed
        else:
            hop = ipaddress.ip_address(nexthop).packed
            attributes = _attributes(upd["attribute"], None) + attributes + _attr(
                0x80, 14, struct.pack("!HBB", 2, 1, len(hop)) + hop + b"\x00" + packed)
    return _update(withdrawn, attributes, announced)


def recorded_updates() -> list[tuple[bytes, str]]:
    """(UPDATE body, recorded '"message": ...' text) for each recorded update event."""
    out = []
    for line in (GOLDEN / "events_recorded.jsonl").read_text().splitlines():
        if not line.startswith("{"):
            continue  # command answers ("done") recorded on the same stream
        event = json.loads(line)
        if event["type"] != "update":
            continue
        out.append((encode(event["neighbor"]["message"]), line[line.index('"message": '):]))
    assert len(out) >= 10, "golden file lost its update events"
    return out


def big_updates() -> list[bytes]:
    """800-NLRI announce, withdraw and mixed UPDATEs, IPv4 and IPv6, as a busy peer sends."""
    v4 = [str(ipaddress.ip_address("10.0.0.0") + i * 64) + "/26"
          for i in range(800)]
    v6 = [str(ipaddress.ip_address("fd00:244::") + i * 64) + "/122" for i in range(300)]
    attrs = {"origin": "igp", "as-path": {"0": {"element": "as-sequence", "value": [65003]}},
             "local-preference": 100, "community": [[65003, 1]]}
    ann4 = {"update": {"attribute": attrs,
                       "announce": {"ipv4 unicast": {"10.99.0.3": [{"nlri": p} for p in v4]}}}}
    wd4 = {"update": {"withdraw": {"ipv4 unicast": [{"nlri": p} for p in v4]}}}
    mixed = {"update": {"attribute": attrs,
                        "withdraw": {"ipv4 unicast": [{"nlri": p} for p in v4[:5]]},
                        "announce": {"ipv4 unicast": {"10.99.0.3": [{"nlri": p} for p in v4[5:9]]}}}}
    ann6 = {"update": {"attribute": attrs,
                       "announce": {"ipv6 unicast": {"fd00::3": [{"nlri": p} for p in v6]}}}}
    wd6 = {"update": {"withdraw": {"ipv6 unicast": [{"nlri": p} for p in v6]}}}
    return [encode(m) for m in (ann4, wd4, mixed, ann6, wd6)]


def test_patched_exabgp_prints_the_recorded_events() -> None:
    cases = recorded_updates()
    got = decode("patched", [body for body, _ in cases])
    for line, (_, recorded) in zip(got, cases, strict=True):
        assert line.endswith(recorded), f"{line}\n!=\n{recorded}"


@pytest.mark.parametrize("compact", [False, True])
def test_patched_and_unpatched_print_identical_events(compact: bool) -> None:
    bodies = [body for body, _ in recorded_updates()] + big_updates()
    patched = decode("patched", bodies, compact)
    plain = decode("plain", bodies, compact)
    assert patched == plain
    # The comparison covered real work: every prefix of the big UPDATEs is there.
    assert sum(line.count("/26") for line in patched) >= 2 * 800 + 9
    assert sum(line.count("/122") for line in patched) >= 2 * 300


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)}, check=False)


TARGETS = """
from exabgp.bgp.message.update import Update
from exabgp.bgp.message.update.nlri.nlri import NLRI
from exabgp.logger import log
from exabgp.reactor.api.response.json import JSON
from exabgp.reactor.peer import Peer
def snapshot():
    return [Update.__dict__['unpack_message'], NLRI.__dict__['unpack_nlri'], Peer._main,
            JSON._update, log.debug]
"""


def test_other_exabgp_versions_run_unpatched() -> None:
    out = _run(TARGETS + """
import exabgp.version, bgpd.exabgp.launch as launch
exabgp.version.release = '5.0.16'
before = snapshot()
assert launch.patch() is False
assert snapshot() == before, 'patched a version it does not know'
""")
    assert out.returncode == 0, out.stderr
    assert "exabgp 5.0.16 is not 5.0.15; running it unpatched" in out.stderr


def test_pinned_version_is_patched() -> None:
    assert exabgp_launch.exabgp_version() == exabgp_launch.PINNED_VERSION
    out = _run(TARGETS + """
import bgpd.exabgp.launch as launch
before = snapshot()
assert launch.patch() is True
after = snapshot()
changed = [a is not b for a, b in zip(before, after)]
assert all(changed), changed
""")
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""


def test_source_that_does_not_match_leaves_everything_unpatched() -> None:
    # A rebuilt 5.0.15 whose JSON encoder differs: the last rewrite fails, and
    # the rewrites already applied must be undone too.
    out = _run(TARGETS + """
import inspect, bgpd.exabgp.launch as launch
real = inspect.getsource
def edited(obj):
    text = real(obj)
    return text.replace("nexthop = str(nlri.nexthop)", "nexthop = repr(nlri.nexthop)")
launch.inspect.getsource = edited
before = snapshot()
assert launch.patch() is False
after = snapshot()
# Peer._main (index 2) is also edited by the "raw" group, which still applies: it must
# carry the raw edits and none of decode's.
assert [a == b for a, b in zip(before, after)] == [True, True, False, True, True]
names = set(after[2].__code__.co_varnames) | set(after[2].__code__.co_names)
assert "_podbgp_raw" in names and "_podbgp_option" not in names
""")
    assert out.returncode == 0, out.stderr
    assert "could not patch exabgp" in out.stderr and "JSON._update" in out.stderr


def test_a_broken_header_gets_its_notification() -> None:
    """ExaBGP 5.0.15 answers a bad marker or length (RFC 4271 §6.1: NOTIFICATION 1/1,
    1/2) with a TypeError in Protocol.read_message and closes without any
    NOTIFICATION. Drive the patched read_message with a reader that reports a bad
    length: it must raise Notify(1, 2, <the length>) and nothing else."""
    out = _run("""
import bgpd.exabgp.launch as launch
from exabgp.reactor.protocol import Protocol
from exabgp.bgp.message.notification import Notify
from exabgp.reactor.network.error import NotifyError
class Box:  # what read_message touches on self
    pass
def probe(patched):
    if patched:
        assert launch.patch(skip={"decode", "api"})  # the notify group alone
    proto = Box()
    proto.neighbor = Box()
    proto.neighbor.api = {'receive-packets': False, 'receive-consolidate': False,
                          'receive-parsed': True, 'receive-notification': True}
    proto.connection = Box()
    proto.connection.reader = lambda: iter([(5019, 0, b'\\xff' * 19, b'',
                                             NotifyError(1, 2, 'too long'))])
    proto.peer = Box()
    proto.peer.neighbor = proto.neighbor
    proto.peer.reactor = Box()
    proto.peer.reactor.processes = __import__('exabgp.reactor.api.processes',
                                              fromlist=['Processes']).Processes()
    try:
        next(Protocol.read_message(proto))
    except Notify as n:
        return ('notify', n.code, n.subcode, n.data)
    except TypeError as e:
        return ('typeerror',)
print(probe(False)[0], probe(True))
""")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "typeerror ('notify', 1, 2, b'\\x13\\x9b')", out.stdout


def test_debug_level_keeps_the_debug_lines() -> None:
    # With DEBUG on, the guarded per-NLRI lines must still be logged.
    body = encode({"update": {"attribute": {"origin": "igp"}, "announce": {
        "ipv4 unicast": {"192.0.2.1": [{"nlri": "192.0.2.0/24"}]}}}})
    out = _run(f"BODY = {body!r}\n" + """
import os
os.environ['exabgp.log.level'] = 'DEBUG'
os.environ['exabgp.log.routes'] = 'true'
os.environ['exabgp.log.destination'] = 'stdout'
import bgpd.exabgp.launch as launch
assert launch.patch()
from exabgp.environment import getenv
from exabgp.logger import log
from exabgp.configuration.configuration import Configuration
from exabgp.configuration.check import _negotiated
from exabgp.bgp.message.update import Update
from exabgp.bgp.message.direction import Direction
env = getenv(); log.init(env)
c = Configuration(['neighbor 10.0.0.1 { router-id 10.0.0.2; local-address 10.0.0.2; '
                   'local-as 1; peer-as 1; family { ipv4 unicast; } }'], text=True)
c.reload()
n = list(c.neighbors.values())[0]
Update.unpack_message(BODY, Direction.IN, _negotiated(n))
""")
    assert out.returncode == 0, out.stderr
    assert "announced NLRI 192.0.2.0/24" in out.stdout + out.stderr


def test_unpatched_env_switch(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "bgpd.exabgp.launch", "version"],
                         capture_output=True, text=True, timeout=60, cwd=tmp_path, check=False,
                         env={**os.environ, "PYTHONPATH": str(ROOT),
                              exabgp_launch.UNPATCHED_ENV: "1"})
    assert out.returncode == 0, out.stderr
    assert "running exabgp unpatched" in out.stderr
    assert "5.0.15" in out.stdout


# ------------------------------------------------------------------ group "api"

# Drives ExaBGP's own API command handlers against a loaded configuration (a fake
# reactor runs each scheduled callback to the end), then prints, per neighbour, the
# UPDATE messages its adj-rib-out would send, as hex, and which neighbours share the
# route objects. argv[1]: "patched" or "plain"; argv[2:]: commands.
SENDER = r"""
import sys
mode = sys.argv[1]
if mode == "patched":
    import bgpd.exabgp.launch as launch
    assert launch.patch(), "patch() refused"
from exabgp.environment import getenv
from exabgp.logger import log
from exabgp.configuration.configuration import Configuration
from exabgp.configuration.check import _negotiated
from exabgp.reactor.api import API
env = getenv(); env.tcp.bind = ""; log.init(env)
peers = ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.30"]
conf = " ".join(
    f"neighbor {p} {{ router-id 10.0.0.1; local-address 10.0.0.1; local-as 65000; "
    f"peer-as 65000; family {{ ipv4 unicast; }} capability {{ route-refresh; }} }}"
    for p in peers)
configuration = Configuration([conf], text=True)
assert configuration.reload(), configuration.error
answers = []
class Processes:
    def answer_done(self, service, force=False): answers.append("done")
    def answer_error(self, service): answers.append("error")
class Async:
    def schedule(self, uid, command, callback):
        for _ in callback: pass
class Reactor:
    def __init__(self):
        self.configuration, self.processes, self.asynchronous = configuration, Processes(), Async()
    def peers(self, service=""): return list(configuration.neighbors)
    def established_peers(self): return set(configuration.neighbors)
reactor = Reactor()
api = API(reactor)
for command in sys.argv[2:]:
    api.process(reactor, "podbgp", command)
print("answers", " ".join(answers))
seen = {}
for name, neighbor in sorted(configuration.neighbors.items()):
    out = []
    for change in neighbor.rib.outgoing.queued_changes():
        seen.setdefault(id(change), []).append(name.split()[1])
    negotiated = _negotiated(neighbor)
    for update in neighbor.rib.outgoing.updates(True):
        for message in update.messages(negotiated):
            out.append(message.hex())
    print(name.split()[1], " ".join(sorted(out)))
print("shared", max(len(v) for v in seen.values()) if seen else 0)
"""

API_COMMANDS = [
    # one route to three of four neighbours, as the speaker groups them
    "neighbor 10.0.0.2 , neighbor 10.0.0.3 , neighbor 10.0.0.4 announce attributes next-hop "
    "10.0.1.2 origin igp as-path [ ] local-preference 100 originator-id 10.0.1.2 "
    "cluster-list [ 244.0.0.1 ] nlri 10.1.0.0/26 10.1.0.64/26",
    # a selector that is a prefix of another neighbour's address must not match it
    "neighbor 10.0.0.3 announce attributes next-hop 10.0.1.3 origin igp as-path [ ] "
    "local-preference 100 nlri 10.2.0.0/26",
    "neighbor 10.0.0.2 , neighbor 10.0.0.4 withdraw attributes next-hop 10.0.1.2 nlri "
    "10.1.0.64/26",
    # next-hop self is rewritten per neighbour (on a copy, as before)
    "neighbor 10.0.0.2 , neighbor 10.0.0.30 announce attributes next-hop self origin igp "
    "as-path [ ] local-preference 100 nlri 10.3.0.0/26",
    "neighbor 10.9.9.9 announce attributes next-hop 10.0.1.2 nlri 10.4.0.0/26",
]


def send(mode: str, commands: list[str]) -> list[str]:
    out = subprocess.run([sys.executable, "-c", SENDER, mode, *commands], capture_output=True,
                         text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)},
                         check=False)
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def test_api_patches_send_the_same_updates_sharing_the_routes() -> None:
    patched, plain = send("patched", API_COMMANDS), send("plain", API_COMMANDS)
    assert patched[:-1] == plain[:-1]
    lines = dict(line.split(" ", 1) for line in patched[:-1])
    assert lines["answers"] == "done done done done error"  # 10.9.9.9 is no neighbour
    # the grouped route reached exactly the three named neighbours, 10.0.0.3's own only it
    route_a, route_b = "1a0a0100", "1a0a0200"  # 10.1.0.0/26, 10.2.0.0/26 as NLRI
    assert [route_a in lines[p] for p in ("10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.30")] == \
        [True, True, True, False]
    assert [route_b in lines[p] for p in ("10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.30")] == \
        [False, True, False, False]
    # next-hop self: each neighbour got its own local address as next hop (10.0.0.1)
    assert "4003040a000001" in lines["10.0.0.30"]  # NEXT_HOP 10.0.0.1
    # ExaBGP deep-copied every route per neighbour; patched, one object serves all three
    assert plain[-1] == "shared 1" and patched[-1] == "shared 3"


# ExaBGP's neighbour names and selectors, and odd ones (tabs, commas, unicode spaces,
# 'neighbor *', multi-word strings) that must go to the original matcher.
_word = st.sampled_from(["neighbor", "local-ip", "peer-as", "10.0.0.1", "10.0.0.10",
                         "10.0.0.100", "65000", "in-open", "*", "a,b", "x\ty", "é", "",
                         "router-id", "10.0.0", "\u2003"])
_name = st.one_of(
    st.builds(lambda a, b: f"neighbor {a} local-ip 10.0.0.254 local-as 65000 peer-as {b} "
              "router-id 10.0.0.254 family-allowed in-open",
              st.sampled_from(["10.0.0.1", "10.0.0.10", "10.0.0.100", "fd00::1"]),
              st.sampled_from(["65000", "65001"])),
    st.lists(_word, min_size=1, max_size=6).map(" ".join),
)
_string = st.one_of(
    st.builds(lambda a: f"neighbor {a}", st.sampled_from(
        ["10.0.0.1", "10.0.0.10", "10.0.0.100", "fd00::1", "10.0.0", "*"])),
    st.sampled_from(["neighbor *", " neighbor * ", "peer-as 65001", "local-ip 10.0.0.254",
                     "65000 router-id", "in-open", "neighbor 10.0.0.1 local-ip 10.0.0.254"]),
    st.lists(_word, min_size=1, max_size=3).map(" ".join),
)
_descriptions = st.lists(st.lists(_string, min_size=1, max_size=3), max_size=5)


@settings(max_examples=400, deadline=None)
@given(peers=st.lists(_name, max_size=8), descriptions=_descriptions)
def test_indexed_matcher_answers_as_exabgps(peers, descriptions) -> None:
    from exabgp.reactor.api.command import limit

    fast = exabgp_launch._make_matcher(limit.match_neighbor, limit.match_neighbors)
    assert fast(peers, descriptions) == limit.match_neighbors(peers, descriptions)
    # the second call answers from the cached index: the same again
    assert fast(list(peers), descriptions) == limit.match_neighbors(peers, descriptions)


def test_matcher_is_linear_in_neighbours_and_selectors() -> None:
    from exabgp.reactor.api.command import limit

    names = [f"neighbor 172.30.{i // 250}.{i % 250} local-ip 172.30.9.1 local-as 64512 "
             f"peer-as 64512 router-id 172.30.9.1 family-allowed in-open" for i in range(1000)]
    descriptions, _ = limit.extract_neighbors(
        " , ".join(f"neighbor 172.30.{i // 250}.{i % 250}" for i in range(0, 1000, 2))
        + " announce attributes next-hop 1.2.3.4 nlri 10.0.0.0/26")
    assert len(descriptions) == 500
    fast = exabgp_launch._make_matcher(limit.match_neighbor, limit.match_neighbors)
    assert fast(names, descriptions) == names[::2]
    # 1000 x 500 regex searches (the original) take seconds; the index a few ms
    import time

    t0 = time.perf_counter()
    for _ in range(20):
        fast(names, descriptions)
    assert (time.perf_counter() - t0) / 20 < 0.05


def test_a_group_that_does_not_fit_leaves_the_others_applied() -> None:
    out = _run(TARGETS + """
import hashlib, bgpd.exabgp.launch as launch
from exabgp.reactor.api.command import limit, announce
from exabgp.configuration.configuration import _Configuration
original = (limit.match_neighbors, announce.match_neighbors, _Configuration.inject_change)
launch._MATCH_SOURCES["match_neighbors"] = "0" * 64  # as if ExaBGP's source had changed
before = snapshot()
assert launch.patch() is False
assert (limit.match_neighbors, announce.match_neighbors, _Configuration.inject_change) == original
after = snapshot()
assert all(a is not b for a, b in zip(before, after)), "the decode group was not applied"
""")
    assert out.returncode == 0, out.stderr
    assert "could not patch exabgp (api: limit.match_neighbors: source differs" in out.stderr
    assert "running it without the 'api' patches" in out.stderr


def test_unpatched_env_switch_per_group(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "bgpd.exabgp.launch", "version"],
                         capture_output=True, text=True, timeout=60, cwd=tmp_path, check=False,
                         env={**os.environ, "PYTHONPATH": str(ROOT),
                              exabgp_launch.UNPATCHED_ENV: "api"})
    assert out.returncode == 0, out.stderr
    assert f"{exabgp_launch.UNPATCHED_ENV}=api: without the api patches" in out.stderr


# ------------------------------------------------------------------ group "raw"

def test_raw_payload_must_be_whole_update_or_refresh_messages() -> None:
    from bgpd.exabgp import wire
    from rib.policy import ExportAttrs

    good = (wire.announce(ExportAttrs(next_hop="10.0.0.1"), ["10.1.0.0/24"], ibgp=True,
                          ipv6=False)
            + wire.withdraw(["10.2.0.0/24"], ipv6=False) + wire.end_of_rib(False)
            + wire.route_refresh_marker(False, 1) + wire.route_refresh_marker(False, 2))
    assert exabgp_launch._raw_messages_ok(good)
    marker = b"\xff" * 16
    for bad in (b"", good[:-1], good + b"\xff",
                marker + b"\x00\x13\x04",  # KEEPALIVE: not ours to send
                marker + b"\x00\x15\x03\x06\x04",  # NOTIFICATION
                b"\xfe" + good[1:],  # broken marker
                marker + b"\x10\x01\x02" + b"\x00" * 4094,  # 4097 octets
                marker + b"\x00\x12\x02"):  # shorter than a header
        assert not exabgp_launch._raw_messages_ok(bad), bad[:24]


def test_raw_command_queues_bytes_for_established_named_peers_only() -> None:
    out = _run("""
import base64, bgpd.exabgp.launch as launch
from bgpd.exabgp import wire
from rib.policy import ExportAttrs
assert launch.patch()
from exabgp.bgp.fsm import FSM
from exabgp.reactor.api import API
from exabgp.reactor.api.command import Command
class Neighbor(dict):
    pass
class Peer:
    def __init__(self, address, state):
        self.neighbor = Neighbor({"peer-address": address})
        self.fsm, self.proto = FSM(None, state), object()
answers = []
class Processes:
    def answer_done(self, service, force=False): answers.append("done")
    def answer_error(self, service): answers.append("error")
class Reactor:
    processes = Processes()
    _peers = {"a": Peer("10.0.0.2", FSM.ESTABLISHED), "b": Peer("10.0.0.3", FSM.ESTABLISHED),
              "c": Peer("10.0.0.4", FSM.OPENSENT), "d": Peer("10.0.0.5", FSM.ESTABLISHED)}
reactor = Reactor()
api = API.__new__(API)
data = wire.announce(ExportAttrs(next_hop="10.0.0.1"), ["10.1.0.0/24"], ibgp=True, ipv6=False)
b64 = base64.b64encode(data).decode()
api.response(reactor, "podbgp", f"podbgp-send {b64} 10.0.0.2 10.0.0.3 10.0.0.4", False)
api.response(reactor, "podbgp", f"podbgp-send {b64} 10.0.0.2", False)
api.response(reactor, "podbgp", "podbgp-send bm90IGJncA== 10.0.0.2", False)  # not BGP
api.response(reactor, "podbgp", "podbgp-send !!! 10.0.0.2", False)  # not base64
api.response(reactor, "podbgp", "podbgp-hello", False)
p = reactor._peers
assert answers == ["done", "done", "error", "error", "done"], answers
assert bytes(p["a"].neighbor._podbgp_raw) == data + data  # in order, both commands
assert bytes(p["b"].neighbor._podbgp_raw) == data
assert "_podbgp_raw" not in vars(p["c"].neighbor)  # not Established: nothing queued
assert "_podbgp_raw" not in vars(p["d"].neighbor)  # not named
assert p["a"].neighbor._podbgp_raw_mode and not hasattr(p["d"].neighbor, "_podbgp_raw_mode")
""")
    assert out.returncode == 0, out.stderr


def test_raw_payload_ending_in_a_command_word_is_still_podbgp_send() -> None:
    """ExaBGP 5.0.15 picks a line's command by substring (API.response:
    ``registered + ' ' in line``, names in reverse order), so 'version', 'teardown',
    'shutdown', 'restart', 'reset' and 'reload' are tried before 'podbgp-send'. A
    podbgp-send whose base64 payload ends in one of those words, followed by the space
    before the peer address, ran that command (a shutdown of ExaBGP, or 'reset': no
    answer at all, which shifts every later answer). podbgp's own commands are now
    picked by their first word."""
    out = _run("""
import base64, bgpd.exabgp.launch as launch
assert launch.patch()
from exabgp.bgp.fsm import FSM
from exabgp.reactor.api import API
from exabgp.reactor.api.command import Command
class Neighbor(dict):
    pass
class Peer:
    def __init__(self, address):
        self.neighbor = Neighbor({"peer-address": address})
        self.fsm, self.proto = FSM(None, FSM.ESTABLISHED), object()
answers, ran = [], []
class Processes:
    def answer_done(self, service, force=False): answers.append("done")
    def answer_error(self, service): answers.append("error")
    def write(self, service, line): answers.append(line)
class Signal:
    RELOAD = RESTART = SHUTDOWN = "signal"
    def __setattr__(self, name, value): ran.append(value)
class Asynchronous:
    def clear(self, service=None): ran.append("reset")
class Reactor:
    processes, signal, asynchronous = Processes(), Signal(), Asynchronous()
    _peers = {"a": Peer("10.0.0.2")}
    def teardown_peer(self, name, code): ran.append("teardown")
reactor = Reactor()
api = API.__new__(API)
for word in ("reload", "reset", "restart", "shutdown", "version", "teardown"):
    # an UPDATE (33 octets: base64 without padding) whose last attribute's value makes
    # its base64 end in `word`: an unknown optional transitive attribute, 7 octets
    tail = b"\\x00" + base64.b64decode("A" * (-len(word) % 4) + word)
    data = b"\\xff" * 16 + bytes([0, 33, 2, 0, 0, 0, 10, 0xc0, 0xf0, 7]) + tail
    b64 = base64.b64encode(data).decode()
    line = f"podbgp-send {b64} 10.0.0.2"
    assert b64.endswith(word) and launch._raw_messages_ok(data), b64
    # ExaBGP's own matcher would take this line for `word`
    assert next(r for r in Command.functions if r + " " in line) == word, line
    answers.clear()
    api.response(reactor, "podbgp", line, False)
    assert answers == ["done"] and not ran, (word, answers, ran)
    n = reactor._peers["a"].neighbor
    assert bytes(n._podbgp_raw) == data, word
    n._podbgp_raw = bytearray()
api.response(reactor, "podbgp", "reload", False)  # anything else: ExaBGP's matcher, as before
assert ran == ["signal"] and answers[-1] == "done", (ran, answers)
""")
    assert out.returncode == 0, out.stderr


# Real ExaBGP handlers, a loaded configuration, ExaBGP's own Processes (writing to a
# recorder) and callback queue (ASYNC), the loop's order: every command read in one turn,
# then the callbacks. argv[1]: "patched" or "plain".
ORDER = r"""
import base64, sys
if sys.argv[1] == "patched":
    import bgpd.exabgp.launch as launch
    assert launch.patch(), "patch() refused"
else:
    import bgpd.exabgp.launch as launch
    assert launch.patch(skip=["order"]), "patch() refused"
from bgpd.exabgp import wire
from exabgp.bgp.fsm import FSM
from exabgp.environment import getenv
from exabgp.logger import log
from exabgp.configuration.configuration import Configuration
from exabgp.reactor.api import API
from exabgp.reactor.api.processes import Processes
from exabgp.reactor.asynchronous import ASYNC
env = getenv(); env.tcp.bind = ""; log.init(env)
conf = " ".join(
    f"neighbor {p} {{ router-id 10.0.0.1; local-address 10.0.0.1; local-as 65000; "
    f"peer-as 65000; family {{ ipv4 unicast; }} }}" for p in ("10.0.0.2", "10.0.0.3"))
configuration = Configuration([conf], text=True)
assert configuration.reload(), configuration.error
lines = []
class Pipe:
    def write(self, data): lines.append(data.decode().strip())
    def flush(self): pass
class Process:
    stdin = Pipe()
processes = Processes()
processes._process["podbgp"], processes._ack["podbgp"] = Process(), True
processes._ackjson["podbgp"] = False
class Peer:  # what podbgp-send reads of a session
    def __init__(self, name):
        self.neighbor = configuration.neighbors[name]
        self.fsm, self.proto = FSM(None, FSM.ESTABLISHED), object()
class Reactor:
    def __init__(self):
        self.configuration, self.processes, self.asynchronous = configuration, processes, ASYNC()
        self._peers = {name: Peer(name) for name in configuration.neighbors
                       if "10.0.0.2" in name}
    def peers(self, service=""): return list(configuration.neighbors)
    def established_peers(self): return [n for n in configuration.neighbors if "10.0.0.2" in n]
    def teardown_peer(self, name, code): pass
reactor = Reactor()
api = API(reactor)
eor = base64.b64encode(wire.end_of_rib(False)).decode()
for command in [
        # answered from a callback: done
        "neighbor 10.0.0.2 announce attributes next-hop 10.0.1.2 origin igp as-path [ ] "
        "local-preference 100 nlri 10.1.0.0/26 10.1.0.64/26",
        "neighbor 10.0.0.3 announce eor ipv4 unicast",  # not Established: error, at once
        f"podbgp-send {eor} 10.0.0.2",  # done, at once
        "neighbor 10.0.0.2 announce eor ipv4 unicast",  # done, from a callback
        "neighbor 10.0.0.2 teardown 6"]:  # done, at once
    api.process(reactor, "podbgp", command)
while not reactor.asynchronous.ready():
    reactor.asynchronous.run()
api.process(reactor, "podbgp", "neighbor 10.0.0.3 announce eor ipv4 unicast")  # nothing pending
print(" ".join(lines))
"""


def test_answers_come_in_the_order_of_the_commands() -> None:
    """ExaBGP answers podbgp-send, teardown and an ``announce eor`` that names no
    Established peer at once, but ``announce attributes`` and an ``announce eor`` that
    does from a callback it runs after reading the turn's commands: unpatched, the
    answers overtake each other, and the speaker, pairing them with its commands in
    order, took the refused End-of-RIB's ``error`` for the routes' and podbgp-send's
    ``done`` for the refused End-of-RIB (booked as sent: never sent again)."""
    def answers(mode: str) -> list[str]:
        out = subprocess.run([sys.executable, "-c", ORDER, mode], capture_output=True,
                             text=True, timeout=120, check=False,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert out.returncode == 0, out.stderr
        return out.stdout.split()

    in_order = ["done", "error", "done", "done", "done", "error"]
    # unpatched: the three answered at once come first
    assert answers("plain") == ["error", "done", "done", "done", "done", "error"]
    assert answers("patched") == in_order


def test_raw_bytes_queued_before_a_reload_stay_with_the_session() -> None:
    """A ``reload`` that finds a peer unchanged makes the new Neighbor object the live
    one at once (ExaBGP's Peer.reconfigure). podbgp-send bytes ExaBGP had already
    answered ``done`` for, queued on the old object and not yet written, were dropped
    with it (and the speaker, holding the acknowledgement, never re-sends them). They
    now move to the new object, ahead of anything queued after the reload, with the
    session's raw mode and a write in progress."""
    out = _run("""
import base64, bgpd.exabgp.launch as launch
from bgpd.exabgp import wire
from rib.policy import ExportAttrs
assert launch.patch()
from exabgp.bgp.fsm import FSM
from exabgp.bgp.neighbor import Neighbor
from exabgp.protocol.ip import IP
from exabgp.reactor.api import API
from exabgp.reactor.peer import Peer
def neighbor():
    n = Neighbor()
    n["peer-address"] = IP.create("10.0.0.2")
    return n
peer = Peer.__new__(Peer)
peer.neighbor, peer._neighbor, peer.proto = neighbor(), None, object()
peer.fsm = FSM(peer, FSM.ESTABLISHED)
class Processes:
    def answer_done(self, service, force=False): pass
    def answer_error(self, service): raise AssertionError("error")
class Reactor:
    processes = Processes()
    _peers = {"a": peer}
reactor = Reactor()
api = API.__new__(API)
eor = wire.end_of_rib(False)
data = wire.announce(ExportAttrs(next_hop="10.0.0.1"), ["10.1.0.0/24"], ibgp=True, ipv6=False)
api.response(reactor, "podbgp", f"podbgp-send {base64.b64encode(eor).decode()} 10.0.0.2", False)
old = peer.neighbor
old._podbgp_busy = True  # the session's turn is writing earlier bytes
peer.reconfigure(neighbor())  # the reload: same definition, new object
assert peer.neighbor is not old
api.response(reactor, "podbgp", f"podbgp-send {base64.b64encode(data).decode()} 10.0.0.2", False)
n = peer.neighbor
assert bytes(n.__dict__.get("_podbgp_raw", b"")) == eor + data, "acknowledged bytes lost"
assert n._podbgp_busy and n._podbgp_raw_mode
assert not old.__dict__.get("_podbgp_raw")  # moved, not copied: written once
""")
    assert out.returncode == 0, out.stderr


def test_raw_bytes_go_out_at_once_only_when_nothing_of_the_session_is_pending() -> None:
    """podbgp-send writes a message straight to an idle session's socket (no turn of
    ExaBGP's loop per session), but never into the middle of another message, nor
    ahead of bytes queued or being written before it: BGP is a byte stream, a message
    cut by another corrupts the session (RFC 4271 §4.1) and an UPDATE overtaken by a
    later one leaves the peer with the earlier state."""
    out = _run("""
import base64, socket, bgpd.exabgp.launch as launch
from bgpd.exabgp import wire
from rib.policy import ExportAttrs
assert launch.patch()
from exabgp.bgp.fsm import FSM
from exabgp.reactor.api import API
from exabgp.reactor.network.connection import Connection
class Neighbor(dict):
    pass
class Conn:
    def __init__(self, io): self.io = io
class Proto:
    def __init__(self, io): self.connection = Conn(io)
class Peer:
    def __init__(self, address, io):
        self.neighbor = Neighbor({"peer-address": address})
        self.fsm, self.proto, self.stats = FSM(None, FSM.ESTABLISHED), Proto(io), {"send-update": 0}
answers = []
class Processes:
    def answer_done(self, service, force=False): answers.append("done")
    def answer_error(self, service): answers.append("error")
pairs = [socket.socketpair() for _ in range(4)]
for a, b in pairs:
    a.setblocking(False)
class Reactor:
    processes = Processes()
    _peers = {k: Peer(f"10.0.0.{i + 2}", pairs[i][0]) for i, k in enumerate("abcd")}
reactor = Reactor()
p = reactor._peers
p["b"].proto.connection._podbgp_mid = True  # ExaBGP's own message half written
p["c"].neighbor._podbgp_raw = bytearray(b"earlier")  # queued before
p["d"].neighbor._podbgp_busy = True  # being written by its session
api = API.__new__(API)
data = wire.announce(ExportAttrs(next_hop="10.0.0.1"), ["10.1.0.0/24"], ibgp=True, ipv6=False)
b64 = base64.b64encode(data).decode()
api.response(reactor, "podbgp", f"podbgp-send {b64} 10.0.0.2 10.0.0.3 10.0.0.4 10.0.0.5", False)
api.response(reactor, "podbgp", f"podbgp-send {b64} 10.0.0.2", False)
assert answers == ["done", "done"], answers
for _, b in pairs:
    b.setblocking(False)
launch._write_queued()  # as the loop does once it has run the turn's commands
assert pairs[0][1].recv(65536) == data + data  # both commands, in order, at once
assert p["a"].stats["send-update"] == 1 and not p["a"].neighbor._podbgp_raw
assert pairs[2][1].recv(65536) == b"earlier" + data  # queued before: first
assert bytes(p["b"].neighbor._podbgp_raw) == data  # left: not into the middle
assert bytes(p["d"].neighbor._podbgp_raw) == data  # left: behind what is being written
for _, b in (pairs[1], pairs[3]):
    try:
        assert b.recv(65536) == b"", "nothing written"
    except BlockingIOError:
        pass
# Connection.writer notes a message it has only partly written, and its end.
class C(Connection):
    def __init__(self, io): self.io, self.defensive = io, False
    def writing(self): return True
    def session(self): return "s"
a, b = socket.socketpair()
a.setblocking(False)
c = C(a)
big = b"x" * (8 << 20)
w = c.writer(big)
assert next(w) is False and c._podbgp_mid  # the socket took part of it
b.setblocking(False)
got = 0
while True:
    try:
        got += len(b.recv(1 << 20))
    except BlockingIOError:
        if next(w):
            break
assert c._podbgp_mid is False
print("ok")
""")
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr


def test_a_parked_session_runs_often_enough_for_its_timers() -> None:
    """RFC 4271 §4.4/§10: a KEEPALIVE is due every hold time / 3 (ExaBGP: SendTimer)
    and the hold timer expires after the hold time; a parked session checks both only
    when it runs, so it must run well within a KEEPALIVE interval — and an idle
    reflector with hundreds of sessions no more often than that needs."""
    from types import SimpleNamespace as NS

    def peer(hold):
        return NS(proto=NS(negotiated=NS(holdtime=hold)))

    for hold in (3, 9, 30, 90, 180, 65535):
        park = exabgp_launch._park_seconds(peer(hold))
        assert park <= hold / 3 / 5 or park == exabgp_launch.PARK_SECONDS, (hold, park)
        assert exabgp_launch.PARK_SECONDS <= park <= exabgp_launch.PARK_MAX_SECONDS
    assert exabgp_launch._park_seconds(peer(90)) == 3.0  # Calico's default hold time
    assert exabgp_launch._park_seconds(peer(3)) == exabgp_launch.PARK_SECONDS  # the shortest legal
    assert exabgp_launch._park_seconds(NS(proto=None)) == exabgp_launch.PARK_SECONDS  # no session yet
    assert exabgp_launch._park_seconds(peer(0)) == exabgp_launch.PARK_MAX_SECONDS  # no timers at all


def test_groups_editing_one_function_compose() -> None:
    # "decode" and "raw" both edit Peer._main: the result holds the edits of both, and
    # leaving "raw" out leaves decode's alone.
    out = _run("""
import inspect, bgpd.exabgp.launch as launch
from exabgp.reactor.peer import Peer
assert launch.patch()
code = Peer._main.__code__
names = set(code.co_varnames) | set(code.co_names)
assert "_podbgp_raw" in names and "_podbgp_option" in names, names
""")
    assert out.returncode == 0, out.stderr
    out = _run("""
import bgpd.exabgp.launch as launch
from exabgp.reactor.peer import Peer
assert launch.patch(skip={"raw"})
names = set(Peer._main.__code__.co_varnames) | set(Peer._main.__code__.co_names)
assert "_podbgp_raw" not in names and "_podbgp_option" in names, names
""")
    assert out.returncode == 0, out.stderr


def test_reload_group_makes_previous_safe_to_read() -> None:
    """Group "reload": ExaBGP's session loop reads ``self._neighbor.previous.changes``
    after its own preamble may have set ``previous`` to None on that very Neighbor
    (a reload reaching a session just Established: AttributeError, reset without
    NOTIFICATION; reproduced by tests/integration/test_speaker_reload.py). Patched,
    None reads as an empty, false previous configuration; values are kept."""
    out = _run("""
import bgpd.exabgp.launch as launch
from exabgp.bgp.neighbor import Neighbor
n = Neighbor()
before = n.previous
assert launch.patch(skip={"decode", "api", "notify", "raw", "poll"})
n = Neighbor()
p = n.previous
assert not p and p.changes == () and p is not None
n.previous = "old"
assert n.previous == "old"
n.previous = None
assert not n.previous and n.previous.changes == ()
print(before)
""")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "None"


CHANNEL = """
import os, select, socket, sys, time
import bgpd.exabgp.launch as launch
assert launch.patch(skip={"decode", "api", "notify", "raw", "poll", "reload"})
from exabgp.environment import getenv
from exabgp.logger import log
from exabgp.reactor.api.processes import Processes
env = getenv(); env.tcp.bind = ""; log.init(env)
path = sys.argv[1]
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(path)
srv.listen(4)
procs = Processes()
relay = [sys.executable, "-m", "bgpd.exabgp.relay", path]
procs._configuration = {"ctl": {"run": relay, "encoder": "json", "respawn": True}}
procs._start("ctl")
proc = procs._process["ctl"]
print("type", type(proc).__name__)
conn, _ = srv.accept()
# ExaBGP's side: events written with Processes.write, commands read by received()
procs.write("ctl", '{"type": "state"}')
big = "x" * 300_000  # larger than the socket buffers: the writer waits for room
import threading
t = threading.Thread(target=lambda: procs.write("ctl", big))
t.start()
got = b""
while len(got) < 18 + 300_001:
    got += conn.recv(1 << 16)
t.join(5)
print("events", got[:18] == b'{"type": "state"}\\n', got[18:] == big.encode() + b"\\n")
conn.sendall(b"neighbor 10.0.0.2 announce route 10.1.0.0/24 next-hop self\\nreload\\n")
cmds = []
deadline = time.time() + 5
while len(cmds) < 2 and time.time() < deadline:
    cmds += [c for _, c in procs.received()]
print("commands", cmds)
print("poll_open", proc.poll())
conn.close()  # the speaker drops the channel: ExaBGP respawns it (connects again)
deadline = time.time() + 5
while procs._process.get("ctl") is proc and time.time() < deadline:
    list(procs.received())
print("respawned", procs._process["ctl"] is not proc, proc.poll())
conn2, _ = srv.accept()
procs.write("ctl", "done")
print("second", conn2.recv(100))
other = [sys.executable, "-c", "import sys; sys.stdout.write(sys.stdin.readline())"]
procs._configuration["other"] = {"run": other, "encoder": "text", "respawn": False}
procs._start("other")
print("other", type(procs._process["other"]).__name__)
os.unlink(path)
procs._configuration["gone"] = {"run": relay, "encoder": "json", "respawn": False}
launch._CONNECT_TRIES = 2
procs._start("gone")
print("gone", procs._process["gone"].poll())
procs.terminate()
"""


def test_channel_group_connects_exabgp_to_the_speaker_without_a_relay(tmp_path: Path) -> None:
    """Group "channel": ExaBGP's API process for the relay command is the speaker's socket,
    connected by ExaBGP itself (no process): events written, commands read, a large event
    waits for room instead of failing, the speaker closing its end makes ExaBGP connect
    again (respawn), any other ``run`` line still starts a process, and a socket that
    cannot be reached reads as a process that exited."""
    out = subprocess.run([sys.executable, "-c", CHANNEL, str(tmp_path / "s.sock")],
                         capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, check=False)
    assert out.returncode == 0, out.stderr
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines())
    assert lines["type"] == "_Channel"
    assert lines["events"] == "True True"
    assert lines["commands"] == ("['neighbor 10.0.0.2 announce route 10.1.0.0/24 next-hop self',"
                                 " 'reload']")
    assert lines["poll_open"] == "None"
    assert lines["respawned"] == "True 0"
    assert lines["second"] == "b'done\\n'"
    assert lines["other"] == "Popen"
    assert lines["gone"] == "1"
    assert "cannot connect to" in out.stderr


LIBCRYPTO = "print(any('libcrypto' in line for line in open('/proc/self/maps')))"


def test_lean_group_keeps_ssl_and_libcrypto_out_of_exabgp() -> None:
    """Group "lean": asyncio (which ExaBGP imports) finds no ssl, and hashlib (launch's
    own source check) no _hashlib, in ExaBGP's process: libcrypto is not mapped;
    ExaBGP's server still imports and runs its asyncio parts."""
    out = _run(f"""
import sys, bgpd.exabgp.launch as launch
assert launch.patch()
import exabgp.application.server, exabgp.reactor.loop, asyncio
loop = asyncio.new_event_loop(); loop.run_until_complete(asyncio.sleep(0)); loop.close()
print(sys.modules.get("ssl"), sys.modules.get("_hashlib"), "asyncio" in sys.modules)
{LIBCRYPTO}
""")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["None", "None", "True", "False"]
    out = _run(f"""
import sys, bgpd.exabgp.launch as launch
assert launch.patch(skip={{"lean"}})
import exabgp.application.server
print(sys.modules.get("ssl") is not None)
{LIBCRYPTO}
""")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "True"]


LAZY = """
import sys, bgpd.exabgp.launch as launch
assert launch.patch()
import exabgp.application.server, exabgp.reactor.loop, exabgp.reactor.asynchronous
import exabgp.logger.handler, exabgp.configuration.core.error
from exabgp.environment import getenv
from exabgp.logger import log
from exabgp.configuration.configuration import Configuration
env = getenv(); env.tcp.bind = ""; log.init(env)
Configuration(["neighbor 10.99.0.3 { router-id 10.99.0.1; local-address 10.99.0.1; "
               "local-as 65000; peer-as 65003; family { ipv4 unicast; } }"], text=True).reload()
lazy = lambda: [n for n in ("asyncio", "pdb", "logging.handlers", "uuid", "random")
                if type(sys.modules[n]) is launch._LazyModule]
print(len(launch._LAZY_MODULES), sum(type(sys.modules[n]) is launch._LazyModule
                                     for n in launch._LAZY_MODULES))
print(*lazy())
import logging.handlers as handlers
print(handlers.RotatingFileHandler.__name__, *lazy())
import asyncio
print(asyncio.run(asyncio.sleep(0, "ran")), *lazy())
from uuid import uuid1
print(uuid1().version, *lazy())
print(launch.lazy_import("mmap"), "mmap" in sys.modules)  # an extension module: never lazy
"""


def test_lean_group_defers_modules_exabgp_imports_but_does_not_use() -> None:
    """Group "lean" (issue 17): after ExaBGP's server, reactor, logger and configuration
    modules are imported and a configuration loaded, none of the lazy modules has run
    (asyncio, pdb, logging.handlers, uuid...: ~3 MiB stay out of the idle process); the
    first attribute read loads each, whole: a syslog/file log destination, asyncio and
    ``from uuid import uuid1`` work as before."""
    out = _run(LAZY)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    count, unexecuted = lines[0].split()
    assert count == unexecuted and int(count) >= 10
    assert lines[1:] == ["asyncio pdb logging.handlers uuid random",
                         "RotatingFileHandler asyncio pdb uuid random",
                         "ran pdb uuid random",
                         "1 pdb random",
                         "False False"]


PORTS = """
import sys, bgpd.exabgp.launch as launch
assert launch.patch(skip=set(sys.argv[1:]))
import exabgp.application.server, exabgp.reactor.loop
from exabgp.environment import getenv
from exabgp.logger import log
from exabgp.configuration.configuration import Configuration
env = getenv(); env.tcp.bind = ""; log.init(env)
Configuration(["neighbor 10.99.0.3 { router-id 10.99.0.1; local-address 10.99.0.1; "
               "local-as 65000; peer-as 65003; family { ipv4 unicast; } }"], text=True).reload()
from exabgp.protocol.ip.port import Port
from exabgp.bgp.message.update.nlri import flow
built = lambda: [getattr(t, "built", "dict") for t in (Port.names, Port.codes)]
print(type(Port.names).__name__, *built())
print(Port(80).name(), Port.named("http"), Port.named("SSH"), Port(65000).name(), str(Port(22)),
      flow.FlowDestinationPort(0x01, 443), *built())
# the module as ExaBGP's own source builds it
orig = {"__name__": "port_orig"}
exec(compile(open(sys.modules["exabgp.protocol.ip.port"].__file__).read(), "port.py", "exec"),
     orig)
O = orig["Port"]
print(list(Port.names.items()) == list(O.names.items()),
      list(Port.codes.items()) == list(O.codes.items()), len(Port.names), len(Port.codes),
      Port.name.__code__.co_firstlineno == O.name.__code__.co_firstlineno)
"""


def test_ports_group_builds_the_port_name_tables_on_first_use() -> None:
    """Group "ports" (issue 17): ExaBGP's IANA port-name table (Port.names, Port.codes:
    ~0.85 MiB of an idle ExaBGP, read only to name FlowSpec ports) is not built by the
    imports and a configuration load; the first use builds both, equal item for item
    (and in order) to what port.py's own code builds; unpatched they are plain dicts."""
    out = subprocess.run([sys.executable, "-c", PORTS], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "_LazyTable False False"
    assert lines[1] == "http 80 22 65000 22 =443 True True"
    assert lines[2] == "True True 4928 4899 True"
    out = subprocess.run([sys.executable, "-c", PORTS, "ports"], capture_output=True,
                         text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["dict dict dict", "http 80 22 65000 22 =443 dict dict",
                                       "True True 4928 4899 True"]


def test_ports_group_reads_every_entry_and_refuses_other_source() -> None:
    """The names table is read back from its lines by one pattern: every line between
    ``names = {`` and ``}`` of the pinned port.py is one entry it reads; any other
    source is refused (the group is then left out, ExaBGP builds its own table)."""
    import re

    import exabgp.protocol.ip.port as port

    source = Path(port.__file__).read_text()
    lines = source.splitlines(keepends=True)
    start = lines.index(exabgp_launch._PORT_NAMES)
    end = lines.index("    }\n", start)
    entries = "".join(lines[start + 1:end])
    assert len(re.findall(exabgp_launch._PORT_ENTRY, entries, re.M)) == end - start - 1 > 4000
    new, blob = exabgp_launch._lean_port_source(source)
    assert len(new.splitlines()) == len(lines) and len(blob) < 64 * 1024
    assert exabgp_launch._port_names(blob) == port.Port.names
    with pytest.raises(exabgp_launch.PatchError, match=r"exabgp\.protocol\.ip\.port"):
        exabgp_launch._lean_port_source(source.replace("'http'", "'www'"))


def test_lazy_import_failure_leaves_no_half_module(tmp_path: Path) -> None:
    """A lazily imported module whose code fails raises on first use, as its import would
    have, and is not left in sys.modules half-initialised."""
    (tmp_path / "podbgp_broken_mod.py").write_text("X = 1\nraise RuntimeError('broken')\n")
    out = _run(f"""
import sys; sys.path.insert(0, {str(tmp_path)!r})
from bgpd.exabgp.launch import lazy_import
assert lazy_import("podbgp_broken_mod") and not lazy_import("podbgp_broken_mod")
import podbgp_broken_mod
try:
    podbgp_broken_mod.X
except RuntimeError as e:
    print("raised", e, "podbgp_broken_mod" in sys.modules)
print(lazy_import("podbgp_no_such_module"))
""")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["raised broken False", "False"]


# ASYNC's callbacks: generators of several lengths, one raising, one that ends at once;
# the trace is every run()'s answer, each step taken, the services told of an error and
# what is left queued, for ExaBGP's own ASYNC.run and for group "sync"'s.
SYNC_TRACE = """
import sys, bgpd.exabgp.launch as launch
skip = set(sys.argv[1:])
assert launch.patch(skip=skip)
from exabgp.environment import getenv
from exabgp.logger import log
from exabgp.reactor.asynchronous import ASYNC
log.init(getenv())
steps, errors = [], []
def gen(name, n, fail_at=None):
    for i in range(n):
        if i == fail_at:
            raise ValueError(f"{name} failed\\nsecond line")
        steps.append((name, i))
        yield
a = ASYNC()
a.set_error_handler(errors.append)
for uid, n, fail in (("a", 3, None), ("b", 70, None), ("c", 5, 2), ("d", 0, None),
                     ("e", 120, None), ("f", 4, 0)):
    a.schedule(uid, "cmd " + uid, gen(uid, n, fail))
answers = []
for _ in range(8):
    answers.append(a.run())
    a.schedule("late", "late", gen("late", 1)) if len(answers) == 3 else None
print("T", answers)
print("T", steps)
print("T", errors, [uid for uid, _ in a._async])
print("T", type(sys.modules["asyncio"]).__name__)
"""


def test_sync_group_runs_api_callbacks_as_exabgp_did_without_an_event_loop() -> None:
    """Group "sync": ASYNC.run gives the same answers, runs the same generator steps in
    the same order (LIMIT a call, the next callback on StopIteration, a failing one
    reported to its service) and leaves the same queue as ExaBGP's asyncio.run version —
    and asyncio is never even executed (lean's lazy module stays unloaded)."""
    patched = subprocess.run([sys.executable, "-c", SYNC_TRACE], capture_output=True,
                             text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)},
                             check=False)
    original = subprocess.run([sys.executable, "-c", SYNC_TRACE, "sync"], capture_output=True,
                              text=True, timeout=60,
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, check=False)
    assert patched.returncode == 0, patched.stderr
    assert original.returncode == 0, original.stderr
    ours, theirs = ([line[2:] for line in out.stdout.splitlines() if line.startswith("T ")]
                    for out in (patched, original))
    assert ours[:3] == theirs[:3]
    assert ours[0] == "[True, True, True, True, False, False, False, False]"
    assert ours[2] == "['c', 'f'] []"
    assert ours[3] == "_LazyModule"  # never loaded: no event loop made
    assert theirs[3] == "module"  # ExaBGP's version runs asyncio.run every call
    # the same error lines logged (ExaBGP's logger, stdout or stderr)
    logged = [sorted(line.split("|", 1)[-1] for line in (out.stdout + out.stderr).splitlines()
                     if "async |" in line) for out in (patched, original)]
    assert logged[0] == logged[1] and len(logged[0]) == 6


COROUTINE = """
import sys, bgpd.exabgp.launch as launch
assert launch.patch(skip=set(sys.argv[1:]))
from exabgp.reactor.asynchronous import ASYNC
done = []
async def co():
    done.append("co")
def gen(then=None):
    done.append("gen")
    if then:
        a.schedule("c", "c", then)
    yield
a = ASYNC()
a.schedule("g", "g", gen())
a.schedule("c", "c", co)
print(a.run(), done.count("gen"), done.count("co"), [uid for uid, _ in a._async])
done.clear(); a.clear()
a.schedule("g", "g", gen(co))  # a coroutine met while running generators
print(a.run(), done.count("gen"), done.count("co") > 0)
"""


def test_sync_group_still_runs_a_coroutine_through_asyncio() -> None:
    """A coroutine callback (ExaBGP 5.0.15 schedules none) goes the original way: queued
    from the start, exactly as unpatched ExaBGP runs it; met while generators run, it is
    handed to ExaBGP's asyncio version."""
    outs = [subprocess.run([sys.executable, "-c", COROUTINE, *skip], capture_output=True,
                           text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)},
                           check=False) for skip in ((), ("sync",))]
    for out in outs:
        assert out.returncode == 0, out.stderr
    ours, theirs = (out.stdout.splitlines() for out in outs)
    assert ours[0] == theirs[0] == "True 1 48 ['c']"  # ExaBGP re-calls it every step
    assert ours[1] == "True 1 True"


# -- group decode's fast path for plain IPv4 unicast UPDATEs, against ExaBGP's own decoder.
# Each body is decoded as Protocol.read_message does (Update.unpack_message, then RFC 7606
# treat-as-withdraw turns every NLRI into a withdrawal) and printed: the JSON event, or the
# NOTIFICATION (code, subcode, data) ExaBGP would send; then the NLRI objects ExaBGP's
# Peer._main and text encoder would see (str, action, next hop, index). Last line: how many
# bodies took the compact path.
RECEIVER = r"""
import os, re, sys
mode, conf = sys.argv[1], sys.argv[2]
if mode == "patched":
    import bgpd.exabgp.launch as launch
    assert launch.patch(), "patch() refused"
from exabgp.environment import getenv
from exabgp.logger import log
from exabgp.configuration.configuration import Configuration
from exabgp.configuration.check import _negotiated
from exabgp.bgp.message.action import Action
from exabgp.bgp.message.notification import Notify
from exabgp.bgp.message.update import Update
from exabgp.bgp.message.update.attribute import Attribute
from exabgp.bgp.message.direction import Direction
from exabgp.reactor.api.response import Response
env = getenv(); env.tcp.bind = ""; log.init(env)
configuration = Configuration([conf], text=True)
configuration.reload()
neighbor = list(configuration.neighbors.values())[0]
negotiated = _negotiated(neighbor)
encoder = Response.JSON("5.0.0")
compact = 0
for body in sys.stdin.read().split():
    try:
        update = Update.unpack_message(bytes.fromhex(body), Direction.IN, negotiated)
    except Notify as exc:
        print("notify", exc.code, exc.subcode, repr(exc.data))
        continue
    except Exception as exc:
        print("error", type(exc).__name__, exc)
        continue
    compact += getattr(update, "podbgp_v4", None) is not None
    if update.TYPE == Update.TYPE and Attribute.CODE.INTERNAL_TREAT_AS_WITHDRAW in update.attributes:
        for nlri in update.nlris:
            nlri.action = Action.WITHDRAW
    line = encoder.update(neighbor, "receive", update, None, "", "")
    print(re.sub(r'"(time|pid|ppid)" ?: [0-9.]+', r'"\1": X', line))
    print([(str(n), repr(n.action), str(getattr(n, "nexthop", "")), n.index()) for n in update.nlris])
print("compact", compact)
"""
V4_NEIGHBOR = ("neighbor 10.99.0.3 { router-id 10.99.0.1; local-address 10.99.0.1; local-as 65000;"
               " peer-as 65003; family { ipv4 unicast; ipv6 unicast; } }")
ADDPATH_NEIGHBOR = V4_NEIGHBOR.replace("family", "capability { add-path send/receive; } family")


def receive(mode: str, bodies: list[bytes], conf: str = V4_NEIGHBOR) -> tuple[list[str], int]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", RECEIVER, mode, conf],
                         input="\n".join(b.hex() for b in bodies), capture_output=True,
                         text=True, timeout=120, env=env, check=False)
    assert out.returncode == 0, out.stderr
    *lines, last = out.stdout.splitlines()
    return lines, int(last.split()[1])


_ORIGIN = _attr(0x40, 1, b"\x00")
_AS_PATH = _attr(0x40, 2, struct.pack("!BBI", 2, 1, 65003))
_NEXT_HOP = _attr(0x40, 3, bytes([10, 99, 0, 3]))
_LOCAL_PREF = _attr(0x40, 5, struct.pack("!I", 100))
# Attribute fields a peer may send, good and bad (RFC 4271 5, 6.3; RFC 7606 7.1-7.3; RFC 4760):
ATTRIBUTE_FIELDS = [
    _ORIGIN + _AS_PATH + _NEXT_HOP + _LOCAL_PREF,
    _ORIGIN + _AS_PATH + _NEXT_HOP + _LOCAL_PREF + _attr(0xC0, 8, struct.pack("!HH", 65003, 7)),
    _ORIGIN + _AS_PATH + _LOCAL_PREF,                                    # no NEXT_HOP
    _ORIGIN + _AS_PATH + _NEXT_HOP + _attr(0xC0, 8, b"\x00\x01\x02"),  # COMMUNITY length 3:
    _attr(0x40, 1, b"") + _AS_PATH + _NEXT_HOP,                          # ORIGIN length 0: both
    _attr(0x40, 1, b"\x07") + _AS_PATH + _NEXT_HOP,                      # treat-as-withdraw
    _attr(0x40, 1, b"\x00\x00") + _AS_PATH + _NEXT_HOP,                  # ORIGIN length 2
    _ORIGIN + _AS_PATH + _attr(0x40, 3, bytes([10, 99, 0, 3, 1])),       # NEXT_HOP length 5
    _ORIGIN + _AS_PATH + _NEXT_HOP + _NEXT_HOP,                          # NEXT_HOP twice
    _ORIGIN + _AS_PATH + _NEXT_HOP + b"\x40\x05\x09\x00",                # LOCAL_PREF overruns
    _ORIGIN + _AS_PATH + _NEXT_HOP + _attr(0x80, 14, struct.pack("!HBB", 1, 1, 4)
                                           + bytes([10, 99, 0, 4]) + b"\x00\x18\x0a\x07\x07"),
    _attr(0x80, 15, struct.pack("!HB", 1, 1) + b"\x18\x0a\x08\x08"),     # MP_UNREACH ipv4
    _attr(0x80, 15, struct.pack("!HB", 2, 1)),                           # EOR ipv6
    b"",
]


def _nlri_entry() -> st.SearchStrategy[bytes]:
    good = st.integers(0, 32).flatmap(
        lambda m: st.binary(min_size=(m + 7) // 8, max_size=(m + 7) // 8).map(lambda b: bytes([m]) + b))
    too_long = st.tuples(st.integers(33, 255), st.binary(max_size=5)).map(lambda t: bytes([t[0]]) + t[1])
    return st.one_of(good, good, good, too_long)


@st.composite
def _nlri_field(draw: st.DrawFn) -> bytes:
    field = b"".join(draw(st.lists(_nlri_entry(), max_size=6)))
    cut = draw(st.integers(0, 3)) if draw(st.integers(0, 5)) == 0 else 0
    return field[:len(field) - cut] if cut else field


@st.composite
def _update_body(draw: st.DrawFn) -> bytes:
    withdrawn = draw(_nlri_field())
    attributes = draw(st.sampled_from(ATTRIBUTE_FIELDS))
    announced = draw(_nlri_field())
    wlen = len(withdrawn) + (draw(st.sampled_from([0, 0, 0, 0, 0, 0, 1, -1, 200])))
    return (struct.pack("!H", max(wlen, 0) & 0xFFFF) + withdrawn
            + struct.pack("!H", len(attributes)) + attributes + announced)


_GOOD = ATTRIBUTE_FIELDS[0]
# Fixed cases on both sides of each rule of INET.unpack_nlri, and RFC 7606 on valid NLRI.
FIXED_BODIES = [
    _update(b"", _GOOD, b"\x21\x0a\x00\x00\x00\x00"),           # length 33: NOTIFICATION 3/10
    _update(b"\x28\x0a\x00\x00\x00\x00", b"", b""),                # withdrawn length 40
    _update(b"", _GOOD, b"\x18\x0a\x01"),                           # /24 with 2 octets
    _update(b"", _GOOD, b"\x18\x0a\x01\x00\x08"),                   # /8 with no octet
    _update(b"", _GOOD, b"\x18\x0a\x01\x00\x00"),                   # /0 last: valid
    _update(b"", _GOOD, b"\x17\x0a\x01\x01\x20\x0a\x01\x02\x03"),   # host bits kept, /32
    _update(b"\x17\x0a\x01\x01", ATTRIBUTE_FIELDS[3], b"\x18\x0a\x02\x00"),  # treat-as-withdraw
    _update(b"", ATTRIBUTE_FIELDS[2], b"\x18\x0a\x02\x00"),         # no NEXT_HOP
    # Fields of one prefix length (read in one step): /24s, /32s, three /0, /17s with host
    # bits; a run whose last entry is cut short (NOTIFICATION) or whose lengths differ.
    _update(b"\x18\x0a\x03\x00" * 3, _GOOD, b"\x18\x0a\x04\x00\x18\x0a\x05\x00"),
    _update(b"", _GOOD, b"\x20\x0a\x00\x00\x01\x20\x0a\x00\x00\x02"),
    _update(b"\x00\x00\x00", _GOOD, b"\x11\x0a\x06\xff\x11\x0a\x07\x80"),
    _update(b"", _GOOD, b"\x18\x0a\x08\x00\x18\x0a\x09"),
    _update(b"", _GOOD, b"\x18\x0a\x08\x00\x20\x0a\x09\x00\x01\x18\x0a\x0a\x00"),
]


# Each example runs two ExaBGP interpreters: few examples, no shrinking (a failure prints
# its bodies as they are).
@settings(max_examples=3, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate])
@given(bodies=st.lists(_update_body(), min_size=60, max_size=90))
def test_fast_ipv4_path_answers_as_exabgps_decoder(bodies: list[bytes]) -> None:
    # Same JSON, same NOTIFICATIONs (a bad prefix length, a truncated NLRI field, bad
    # attributes), same treat-as-withdraw, same NLRI objects for whoever asks for them.
    big = big_updates()[:3]  # 800-prefix IPv4 announce, withdraw, mixed: the fast path
    patched, compact = receive("patched", FIXED_BODIES + bodies + big)
    plain, none = receive("plain", FIXED_BODIES + bodies + big)
    assert patched == plain
    assert none == 0 and compact >= 3 + 3 + 4, compact
    fixed = plain[:12]  # 4 NOTIFICATIONs, then 4 decoded (JSON + NLRI line each)
    assert [line.split()[:3] for line in fixed[:4]] == [["notify", "3", "10"]] * 4, fixed
    runs = plain[12:21]  # 3 decoded, the cut run's NOTIFICATION, the mixed run decoded
    assert runs[6].split()[:3] == ["notify", "3", "10"] and not runs[7].startswith("notify")
    assert '"10.0.0.2/32" } ]' in runs[2] and '"0.0.0.0/0" } ]' in runs[4]
    assert '"10.7.128.0/17" } ]' in runs[4] and '"10.9.0.1/32" }, ' in runs[7]
    assert '"0.0.0.0/0"' in fixed[4] and '"10.1.1.0/23"' in fixed[6] and '"10.1.2.3/32"' in fixed[6]
    assert '"withdraw": { "ipv4 unicast": [ { "nlri": "10.1.1.0/23" }, { "nlri": "10.2.0.0/24" }' \
        in fixed[8] and '"announce"' not in fixed[8]


def test_fast_ipv4_path_is_left_to_exabgp_with_add_path() -> None:
    # ADD-PATH on receive puts a path identifier before each prefix: ExaBGP's decoder only.
    nlri = b"\x00\x00\x00\x07" + _nlri("10.1.0.0/24") + b"\x00\x00\x00\x09" + _nlri("10.2.0.0/16")
    attrs = ATTRIBUTE_FIELDS[0]
    bodies = [_update(b"", attrs, nlri), _update(nlri, b"", b""), _update(b"", attrs, nlri[:-1])]
    patched, compact = receive("patched", bodies, ADDPATH_NEIGHBOR)
    plain, _ = receive("plain", bodies, ADDPATH_NEIGHBOR)
    assert patched == plain
    assert compact == 0
    assert '"path-information": "0.0.0.7"' in patched[0] and patched[-1].startswith("notify 3 10")
