"""The CNI protocol pieces shared by podbgp-cni and podbgp-ipam (cni/spec.py).

Source: containernetworking/cni SPEC.md (1.1.0): parameters (CNI_CONTAINERID
"must start with an alphanumeric character, optionally followed by any
combination of one or more alphanumeric characters, underscore, dot or
hyphen"), the error object and its well-known codes, and the result shape;
the 0.3.x/0.4.0 results carry "version" in each IP (spec-v0.4.0 SPEC.md).
"""

from __future__ import annotations

import pytest

from cni import spec
from cni.spec import CNIError


def test_error_object_is_the_specs_shape():
    err = CNIError(7, "Invalid Configuration", "Network 192.168.0.0/31 too small")
    assert err.to_object("1.1.0") == {"cniVersion": "1.1.0", "code": 7,
                                      "msg": "Invalid Configuration",
                                      "details": "Network 192.168.0.0/31 too small"}
    # An unsupported version in the request is answered in the latest one.
    assert CNIError(1, "x").to_object("9.9.9") == {"cniVersion": spec.LATEST, "code": 1,
                                                   "msg": "x"}


def test_well_known_codes():
    assert (spec.E_INCOMPATIBLE, spec.E_UNSUPPORTED_FIELD, spec.E_UNKNOWN_CONTAINER,
            spec.E_BAD_ENV, spec.E_IO, spec.E_DECODE, spec.E_BAD_CONFIG, spec.E_TRY_AGAIN,
            spec.E_NOT_AVAILABLE, spec.E_LIMITED_CONNECTIVITY) == (1, 2, 3, 4, 5, 6, 7, 11, 50, 51)
    assert all(c >= 100 for c in (spec.E_NO_ADDRESS, spec.E_CHECK_MISMATCH, spec.E_DATAPLANE,
                                  spec.E_IPAM_PLUGIN))


@pytest.mark.parametrize(("version", "command", "code"), [
    (None, "", 7), ("", "ADD", 7), ("0.2.0", "ADD", 1), ("2.0.0", "ADD", 1),
    ("0.3.1", "CHECK", 1), ("0.3.0", "CHECK", 1),
])
def test_version_checks(version, command, code):
    with pytest.raises(CNIError) as exc:
        spec.check_version(version, command)
    assert exc.value.code == code


def test_supported_versions_pass():
    for v in ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"):
        assert spec.check_version(v, "ADD") == v
    assert spec.check_version("0.4.0", "CHECK") == "0.4.0"
    assert spec.version_result("0.4.0") == {"cniVersion": "0.4.0",
                                            "supportedVersions": list(spec.SUPPORTED_VERSIONS)}


@pytest.mark.parametrize("cid", ["a", "0abc", "abc_DEF.1-2", "f" * 64])
def test_container_ids_accepted(cid):
    assert spec.container_id({"CNI_CONTAINERID": cid}) == cid


@pytest.mark.parametrize("cid", ["", "-abc", "_abc", "a/b", "a b", "a;b"])
def test_container_ids_refused_naming_the_variable(cid):
    with pytest.raises(CNIError, match="CNI_CONTAINERID") as exc:
        spec.container_id({"CNI_CONTAINERID": cid})
    assert exc.value.code == 4


@pytest.mark.parametrize("name", ["", "a" * 16, "a/b", "a:b", "a b", ".", ".."])
def test_interface_names_refused(name):
    with pytest.raises(CNIError, match="CNI_IFNAME"):
        spec.interface_name({"CNI_IFNAME": name})
    assert spec.interface_name({"CNI_IFNAME": "eth0"}) == "eth0"


def test_cni_args():
    assert spec.parse_cni_args("IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p;;") == {
        "IgnoreUnknown": "1", "K8S_POD_NAMESPACE": "ns", "K8S_POD_NAME": "p"}
    assert spec.parse_cni_args("A=b=c") == {"A": "b=c"}
    for bad in ("K8S_POD_NAME", "=x"):
        with pytest.raises(CNIError, match="KEY=VALUE"):
            spec.parse_cni_args(bad)


RESULT_1 = {"cniVersion": "1.0.0",
            "interfaces": [{"name": "cali1", "mac": "ee:ee:ee:ee:ee:ee"},
                           {"name": "eth0", "mac": "aa:bb:cc:dd:ee:ff", "sandbox": "/run/netns/x"}],
            "ips": [{"address": "10.0.0.5/32", "interface": 1},
                    {"address": "fd00::5/128", "interface": 1}],
            "routes": [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}], "dns": {}}


def test_result_in_old_versions_names_the_ip_version():
    old = spec.to_version(RESULT_1, "0.3.1")
    assert old["cniVersion"] == "0.3.1"
    assert [ip["version"] for ip in old["ips"]] == ["4", "6"]
    assert old["ips"][0] == {"version": "4", "address": "10.0.0.5/32", "interface": 1}
    assert "version" not in spec.to_version(RESULT_1, "1.0.0")["ips"][0]
    # and back: the internal (1.0.0) shape again
    back = spec.from_any_version(old)
    assert back["ips"] == RESULT_1["ips"] and back["routes"] == RESULT_1["routes"]


@pytest.mark.parametrize("bad", [
    [], {"ips": "10.0.0.1/32"}, {"ips": [{"gateway": "10.0.0.1"}]}, {"routes": [{"gw": "x"}]},
])
def test_malformed_results_are_decode_errors(bad):
    with pytest.raises(CNIError) as exc:
        spec.from_any_version(bad)
    assert exc.value.code == 6


def test_gc_valid_attachments():
    conf = {"cni.dev/valid-attachments": [{"containerID": "a", "ifname": "eth0"},
                                          {"containerID": "b"}]}
    assert spec.valid_attachments(conf) == {("a", "eth0"), ("b", "")}
    assert spec.valid_attachments({}) == set()
    for bad in ("all", [{"ifname": "eth0"}], [["a", "eth0"]]):
        with pytest.raises(CNIError, match="valid-attachments"):
            spec.valid_attachments({"cni.dev/valid-attachments": bad})
