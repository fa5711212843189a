"""Kubernetes NetworkPolicy / Namespace -> the Calico resources kube-controllers writes.

Expected values are those of projectcalico/calico
libcalico-go/lib/backend/k8s/conversion/conversion_test.go (the cases named
in each test), re-stated as YAML in and JSON out; the knp.default. name prefix
is kube-controllers' (kube-controllers/pkg/converter/networkpolicy_converter.go).
Validation cases follow Kubernetes' pkg/apis/networking/validation.
"""

from __future__ import annotations

import pytest

from config.errors import ConfigError
from config.parse import parse_yaml_documents, to_calico_dict

HEAD = """apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: test.policy, namespace: default}
"""
K8S = "projectcalico.org/orchestrator == 'k8s'"


def convert(spec_yaml: str) -> dict:
    (res,) = parse_yaml_documents(HEAD + spec_yaml)
    return to_calico_dict(res)


def test_basic_policy():
    # "should parse a basic k8s NetworkPolicy to a NetworkPolicy"
    doc = convert("""spec:
  podSelector: {matchLabels: {label2: value2, label: value}}
  ingress:
  - ports: [{port: 80}, {port: foo}]
    from: [{podSelector: {matchLabels: {k2: v2, k: v}}}]
  policyTypes: [Ingress]
""")
    assert doc["metadata"] == {"name": "knp.default.test.policy", "namespace": "default"}
    spec = doc["spec"]
    assert spec["order"] == 1000 and spec["tier"] == "default"
    assert spec["selector"] == f"{K8S} && label == 'value' && label2 == 'value2'"
    assert spec["ingress"] == [{
        "action": "Allow", "protocol": "TCP",
        "source": {"selector": f"{K8S} && k == 'v' && k2 == 'v2'"},
        "destination": {"ports": [80, "foo"]},
    }]
    assert spec["types"] == ["Ingress"]
    assert "egress" not in spec


def test_no_ports_means_any_protocol():
    # "should parse a k8s NetworkPolicy with no ports": protocol only with ports
    spec = convert("""spec:
  podSelector: {}
  ingress: [{from: [{podSelector: {matchLabels: {k: v}}}]}]
""")["spec"]
    assert spec["ingress"] == [{"action": "Allow", "source": {"selector": f"{K8S} && k == 'v'"}}]
    assert spec["selector"] == K8S  # empty podSelector: every k8s pod of the namespace


def test_blank_port_is_every_tcp_port():
    # "should parse a k8s NetworkPolicy with blank ports": [{port: 80}, {}] -> all TCP
    spec = convert("""spec:
  podSelector: {}
  ingress: [{ports: [{port: 80}, {}], from: [{podSelector: {matchLabels: {k: v}}}]}]
""")["spec"]
    assert spec["ingress"] == [{"action": "Allow", "protocol": "TCP",
                                "source": {"selector": f"{K8S} && k == 'v'"}}]


def test_egress_blank_ports_and_udp():
    # "should parse a k8s egress NetworkPolicy with blank ports"
    spec = convert("""spec:
  podSelector: {}
  egress:
  - ports: [{}, {port: 80}]
    to: [{podSelector: {matchLabels: {k: v}}}]
  - ports: [{port: 53, protocol: UDP}]
  policyTypes: [Egress]
""")["spec"]
    assert spec["egress"] == [
        {"action": "Allow", "protocol": "TCP", "destination": {"selector": f"{K8S} && k == 'v'"}},
        {"action": "Allow", "protocol": "UDP", "destination": {"ports": [53]}},
    ]
    assert spec["types"] == ["Egress"]


def test_multiple_peers_and_ports_one_rule_per_protocol_and_peer():
    # "should parse a NetworkPolicy with multiple peers and ports": TCP before UDP
    spec = convert("""spec:
  podSelector: {matchLabels: {label: value}}
  ingress:
  - ports: [{port: 90, protocol: UDP}, {port: 80, protocol: TCP}]
    from: [{podSelector: {matchLabels: {k: v}}}, {podSelector: {matchLabels: {k2: v2}}}]
""")["spec"]
    got = [(r["protocol"], r["source"]["selector"], r["destination"]["ports"])
           for r in spec["ingress"]]
    assert got == [
        ("TCP", f"{K8S} && k == 'v'", [80]),
        ("TCP", f"{K8S} && k2 == 'v2'", [80]),
        ("UDP", f"{K8S} && k == 'v'", [90]),
        ("UDP", f"{K8S} && k2 == 'v2'", [90]),
    ]


def test_namespace_selectors():
    # "...with an empty namespaceSelector" -> all(); "...with pod and namespace selectors"
    spec = convert("""spec:
  podSelector: {matchLabels: {label: value}}
  ingress:
  - from: [{namespaceSelector: {}}]
  - from:
    - namespaceSelector: {matchLabels: {namespaceRole: dev, namespaceFoo: bar}}
      podSelector: {matchLabels: {podA: B, podC: D}}
""")["spec"]
    assert spec["ingress"][0]["source"] == {"selector": K8S, "namespaceSelector": "all()"}
    assert spec["ingress"][1]["source"] == {
        "selector": f"{K8S} && podA == 'B' && podC == 'D'",
        "namespaceSelector": "namespaceFoo == 'bar' && namespaceRole == 'dev'",
    }


