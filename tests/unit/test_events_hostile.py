"""bgpd.exabgp.parse on what ExaBGP 5.0.15 printed for malformed UPDATEs from a real wire.

tests/unit/golden/events_hostile.jsonl holds the JSON lines ExaBGP (podbgp's
child, exabgp.api.compact) wrote when tests/helpers/hostile_speaker.py sent it
each malformed UPDATE named in "case" over a real session (AS 65010, eBGP,
next hop 10.99.0.2). Expected outcomes follow RFC 7606 (revised error handling
for UPDATE messages) and RFC 4271; the parser must reach them itself where
ExaBGP passes the malformation through (ORIGIN 7 as "invalid", a missing
NEXT_HOP as the key "no-nexthop", a missing ORIGIN or AS_PATH as no key, host
bits as they came).
"""

from __future__ import annotations

import json
from pathlib import Path as FsPath

import pytest

from bgpd import events as ev
from bgpd.exabgp.parse import parse_line
from rib.path import Origin, PeerKind, PeerRef

GOLDEN = FsPath(__file__).parent / "golden" / "events_hostile.jsonl"
CASES: dict[str, list[str]] = {}
for _line in GOLDEN.read_text().splitlines():
    _doc = json.loads(_line)
    CASES.setdefault(_doc["case"], []).append(_doc["line"])

HOSTILE = PeerRef("10.99.0.2", 65010, "10.99.0.2", PeerKind.EBGP)
IBGP = PeerRef("10.99.0.2", 64512, "10.99.0.2", PeerKind.IBGP)


def parse(case: str, peer: PeerRef = HOSTILE, index: int = -1) -> ev.Update:
    event = parse_line(CASES[case][index], {peer.address: peer}.get)
    assert isinstance(event, ev.Update), event
    return event


def outcome(e: ev.Update) -> tuple[list[str], list[str], list[str]]:
    return ([p.prefix for p in e.announced], [w.prefix for w in e.withdrawn],
            [x.action for x in e.errors])


@pytest.mark.parametrize(("case", "prefix", "reason"), [
    ("origin-7", "10.244.51.0/26", "origin: 'invalid'"),  # RFC 7606 §7.1
    ("no-next-hop", "10.244.52.0/26", "next-hop: missing"),  # RFC 7606 §3 (d)
    ("no-origin", "10.244.60.0/26", "origin: missing"),  # RFC 7606 §3 (d)
    ("no-as-path-ebgp", "10.244.61.0/26", "as-path: missing"),  # §3 (d), RFC 4271 §5.1.2
    ("next-hop-0.0.0.0", "10.244.65.0/26", "cannot be a next hop"),  # RFC 4271 §6.3
])
def test_treat_as_withdraw_where_exabgp_passes_the_error_through(case, prefix, reason):
    e = parse(case)
    assert outcome(e) == ([], [prefix], ["treat-as-withdraw"])
    assert reason in e.errors[0].reason and e.errors[0].prefixes == 1


@pytest.mark.parametrize(("case", "withdrawn"), [
    # RFC 7606 §4: an attribute length overrunning the attribute section: the whole
    # UPDATE is treat-as-withdraw, its plain withdrawal included.
    ("attribute-length-overrun", ["10.244.62.0/26", "10.244.63.0/26"]),
    ("as-path-segment-type-7", ["10.244.54.0/26"]),  # RFC 7606 §7.2
])
def test_exabgps_own_treat_as_withdraw_is_applied_and_counted(case, withdrawn):
    e = parse(case)
    assert outcome(e) == ([], withdrawn, ["treat-as-withdraw"])
    assert e.errors[0].reason.startswith("exabgp: treat-as-withdraw")


def test_attribute_discard_keeps_the_route() -> None:
    # RFC 7606 §7.7: a malformed AGGREGATOR is discarded, the route is kept.
    e = parse("aggregator-malformed")
    assert outcome(e) == (["10.244.66.0/26"], [], ["attribute-discard"])


