"""The policy compiler's rulesets in a real kernel (nftables 1.0.6 in namespaces).

A one-node pod network is built the way Calico's CNI builds it (a veth per
pod, the host side named cali*, /32 routes, proxy ARP; cni-plugin
pkg/dataplane/linux/dataplane_linux.go), plus an "outside" host behind a
non-workload interface. Each case loads the engine's ruleset through
fib_sync.nft and probes every ordered pair with lab.prober (the truth-table
method of Kubernetes' test/e2e/network/netpol). The incremental transactions
are checked against a fresh full load of the same ruleset.
"""

from __future__ import annotations

import random

import pytest

from config.parse import parse_yaml_documents
from fib_sync.nft import Nft, normalize
from lab.netpol import PORTS, Peer, Prober, compare, expect, probe_all
from lab.podnet import PodNet
from policy.engine import Engine, endpoint_from_parts
from policy.rules import normalize_policy, normalize_profile
from policy.ruleset import render_diff, render_full
from tests.conftest import require_binary, require_root

PODS = [("a", "x", {"app": "web"}), ("a", "y", {"app": "db"}),
        ("b", "x", {"app": "web"}), ("b", "y", {"app": "db"})]


@pytest.fixture(scope="module")
def lab():
    """node netns + 4 pods + an outside host; probers running; all removed after."""
    require_root()
    require_binary("nft")
    probers: dict[str, Prober] = {}
    with PodNet() as net:
        try:
            for i, (ns, name, labels) in enumerate(PODS, start=1):
                net.add_pod(ns, name, f"10.77.0.{i}", labels)
            for p in [*net.pods.values(), net.outside]:
                probers[p.id] = Prober(p.netns)
            probers["node"] = Prober(net.node, tcp="", udp="")
            yield {"net": net, "node": net.node, "peers": list(net.pods.values()),
                   "outside": net.outside, "probers": probers, "nft": Nft(net.node)}
        finally:
            for p in probers.values():
                p.close()


def engine_for(lab, yaml_text: str = "") -> Engine:
    e = Engine("n1")
    for peer in lab["peers"]:
        e.update_endpoint(peer.id, endpoint_from_parts(
            peer.id, peer.ns, "n1", lab["net"].iface(peer), [f"{peer.ip}/32"],
            dict(peer.labels), [f"kns.{peer.ns}"]))
    for res in parse_yaml_documents(yaml_text) if yaml_text else ():
        if res.kind == "Profile":
            e.update_profile(res.metadata.name, normalize_profile(res))
        else:
            p = normalize_policy(res)
            e.update_policy(p.id, p)
    return e


def check(lab, allowed) -> None:
    everyone = [*lab["peers"], lab["outside"]]
    observed = probe_all(lab["probers"], everyone, timeout=0.5)
    want = expect(everyone, allowed)
    report = compare(want, observed, everyone)
    assert report is None, report


def load(lab, e: Engine) -> None:
    lab["nft"].apply(render_full(e.ruleset()))


def labels(p: Peer) -> dict:
    return dict(p.labels)


def test_no_policy_everything_talks(lab):
    load(lab, engine_for(lab))
    check(lab, lambda s, d, proto, port: True)


def test_deny_all_ingress_in_one_namespace(lab):
    # The seed's deny-all (Kubernetes docs: default deny all ingress traffic).
    load(lab, engine_for(lab, """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny-ingress, namespace: a}
spec: {podSelector: {}, policyTypes: [Ingress]}
"""))
    check(lab, lambda s, d, proto, port: d.ns != "a")
    # the node itself still reaches a's pods (kubelet probes): OUTPUT is not policed
    for peer in lab["peers"]:
        slot = lab["probers"]["node"].start("tcp", peer.ip, 80, 1.0)
        assert slot[0].wait(5) and slot[1]["ok"], (peer.id, slot[1:])


def test_allow_from_pod_selector_and_ip_block(lab):
    load(lab, engine_for(lab, """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db-from-web, namespace: a}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: web}}}]
    ports: [{port: 80}]
  - from: [{ipBlock: {cidr: 10.78.0.0/16, except: [10.78.0.2/32]}}]
    ports: [{protocol: UDP, port: 80}]
"""))

    def allowed(s, d, proto, port):
        if d.id != "a/y":
            return True
        if s.ns == "a" and labels(s).get("app") == "web":
            return (proto, port) == ("tcp", 80)
        if s.id == "ext/host":
            return (proto, port) == ("udp", 80)
        return False

    check(lab, allowed)


