"""Calico compatibility: what current Calico writes is read, used and kept.

Sources (cited, not copied as code):
- tests/fixtures/confd_cases.json: facts derived from Calico's confd test suite
  (projectcalico/calico 87c15906, confd/tests/; each case cites its paths), read
  through tests/helpers/confd.py.
- tests/fixtures/calico-v3.32/cluster.yaml: resources shaped by
  api/pkg/apis/projectcalico/v3/*.go and libcalico-go/lib/apis/internalapi/node.go.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from bgpd.peers import local_node, plan_peers
from bgpd.translate import rib_config
from config.errors import ConfigError
from config.parse import load_yaml_documents, parse_resource, to_calico_dict, unknown_fields
from config.snapshot import Snapshot
from tests.helpers import confd

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
V332 = FIXTURES / "calico-v3.32" / "cluster.yaml"


def _confd_documents():
    seen = set()
    for case in confd.CASES:
        for n, doc in enumerate(confd.case_documents(case)):
            key = repr(doc)
            if key not in seen:
                seen.add(key)
                yield pytest.param(doc, id=f"{case.name}#{n}")


CONFD_DOCS = list(_confd_documents())


@pytest.mark.parametrize("doc", CONFD_DOCS)
def test_every_confd_resource_parses_strictly_and_round_trips(doc):
    # strict=True: bgpctl apply of Calico's own test inputs names no unknown field.
    res = parse_resource(doc, strict=True)
    assert parse_resource(to_calico_dict(res), strict=True) == res


def test_the_confd_resources_cover_every_kind_that_decides_sessions():
    kinds = {d.values[0]["kind"] for d in CONFD_DOCS}
    assert kinds == {"Node", "BGPConfiguration", "BGPPeer", "BGPFilter"}
    assert len(CONFD_DOCS) >= 150


def test_an_invalid_cidr_in_calicos_own_data_is_refused_by_name():
    # Calico's confd mock data carries one invalid CIDR (87c15906,
    # confd/tests/mock_data/calicoctl/mesh/vxlan-always/delete.yaml, IPPool
    # ippool-v6-1: "dead::beef::/64", two "::"): a delete only needs the name, but
    # applying it must fail naming the field.
    doc = {"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
           "metadata": {"name": "ippool-v6-1"},
           "spec": {"cidr": "dead::beef::/64", "vxlanMode": "Always"}}
    with pytest.raises(ConfigError) as info:
        parse_resource(doc, strict=True)
    assert info.value.field == "spec.cidr"


def _load(path: Path = V332) -> list:
    return [parse_resource(d, strict=True) for d in load_yaml_documents(path.read_text())]


# Fields calico-node / calicoctl v3.31+ write that older data lacks.
NEW_FIELDS = {
    "Node": [("spec", "interfaces"), ("spec", "addresses"), ("status",)],
    "BGPConfiguration": [("spec", "programClusterRoutes"), ("spec", "ipv4NormalRoutePriority"),
                         ("spec", "ipv6NormalRoutePriority"),
                         ("spec", "serviceLoadBalancerAggregation")],
    "BGPPeer": [("spec", "reversePeering")],
    "IPPool": [("spec", "namespaceSelector"), ("status",)],
}


def _strip(doc: dict) -> dict:
    doc = copy.deepcopy(doc)
    for path in NEW_FIELDS.get(doc["kind"], ()):
        node = doc
        for part in path[:-1]:
            node = node.get(part, {})
        node.pop(path[-1], None)
    return doc


def test_current_calico_resources_plan_the_same_as_older_ones():
    docs = load_yaml_documents(V332.read_text())
    # localWorkloadSelector has no older equivalent: leave that peer out of both.
    docs = [d for d in docs if d["metadata"]["name"] != "local-workload"]
    new = Snapshot.from_resources(parse_resource(d, strict=True) for d in docs)
    old = Snapshot.from_resources(parse_resource(_strip(d), strict=True) for d in docs)
    assert new.nodes["node-a"] != old.nodes["node-a"]  # the fields really were there
    for name in ("node-a", "node-b", "node-c"):
        p_new, p_old = plan_peers(new, name), plan_peers(old, name)
        assert p_new.peers and p_new.peers == p_old.peers, name
        me = local_node(new, name)
        assert rib_config(new, me) == rib_config(old, local_node(old, name))


def test_current_calico_resources_have_no_unknown_fields():
    for res in _load():
        assert unknown_fields(res) == [], res.kind


def test_an_unknown_field_in_a_node_keeps_the_node_and_its_sessions():
    # Issue 13: a Node with a field podbgp did not know was dropped whole; on the local
    # node that meant no sessions and nothing advertised.
    docs = load_yaml_documents(V332.read_text())
    for d in docs:
        if d["kind"] == "Node":
            d["spec"]["bgp"]["someFutureKnob"] = {"x": 1}
            d["spec"]["futureSpec"] = [1, 2]
    snap = Snapshot.from_resources(parse_resource(d) for d in docs)
    ref = Snapshot.from_resources(_load())
    assert plan_peers(snap, "node-a").peers == plan_peers(ref, "node-a").peers
    assert {p for p, _ in unknown_fields(snap.nodes["node-a"])} == {
        "spec.bgp.someFutureKnob", "spec.futureSpec"}


@pytest.mark.parametrize("raw, field", [
    (b'{"kind": "Node", "apiVersion": "projectcalico.org/v3", "metadata": {"name": "n"},'
     b' "spec": {"futureKnob": Infinity}}', "spec.futureKnob"),
    (b'{"kind": "Node", "apiVersion": "projectcalico.org/v3", "metadata": {"name": "n"},'
     b' "spec": {"bgp": {"ipv4Address": "10.0.0.1/24"}, "x": [1, NaN]}}', "spec.x[1]"),
])
def test_nan_or_infinity_is_refused_by_name_not_written_back_as_null(raw, field):
    # Python's json module reads the non-standard NaN/Infinity tokens; Go's encoding/json
    # (what Calico reads etcd with) refuses them. Kept as an unknown field, the value came
    # back as null on the next write (found by tests/fuzz/test_config_fuzz.py).
    from config.parse import parse_json

    with pytest.raises(ConfigError) as exc:
        parse_json("/calico/resources/v3/projectcalico.org/nodes/n", raw)
    assert exc.value.field == field and "finite" in str(exc.value)


def test_binary_that_is_not_text_is_refused_by_name_and_utf8_binary_kept():
    # YAML's !!binary (PyYAML: bytes) in a field podbgp does not model: JSON has no bytes,
    # and bytes that are not UTF-8 make no JSON string either, so the resource could not
    # be written back as read (bgpctl apply crashed writing it: a UnicodeDecodeError,
    # with pydantic a PydanticSerializationError — found by
    # tests/unit/test_config_lite_diff.py). Refused naming the field, as NaN is above;
    # UTF-8 binary is text and is kept.
    from config.parse import parse_yaml_documents, to_calico_dict

    doc = ("apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: p}\n"
           "spec:\n  cidr: 10.0.0.0/16\n  future: [1, {blob: !!binary %s}]\n")
    with pytest.raises(ConfigError) as exc:
        parse_yaml_documents(doc % "/w==")  # 0xff
    assert exc.value.field == "spec.future[1].blob" and "UTF-8" in str(exc.value)
    (pool,) = parse_yaml_documents(doc % "aGk=")  # "hi"
    assert to_calico_dict(pool)["spec"]["future"] == [1, {"blob": "hi"}]
