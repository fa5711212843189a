"""config.parse against Calico's own documents, etcd values and YAML edge cases."""

from __future__ import annotations

import json

import pytest
import yaml

from config import keys
from config.errors import ConfigError
from config.model import Affinity, BGPPeer, BlockAffinity, IPPool
from config.parse import (
    affinity_value,
    parse_affinity,
    parse_json,
    parse_resource,
    parse_yaml_documents,
    to_calico_dict,
    to_json,
)
from tests.helpers import calico_examples as examples

VALID = examples.VALID
INVALID = examples.INVALID


def test_example_sets_are_present():
    assert len(VALID) >= 20 and len(INVALID) == 6
    assert all(e.source and e.field is None for e in VALID)
    assert all(e.source and e.field for e in INVALID)


@pytest.mark.parametrize("ex", VALID, ids=[e.id for e in VALID])
def test_every_calico_example_parses_and_round_trips(ex):
    (res,) = parse_yaml_documents(ex.text)
    raw = yaml.safe_load(ex.text)
    assert res.kind == raw["kind"] and res.metadata.name == raw["metadata"]["name"]
    stored = to_calico_dict(res)
    assert stored["apiVersion"] == "projectcalico.org/v3" and stored["kind"] == res.kind
    # what we store parses back to the same resource, also through JSON bytes
    assert parse_resource(stored) == res
    key = keys.resource_key(res.kind, res.metadata.name)
    assert parse_json(key, to_json(res)) == res
    # every field the author wrote is kept under its Calico name
    for field, value in (raw.get("spec") or {}).items():
        if value is False and res.kind == "IPPool":
            # Calico's IPPool booleans are omitempty: false is not stored
            assert field not in stored["spec"]
            continue
        assert field in stored["spec"], field
        if isinstance(value, str) and field not in ("cidr", "deleted"):
            assert stored["spec"][field] == value


@pytest.mark.parametrize("ex", INVALID, ids=[e.id for e in INVALID])
def test_every_calico_invalid_example_is_rejected_naming_the_field(ex):
    with pytest.raises(ConfigError) as info:
        parse_yaml_documents(ex.text)
    raw = yaml.safe_load(ex.text)
    assert info.value.field == ex.field
    assert info.value.kind == raw["kind"]
    assert info.value.name == raw["metadata"]["name"]
    assert ex.field in str(info.value)


def test_specific_example_values():
    by_name = {e.id: parse_yaml_documents(e.text)[0] for e in VALID}
    pool = by_name["ippool-block-size"]
    assert isinstance(pool, IPPool)
    assert (pool.spec.block_size, pool.spec.ipip_mode, pool.spec.nat_outgoing) == (28, "Always", True)
    v6peer = by_name["bgppeer-v6-port"]
    assert isinstance(v6peer, BGPPeer)
    assert (v6peer.spec.peer_address, v6peer.spec.peer_port) == ("ac13::57", 50)
    comm = by_name["bgpconfiguration-communities"].spec
    # YAML 1.1 would read 5663:12 as base-60 339792; Calico (Go yaml) keeps the string
    assert comm.prefix_advertisements[0].communities == (
        "bgp-comm-standard", "5663:12", "bgp-comm-large")
    node = by_name["node-route-reflector"]
    assert node.metadata.labels == {"routeReflector": "true"}
    assert node.spec.bgp.route_reflector_cluster_id == "10.0.0.1"
    ba = by_name["blockaffinity-pending"]
    assert isinstance(ba, BlockAffinity)
    assert ba.to_affinity() == Affinity("kube-master", "192.168.221.0/26", "pending", False)
    assert not ba.to_affinity().advertised


def test_documentation_ippool_is_stored_as_calico_json():
    text = """
apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: default-ipv4-ippool
spec:
  cidr: 192.168.0.0/16
  ipipMode: Always
  natOutgoing: true
"""
    (pool,) = parse_yaml_documents(text)
    assert to_calico_dict(pool) == {
        "apiVersion": "projectcalico.org/v3",
        "kind": "IPPool",
        "metadata": {"name": "default-ipv4-ippool"},
        "spec": {
            "cidr": "192.168.0.0/16",
            "ipipMode": "Always",
            "vxlanMode": "Never",
            "natOutgoing": True,
            "blockSize": 26,
            "nodeSelector": "all()",
            "allowedUses": ["Workload", "Tunnel"],
        },
    }


def test_block_affinity_deleted_is_stored_as_calico_string():
    (ba,) = parse_yaml_documents(examples.by_id()["blockaffinity-pending"].text)
    assert to_calico_dict(ba)["spec"]["deleted"] == "false"


# ------------------------------------------------------------ etcd values


