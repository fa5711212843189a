"""Hostile policy documents: refused with a ConfigError, or accepted, stored and
compiled without any other exception (config.policy, config.k8s, policy.*).

Seeds are valid documents of every policy kind; hypothesis replaces parts of
them with arbitrary JSON values, as tests/fuzz/test_config_fuzz.py does for
the routing kinds.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from config.errors import ConfigError
from config.parse import parse_resource, to_calico_dict
from policy.engine import Engine, endpoint_from_parts
from policy.rules import normalize_policy, normalize_profile
from policy.ruleset import render_full
from tests.fuzz.test_config_fuzz import _set
from tests.helpers import docpaths

SETTINGS = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2, 70000) | st.text(max_size=12)
    | st.sampled_from(["", "TCP", "ICMP", "10.0.0.0/8", "fd00::/64", "all()", "global()",
                       "a == 'b'", "80:90", "http", "Allow", "Pass", "Ingress", "Egress"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=3),
    max_leaves=8,
)

SEEDS = [
    {"apiVersion": "projectcalico.org/v3", "kind": "NetworkPolicy",
     "metadata": {"name": "p", "namespace": "n"},
     "spec": {"order": 10, "selector": "app == 'x'", "types": ["Ingress", "Egress"],
              "ingress": [{"action": "Allow", "protocol": "TCP",
                           "source": {"selector": "a == 'b'", "namespaceSelector": "all()",
                                      "nets": ["10.0.0.0/8"], "notPorts": [22]},
                           "destination": {"ports": [80, "81:90", "http"]}}],
              "egress": [{"action": "Deny", "protocol": "ICMP", "icmp": {"type": 8, "code": 0},
                          "destination": {"notNets": ["10.1.0.0/16"],
                                          "notSelector": "has(x)"}}]}},
    {"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkPolicy",
     "metadata": {"name": "g"},
     "spec": {"namespaceSelector": "team == 'a'", "serviceAccountSelector": "r == 'x'",
              "ingress": [{"action": "Pass", "notProtocol": "UDP",
                           "source": {"serviceAccounts": {"names": ["sa"]}}}]}},
    {"apiVersion": "projectcalico.org/v3", "kind": "Profile", "metadata": {"name": "kns.n"},
     "spec": {"ingress": [{"action": "Allow"}], "labelsToApply": {"pcns.a": "b"}}},
    {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
     "metadata": {"name": "k", "namespace": "n"},
     "spec": {"podSelector": {"matchLabels": {"a": "b"},
                              "matchExpressions": [{"key": "c", "operator": "In",
                                                    "values": ["d"]}]},
              "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8",
                                                 "except": ["10.1.0.0/16"]}},
                                    {"namespaceSelector": {}, "podSelector": {}}],
                           "ports": [{"port": 80, "endPort": 90}, {"protocol": "UDP"}]}],
              "policyTypes": ["Ingress"]}},
    {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "n", "labels": {"a": "b"}}},
]


def _compile(res) -> None:
    e = Engine("n1")
    e.update_endpoint("n/x", endpoint_from_parts("n/x", "n", "n1", "cali1", ["10.0.0.1/32"],
                                                 {"app": "x", "a": "b"}, ["kns.n"],
                                                 [("http", 6, 8080)]))
    if res.kind == "Profile":
        e.update_profile(res.metadata.name, normalize_profile(res))
    else:
        p = normalize_policy(res)
        e.update_policy(p.id, p)
    assert render_full(e.ruleset()).startswith("add table inet podbgp-policy")


@SETTINGS
@given(st.data())
def test_mutated_policy_documents(data):
    doc = data.draw(st.sampled_from(SEEDS))
    for _ in range(data.draw(st.integers(min_value=1, max_value=3))):
        paths = list(docpaths.paths(doc))
        doc = _set(doc, data.draw(st.sampled_from(paths)), data.draw(json_values))
    for strict in (False, True):
        try:
            res = parse_resource(doc, strict=strict)
        except ConfigError as exc:
            assert str(exc)
            continue
        again = parse_resource(to_calico_dict(res))
        assert again == res
        _compile(res)
