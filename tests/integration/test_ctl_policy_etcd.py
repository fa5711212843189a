"""bgpctl and the policy kinds against a real etcd: Calico's keys and JSON, -n / -A.

Kubernetes documents are stored as kube-controllers stores them in etcd mode
(knp.default.<name> under networkpolicies/<ns>/, Profile kns.<ns>); table
headings are calicoctl's (calicoctl/calicoctl/resourcemgr/networkpolicy.go,
globalnetworkpolicy.go, profile.go: NAME TIER / NAME TIER ORDER SELECTOR,
NAMESPACE prepended with -A).
"""

from __future__ import annotations

import json

import pytest

from tests.integration.test_ctl_etcd import bgpctl, stored

pytestmark = pytest.mark.etcd

R = "/calico/resources/v3/projectcalico.org/"

K8S_DENY = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: default-deny-ingress
spec:
  podSelector: {}
  policyTypes: [Ingress]
"""
CALICO = """\
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: allow-web, namespace: prod}
spec:
  order: 100
  selector: app == 'db'
  ingress: [{action: Allow, protocol: TCP, source: {selector: app == 'web'},
             destination: {ports: [5432]}}]
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: deny-icmp}
spec:
  order: 10
  selector: all()
  ingress: [{action: Deny, protocol: ICMP}]