def test_host_bits_are_masked_and_the_withdrawal_beside_them_applied() -> None:
    """The issue's case: one UPDATE withdrawing 10.244.21.0/26 and announcing
    10.244.22.7/26 (RFC 4271 §4.3: that is 10.244.22.0/26) and 10.244.23.0/26.
    Before, the whole line was Garbage and the withdrawn route stayed installed."""
    first = parse("host-bits", index=0)
    assert outcome(first) == (["10.244.21.0/26"], [], [])
    e = parse("host-bits", index=1)
    assert outcome(e) == (["10.244.22.0/26", "10.244.23.0/26"], ["10.244.21.0/26"],
                          ["prefix-masked"])
    assert e.errors[0].prefixes == 1 and "10.244.22.7/26" in e.errors[0].reason


def test_unknown_optional_transitive_attribute_is_accepted() -> None:
    # RFC 4271 §5: an unrecognised optional transitive attribute is accepted (podbgp
    # does not pass it on: it re-advertises only the attributes it models).
    e = parse("unknown-optional-transitive")
    assert outcome(e) == (["10.244.58.0/26"], [], [])


def test_duplicate_attribute_keeps_the_first() -> None:
    # RFC 7606 §3 (g): all but the first occurrence are discarded (ExaBGP does it).
    e = parse("duplicate-origin")
    assert outcome(e) == (["10.244.53.0/26"], [], [])
    assert e.announced[0].origin is Origin.IGP


def test_an_empty_as_path_is_fine_from_an_internal_peer() -> None:
    e = parse("no-as-path-ebgp", peer=IBGP)
    assert outcome(e) == (["10.244.61.0/26"], [], [])
    assert e.announced[0].as_path == ()


def test_a_bad_next_hop_costs_only_its_own_nlri() -> None:
    """Two next-hop groups in one UPDATE (an MP_REACH and a NEXT_HOP can carry two):
    the bad one is withdrawn, the good one announced."""
    line = CASES["host-bits"][1].replace(
        '"10.99.0.2": [ "10.244.22.7/26", "10.244.23.0/26" ]',
        '"no-nexthop": [ "10.244.22.7/26" ], "10.99.0.2": [ "10.244.23.0/26" ]')
    e = parse_line(line, {HOSTILE.address: HOSTILE}.get)
    assert isinstance(e, ev.Update)
    assert [p.prefix for p in e.announced] == ["10.244.23.0/26"]
    assert sorted(w.prefix for w in e.withdrawn) == ["10.244.21.0/26", "10.244.22.0/26"]
    assert sorted(x.action for x in e.errors) == ["prefix-masked", "treat-as-withdraw"]


def test_one_bad_withdrawal_entry_leaves_the_others() -> None:
    line = CASES["host-bits"][1].replace('[ "10.244.21.0/26" ]',
                                         '[ "10.244.21.0/26", "300.1.1.1/8", 7 ]')
    e = parse_line(line, {HOSTILE.address: HOSTILE}.get)
    assert isinstance(e, ev.Update)
    assert [w.prefix for w in e.withdrawn] == ["10.244.21.0/26"]
    assert sorted((x.action, x.prefixes) for x in e.errors) == [
        ("nlri-discarded", 1), ("nlri-discarded", 1), ("prefix-masked", 1)]


def test_a_flood_of_one_mistake_is_one_error_record() -> None:
    many = ", ".join(f'"10.244.{i // 4}.{(i % 4) * 64 + 1}/26"' for i in range(800))
    line = CASES["host-bits"][1].replace('"10.244.22.7/26", "10.244.23.0/26"', many)
    e = parse_line(line, {HOSTILE.address: HOSTILE}.get)
    assert isinstance(e, ev.Update) and len(e.announced) == 800
    assert [(x.action, x.prefixes) for x in e.errors] == [("prefix-masked", 800)]
    assert e.errors[0].reason == ("ipv4 unicast: host bits set: 10.244.0.1/26 and 799 more")
