"""Calico NetworkPolicy / GlobalNetworkPolicy / Profile validation (config.policy).

Cases follow projectcalico/calico libcalico-go/lib/validator/v3/validator.go
(validateRule, validateEntityRule, validateNetworkPolicy, validateProtocol,
validatePort) and validator_test.go's entries ("should reject protocol 0 as
int", "should reject Rule with invalid port (name + number)", "should
accept IP version 4", ...), plus the CEL rules on the v3 types in
api/pkg/apis/projectcalico/v3/policy_common.go and globalnetworkpolicy.go.
"""

from __future__ import annotations

import json

import pytest

from config.errors import ConfigError
from config.parse import parse_json, parse_resource, parse_yaml_documents, to_calico_dict
from config.policy import NetworkPolicy

R = "/calico/resources/v3/projectcalico.org/"


def np(spec: dict, name: str = "p", namespace: str | None = "ns1") -> dict:
    md = {"name": name}
    if namespace:
        md["namespace"] = namespace
    return {"apiVersion": "projectcalico.org/v3", "kind": "NetworkPolicy", "metadata": md,
            "spec": spec}


def gnp(spec: dict, name: str = "g") -> dict:
    return {"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkPolicy",
            "metadata": {"name": name}, "spec": spec}


def rule(**kw) -> dict:
    return {"action": "Allow", **kw}


ACCEPTED = [
    np({}),  # no rules: selects all in ns1, Ingress, so denies all ingress
    np({"ingress": [rule()]}),
    *[np({"ingress": [{"action": a}]}) for a in ("Allow", "Deny", "Log", "Pass")],
    np({"ingress": [rule(ipVersion=4)]}),
    np({"ingress": [rule(ipVersion=6)]}),
    *[np({"ingress": [rule(protocol=p)]}) for p in ("TCP", "UDP", "ICMP", "ICMPv6", "SCTP",
                                                    "UDPLite", 1, 255, "255", "1")],
    np({"ingress": [rule(protocol="TCP", destination={"ports": [80, "8000:8080", "http"]})]}),
    np({"ingress": [rule(destination={"ports": ["http"]})]}),  # named port: no protocol needed
    np({"ingress": [rule(protocol="ICMP", icmp={"type": 8, "code": 0})]}),
    np({"ingress": [rule(protocol="ICMPv6", ipVersion=6, notICMP={"type": 128})]}),
    np({"ingress": [rule(source={"selector": "has(calico/k8s_NS-.1/role)"})]}),
    np({"ingress": [rule(source={"namespaceSelector": "global()"})]}),
    np({"ingress": [rule(source={"nets": ["10.0.0.1", "10.1.0.0/16"],
                                 "notNets": ["10.1.2.0/24"]})]}),
    np({"ingress": [rule(source={"serviceAccounts": {"names": ["sa1"], "selector": "a == 'b'"}})]}),
    np({}, name="knp.default.my.policy.name"),
    np({}, name="tier1.p"),
    gnp({"order": 10.5, "selector": "a == 'b'", "namespaceSelector": "team == 'x'",
         "types": ["Ingress", "Egress"]}),
    gnp({"doNotTrack": True, "applyOnForward": True}),
    {"apiVersion": "projectcalico.org/v3", "kind": "Profile",
     "metadata": {"name": "kns.default"},
     "spec": {"ingress": [rule()], "egress": [rule()],
              "labelsToApply": {"pcns.projectcalico.org/name": "default"}}},
]


@pytest.mark.parametrize("doc", ACCEPTED, ids=lambda d: json.dumps(d["spec"])[:60])
def test_accepted(doc):
    res = parse_resource(doc)
    # Round trip: what we store parses back to an equal resource.
    again = parse_resource(json.loads(json.dumps(to_calico_dict(res))))
    assert again == res


