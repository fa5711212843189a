"""policy.agent.PolicyAgent.absorb: datastore snapshots -> engine updates, without I/O.

A snapshot that follows the one the agent saw carries the keys changed in
between (policy.datastore.PolicySnapshot.changed): only those are looked at.
One that does not follow (the channel keeps only the latest) is diffed whole.
Either way the engine must end up with exactly the snapshot's content, and a
policy the agent cannot enforce keeps its last good version.
"""

from __future__ import annotations

from config.endpoints import host_interface_name, pod_endpoint
from config.parse import parse_resource
from policy.agent import PolicyAgent
from policy.datastore import PolicySnapshot

R = "/calico/resources/v3/projectcalico.org/"


def wep(ns: str, pod: str, ip: str, app: str):
    return pod_endpoint(node="n1", namespace=ns, pod=pod, endpoint="eth0", container_id=pod,
                        interface_name=host_interface_name(ns, pod), mac=None,
                        ip_networks=[ip + "/32"], labels={"app": app})


def gnp(name: str, spec: dict):
    return parse_resource({"apiVersion": "projectcalico.org/v3",
                           "kind": "GlobalNetworkPolicy", "metadata": {"name": name},
                           "spec": spec})


def agent() -> PolicyAgent:
    return PolicyAgent("n1", store=None, nft=None)


def test_changed_keys_only_when_the_snapshot_follows():
    a = agent()
    w1, w2 = wep("x", "a", "10.0.0.1", "web"), wep("x", "b", "10.0.0.2", "db")
    p = gnp("g", {"selector": "app == 'db'", "ingress": [{"action": "Deny"}]})
    res = {R + "w1": w1, R + "w2": w2, R + "globalnetworkpolicies/g": p}
    assert a.absorb(PolicySnapshot(1, dict(res), seq=1, changed=None)) == 3
    assert set(a.engine.endpoints) == {"x/n1-k8s-a-eth0", "x/n1-k8s-b-eth0"} and set(a.engine.policies) == {"g"}
    # the next publication: only the changed key is looked at (a decoy object under an
    # unchanged key would be taken if the agent rescanned everything)
    w1b = wep("x", "a", "10.0.0.1", "db")
    decoy = dict(res, **{R + "w1": w1b, R + "w2": wep("x", "b", "10.0.0.9", "db")})
    assert a.absorb(PolicySnapshot(2, decoy, seq=2, changed=frozenset({R + "w1"}))) == 1
    assert a.engine.endpoints["x/n1-k8s-a-eth0"].labels["app"] == "db"
    assert str(a.engine.endpoints["x/n1-k8s-b-eth0"].addrs[0]) == "10.0.0.2"
    # a publication was missed (seq 3 never seen): everything is compared
    assert a.absorb(PolicySnapshot(4, decoy, seq=4, changed=frozenset())) == 1
    assert str(a.engine.endpoints["x/n1-k8s-b-eth0"].addrs[0]) == "10.0.0.9"
    # deletions through the hint
    gone = {k: v for k, v in decoy.items() if k != R + "globalnetworkpolicies/g"}
    assert a.absorb(PolicySnapshot(5, gone, seq=5,
                                   changed=frozenset({R + "globalnetworkpolicies/g"}))) == 1
    assert a.engine.policies == {}


def test_unenforceable_policy_keeps_its_last_good_version():
    a = agent()
    key = R + "globalnetworkpolicies/g"
    good = gnp("g", {"selector": "all()", "ingress": [{"action": "Deny"}]})
    a.absorb(PolicySnapshot(1, {key: good}, seq=1))
    future = gnp("g", {"selector": "all()", "ingress": [{"action": "Allow",
                                                         "source": {"domains": ["a.b"]}}]})
    a.absorb(PolicySnapshot(2, {key: future}, seq=2, changed=frozenset({key})))
    assert a.engine.policies["g"].ingress[0].action == "Deny"  # still the good one
    assert "spec.ingress[0].source.domains" in a.status()["rejected"][key]
    assert a.stats.rejected_total[("GlobalNetworkPolicy", "fields podbgp-policy cannot "
                                   "enforce")] == 1
    # written again unchanged: logged and counted once
    a.absorb(PolicySnapshot(3, {key: gnp("g", future.model_dump(by_alias=True)["spec"])},
                            seq=3, changed=frozenset({key})))
    assert sum(a.stats.rejected_total.values()) == 1
    # fixed: enforced, no longer listed
    a.absorb(PolicySnapshot(4, {key: gnp("g", {"selector": "all()"})}, seq=4,
                            changed=frozenset({key})))
    assert a.engine.policies["g"].ingress == () and key not in a.status()["rejected"]
