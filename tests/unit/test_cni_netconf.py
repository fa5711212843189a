"""podbgp-cni's network configuration: Calico's keys, defaults, and bad values named.

Key names follow Calico's CNI plugin NetConf (projectcalico/calico
cni-plugin/pkg/types/types.go: mtu, nodename, etcd_*, datastore_type,
container_settings.allow_ip_forwarding, include_default_routes, mode,
device_type); labels follow the CNI conventions' ``args.cni.labels``
(containernetworking/cni CONVENTIONS.md: a list of {"key", "value"}).
"""

from __future__ import annotations

import json

import pytest

from cni.agent import DEFAULT_AGENT_SOCKET, socket_from
from cni.netconf import parse_netconf, pod_identity
from cni.spec import CNIError

BASE = {"cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "podbgp-cni",
        "ipam": {"type": "podbgp-ipam"}}


def conf(**over) -> str:
    c = json.loads(json.dumps(BASE))
    c.update(over)
    return json.dumps(c)


def test_defaults_are_calicos():
    nc = parse_netconf(conf(), {"NODENAME": "n1"})
    assert (nc.nodename, nc.mtu, nc.route_protocol, nc.interface_prefix) == ("n1", 0, 3, "cali")
    assert nc.ipam_type == "podbgp-ipam" and nc.labels == {} and not nc.allow_ip_forwarding
    assert nc.agent_socket == DEFAULT_AGENT_SOCKET
    nc = parse_netconf(conf(nodename="top", mtu=1400, route_protocol="static",
                            container_settings={"allow_ip_forwarding": True},
                            ipam={"type": "host-local", "routes": [{"dst": "10.0.0.0/8"}]}),
                       {"NODENAME": "n1", "FELIX_INTERFACEPREFIX": "tap,cali"})
    assert (nc.nodename, nc.mtu, nc.route_protocol, nc.interface_prefix) == ("top", 1400, 4,
                                                                             "tap")
    assert nc.allow_ip_forwarding and nc.ipam_routes == ["10.0.0.0/8"]


def test_labels_from_args_in_both_shapes():
    lst = {"cni": {"labels": [{"key": "app", "value": "web"}, {"key": "tier", "value": "fe"}]}}
    assert parse_netconf(conf(args=lst), {}).labels == {"app": "web", "tier": "fe"}
    assert parse_netconf(conf(args={"cni": {"labels": {"app": "web"}}}), {}).labels == {
        "app": "web"}
    # other runtimes' args are not ours to judge
    assert parse_netconf(conf(args={"K8S_POD_NAME": "x", "cni": {"ips": ["10.0.0.1"]}}),
                         {}).labels == {}


def test_unknown_keys_are_ignored_like_calico():
    nc = parse_netconf(conf(policy={"type": "k8s"}, kubernetes={"kubeconfig": "/x"},
                            runtimeConfig={"portMappings": []}, capabilities={"x": True}), {})
    assert nc.name == "k8s-pod-network"


@pytest.mark.parametrize(("over", "code", "words"), [
    ({"mtu": "1400"}, 7, "mtu: '1400'"),
    ({"mtu": 10}, 7, "mtu: 10"),
    ({"mtu": True}, 7, "mtu: True"),
    ({"route_protocol": 201}, 7, "podbgp's bgpd"),
    ({"route_protocol": 80}, 7, "Felix"),
    ({"route_protocol": "bird"}, 7, "route_protocol: 'bird'"),
    ({"route_protocol": 0}, 7, "route_protocol: 0"),
    ({"interface_prefix": "toolong"}, 7, "interface_prefix"),
    ({"ipam": None}, 7, "ipam: missing"),
    ({"ipam": {"type": "../x"}}, 7, "ipam.type"),
    ({"ipam": {"type": "podbgp-ipam", "routes": [{"dst": "nonsense"}]}}, 7, "ipam.routes[0]"),
    ({"args": {"cni": {"labels": [{"key": "app"}, {"value": "x"}]}}}, 7, "args.cni.labels[1]"),
    ({"args": {"cni": {"labels": [{"key": "app", "value": 3}]}}}, 7, "args.cni.labels[0]"),
    ({"args": {"cni": {"labels": "app=web"}}}, 7, "args.cni.labels"),
    ({"args": []}, 7, "args"),
    ({"container_settings": {"allow_ip_forwarding": "yes"}}, 7,
     "container_settings.allow_ip_forwarding"),
    ({"datastore_type": "kubernetes"}, 7, "datastore_type: 'kubernetes'"),
    ({"log_level": "loud"}, 7, "log_level"),
    ({"mode": "vxlan"}, 2, "mode: 'vxlan'"),
    ({"device_type": "netkit"}, 2, "device_type: 'netkit'"),
    ({"cniVersion": "0.2.0"}, 1, "cniVersion"),
    ({"name": ""}, 7, "name"),
    ({"prevResult": []}, 6, "prevResult"),
])
def test_bad_values_are_named(over, code, words):
    with pytest.raises(CNIError) as exc:
        parse_netconf(conf(**over), {})
    assert exc.value.code == code
    assert words in exc.value.msg


