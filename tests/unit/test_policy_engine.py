"""The policy compiler (policy.engine + policy.ruleset), without a kernel.

What is asserted is the design's promises: chains only for this node's
endpoints and the policies that select them, in Calico's evaluation order
(Felix: per-endpoint chains, policies by order then name, then profiles);
selector matches as named sets, so pod churn elsewhere changes set elements
and never rules; a policy edit rewrites only that policy's chain. The same
rulesets are loaded into a real kernel in tests/integration/test_policy_nft.py.
"""

from __future__ import annotations

import ipaddress

import pytest

from config.parse import parse_resource
from policy import engine as E
from policy.engine import Engine, compile_rule, endpoint_from_parts
from policy.rules import NRule, Ports, Side, normalize_policy, normalize_profile
from policy.ruleset import render_diff, render_full

NS = "projectcalico.org/namespace"


def res(kind, name, spec, namespace=None):
    md = {"name": name}
    if namespace:
        md["namespace"] = namespace
    return parse_resource({"apiVersion": "projectcalico.org/v3", "kind": kind, "metadata": md,
                           "spec": spec})


def ep(name, ns, node, iface, ip, labels, ports=()):
    return endpoint_from_parts(f"{ns}/{name}", ns, node, iface, [f"{ip}/32"], labels,
                               [f"kns.{ns}"], ports)


def add_policy(e: Engine, r) -> str:
    p = normalize_policy(r)
    e.update_policy(p.id, p)
    return p.id


@pytest.fixture
def eng() -> Engine:
    e = Engine("n1")
    e.update_endpoint("a/web", ep("web", "a", "n1", "cali1", "10.0.0.1", {"app": "web"}))
    e.update_endpoint("a/db", ep("db", "a", "n1", "cali2", "10.0.0.2", {"app": "db"},
                                 [("pg", 6, 5432)]))
    e.update_endpoint("b/web", ep("web", "b", "n2", "cali3", "10.0.1.1", {"app": "web"}))
    return e


# --------------------------------------------------------------- compile_rule


def line(r: NRule, verdicts=E._POLICY_IN) -> list[str]:
    refs: set = set()
    return compile_rule(r, verdicts, "x", refs)


def test_rule_family_neutral_is_one_line():
    assert line(NRule("Allow")) == ['counter accept comment "x"']
    assert line(NRule("Deny", protocol=17)) == ['meta l4proto 17 counter drop comment "x"']


def test_rule_per_family_and_verdicts():
    r = NRule("Allow", protocol=6, src=Side(nets=(ipaddress.ip_network("10.0.0.0/8"),)),
              dst=Side(ports=Ports(((80, 80), (8000, 8080)), ())))
    assert line(r) == ['meta l4proto 6 ip saddr 10.0.0.0/8 th dport { 80, 8000-8080 } '
                       'counter accept comment "x"']
    # egress Allow continues to the receiver's ingress; Pass skips to profiles
    assert line(r, E._POLICY_OUT)[0].endswith('counter goto to-wl-stage comment "x"')
    assert line(NRule("Pass"), E._POLICY_OUT) == ['counter goto pass-out comment "x"']
    assert line(NRule("Pass"), E._POLICY_IN) == ['counter goto pass-in comment "x"']
    assert line(NRule("Pass"), E._PROFILE_IN) == ['counter return comment "x"']
    assert line(NRule("Log")) == ['counter log prefix "podbgp-policy: " comment "x"']


def test_rule_selectors_become_sets_for_both_families():
    from config.selector import parse_selector

    s = parse_selector("app == 'web'")
    refs: set = set()
    out = compile_rule(NRule("Allow", src=Side(selector=s)), E._POLICY_IN, "x", refs)
    name = E.selector_set(s)
    assert out == [f'ip saddr @{name}-4 counter accept comment "x"',
                   f'ip6 saddr @{name}-6 counter accept comment "x"']
    assert refs == {("s", s)}


def test_rule_not_nets_limit_the_family():
    # Felix FilterRuleToIPVersion: v4 notNets -> the rule is IPv4 only
    r = NRule("Allow", dst=Side(not_nets=(ipaddress.ip_network("10.9.0.0/16"),)))
    assert line(r) == ['ip daddr != 10.9.0.0/16 counter accept comment "x"']
    assert line(NRule("Allow", protocol=58)) == ['meta l4proto 58 counter accept comment "x"']
    assert line(NRule("Allow", protocol=1, ip_version=6)) == []  # can never match


