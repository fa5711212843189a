"""bgpctl and the policy kinds against a real etcd: Calico's keys and JSON, -n / -A.

Kubernetes documents are stored as kube-controllers stores them in etcd mode
(knp.default.<name> under networkpolicies/<ns>/, Profile kns.<ns>); table
headings are calicoctl's (calicoctl/calicoctl/resourcemgr/networkpolicy.go,
globalnetworkpolicy.go, profile.go: NAME TIER / NAME TIER ORDER SELECTOR,
NAMESPACE prepended with -A).
"""

from __future__ import annotations

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