REJECTED = [
    (np({"ingress": [{"action": "allow2"}]}), "spec.ingress[0].action", ""),
    (np({"ingress": [{}]}), "spec.ingress[0].action", "required"),
    (np({"ingress": [rule(ipVersion=0)]}), "ipVersion", "4 or 6"),
    (np({"ingress": [rule(protocol=0)]}), "protocol", "1-255"),
    (np({"ingress": [rule(protocol="256")]}), "protocol", "1-255"),
    (np({"ingress": [rule(protocol="tcpfoo")]}), "protocol", ""),
    (np({"ingress": [rule(protocol=True)]}), "protocol", ""),
    (np({"ingress": [rule(destination={"ports": [80]})]}), "destination.ports",
     "numeric port or port range must set protocol"),
    (np({"ingress": [rule(protocol="ICMP", destination={"ports": ["http"]})]}),
     "destination.ports", "rules that specify ports must set protocol"),
    (np({"ingress": [rule(protocol="TCP", source={"notPorts": ["90:80"]})]}), "notPorts",
     "greater than maximum"),
    (np({"ingress": [rule(protocol="TCP", source={"ports": [0]})]}), "ports", "1 and 65535"),
    (np({"ingress": [rule(protocol="TCP", source={"ports": ["foo-"]})]}), "ports",
     "port name"),
    (np({"ingress": [rule(protocol="TCP", icmp={"type": 8})]}), "icmp", "ICMP or ICMPv6"),
    (np({"ingress": [rule(protocol="ICMP", icmp={"code": 1})]}), "icmp", "without an ICMP type"),
    (np({"ingress": [rule(protocol="ICMP", icmp={"type": 255})]}), "icmp", "0-254"),
    (np({"ingress": [rule(protocol="ICMP", ipVersion=6)]}), "protocol", "ipVersion 4"),
    (np({"ingress": [rule(protocol="ICMPv6", ipVersion=4)]}), "protocol", "ipVersion 6"),
    (np({"ingress": [rule(source={"nets": ["10.0.0.0/8", "fd00::/8"]})]}), "source.nets",
     "both IPv4 and IPv6"),
    (np({"ingress": [rule(source={"nets": ["10.0.0.0/8"]},
                          destination={"nets": ["fd00::/8"]})]}), "destination.nets",
     "both IPv4 and IPv6"),
    (np({"ingress": [rule(ipVersion=6, source={"nets": ["10.0.0.0/8"]})]}), "source.nets",
     "IP version doesn't match"),
    (np({"ingress": [rule(source={"notNets": ["0.0.0.0/0"]})]}), "notNets", "catch-all"),
    (np({"ingress": [rule(source={"nets": ["10.0.0.300/8"]})]}), "nets", "not a valid CIDR"),
    (np({"ingress": [rule(source={"selector": "thing=hello &"})]}), "source.selector",
     "invalid selector"),
    (np({"ingress": [rule(source={"selector": "global()"})]}), "source.selector", "global()"),
    (np({"ingress": [rule(source={"namespaceSelector": "global() && a == 'b'"})]}),
     "namespaceSelector", "global()"),
    (np({"selector": "global()"}), "spec.selector", "global()"),
    (np({"ingress": [rule(http={"methods": ["GET"]})]}), "http", "application-layer"),
    (np({"ingress": [rule(destination={"services": {"name": "s"}})]}), "services",
     "Kubernetes Services"),
    (np({"types": ["Ingress", "Ingress"]}), "spec.types", "more than once"),
    (np({"types": ["ingress"]}), "spec.types", ""),
    (np({"order": "1"}), "spec.order", "number"),
    (np({"tier": "security"}), "spec.tier", "default tier"),
    (np({}, name="a.b.c"), "metadata.name", ""),
    (np({}, name="Bad"), "metadata.name", ""),
    (np({}, namespace="Bad_NS"), "metadata.namespace", "DNS label"),
    (gnp({}, name="a.b.c"), "metadata.name", ""),
    (gnp({"preDNAT": True, "doNotTrack": True, "applyOnForward": True}), "preDNAT",
     "cannot both"),
    (gnp({"doNotTrack": True}), "applyOnForward", "must be true"),
    (gnp({"namespaceSelector": "global()"}), "namespaceSelector", "global()"),
    (np({"ingress": [rule(bogus=1)]}), "bogus", "unknown field"),
]


@pytest.mark.parametrize(("doc", "field", "reason"), REJECTED,
                         ids=lambda x: json.dumps(x)[:70] if isinstance(x, dict) else str(x))
def test_rejected_naming_the_field(doc, field, reason):
    # strict: what bgpctl does with a user's file (calicoctl refuses unknown fields)
    with pytest.raises(ConfigError) as e:
        parse_resource(doc, strict=True)
    assert field in e.value.field, str(e.value)
    assert reason in str(e.value)
    assert doc["metadata"]["name"] in str(e.value)


def test_unknown_fields_read_leniently_are_listed():
    # Reading the datastore keeps a field podbgp does not model (docs/calico-compatibility.md,
    # "Reading leniently"); the policy agent refuses to enforce such a policy (a match it
    # cannot see would make the rule broader), so the fields must be findable.
    from config.parse import unknown_fields

    res = parse_resource(np({"ingress": [rule(source={"domains": ["x.example"]})]}))
    assert unknown_fields(res) == [("spec.ingress[0].source.domains", ["x.example"])]
    assert to_calico_dict(res)["spec"]["ingress"][0]["source"] == {"domains": ["x.example"]}


def test_types_are_defaulted_and_stored():
    # NetworkPolicySpec.Types: Ingress without egress rules; Egress if only egress;
    # both if both -- and "when the policy is read back again, Types will always be
    # one of these values".
    def types(spec):
        return to_calico_dict(parse_resource(np(spec)))["spec"]["types"]

    assert types({}) == ["Ingress"]
    assert types({"egress": [rule()]}) == ["Egress"]
    assert types({"ingress": [rule()], "egress": [rule()]}) == ["Ingress", "Egress"]
    assert types({"types": ["Egress"], "ingress": [rule()]}) == ["Egress"]


def test_order_written_like_go():
    doc = to_calico_dict(parse_resource(np({"order": 100})))
    assert doc["spec"]["order"] == 100 and isinstance(doc["spec"]["order"], int)
    doc = to_calico_dict(parse_resource(np({"order": 100.5})))
    assert doc["spec"]["order"] == 100.5


def test_list_kinds_expand():
    docs = parse_yaml_documents("""kind: NetworkPolicyList
apiVersion: projectcalico.org/v3
items:
- {apiVersion: projectcalico.org/v3, kind: NetworkPolicy, metadata: {name: a, namespace: x}}
- {apiVersion: projectcalico.org/v3, kind: NetworkPolicy, metadata: {name: b, namespace: x}}
""")
    assert [d.metadata.name for d in docs] == ["a", "b"]
    assert all(isinstance(d, NetworkPolicy) for d in docs)


def test_stored_value_must_match_its_key():
    doc = np({"ingress": [rule()]}, name="p", namespace="ns1")
    with pytest.raises(ConfigError, match="key"):
        parse_json(R + "globalnetworkpolicies/p", json.dumps(doc))
