"""Fuzz bgpd.exabgp.parse.parse_line: random and mutated lines never raise."""

from __future__ import annotations

import json
from pathlib import Path as FsPath

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bgpd import events as ev
from bgpd.exabgp.parse import parse_line
from rib.path import PeerKind, PeerRef

GOLDEN = FsPath(__file__).parent.parent / "unit" / "golden"
LINES = [
    line
    for name in ("events_recorded.jsonl", "events_handmade.jsonl")
    for line in (GOLDEN / name).read_text().splitlines()
    if line.startswith("{")
]
PEER = PeerRef("10.99.0.2", 65000, "10.99.0.2", PeerKind.IBGP)
KINDS = (ev.SessionConnected, ev.SessionUp, ev.SessionDown, ev.Open, ev.Update, ev.EndOfRib,
         ev.Notification, ev.RouteRefresh, ev.Shutdown, ev.CommandAck, ev.Ignored, ev.Garbage)


def lookup(addr: str) -> PeerRef:
    return PEER


def check(line) -> None:
    event = parse_line(line, lookup)
    assert isinstance(event, KINDS)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=300) | st.binary(max_size=300))
def test_random_text(line) -> None:
    check(line)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(LINES), st.data())
def test_mutated_recorded_bytes(line: str, data) -> None:
    raw = bytearray(line.encode())
    for _ in range(data.draw(st.integers(1, 8))):
        op = data.draw(st.sampled_from(["flip", "cut", "dup"]))
        i = data.draw(st.integers(0, len(raw) - 1))
        if op == "flip":
            raw[i] = data.draw(st.integers(0, 255))
        elif op == "cut":
            del raw[i : i + data.draw(st.integers(1, 40))]
        else:
            raw[i:i] = raw[i : i + data.draw(st.integers(1, 40))]
        if not raw:
            break
    check(bytes(raw))


def _paths(doc, prefix=()):
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield (*prefix, k)
            yield from _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield (*prefix, i)
            yield from _paths(v, (*prefix, i))


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(LINES), st.data())
def test_structured_mutation(line: str, data) -> None:
    """Replace one value anywhere in a real event's JSON tree with a random JSON value."""
    doc = json.loads(line)
    path = data.draw(st.sampled_from(list(_paths(doc))))
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = data.draw(json_values)
    check(json.dumps(doc))