def test_match_expressions():
    # "...with podSelector.MatchExpressions" and "...with a DoesNotExist expression"
    spec = convert("""spec:
  podSelector:
    matchExpressions:
    - {key: k, operator: In, values: [v1, v2]}
    - {key: k2, operator: NotIn, values: [v3]}
    - {key: k3, operator: Exists}
    - {key: k4, operator: DoesNotExist}
""")["spec"]
    assert spec["selector"] == (f"{K8S} && k in {{ 'v1', 'v2' }} && k2 not in {{ 'v3' }} "
                                "&& has(k3) && ! has(k4)")


def test_ip_block_and_port_range():
    # "...with an Ingress rule with an IPBlock Peer", "...with Port Range only"
    spec = convert("""spec:
  podSelector: {}
  ingress:
  - from: [{ipBlock: {cidr: 192.168.0.0/16, except: [192.168.3.0/24, 192.168.4.0/24]}}]
    ports: [{port: 32000, endPort: 32768}, {port: 30000}, {port: 30001}]
""")["spec"]
    assert spec["ingress"] == [{
        "action": "Allow", "protocol": "TCP",
        "source": {"nets": ["192.168.0.0/16"], "notNets": ["192.168.3.0/24", "192.168.4.0/24"]},
        "destination": {"ports": ["30000:30001", "32000:32768"]},
    }]


def test_policy_types_default_like_the_api_server():
    # No policyTypes: Ingress, plus Egress when egress rules exist (API defaulting).
    assert convert("spec: {podSelector: {}}")["spec"]["types"] == ["Ingress"]
    spec = convert("spec: {podSelector: {}, egress: [{}]}")["spec"]
    assert spec["types"] == ["Ingress", "Egress"]
    assert spec["egress"] == [{"action": "Allow"}]
    # default-deny egress: types given, no rules
    spec = convert("spec: {podSelector: {}, policyTypes: [Egress]}")["spec"]
    assert spec["types"] == ["Egress"] and "egress" not in spec and "ingress" not in spec


def test_namespace_becomes_a_profile():
    # "should parse a Namespace to a Profile"
    (res,) = parse_yaml_documents("""apiVersion: v1
kind: Namespace
metadata: {name: default, labels: {foo: bar}}
status: {phase: Active}
""")
    doc = to_calico_dict(res)
    assert doc["kind"] == "Profile" and doc["metadata"]["name"] == "kns.default"
    assert doc["spec"]["ingress"] == [{"action": "Allow"}]
    assert doc["spec"]["egress"] == [{"action": "Allow"}]
    assert doc["spec"]["labelsToApply"] == {
        "pcns.foo": "bar",
        "pcns.projectcalico.org/name": "default",
        "pcns.kubernetes.io/metadata.name": "default",
    }


@pytest.mark.parametrize(
    ("spec", "field", "reason"),
    [
        ("{podSelector: {}, ingress: [{ports: [{port: 70000}]}]}", "port", "between 1 and 65535"),
        ("{podSelector: {}, ingress: [{ports: [{port: 80, endPort: 79}]}]}", "endPort",
         "greater than or equal"),
        ("{podSelector: {}, ingress: [{ports: [{port: http, endPort: 90}]}]}", "endPort",
         "non-numeric"),
        ("{podSelector: {}, ingress: [{ports: [{endPort: 90}]}]}", "endPort", "not specified"),
        ("{podSelector: {}, ingress: [{ports: [{port: 80, protocol: ICMP}]}]}", "protocol", ""),
        ("{podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: "
         "[11.0.0.0/16]}}]}]}", "except", "strict subset"),
        ("{podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: "
         "[10.0.0.0/8]}}]}]}", "except", "strict subset"),
        ("{podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]}]}",
         "ipBlock", "both ipBlock"),
        ("{podSelector: {}, ingress: [{from: [{}]}]}", "from", "must specify a peer"),
        ("{podSelector: {matchExpressions: [{key: a, operator: In}]}}", "values",
         "must be specified"),
        ("{podSelector: {matchExpressions: [{key: a, operator: Exists, values: [x]}]}}", "values",
         "may not be specified"),
        ("{podSelector: {}, policyTypes: [Ingress, Ingress]}", "policyTypes", "Duplicate"),
        ("{podSelector: {}, policyTypes: [Both]}", "policyTypes", ""),
        ("{ingress: []}", "podSelector", "required"),
        ("{podSelector: {matchLabels: {'a b': c}}}", "matchLabels", "label key"),
        ("{podSelector: {}, ingress: [{ports: [{port: '80:90'}]}]}", "port", "endPort"),
    ],
)
def test_invalid_policies_are_refused_naming_the_field(spec, field, reason):
    with pytest.raises(ConfigError) as e:
        parse_yaml_documents(HEAD + f"spec: {spec}\n")
    assert field in e.value.field
    assert reason in str(e.value)
    assert "NetworkPolicy (networking.k8s.io/v1)" in str(e.value)
    assert "test.policy" in str(e.value)


def test_invalid_namespace_name():
    with pytest.raises(ConfigError, match="DNS label"):
        parse_yaml_documents("apiVersion: v1\nkind: Namespace\nmetadata: {name: a.b}\n")