def test_rule_icmp_and_named_ports():
    assert line(NRule("Allow", protocol=1, icmp=(8, 0))) == [
        'meta l4proto 1 icmp type 8 icmp code 0 counter accept comment "x"']
    assert line(NRule("Deny", protocol=1, not_icmp=(8, 0))) == [
        'meta l4proto 1 icmp type . icmp code != { 8 . 0 } counter drop comment "x"']
    refs: set = set()
    out = compile_rule(NRule("Allow", protocol=6, dst=Side(ports=Ports(((80, 80),), ("pg",)))),
                       E._POLICY_IN, "x", refs)
    n = E.named_port_set(E._ALL, "pg")
    # numeric OR named: one rule each
    assert out == [
        'meta l4proto 6 th dport 80 counter accept comment "x"',
        f'meta l4proto 6 ip daddr . meta l4proto . th dport @{n}-4 counter accept comment "x"',
        f'meta l4proto 6 ip6 daddr . meta l4proto . th dport @{n}-6 counter accept comment "x"',
    ]


# ------------------------------------------------------------------- ruleset


def test_only_local_endpoints_get_chains(eng):
    rs = eng.ruleset()
    for sfx in ("cali1", "cali2"):
        for pre in ("fw-", "tw-", "fp-", "tp-"):
            assert pre + sfx in rs.chains
    assert not any(c.endswith("cali3") for c in rs.chains)
    assert rs.maps[E.FROM_MAP].elements == {"cali1": "jump fw-cali1", "cali2": "jump fw-cali2"}
    assert rs.sets[E.PROGRAMMED].elements == {'"cali1"', '"cali2"'}
    # no policy: straight to the namespace profile (allow)
    assert rs.chains["tw-cali2"].rules[-1].startswith("goto tp-cali2")


def test_policy_chain_order_and_default_deny(eng):
    add_policy(eng, res("NetworkPolicy", "allow-web", {
        "order": 100, "selector": "app == 'db'",
        "ingress": [{"action": "Allow", "source": {"selector": "app == 'web'"}}]}, "a"))
    add_policy(eng, res("GlobalNetworkPolicy", "deny-first", {
        "order": 10, "selector": "app == 'db'", "ingress": [{"action": "Deny",
                                                             "protocol": "UDP"}]}))
    add_policy(eng, res("NetworkPolicy", "other-ns", {"selector": "all()"}, "b"))
    rs = eng.ruleset()
    tw = rs.chains["tw-cali2"].rules
    jumps = [r.split()[1] for r in tw if r.startswith("jump")]
    assert jumps == [f"pi-{E._h('deny-first')}", f"pi-{E._h('a/allow-web')}"]
    assert tw[-1].startswith("counter drop") and "default deny" in tw[-1]
    # web (not selected) keeps going to its profile; b's policy selects nothing here
    assert rs.chains["tw-cali1"].rules[-1].startswith("goto tp-cali1")
    assert f"pi-{E._h('b/other-ns')}" not in rs.chains
    # the rule's selector is namespaced: web pods of namespace a only
    assert _selector_sets(rs) == [frozenset({"10.0.0.1"})]


def test_pod_churn_changes_elements_not_rules(eng):
    add_policy(eng, res("GlobalNetworkPolicy", "g", {
        "selector": "app == 'db'",
        "ingress": [{"action": "Allow", "source": {"selector": "app == 'web'"}}]}))
    before = eng.ruleset()
    eng.update_endpoint("c/web", ep("web", "c", "n3", "cali9", "10.0.2.1", {"app": "web"}))
    after = eng.ruleset()
    (v4,) = [n for n in after.sets if n.startswith("s-") and n.endswith("-4")]
    assert render_diff(before, after).splitlines() == [
        f"add element inet podbgp-policy {v4} {{ 10.0.2.1 }}"]
    eng.update_endpoint("c/web", None)
    again = eng.ruleset()
    assert render_diff(after, again).startswith("delete element ")
    assert render_diff(before, again) == ""
    # a label change that stops a remote pod matching: elements only
    eng.update_endpoint("b/web", ep("web", "b", "n2", "cali3", "10.0.1.1", {"app": "other"}))
    lines = render_diff(again, eng.ruleset()).splitlines()
    assert lines == [lines[0]] and lines[0].startswith("delete element") and "10.0.1.1" in lines[0]


