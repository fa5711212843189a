"""Calico's v3 -> v1 policy semantics (policy.rules).

Expected selectors are those of projectcalico/calico
libcalico-go/lib/backend/syncersv1/updateprocessors/rules_test.go and
networkpolicyprocessor_test.go / globalnetworkpolicyprocessor_test.go,
parsed with config.selector and compared as syntax trees; ordering is
Felix's (order, then name; no order = last).
"""

from __future__ import annotations

import ipaddress
import math

from config.parse import parse_resource
from config.selector import parse_selector as P
from policy import rules
from policy.rules import EGRESS, INGRESS, Endpoint, effective_labels, normalize_policy


def np(spec: dict, name="p", namespace="namespace2"):
    return parse_resource({"apiVersion": "projectcalico.org/v3", "kind": "NetworkPolicy",
                           "metadata": {"name": name, "namespace": namespace}, "spec": spec})


def gnp(spec: dict, name="g"):
    return parse_resource({"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkPolicy",
                           "metadata": {"name": name}, "spec": spec})


def test_namespaced_rule_selectors():
    # rules_test.go "should convert a v3 rule with selectors in a namespaced policy":
    # SrcSelector "(projectcalico.org/namespace == 'namespace2') && (mylabel == value1)",
    # DstSelector (only a notSelector given) "projectcalico.org/namespace == 'namespace2'",
    # NotSrcSelector taken as written.
    pol = normalize_policy(np({"ingress": [{
        "action": "Allow",
        "source": {"selector": "mylabel == 'value1'", "notSelector": "has(label1)"},
        "destination": {"notSelector": "has(label2)"},
    }]}))
    r = pol.ingress[0]
    assert r.src.selector == P("(projectcalico.org/namespace == 'namespace2') && "
                               "(mylabel == 'value1')")
    assert r.dst.selector == P("projectcalico.org/namespace == 'namespace2'")
    assert r.src.not_selector == P("has(label1)")
    assert r.dst.not_selector == P("has(label2)")


def test_namespace_selector_is_prefixed():
    # rules_test.go: namespaceSelector "namespacelabel1 == 'value1'" ->
    # "pcns.namespacelabel1 == \"value1\"" (no namespace limit of its own).
    pol = normalize_policy(np({"ingress": [{
        "action": "Allow",
        "source": {"namespaceSelector": "namespacelabel1 == 'value1'"},
        "destination": {"namespaceSelector": "all()", "selector": "app == 'x'"},
    }]}))
    r = pol.ingress[0]
    assert r.src.selector == P("pcns.namespacelabel1 == 'value1'")
    # all() = any namespaced endpoint (getEndpointSelector's has(projectcalico.org/namespace))
    assert r.dst.selector == P("has(projectcalico.org/namespace) && app == 'x'")
    g = rules.normalize_policy(np({"ingress": [{
        "action": "Allow", "source": {"namespaceSelector": "global()"}}]}))
    assert g.ingress[0].src.selector == P("!has(projectcalico.org/namespace)")


def test_global_policy_rules_are_not_namespaced():
    pol = normalize_policy(gnp({"ingress": [{"action": "Deny",
                                             "source": {"selector": "a == 'b'"}}]}))
    assert pol.ingress[0].src.selector == P("a == 'b'")
    assert pol.ingress[0].dst.selector is None


def test_policy_selectors():
    # networkpolicyprocessor: "(sel) && projectcalico.org/namespace == 'ns'"
    assert normalize_policy(np({"selector": "a == 'b'"})).selector == \
        P("a == 'b' && projectcalico.org/namespace == 'namespace2'")
    assert normalize_policy(np({})).selector == \
        P("projectcalico.org/namespace == 'namespace2'")
    # globalnetworkpolicyprocessor: namespaceSelector prefixed, all() -> any namespaced
    assert normalize_policy(gnp({"selector": "a == 'b'",
                                 "namespaceSelector": "all()"})).selector == \
        P("a == 'b' && has(projectcalico.org/namespace)")
    assert normalize_policy(gnp({"namespaceSelector": "team in {'x'}"})).selector == \
        P("pcns.team in {'x'}")
    assert normalize_policy(gnp({"serviceAccountSelector": "role == 'db'"})).selector == \
        P("pcsa.role == 'db'")
    assert normalize_policy(gnp({})).selector == P("all()")


def test_service_account_names():
    pol = normalize_policy(gnp({"ingress": [{
        "action": "Allow", "source": {"serviceAccounts": {"names": ["a", "b"],
                                                          "selector": "x == 'y'"}}}]}))
    assert pol.ingress[0].src.selector == \
        P("projectcalico.org/serviceaccount in {'a', 'b'} && pcsa.x == 'y'")


def test_types_and_host_only():
    pol = normalize_policy(gnp({"egress": [{"action": "Allow"}]}))
    assert pol.types == {EGRESS}
    assert pol.applies(EGRESS, {}) and not pol.applies(INGRESS, {})
    host = normalize_policy(gnp({"doNotTrack": True, "applyOnForward": True}))
    assert not host.applies(INGRESS, {})  # host endpoints only, never a workload


def test_order_then_name():
    a = normalize_policy(np({"order": 10}, name="b"))
    b = normalize_policy(np({"order": 10}, name="a"))
    c = normalize_policy(gnp({"order": 5}))
    d = normalize_policy(np({}, name="z"))  # no order: last
    assert d.order == math.inf
    labels = {"projectcalico.org/namespace": "namespace2"}
    got = [p.id for p in rules.policies_for([a, b, c, d], labels, INGRESS)]
    assert got == ["g", "namespace2/a", "namespace2/b", "namespace2/z"]


def test_ports_merge_and_rules_keep_fields():
    pol = normalize_policy(np({"ingress": [{
        "action": "Allow", "protocol": "TCP", "notProtocol": "UDP", "ipVersion": 4,
        "source": {"nets": ["10.100.10.1", "10.100.0.0/16"], "ports": [80, "81:85", 90, "web"]},
        "destination": {"notNets": ["192.168.80.1/32"], "notPorts": [443]},
    }]}))
    r = pol.ingress[0]
    assert r.protocol == 6 and r.not_protocol == 17 and r.ip_version == 4
    # 10.100.10.1 lies inside 10.100.0.0/16: collapsed
    assert r.src.nets == (ipaddress.ip_network("10.100.0.0/16"),)
    assert r.src.ports == rules.Ports(((80, 85), (90, 90)), ("web",))
    assert r.dst.not_ports == rules.Ports(((443, 443),), ())


def test_effective_labels():
    prof = rules.normalize_profile(parse_resource({
        "apiVersion": "projectcalico.org/v3", "kind": "Profile",
        "metadata": {"name": "kns.prod"},
        "spec": {"labelsToApply": {"pcns.team": "a", "app": "from-profile"}}}))
    ep = Endpoint(key="prod/p", namespace="prod", node="n", iface="cali1", addrs=(),
                  labels={"app": "own"}, profiles=("kns.prod", "kns.missing"))
    labels = effective_labels(ep, {"kns.prod": prof})
    assert labels["app"] == "own"  # the endpoint's own label wins
    assert labels["pcns.team"] == "a"
    assert labels["projectcalico.org/namespace"] == "prod"
    # a namespace nobody registered: its name labels, as kube-controllers would write
    assert labels["pcns.projectcalico.org/name"] == "missing"
    assert labels["pcns.kubernetes.io/metadata.name"] == "missing"
    assert rules.implicit_profile("ksa.prod.default") is None
