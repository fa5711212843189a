"""WorkloadEndpoint: model, Calico's name format and escaping, etcd keys, lenient reading.

Sources:
- Name tables: projectcalico/calico libcalico-go/lib/names/workloadendpoint_test.go
  ("WorkloadEndpoint name construction", "... name prefix", "... name matching",
  "... name parsing").
- Stored document: networking-calico/networking_calico/plugins/ml2/drivers/calico/
  test/test_plugin_etcd.py (test_start_two_ports), the value Calico's OpenStack
  driver writes to etcd, including a field (``allowedIps``) the v3 type lacks.
- Labels and profiles of a pod: libcalico-go/lib/backend/k8s/conversion/
  workload_endpoint_default.go (kns.<ns>, ksa.<ns>.<sa>, projectcalico.org/*).
- Host interface name: the same file's VethNameForWorkload ("cali" +
  sha1("<ns>.<pod>")[:11]).
"""

from __future__ import annotations

import json

import pytest

from config import keys
from config.endpoints import (
    EndpointIdentifiers,
    endpoint_to_dict,
    endpoint_to_json,
    host_interface_name,
    parse_endpoint,
    parse_endpoint_json,
    parse_workload_endpoint_name,
    pod_endpoint,
    workload_endpoint_name,
)
from config.errors import ConfigError

R = "/calico/resources/v3/projectcalico.org/"

OPENSTACK_WEP = {
    "apiVersion": "projectcalico.org/v3",
    "kind": "WorkloadEndpoint",
    "metadata": {
        "annotations": {"openstack.projectcalico.org/network-id": "calico-network-id"},
        "name": "felix--host--1-openstack-instance--1-DEADBEEF--1234--5678",
        "namespace": "openstack",
        "labels": {
            "sg.projectcalico.org/openstack-SGID-default": "My_default_SG",
            "sg-name.projectcalico.org/openstack-My_default_SG": "SGID-default",
            "projectcalico.org/namespace": "openstack",
            "projectcalico.org/openstack-project-id": "jane3",
            "projectcalico.org/orchestrator": "openstack",
        },
    },
    "spec": {
        "endpoint": "DEADBEEF-1234-5678",
        "interfaceName": "tapDEADBEEF-12",
        "ipNATs": [{"externalIP": "192.168.0.1", "internalIP": "10.65.0.2"}],
        "ipNetworks": ["10.65.0.2/32", "23.23.23.2/32"],
        "allowedIps": ["23.23.23.2/32"],
        "ipv4Gateway": "10.65.0.1",
        "mac": "00:11:22:33:44:55",
        "node": "felix-host-1",
        "orchestrator": "openstack",
        "workload": "instance-1",
    },
}


def _k8s_wep(**spec) -> dict:
    return {
        "apiVersion": "projectcalico.org/v3",
        "kind": "WorkloadEndpoint",
        "metadata": {"name": "node1-k8s-web-eth0", "namespace": "default",
                     "labels": {"app": "web"}},
        "spec": {"orchestrator": "k8s", "node": "node1", "pod": "web", "endpoint": "eth0",
                 "interfaceName": "cali0123456789a", "ipNetworks": ["10.0.0.5/32"], **spec},
    }


# ------------------------------------------------------------------ names (Calico's tables)

@pytest.mark.parametrize(("ids", "name"), [
    (EndpointIdentifiers(node="node-1", orchestrator="k8s", pod="pod-name", endpoint="eth0"),
     "node--1-k8s-pod--name-eth0"),
    (EndpointIdentifiers(node="node-1", orchestrator="cni", container_id="abcdefa0123456",
                         endpoint="eth0"), "node--1-cni-abcdefa0123456-eth0"),
    (EndpointIdentifiers(node="node-1", orchestrator="libnetwork", endpoint="abcdefgh"),
     "node--1-libnetwork-libnetwork-abcdefgh"),
    (EndpointIdentifiers(node="node-1", orchestrator="foo", workload="foo-foo",
                         endpoint="abcdefgh"), "node--1-foo-foo--foo-abcdefgh"),
])
def test_name_construction(ids, name):
    assert ids.name() == name
    assert ids.name(prefix=True) == name
    assert ids.matches(name)