def test_policy_edit_rewrites_only_its_chain(eng):
    pid = add_policy(eng, res("GlobalNetworkPolicy", "g", {
        "selector": "app == 'db'", "ingress": [{"action": "Allow", "protocol": "TCP"}]}))
    before = eng.ruleset()
    add_policy(eng, res("GlobalNetworkPolicy", "g", {
        "selector": "app == 'db'", "ingress": [{"action": "Allow", "protocol": "UDP"}]}))
    script = render_diff(before, eng.ruleset()).splitlines()
    chain = f"pi-{E._h(pid)}"
    assert script == [f"flush chain inet podbgp-policy {chain}",
                      f'add rule inet podbgp-policy {chain} meta l4proto 17 counter accept '
                      f'comment "g ingress[0]"']


def test_new_local_pod_gets_chains_and_map_entries_in_one_transaction(eng):
    before = eng.ruleset()
    eng.update_endpoint("a/new", ep("new", "a", "n1", "cali7", "10.0.0.7", {"app": "x"}))
    with_pod = eng.ruleset()
    lines = render_diff(before, with_pod).splitlines()
    assert "add chain inet podbgp-policy tw-cali7" in lines
    # the map entry comes after the chain it names exists and is filled
    chain_at = lines.index("add chain inet podbgp-policy fw-cali7")
    map_at = next(i for i, ln in enumerate(lines) if "from-wl {" in ln and "cali7" in ln)
    prog_at = next(i for i, ln in enumerate(lines) if "programmed {" in ln)
    assert chain_at < map_at and prog_at < map_at
    # removal: map entries go before the chains they name
    eng.update_endpoint("a/new", None)
    after = eng.ruleset()
    lines = render_diff(with_pod, after).splitlines()
    unmap = next(i for i, ln in enumerate(lines) if ln.startswith("delete element")
                 and "from-wl " in ln)
    assert unmap < lines.index("delete chain inet podbgp-policy fw-cali7")
    assert render_diff(before, after) == ""


def _selector_sets(rs) -> list[frozenset]:
    return [s.elements for s in rs.sets.values()
            if s.name.startswith("s-") and s.name.endswith("-4")]


def test_profile_labels_select_by_namespace(eng):
    prof = normalize_profile(res("Profile", "kns.b", {
        "ingress": [{"action": "Allow"}], "egress": [{"action": "Allow"}],
        "labelsToApply": {"pcns.team": "blue"}}))
    eng.update_profile("kns.b", prof)
    add_policy(eng, res("NetworkPolicy", "from-blue", {
        "selector": "app == 'db'",
        "ingress": [{"action": "Allow", "source": {"namespaceSelector": "team == 'blue'"}}]},
        "a"))
    rs = eng.ruleset()
    assert _selector_sets(rs) == [frozenset({"10.0.1.1"})]
    # the namespace loses its label: the set empties, no rule changes
    eng.update_profile("kns.b", normalize_profile(res("Profile", "kns.b", {})))
    lines = render_diff(rs, eng.ruleset()).splitlines()
    assert any(ln.startswith("delete element") and "10.0.1.1" in ln for ln in lines)
    assert not any(ln.startswith(("flush", "add rule")) and "pi-" in ln for ln in lines)


def test_unprogrammed_interfaces_drop_both_ways():
    e = Engine("n1", iface_prefixes=("cali", "pod"))
    fwd = e.ruleset().chains[E.FORWARD]
    assert fwd.header.startswith("type filter hook forward")
    drops = [r for r in fwd.rules if "not programmed" in r]
    assert [d.split()[:2] for d in drops] == [["iifname", '"cali*"'], ["oifname", '"cali*"'],
                                              ["iifname", '"pod*"'], ["oifname", '"pod*"']]


def test_full_render_is_one_replacing_transaction(eng):
    text = render_full(eng.ruleset())
    lines = text.splitlines()
    assert lines[:3] == ["add table inet podbgp-policy", "delete table inet podbgp-policy",
                         "table inet podbgp-policy {"]
    from fib_sync.nft import check_owned

    assert {str(t) for t in check_owned(text)} == {"inet podbgp-policy"}
