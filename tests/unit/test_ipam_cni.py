"""podbgp-ipam without etcd: config validation, result shapes, error objects."""

from __future__ import annotations

import io
import ipaddress
import json

import pytest

from ipam.allocator import Assignment
from ipam.cni import CNIError, parse_cni_args, parse_config, render_result, run

BASE = {"cniVersion": "1.0.0", "name": "podnet", "type": "bridge",
        "ipam": {"type": "podbgp-ipam", "bridge_single_block": "true"}}


def conf(**over):
    c = json.loads(json.dumps(BASE))
    ipam = over.pop("ipam", {})
    c.update(over)
    c["ipam"].update(ipam)
    return json.dumps(c)


def call(env, stdin):
    out, err = io.StringIO(), io.StringIO()
    rc = run(env, stdin, out, err)
    return rc, out.getvalue(), err.getvalue()


def test_config_falls_back_to_environment():
    cfg = parse_config(conf(), {"NODENAME": "n7", "ETCD_ENDPOINTS": "http://10.0.0.9:2379"})
    assert cfg.nodename == "n7" and cfg.etcd.endpoints == "http://10.0.0.9:2379"
    assert cfg.assign_ipv4 and not cfg.assign_ipv6 and cfg.address_mode == "block"
    cfg = parse_config(conf(nodename="top", etcd_endpoints="http://e:1",
                            ipam={"assign_ipv6": "true", "ipv6_pools": ["p6"]}),
                       {"NODENAME": "n7"})
    assert cfg.nodename == "top" and cfg.etcd.endpoints == "http://e:1"
    assert cfg.assign_ipv6 and cfg.ipv6_pools == ["p6"]


@pytest.mark.parametrize("stdin, code, words", [
    ("{nope", 6, "not JSON"),
    (conf(cniVersion="0.2.0"), 1, "'0.2.0'"),
    (conf(name=""), 7, "name"),
    (conf(ipam={"assign_ipv4": "maybe"}), 7, "ipam.assign_ipv4"),
    (conf(ipam={"assign_ipv4": "false"}), 7, "both false"),
    (conf(ipam={"ipv4_pools": "p1"}), 7, "ipam.ipv4_pools"),
    (conf(ipam={"address_mode": "l2"}), 7, "ipam.address_mode"),
    (conf(ipam={"routes": [{"dst": "10.0.0.0/33"}]}), 7, "ipam.routes"),
    (conf(ipam={"empty_block_release_seconds": -1}), 7, "empty_block_release_seconds"),
    (conf(datastore_type="kubernetes"), 7, "datastore_type"),
    (json.dumps({k: v for k, v in BASE.items() if k != "ipam"}), 7, "ipam"),
])
def test_bad_config_is_a_cni_error_object(stdin, code, words):
    rc, out, err = call({"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1"}, stdin)
    obj = json.loads(out)
    assert rc == 1 and obj["code"] == code and words in obj["msg"], obj
    assert set(obj) <= {"cniVersion", "code", "msg", "details"}
    assert err.startswith("podbgp-ipam: ADD: ") and err.count("\n") == 1


def test_environment_errors():
    rc, out, _ = call({"CNI_COMMAND": "BOGUS"}, conf())
    assert rc == 2 and json.loads(out)["code"] == 4
    rc, out, _ = call({"CNI_COMMAND": "DEL"}, conf())
    assert rc == 2 and "CNI_CONTAINERID" in json.loads(out)["msg"]
    with pytest.raises(CNIError, match="KEY=VALUE"):
        parse_cni_args("IgnoreUnknown=1;junk")
    assert parse_cni_args("IgnoreUnknown=1;K8S_POD_NAME=p") == {"IgnoreUnknown": "1",
                                                               "K8S_POD_NAME": "p"}


def test_check_is_not_defined_for_0_3():
    rc, out, _ = call({"CNI_COMMAND": "CHECK", "CNI_CONTAINERID": "c"},
                      conf(cniVersion="0.3.1"))
    assert rc == 1 and json.loads(out) == {"cniVersion": "0.3.1", "code": 1,
                                           "msg": "CHECK is not defined for cniVersion 0.3.1"}


def test_version_command():
    rc, out, _ = call({"CNI_COMMAND": "VERSION"}, '{"cniVersion":"0.3.1"}')
    assert rc == 0 and json.loads(out)["cniVersion"] == "0.3.1"
    rc, out, _ = call({"CNI_COMMAND": "VERSION"}, "")
    assert json.loads(out)["cniVersion"] == "1.1.0"
    assert json.loads(out)["supportedVersions"] == ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]


def _a(ip, block):
    return Assignment(ipaddress.ip_address(ip), ipaddress.ip_network(block))


def test_result_shapes_per_version_and_mode():
    v4 = [_a("10.0.0.5", "10.0.0.0/26")]
    v6 = [_a("fd00::7", "fd00::/122")]
    pools = [ipaddress.ip_network("10.0.0.0/16"), ipaddress.ip_network("fd00::/64")]
    res = render_result(parse_config(conf(), {}), v4, v6, pools)
    assert res == {"cniVersion": "1.0.0", "dns": {},
                   "ips": [{"address": "10.0.0.5/26", "gateway": "10.0.0.1"},
                           {"address": "fd00::7/122", "gateway": "fd00::1"}],
                   "routes": [{"dst": "10.0.0.0/16"}, {"dst": "fd00::/64"}]}
    res = render_result(parse_config(conf(cniVersion="0.4.0", ipam={"address_mode": "host"}),
                                     {}), v4, [], pools[:1])
    assert res["ips"] == [{"version": "4", "address": "10.0.0.5/32"}] and res["routes"] == []
    res = render_result(parse_config(conf(ipam={"routes": [{"dst": "0.0.0.0/0"}]}), {}),
                        v4, [], pools[:1])
    assert res["routes"] == [{"dst": "0.0.0.0/0"}]


def test_bridge_block_mode_is_refused_at_the_first_add_naming_what_to_use():
    """docs/testing.md ("CNI plugins"): the bridge plugin allows one IPv4 address on the
    bridge ("already has an IP address different from"), so per-block gateways break at a
    node's second block."""
    text = json.dumps({**BASE, "ipam": {"type": "podbgp-ipam"}})
    with pytest.raises(CNIError) as exc:
        parse_config(text, {})
    assert exc.value.code == 7
    assert "podbgp-cni" in exc.value.msg and "bridge_single_block" in exc.value.msg
    rc, out, err = call({"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1"}, text)
    assert rc == 1 and json.loads(out)["code"] == 7 and "second" in json.loads(out)["msg"]
    assert err.count("\n") == 1 and "bridge_single_block" in err
    # Opting in holds the node to one block; host mode under a bridge is the user's call.
    assert parse_config(conf(), {}).max_node_blocks == 1
    cfg = parse_config(json.dumps({**BASE, "ipam": {"type": "podbgp-ipam",
                                                    "address_mode": "host"}}), {})
    assert cfg.address_mode == "host" and cfg.max_node_blocks is None


def test_under_podbgp_cni_host_mode_is_the_default():
    cfg = parse_config(json.dumps({**BASE, "type": "podbgp-cni",
                                   "ipam": {"type": "podbgp-ipam"}}), {})
    assert cfg.address_mode == "host" and cfg.max_node_blocks is None
    assert parse_config(json.dumps({**BASE, "type": "macvlan", "ipam": {"type": "podbgp-ipam"}}),
                        {}).address_mode == "block"