@pytest.mark.parametrize(("key", "value"), examples.ETCD_VALUES,
                         ids=[k for k, _ in examples.ETCD_VALUES])
def test_every_etcd_value_is_understood(key, value):
    if keys.parse_resource_key(key):
        res = parse_json(key, value.encode())
        assert res.metadata.name == keys.parse_resource_key(key)[1]
    elif keys.parse_affinity_key(key):
        assert isinstance(parse_affinity(key, value.encode()), Affinity)
    else:
        # IPAM blocks/handles are modelled by ipam.model (IPAM's); here we must
        # at least place the key and refuse to treat it as a resource or affinity.
        cidr = keys.parse_block_key(key)
        assert cidr is not None, key
        assert json.loads(value)["cidr"] == cidr
        with pytest.raises(ConfigError):
            parse_json(key, value.encode())
        with pytest.raises(ConfigError):
            parse_affinity(key, value.encode())


POOL_KEY = keys.resource_key("IPPool", "p1")
POOL_JSON = {"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
             "metadata": {"name": "p1", "resourceVersion": "12", "uid": "u-1",
                          "creationTimestamp": "2024-01-01T00:00:00Z"},
             "spec": {"cidr": "10.0.0.0/16", "blockSize": 26, "ipipMode": "Never",
                      "vxlanMode": "Never", "nodeSelector": "all()",
                      "allowedUses": ["Workload", "Tunnel"]}}


def test_parse_json_round_trips_calico_bytes():
    raw = json.dumps(POOL_JSON, separators=(",", ":")).encode()
    res = parse_json(POOL_KEY, raw)
    assert res.metadata.resource_version == "12"
    assert to_calico_dict(res) == POOL_JSON
    assert json.loads(to_json(res)) == POOL_JSON


@pytest.mark.parametrize(
    ("key", "raw", "field", "fragment"),
    [
        (POOL_KEY, b"{not json", "", "not valid JSON"),
        (POOL_KEY, b"\xff\xfe", "", "JSON"),
        (POOL_KEY, b"[1, 2]", "", "not a JSON object"),
        (POOL_KEY, json.dumps({**POOL_JSON, "kind": "BGPPeer", "spec": {}}).encode(), "kind",
         "stored under"),
        (keys.resource_key("IPPool", "p2"), json.dumps(POOL_JSON).encode(), "metadata.name",
         "does not match"),
        ("/calico/resources/v3/projectcalico.org/widgets/w", b"{}", "", "not a Calico v3"),
        (POOL_KEY, json.dumps({**POOL_JSON, "spec": {"cidr": "10.0.0.1/16"}}).encode(),
         "spec.cidr", "strictly masked"),
    ],
)
def test_parse_json_rejections_name_the_key(key, raw, field, fragment):
    with pytest.raises(ConfigError) as info:
        parse_json(key, raw)
    assert info.value.field == field
    assert fragment in str(info.value)
    assert info.value.key == key and key in str(info.value)


def test_parse_json_names_kind_and_name_from_key_when_value_lacks_them():
    with pytest.raises(ConfigError) as info:
        parse_json(POOL_KEY, b"{}")
    assert info.value.name == "p1" and info.value.field == "kind"


# ------------------------------------------------------------ affinities

AKEY = "/calico/ipam/v2/host/node-1/ipv4/block/10.0.0.0-26"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b'{"state":"confirmed","deleted":false}', Affinity("node-1", "10.0.0.0/26", "confirmed")),
        (b'{"state":"pending","deleted":false}', Affinity("node-1", "10.0.0.0/26", "pending")),
        (b'{"state":"pendingDeletion"}', Affinity("node-1", "10.0.0.0/26", "pendingDeletion")),
        (b'{"state":"","deleted":"false"}', Affinity("node-1", "10.0.0.0/26", "")),
        (b'{"state":"confirmed","deleted":"true"}',
         Affinity("node-1", "10.0.0.0/26", "confirmed", True)),
        (b"{}", Affinity("node-1", "10.0.0.0/26")),
        (b"", Affinity("node-1", "10.0.0.0/26")),
        # A key podbgp does not know is ignored, not a reason to drop the block's route.
        (b'{"state":"confirmed","owner":"x"}', Affinity("node-1", "10.0.0.0/26", "confirmed")),
    ],
)
def test_parse_affinity(raw, expected):
    assert parse_affinity(AKEY, raw) == expected


def test_affinity_advertised_only_when_confirmed_or_stateless():
    assert Affinity("n", "10.0.0.0/26", "confirmed").advertised
    assert Affinity("n", "10.0.0.0/26", "").advertised
    assert not Affinity("n", "10.0.0.0/26", "pending").advertised
    assert not Affinity("n", "10.0.0.0/26", "pendingDeletion").advertised
    assert not Affinity("n", "10.0.0.0/26", "confirmed", deleted=True).advertised