@pytest.mark.parametrize(("ids", "field"), [
    (EndpointIdentifiers(node="node-1", pod="pod-name", endpoint="eth0"), "orchestrator"),
    (EndpointIdentifiers(node="node-1", orchestrator="k8s", endpoint="eth0"), "pod"),
    (EndpointIdentifiers(node="node-1", orchestrator="cni", container_id="-abcdefa0123456",
                         endpoint="eth0"), "containerID"),
    (EndpointIdentifiers(node="node-1", orchestrator="foo", workload="foo-foo-",
                         endpoint="abcdefgh"), "workload"),
    (EndpointIdentifiers(orchestrator="k8s", pod="pod-name", endpoint="eth0"), "node"),
])
def test_name_construction_errors_name_the_field(ids, field):
    with pytest.raises(ValueError, match=rf"^{field}: "):
        ids.name()


@pytest.mark.parametrize(("ids", "prefix"), [
    (EndpointIdentifiers(node="node-1", orchestrator="foo", pod="pod-name", endpoint="eth0"),
     "node--1-foo-"),
    (EndpointIdentifiers(node="node-1", orchestrator="k8s", endpoint="eth0"), "node--1-k8s-"),
    (EndpointIdentifiers(node="node-1", pod="pod-name", endpoint="eth0"), "node--1-"),
])
def test_name_prefix(ids, prefix):
    assert ids.name(prefix=True) == prefix


@pytest.mark.parametrize(("ids", "name", "match"), [
    (EndpointIdentifiers(node="node-1", pod="pod-name", endpoint="eth0"), "", False),
    (EndpointIdentifiers(node="node-1", orchestrator="k8s", pod="pod-name", endpoint="eth0"),
     "node--1-k8s-pod--name-eth", False),
    (EndpointIdentifiers(node="node-1", orchestrator="cni", endpoint="eth0"),
     "node--1-cni-orchestratorid-eth0", True),
    (EndpointIdentifiers(node="node-1", orchestrator="cni", container_id="abcde",
                         endpoint="eth0"), "node--1-cni-abcdef-eth0", False),
    (EndpointIdentifiers(node="node-1", orchestrator="k8s", endpoint="eth0"),
     "node--1-k8s-", False),
    (EndpointIdentifiers(node="node-1", orchestrator="k8s", pod="pod", endpoint="eth0"),
     "node--1-k8s-pod-eth0-extra", False),
])
def test_name_matching(ids, name, match):
    assert ids.matches(name) is match


@pytest.mark.parametrize(("name", "ids"), [
    ("node-k8s-pod-eth0", EndpointIdentifiers(node="node", orchestrator="k8s", pod="pod",
                                              endpoint="eth0")),
    ("node-", EndpointIdentifiers(node="node")),
    ("node-k8s-pod--name-", EndpointIdentifiers(node="node", orchestrator="k8s",
                                                pod="pod-name")),
    ("node-cni-xyz-eth0", EndpointIdentifiers(node="node", orchestrator="cni",
                                              container_id="xyz", endpoint="eth0")),
    ("node-libnetwork-libnetwork-eth0", EndpointIdentifiers(
        node="node", orchestrator="libnetwork", endpoint="eth0")),
    ("node-foo--orch-workload-eth0", EndpointIdentifiers(
        node="node", orchestrator="foo-orch", workload="workload", endpoint="eth0")),
    ("coredns-668d6bf9bc-bxhr6", EndpointIdentifiers(
        node="coredns", orchestrator="668d6bf9bc", workload="bxhr6")),
])
def test_name_parsing(name, ids):
    assert parse_workload_endpoint_name(name) == ids


@pytest.mark.parametrize("name", ["", "calico-kube-controllers-7946b84856-2fwwq"])
def test_name_parsing_errors(name):
    with pytest.raises(ValueError):
        parse_workload_endpoint_name(name)


def test_k8s_name_round_trips_through_dashes_and_dots():
    name = workload_endpoint_name("ip-10-0-0-1.ec2.internal", "web-7d9f-x2", "eth0")
    assert name == "ip--10--0--0--1.ec2.internal-k8s-web--7d9f--x2-eth0"
    ids = parse_workload_endpoint_name(name)
    assert (ids.node, ids.pod, ids.endpoint) == ("ip-10-0-0-1.ec2.internal", "web-7d9f-x2",
                                                 "eth0")


def test_host_interface_name_is_calicos():
    # sha1("default.pod-name") = 53ff74bc269e... (echo -n default.pod-name | sha1sum)
    assert host_interface_name("default", "pod-name") == "cali53ff74bc269"
    assert host_interface_name("default", "pod-name", prefix="pbg") == "pbg53ff74bc269"
    assert host_interface_name("other", "pod-name") != host_interface_name("default", "pod-name")
    with pytest.raises(ValueError, match="15 bytes"):
        host_interface_name("default", "p", prefix="toolong")