---
apiVersion: v1
kind: Namespace
metadata: {name: prod, labels: {team: blue}}
"""


def write(tmp_path, name: str, text: str) -> str:
    f = tmp_path / name
    f.write_text(text)
    return str(f)


def test_kubernetes_policy_stored_as_calico_does_in_etcd_mode(etcd, tmp_path):
    f = write(tmp_path, "deny.yaml", K8S_DENY)
    r = bgpctl(etcd, "apply", "-f", f, "-n", "dev")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "Successfully applied 1 'NetworkPolicy' resource(s)\n"
    value = stored(etcd, R + "networkpolicies/dev/knp.default.default-deny-ingress")
    assert value["metadata"]["namespace"] == "dev"
    assert value["spec"] == {"tier": "default", "order": 1000,
                             "selector": "projectcalico.org/orchestrator == 'k8s'",
                             "types": ["Ingress"]}
    # no -n: the default namespace, as calicoctl and kubectl
    assert bgpctl(etcd, "apply", "-f", f).returncode == 0
    assert stored(etcd, R + "networkpolicies/default/knp.default.default-deny-ingress")
    # delete -f finds it by the converted name
    r = bgpctl(etcd, "delete", "-f", f, "-n", "dev")
    assert r.returncode == 0, r.stderr
    assert stored(etcd, R + "networkpolicies/dev/knp.default.default-deny-ingress") is None
    assert stored(etcd, R + "networkpolicies/default/knp.default.default-deny-ingress")


def test_get_with_namespaces_and_calicoctl_columns(etcd, tmp_path):
    f = write(tmp_path, "all.yaml", CALICO)
    r = bgpctl(etcd, "create", "-f", f)
    assert r.returncode == 0, r.stderr
    assert "'GlobalNetworkPolicy', 'NetworkPolicy', 'Profile'" in r.stdout
    assert stored(etcd, R + "networkpolicies/prod/allow-web")["spec"]["order"] == 100
    assert stored(etcd, R + "globalnetworkpolicies/deny-icmp")["spec"]["types"] == ["Ingress"]
    prof = stored(etcd, R + "profiles/kns.prod")
    assert prof["spec"]["labelsToApply"]["pcns.team"] == "blue"

    r = bgpctl(etcd, "get", "networkpolicy", "-n", "prod")
    assert r.stdout.splitlines() == ["NAME        TIER", "allow-web   default"]
    assert bgpctl(etcd, "get", "networkpolicy").stdout.splitlines() == ["NAME    TIER"]
    r = bgpctl(etcd, "get", "networkpolicies", "-A", "-o", "wide")
    assert r.stdout.splitlines() == [
        "NAMESPACE   NAME        TIER      ORDER   SELECTOR",
        "prod        allow-web   default   100     app == 'db'"]
    r = bgpctl(etcd, "get", "gnp", "-o", "wide")
    assert r.stdout.splitlines()[1].split() == ["deny-icmp", "default", "10", "all()"]
    r = bgpctl(etcd, "get", "profile", "kns.prod", "-o", "yaml")
    assert "pcns.projectcalico.org/name: prod" in r.stdout
    r = bgpctl(etcd, "get", "np", "allow-web", "-n", "prod", "-o", "json")
    assert '"namespace": "prod"' in r.stdout
    # create again: exists, named with its namespace
    r = bgpctl(etcd, "create", "-f", f)
    assert r.returncode == 1 and "NetworkPolicy(prod/allow-web)" in r.stderr
    r = bgpctl(etcd, "delete", "networkpolicy", "allow-web", "-n", "prod")
    assert r.returncode == 0 and stored(etcd, R + "networkpolicies/prod/allow-web") is None
    r = bgpctl(etcd, "delete", "networkpolicy", "allow-web", "-n", "prod")
    assert r.returncode == 1 and "prod/allow-web" in r.stderr


@pytest.mark.parametrize(("doc", "needle"), [
    (CALICO.replace("selector: app == 'db'", "selector: app == "), "spec.selector"),
    (CALICO.replace("ports: [5432]", "ports: [70000]"), "destination.ports"),
    (CALICO.replace("action: Deny", "action: Drop"), "spec.ingress[0].action"),
    (K8S_DENY.replace("podSelector: {}", "podSelector: {}\n  bogus: 1"), "spec.bogus"),
    # a Kubernetes spec under Calico's apiVersion: podSelector is not a Calico field
    (K8S_DENY.replace("networking.k8s.io/v1", "projectcalico.org/v3"), "spec.podSelector"),
    (CALICO.replace("name: allow-web", "name: knp.default.mine"), "reserved"),
])
def test_invalid_documents_write_nothing(etcd, tmp_path, doc, needle):
    r = bgpctl(etcd, "apply", "-f", write(tmp_path, "bad.yaml", doc))
    assert r.returncode == 1
    assert needle in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert etcd.etcdctl("get", "--prefix", "--keys-only", R).strip() == ""


def test_namespace_mismatch_is_refused(etcd, tmp_path):
    f = write(tmp_path, "p.yaml", CALICO)
    r = bgpctl(etcd, "apply", "-f", f, "-n", "other")
    assert r.returncode == 1
    assert "'prod' does not match the namespace 'other'" in r.stderr
    assert etcd.etcdctl("get", "--prefix", "--keys-only", R).strip() == ""


def _put_wep(etcd, ns: str, pod: str, node: str, labels: dict) -> None:
    from config.endpoints import endpoint_to_json, host_interface_name, pod_endpoint
    from config.keys import workload_endpoint_key

    wep = pod_endpoint(node=node, namespace=ns, pod=pod, endpoint="eth0", container_id="c1",
                       interface_name=host_interface_name(ns, pod), mac=None,
                       ip_networks=["10.0.0.1/32"], labels=labels)
    etcd.etcdctl("put", workload_endpoint_key(ns, wep.name), endpoint_to_json(wep).decode())


def test_policy_show_lists_the_selecting_policies_in_order(etcd, tmp_path):
    r = bgpctl(etcd, "apply", "-f", write(tmp_path, "all.yaml", CALICO))
    assert r.returncode == 0, r.stderr
    r = bgpctl(etcd, "apply", "-n", "prod", "-f", write(tmp_path, "deny.yaml", K8S_DENY))
    assert r.returncode == 0, r.stderr
    _put_wep(etcd, "prod", "db-1", "node1", {"app": "db"})
    _put_wep(etcd, "prod", "web-1", "node2", {"app": "web"})
    _put_wep(etcd, "dev", "db-2", "node1", {"app": "db"})
    # a stored policy the agent would refuse: a field podbgp does not model
    etcd.etcdctl("put", R + "globalnetworkpolicies/future", json.dumps({
        "apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkPolicy",
        "metadata": {"name": "future"}, "spec": {"selector": "all()", "newMatch": 1}}))

    r = bgpctl(etcd, "policy", "show", "-n", "prod")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["NAMESPACE", "WORKLOAD", "INGRESS", "EGRESS"]
    # order 10 (GNP) before order 100 before the Kubernetes policy's 1000
    assert lines[1].split(maxsplit=2)[:2] == ["prod", "db-1"]
    assert "deny-icmp, prod/allow-web, prod/knp.default.default-deny-ingress" in lines[1]
    assert lines[2].startswith("prod") and "web-1" in lines[2]
    assert "deny-icmp, prod/knp.default.default-deny-ingress" in lines[2]
    assert "(profiles)" in lines[1]  # no egress policy: the profile decides
    assert "REJECTED (not enforced):" in r.stdout and "future" in r.stdout
    r = bgpctl(etcd, "policy", "show", "db-2", "-n", "dev", "-o", "json")
    doc = json.loads(r.stdout)
    assert [e["workload"] for e in doc["endpoints"]] == ["db-2"]
    assert doc["endpoints"][0]["ingress"] == ["deny-icmp"]
    assert doc["endpoints"][0]["profiles"] == ["kns.dev"]
    r = bgpctl(etcd, "policy", "show", "nope", "-n", "dev")
    assert r.returncode == 1 and "no WorkloadEndpoint 'nope'" in r.stderr