@pytest.mark.parametrize(("text", "code"), [("{", 6), ("[]", 6), ("", 6)])
def test_undecodable_configuration(text, code):
    with pytest.raises(CNIError) as exc:
        parse_netconf(text, {})
    assert exc.value.code == code


def test_pod_identity_from_cni_args():
    args = {"K8S_POD_NAMESPACE": "prod", "K8S_POD_NAME": "web-0",
            "K8S_POD_INFRA_CONTAINER_ID": "abc"}
    assert pod_identity(args, "cid") == ("prod", "web-0", "abc")
    assert pod_identity({"K8S_POD_NAMESPACE": "p", "K8S_POD_NAME": "w"}, "cid")[2] == "cid"
    with pytest.raises(CNIError, match="K8S_POD_NAME missing") as exc:
        pod_identity({"K8S_POD_NAMESPACE": "prod"}, "cid")
    assert exc.value.code == 4
    with pytest.raises(CNIError, match="K8S_POD_NAME='Web_0'"):
        pod_identity({"K8S_POD_NAMESPACE": "prod", "K8S_POD_NAME": "Web_0"}, "cid")


def test_agent_socket_named_without_parsing_the_rest():
    assert socket_from('{"agent_socket": "/x/s"}', {}) == "/x/s"
    assert socket_from("not json", {"PODBGP_CNI_SOCKET": "/e/s"}) == "/e/s"
    assert socket_from("{}", {}) == DEFAULT_AGENT_SOCKET


def test_the_readmes_configurations_are_accepted_and_its_error_is_the_real_one():
    """What README "Pod interfaces" tells a user to write works as written; the error it
    quotes for a bad key is the one the plugin prints."""
    import io
    import re

    from cni.plugin import run
    from tests.conftest import REPO

    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Pod interfaces"):]
    section = section[:section.index("\n## ", 1)]
    texts = re.findall(r"```json\n(.*?)```", section, re.S)
    texts += re.findall(r"<<'CONF'\n(.*?)\nCONF\n", section, re.S)
    routed = [t for t in texts if '"podbgp-cni"' in t]
    assert len(routed) == 2, texts
    for text in routed:
        nc = parse_netconf(text, {"NODENAME": "n1"}, "ADD")
        assert (nc.ipam_type, nc.mtu, nc.etcd_endpoints) == ("podbgp-ipam", 0,
                                                             "http://10.0.0.5:2379")
    quoted = re.search(r'"msg":\s*"(mtu: -1 is not) \.\.\."', section)
    assert quoted, "the README quotes the error of mtu -1"
    out, err = io.StringIO(), io.StringIO()
    bad = json.loads(routed[0]) | {"mtu": -1}
    rc = run({"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "pod1", "CNI_IFNAME": "eth0",
              "CNI_NETNS": "/var/run/netns/pod1", "CNI_PATH": "/opt/cni/bin"},
             json.dumps(bad), out, err)
    got = json.loads(out.getvalue())
    assert rc == 1 and got["code"] == 7 and got["msg"].startswith(quoted.group(1))
    assert err.getvalue().count("\n") == 1