# ------------------------------------------------------------------ keys

def test_namespaced_keys_both_ways():
    key = keys.workload_endpoint_key("default", "node1-k8s-web-eth0")
    assert key == R + "workloadendpoints/default/node1-k8s-web-eth0"
    assert keys.parse_namespaced_key(key) == ("WorkloadEndpoint", "default",
                                              "node1-k8s-web-eth0")
    assert keys.workload_endpoint_prefix() == R + "workloadendpoints/"
    assert keys.workload_endpoint_prefix("kube-system") == R + "workloadendpoints/kube-system/"
    # The daemon's Snapshot reads resource keys; a namespaced key is not one.
    assert keys.parse_resource_key(key) is None


@pytest.mark.parametrize("key", [
    R + "workloadendpoints/default",
    R + "workloadendpoints/default/",
    R + "workloadendpoints//name",
    R + "workloadendpoints/a/b/c",
    R + "ippools/default/p",
    R + "felixconfigurations/default/p",   # not a namespaced kind of ours
])
def test_non_endpoint_keys(key):
    assert keys.parse_namespaced_key(key) is None


@pytest.mark.parametrize(("ns", "name"), [("", "n"), ("a/b", "n"), ("ns", ""), ("ns", "x/y")])
def test_namespaced_key_rejects_bad_parts(ns, name):
    with pytest.raises(ValueError):
        keys.workload_endpoint_key(ns, name)


# ------------------------------------------------------------------ lenient reading

def test_calico_written_endpoint_round_trips_with_unknown_fields():
    raw = json.dumps(OPENSTACK_WEP).encode()
    key = R + "workloadendpoints/openstack/" + OPENSTACK_WEP["metadata"]["name"]
    wep = parse_endpoint_json(key, raw)
    assert wep.spec.workload == "instance-1"
    assert wep.spec.ip_nats[0].internal_ip == "10.65.0.2"
    assert [str(a) for a in wep.addresses] == ["10.65.0.2", "23.23.23.2"]
    assert wep.labels["projectcalico.org/orchestrator"] == "openstack"
    assert wep.key == key
    # Nothing is lost writing it back, the field the model lacks included.
    assert endpoint_to_dict(wep) == OPENSTACK_WEP
    assert json.loads(endpoint_to_json(wep)) == OPENSTACK_WEP


def test_unknown_fields_kept_at_every_level():
    doc = _k8s_wep(ports=[{"name": "http", "protocol": "TCP", "port": 80, "hostPort": 0,
                           "hostIP": "", "futurePortField": {"a": 1}}],
                   futureSpecField=None)
    doc["metadata"]["futureMeta"] = "x"
    doc["status"] = {"phase": "Running"}
    out = endpoint_to_dict(parse_endpoint(doc))
    assert out["spec"]["ports"][0]["futurePortField"] == {"a": 1}
    assert "futureSpecField" in out["spec"] and out["spec"]["futureSpecField"] is None
    assert out["metadata"]["futureMeta"] == "x"
    assert out["status"] == {"phase": "Running"}


def test_namespace_taken_from_the_key_when_the_value_has_none():
    doc = _k8s_wep()
    del doc["metadata"]["namespace"]
    wep = parse_endpoint_json(R + "workloadendpoints/default/node1-k8s-web-eth0",
                              json.dumps(doc))
    assert wep.namespace == "default"


@pytest.mark.parametrize(("mutate", "field", "reason"), [
    (lambda d: d["spec"].update(ipNetworks=["10.0.0.0/24"]), "spec.ipNetworks[0]",
     "multiple addresses"),
    (lambda d: d["spec"].update(ipNetworks=["10.0.0.300/32"]), "spec.ipNetworks[0]",
     "not a valid CIDR"),
    (lambda d: d["spec"].update(ipv4Gateway="fe80::1"), "spec.ipv4Gateway", "IPv4"),
    (lambda d: d["spec"].update(ipv6Gateway="169.254.1.1"), "spec.ipv6Gateway", "IPv6"),
    (lambda d: d["spec"].update(mac="00:11:22:33:44"), "spec.mac", "MAC"),
    (lambda d: d["spec"].update(interfaceName="cali0123456789abc"), "spec.interfaceName",
     "interface name"),
    (lambda d: d["spec"].update(ports=[{"name": "x", "protocol": "TCP", "port": 0}]),
     "spec.ports[0].port", "between 1 and 65535"),
    (lambda d: d["spec"].update(ipNetworks="10.0.0.5/32"), "spec.ipNetworks", "list"),
    (lambda d: d["metadata"].update(labels={"bad key!": "x"}), "metadata.labels",
     "bad key!"),
    (lambda d: d["metadata"].pop("namespace"), "metadata.namespace", "missing"),
    (lambda d: d["metadata"].update(name="a/b"), "metadata.name", "without '/'"),
    (lambda d: d.update(apiVersion="v1"), "apiVersion", "projectcalico.org/v3"),
    (lambda d: d.update(kind="Pod"), "kind", "WorkloadEndpoint"),
])
def test_bad_values_are_named(mutate, field, reason):
    doc = _k8s_wep()
    mutate(doc)
    with pytest.raises(ConfigError) as exc:
        parse_endpoint(doc)
    assert exc.value.field == field, str(exc.value)
    assert reason in str(exc.value)