def test_egress_deny_with_udp_allowed_and_pass_to_profile(lab):
    load(lab, engine_for(lab, """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: egress-udp-only, namespace: b}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
  egress: [{ports: [{protocol: UDP, port: 80}]}]
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: pass-db}
spec:
  order: 1
  selector: app == 'db'
  ingress: [{action: Pass, protocol: TCP, destination: {ports: [81]}}]
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: deny-db-81}
spec:
  order: 2
  selector: app == 'db'
  ingress: [{action: Deny, protocol: TCP, destination: {ports: [81]}}, {action: Allow}]
"""))

    def allowed(s, d, proto, port):
        # b/x may send only UDP 80 (egress); tcp/81 to db pods: Pass (order 1)
        # skips deny-db-81 and the namespace profile allows it
        return s.id != "b/x" or (proto, port) == ("udp", 80)

    check(lab, allowed)


def test_calico_deny_order_beats_allow(lab):
    load(lab, engine_for(lab, """
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: deny-web-to-db}
spec:
  order: 10
  selector: app == 'db'
  ingress: [{action: Deny, source: {selector: app == 'web'}}]
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: allow-all, namespace: a}
spec:
  order: 20
  selector: all()
  ingress: [{action: Allow}]
"""))

    def allowed(s, d, proto, port):
        if labels(d).get("app") != "db":
            return True
        if labels(s).get("app") == "web":
            return False  # order 10 Deny beats the order 20 Allow
        # b/y: the GNP applies and nothing allows the rest: the tier's default deny
        return d.ns == "a"

    check(lab, allowed)


def _listing(nft: Nft) -> dict:
    """The table as objects keyed by name (the kernel lists them in creation
    order), rules per chain in order, elements sorted."""
    out: dict = {}
    for obj in normalize(nft.list_table("inet", "podbgp-policy") or {}):
        (kind, body), = obj.items()
        if kind == "rule":
            out.setdefault(("rules", body["chain"]), []).append(
                (body["expr"], body.get("comment")))
            continue
        if "elem" in body:
            body["elem"] = sorted(body["elem"], key=repr)
        out[(kind, body.get("name"))] = body
    return out


def test_incremental_transactions_equal_a_full_load(lab):
    """Random policy/pod churn applied as diffs ends exactly where a full load does."""
    rnd = random.Random(20)
    e = engine_for(lab)
    nft = lab["nft"]
    prev = e.ruleset()
    nft.apply(render_full(prev))
    apps = ["web", "db", "cache"]
    for _step in range(25):
        what = rnd.choice(["pol", "pol", "ep", "remote", "prof"])
        if what == "pol":
            name = f"p{rnd.randrange(4)}"
            if rnd.random() < 0.25:
                e.update_policy(f"a/{name}", None)
            else:
                (res,) = parse_yaml_documents(f"""
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {{name: {name}, namespace: a}}
spec:
  order: {rnd.randrange(5)}
  selector: app == '{rnd.choice(apps)}'
  types: [Ingress, Egress]
  ingress: [{{action: {rnd.choice(['Allow', 'Deny', 'Pass'])}, protocol: TCP,
             source: {{selector: app == '{rnd.choice(apps)}'}},
             destination: {{ports: [{rnd.randrange(1, 90)}, web]}}}}]
  egress: [{{action: Allow, destination: {{notSelector: app == '{rnd.choice(apps)}',
            nets: [10.{rnd.randrange(100)}.0.0/16]}}}}]
""")
                p = normalize_policy(res)
                e.update_policy(p.id, p)
        elif what == "ep":
            i = rnd.randrange(1, 5)
            peer = lab["peers"][i - 1]
            e.update_endpoint(peer.id, endpoint_from_parts(
                peer.id, peer.ns, "n1", lab["net"].iface(peer), [f"{peer.ip}/32"],
                {"app": rnd.choice(apps)}, [f"kns.{peer.ns}"], [("web", 6, 8080)]))
        elif what == "remote":
            k = f"c/r{rnd.randrange(6)}"
            if rnd.random() < 0.3:
                e.update_endpoint(k, None)
            else:
                e.update_endpoint(k, endpoint_from_parts(
                    k, "c", "n2", "caliremote", [f"10.66.0.{rnd.randrange(1, 250)}/32"],
                    {"app": rnd.choice(apps)}, ["kns.c"], [("web", 6, rnd.randrange(1, 9))]))
        else:
            (res,) = parse_yaml_documents(f"""
apiVersion: v1
kind: Namespace
metadata: {{name: c, labels: {{team: t{rnd.randrange(2)}}}}}
""")
            e.update_profile(res.metadata.name, normalize_profile(res))
        cur = e.ruleset()
        script = render_diff(prev, cur)
        if script:
            nft.apply(script)
        prev = cur
    incremental = _listing(nft)
    nft.apply(render_full(prev))
    assert _listing(nft) == incremental
    assert PORTS  # the probe ports of this module