def test_affinity_value_round_trips():
    aff = Affinity("node-1", "10.0.0.0/26", "confirmed")
    assert affinity_value(aff) == b'{"state":"confirmed","deleted":false}'
    assert parse_affinity(keys.affinity_key(aff.node, aff.cidr), affinity_value(aff)) == aff


def test_ipv6_affinity():
    key = "/calico/ipam/v2/host/n6/ipv6/block/fd00:1::-122"
    assert parse_affinity(key, b'{"state":"confirmed"}') == Affinity("n6", "fd00:1::/122",
                                                                      "confirmed")


@pytest.mark.parametrize(
    ("key", "raw", "field", "fragment"),
    [
        ("/calico/ipam/v2/host/node-1/ipv6/block/10.0.0.0-26", b"{}", "", "not a Calico block"),
        ("/calico/ipam/v2/host/node-1/ipv4/block/10.0.0.1-26", b"{}", "", "not a Calico block"),
        ("/calico/ipam/v2/host/node-1/ipv4/10.0.0.0-26", b"{}", "", "not a Calico block"),
        (AKEY, b"{oops", "", "not valid JSON"),
        (AKEY, b'"confirmed"', "", "not a JSON object"),
        (AKEY, b'{"state":"active"}', "state", "must be confirmed"),
        (AKEY, b'{"state":"confirmed","deleted":"perhaps"}', "deleted", "true or false"),
    ],
)
def test_parse_affinity_rejections(key, raw, field, fragment):
    with pytest.raises(ConfigError) as info:
        parse_affinity(key, raw)
    assert info.value.field == field
    assert fragment in str(info.value)
    assert info.value.kind == "BlockAffinity"


# ------------------------------------------------------------ YAML documents


def test_multi_document_yaml_and_lists():
    text = """
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: a}
spec: {cidr: 10.0.0.0/16}
---
# comment-only documents are skipped
---
apiVersion: v1
kind: List
items:
- apiVersion: projectcalico.org/v3
  kind: BGPPeer
  metadata: {name: p}
  spec: {peerIP: 10.0.0.1, asNumber: 1.10}
- apiVersion: projectcalico.org/v3
  kind: BGPPeerList
  metadata: {name: q}
  spec: {}
"""
    with pytest.raises(ConfigError) as info:
        parse_yaml_documents(text)
    assert info.value.field == "kind"  # a List inside a List is not a resource
    text = text.rsplit("- apiVersion", 1)[0]
    docs = parse_yaml_documents(text)
    assert [(d.kind, d.metadata.name) for d in docs] == [("IPPool", "a"), ("BGPPeer", "p")]
    # unquoted 1.10 is the dotted AS number, not the float 1.1
    assert docs[1].spec.as_number == 65546


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("kind: IPPool\n  bad: indent\n: x", "invalid YAML at line"),
        ("- just\n- a list\n", "must be a mapping"),
        ("kind: List\nitems: 5\n", "must be a list"),
        ("'unterminated", "invalid YAML"),
    ],
)
def test_yaml_errors_are_config_errors(text, fragment):
    with pytest.raises(ConfigError) as info:
        parse_yaml_documents(text)
    assert fragment in str(info.value)


def test_yaml_bad_document_names_its_resource():
    text = ("kind: IPPool\napiVersion: projectcalico.org/v3\nmetadata: {name: good}\n"
            "spec: {cidr: 10.0.0.0/16}\n---\nkind: IPPool\napiVersion: projectcalico.org/v3\n"
            "metadata: {name: bad}\nspec: {cidr: 10.0.0.0/16, ipipMode: Sometimes}\n")
    with pytest.raises(ConfigError) as info:
        parse_yaml_documents(text)
    assert info.value.name == "bad" and info.value.field == "spec.ipipMode"


def test_parse_resource_rejects_non_mappings():
    for bad in (None, [], "IPPool", 3):
        with pytest.raises(ConfigError):
            parse_resource(bad)


def test_the_lazily_imported_kinds_are_the_policy_and_kubernetes_modules_own() -> None:
    """config.parse names the kinds whose models it imports on first use (issue 17):
    they must be exactly config.policy's and config.k8s's, in the same order (the
    "expected one of" message lists them)."""
    from config import k8s, parse, policy
    from config.model import MODELS

    assert tuple(policy.POLICY_MODELS) == parse._POLICY_KINDS
    assert set(k8s.FOREIGN_KINDS) == parse._FOREIGN_KINDS
    assert tuple({**MODELS, **policy.POLICY_MODELS}) == parse._KINDS