def test_key_and_value_must_agree():
    doc = json.dumps(_k8s_wep())
    with pytest.raises(ConfigError, match="does not match the name in the key"):
        parse_endpoint_json(R + "workloadendpoints/default/other", doc)
    with pytest.raises(ConfigError, match="does not match the namespace in the key"):
        parse_endpoint_json(R + "workloadendpoints/prod/node1-k8s-web-eth0", doc)
    with pytest.raises(ConfigError, match="not a WorkloadEndpoint key"):
        parse_endpoint_json(R + "ippools/p", doc)
    with pytest.raises(ConfigError, match="not valid JSON"):
        parse_endpoint_json(R + "workloadendpoints/default/node1-k8s-web-eth0", b"{")


def test_null_lists_and_spec_are_empty():
    doc = _k8s_wep(ipNetworks=None, profiles=None, ports=None)
    wep = parse_endpoint(doc)
    assert wep.spec.ip_networks == () and wep.addresses == []
    doc["spec"] = None
    assert parse_endpoint(doc).spec.node is None


# ------------------------------------------------------------------ the pod's endpoint

def test_pod_endpoint_is_what_calicos_cni_writes():
    wep = pod_endpoint(node="node-1", namespace="prod", pod="web-0", endpoint="eth0",
                       container_id="f00d", interface_name=host_interface_name("prod", "web-0"),
                       mac="ee:ee:ee:00:00:01", ip_networks=["10.0.0.5/32", "fd00::5/128"],
                       labels={"app": "web", "tier": "frontend"}, service_account="api")
    d = endpoint_to_dict(wep)
    assert d["metadata"] == {
        "name": "node--1-k8s-web--0-eth0", "namespace": "prod",
        "labels": {"app": "web", "tier": "frontend", "projectcalico.org/namespace": "prod",
                   "projectcalico.org/orchestrator": "k8s",
                   "projectcalico.org/serviceaccount": "api"}}
    assert d["spec"] == {
        "orchestrator": "k8s", "node": "node-1", "pod": "web-0", "endpoint": "eth0",
        "containerID": "f00d", "interfaceName": wep.spec.interface_name,
        "mac": "ee:ee:ee:00:00:01", "ipNetworks": ["10.0.0.5/32", "fd00::5/128"],
        "profiles": ["kns.prod", "ksa.prod.api"], "serviceAccountName": "api"}
    assert wep.key == R + "workloadendpoints/prod/node--1-k8s-web--0-eth0"
    # What a policy engine selects on.
    assert wep.labels["app"] == "web"


def test_pod_endpoint_labels_cannot_override_calicos():
    wep = pod_endpoint(node="n", namespace="prod", pod="p", endpoint="eth0", container_id="c",
                       interface_name="calix", mac=None, ip_networks=["10.0.0.5/32"],
                       labels={"projectcalico.org/namespace": "kube-system"})
    assert wep.labels["projectcalico.org/namespace"] == "prod"


def test_pod_endpoint_bad_input_is_a_config_error():
    with pytest.raises(ConfigError, match="pod: field must not begin"):
        pod_endpoint(node="n", namespace="d", pod="-p", endpoint="eth0", container_id="c",
                     interface_name="calix", mac=None, ip_networks=[])
    with pytest.raises(ConfigError, match=r"metadata\.labels"):
        pod_endpoint(node="n", namespace="d", pod="p", endpoint="eth0", container_id="c",
                     interface_name="calix", mac=None, ip_networks=[],
                     labels={"app": "x" * 64})
