"""Fuzz config parsing: any input gives a resource or a ConfigError, nothing else.

A datastore must survive whatever is in etcd or a YAML file; an exception other
than ConfigError would take a watcher down instead of rejecting one key.
"""

from __future__ import annotations

import copy
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from config.errors import ConfigError
from config.parse import (
    parse_affinity,
    parse_json,
    parse_resource,
    parse_yaml_documents,
    to_calico_dict,
)
from config.selector import SelectorError, parse_selector
from tests.helpers import docpaths

SETTINGS = settings(max_examples=int(__import__("os").environ.get("FUZZ_EXAMPLES", "300")), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

json_scalars = (
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True) | st.text(max_size=20)
    | st.sampled_from(["", "10.0.0.0/16", "fd00::/64", "1.10", "Always", "all()", "120s",
                       "[fd00::1]:179", "10.0.0.1:179", "confirmed", "false", "has(a"])
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                 max_size=4),
    max_leaves=20,
)

KINDS = ["IPPool", "BGPConfiguration", "BGPPeer", "BGPFilter", "Node", "BlockAffinity"]

SEEDS = [
    {"kind": "IPPool", "metadata": {"name": "p"},
     "spec": {"cidr": "10.0.0.0/16", "blockSize": 26, "ipipMode": "Always",
              "nodeSelector": "all()", "allowedUses": ["Workload"]}},
    {"kind": "BGPConfiguration", "metadata": {"name": "default"},
     "spec": {"asNumber": 64512, "communities": [{"name": "c", "value": "1:2"}],
              "prefixAdvertisements": [{"cidr": "10.0.0.0/8", "communities": ["c"]}],
              "serviceClusterIPs": [{"cidr": "10.96.0.0/12"}],
              "nodeMeshPassword": {"secretKeyRef": {"name": "s", "key": "k"}}}},
    {"kind": "BGPPeer", "metadata": {"name": "x"},
     "spec": {"peerIP": "10.0.0.1", "asNumber": "1.10", "nodeSelector": "has(a)",
              "password": {"secretKeyRef": {"name": "s", "key": "k"}}, "filters": ["f"],
              "maxRestartTime": "120s", "reachableBy": "10.0.0.254"}},
    {"kind": "BGPFilter", "metadata": {"name": "f"},
     "spec": {"exportV4": [{"action": "Accept", "cidr": "10.0.0.0/8", "matchOperator": "In",
                            "prefixLength": {"min": 8, "max": 32}}],
              "importV6": [{"action": "Reject", "interface": "eth*"}]}},
    {"kind": "Node", "metadata": {"name": "n", "labels": {"a": "b"}},
     "spec": {"bgp": {"ipv4Address": "10.0.0.1/24", "routeReflectorClusterID": "1.2.3.4"},
              "addresses": [{"address": "10.0.0.1", "type": "InternalIP"}]}},
    {"kind": "BlockAffinity", "metadata": {"name": "n-b"},
     "spec": {"node": "n", "cidr": "10.0.0.0/26", "state": "confirmed", "deleted": "false"}},
]


def _set(obj, path, value):
    return docpaths.put(copy.deepcopy(obj), path, value)


def _check(obj):
    try:
        res = parse_resource(obj)
    except ConfigError as exc:
        assert str(exc)  # the message itself must render
        return
    # anything accepted must survive its own round trip
    assert parse_resource(to_calico_dict(res)) == res


@SETTINGS
@given(st.dictionaries(st.sampled_from(["kind", "apiVersion", "metadata", "spec", "status",
                                        "x"]), json_values, max_size=5),
       st.sampled_from([*KINDS, None]))
def test_random_documents(doc, kind):
    if kind is not None:
        doc = {**doc, "kind": kind}
    _check(doc)


@SETTINGS
@given(st.data())
def test_mutated_valid_documents(data):
    seed = data.draw(st.sampled_from(SEEDS))
    paths = list(docpaths.paths(seed))
    for _ in range(data.draw(st.integers(min_value=1, max_value=3))):
        path = data.draw(st.sampled_from(paths))
        seed = _set(seed, path, data.draw(json_values))
        paths = list(docpaths.paths(seed))
    _check(seed)


@SETTINGS
@given(st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()))
def test_etcd_values(raw):
    for key in ("/calico/resources/v3/projectcalico.org/ippools/p",
                "/calico/resources/v3/projectcalico.org/bgppeers/x"):
        try:
            parse_json(key, raw)
        except ConfigError:
            pass
    try:
        parse_affinity("/calico/ipam/v2/host/n/ipv4/block/10.0.0.0-26", raw)
    except ConfigError:
        pass


@SETTINGS
@given(st.text(max_size=200) | st.sampled_from(["a: [", "{{", "- &a [*a]", "kind: List\nitems: x",
                                                "!!python/object:os.system x", "a: !!binary x"]))
def test_yaml_text(text):
    try:
        parse_yaml_documents(text)
    except ConfigError:
        pass


SELECTOR_TOKENS = ["a", "b", " ", "==", "!=", "!", "&&", "||", "(", ")", "{", "}", "'x'", ",",
                   "has(", "in", "not", "all()", "global()", "contains", "starts", "with", '"']


@SETTINGS
@given(st.lists(st.sampled_from(SELECTOR_TOKENS), max_size=15).map("".join)
       | st.text(max_size=30))
def test_selectors(text):
    try:
        sel = parse_selector(text)
    except SelectorError:
        return
    assert parse_selector(str(sel)) == sel
    sel.matches({"a": "b"})
