"""bgpctl as a subprocess against a real etcd: Calico's JSON in Calico's key, exit codes."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import yaml

from tests.conftest import REPO, free_port

pytestmark = pytest.mark.etcd

BGPCTL = str(REPO / ".venv" / "bin" / "bgpctl")
KEY = "/calico/resources/v3/projectcalico.org/ippools/default-ipv4-ippool"
# The IPPool from Calico's documentation.
DOC_POOL = """\
apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: default-ipv4-ippool
spec:
  cidr: 192.168.0.0/16
  ipipMode: Always
  natOutgoing: true
"""


def bgpctl(etcd, *argv: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATASTORE_TYPE", "PODBGP_CONFIG_FILE")}
    env["ETCD_ENDPOINTS"] = etcd.endpoint
    return subprocess.run([BGPCTL, *argv], input=stdin, capture_output=True, text=True,
                          env=env, timeout=30)


def stored(etcd, key: str = KEY):
    out = etcd.etcdctl("get", "--print-value-only", key)
    return json.loads(out) if out.strip() else None


def test_apply_writes_calico_json_and_get_yaml_roundtrips(etcd, tmp_path):
    f = tmp_path / "pool.yaml"
    f.write_text(DOC_POOL)
    r = bgpctl(etcd, "apply", "-f", str(f))
    assert r.returncode == 0, r.stderr
    assert r.stdout == "Successfully applied 1 'IPPool' resource(s)\n"

    value = stored(etcd)
    meta = value.pop("metadata")
    assert value == {"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
                     "spec": {"cidr": "192.168.0.0/16", "ipipMode": "Always",
                              "vxlanMode": "Never", "natOutgoing": True, "blockSize": 26,
                              "nodeSelector": "all()", "allowedUses": ["Workload", "Tunnel"]}}
    assert meta["name"] == "default-ipv4-ippool"
    assert len(meta["uid"]) == 36 and meta["creationTimestamp"].endswith("Z")

    r = bgpctl(etcd, "get", "ippools", "-o", "yaml")
    assert r.returncode == 0, r.stderr
    listing = yaml.safe_load(r.stdout)
    assert listing["kind"] == "IPPoolList"
    (item,) = listing["items"]
    assert item["metadata"].pop("resourceVersion").isdigit()
    assert item == {**value, "metadata": meta}

    # Feeding the output back changes nothing but the revision.
    r = bgpctl(etcd, "apply", "-f", "-", stdin=r.stdout)
    assert r.returncode == 0, r.stderr
    again = stored(etcd)
    assert again == {**value, "metadata": meta}

    r = bgpctl(etcd, "get", "ippools", "-o", "wide")
    assert r.stdout.splitlines()[1].split() == [
        "default-ipv4-ippool", "192.168.0.0/16", "true", "Always", "Never", "false", "false",
        "all()"]


def test_create_existing_and_replace_missing_fail(etcd, tmp_path):
    f = tmp_path / "pool.yaml"
    f.write_text(DOC_POOL)
    r = bgpctl(etcd, "replace", "-f", str(f))
    assert r.returncode == 1
    assert r.stderr == ("Failed to replace 'IPPool' resource: resource does not exist: "
                        "IPPool(default-ipv4-ippool)\n")
    assert stored(etcd) is None
    assert bgpctl(etcd, "create", "-f", str(f)).returncode == 0
    r = bgpctl(etcd, "create", "-f", str(f))
    assert r.returncode == 1
    assert r.stderr == ("Failed to create 'IPPool' resource: resource already exists: "
                        "IPPool(default-ipv4-ippool)\n")
    r = bgpctl(etcd, "delete", "ippools", "default-ipv4-ippool")
    assert r.returncode == 0 and stored(etcd) is None


def test_bad_input_exits_1_and_writes_nothing(etcd, tmp_path):
    good_then_bad = DOC_POOL + "---\n" + DOC_POOL.replace(
        "default-ipv4-ippool", "second").replace("ipipMode: Always", "ipipMode: Sometimes")
    for text in ("apiVersion: [unclosed\n", good_then_bad):
        r = bgpctl(etcd, "apply", "-f", "-", stdin=text)
        assert r.returncode == 1
        assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert "ipipMode" in r.stderr
    assert etcd.etcdctl("get", "--prefix", "/calico/", "--keys-only").strip() == ""


@pytest.mark.parametrize("argv", [[], ["get"], ["apply"], ["nonsense"], ["delete", "ippool"],
                                  ["--datastore", "consul", "get", "ippools"]])
def test_wrong_arguments_exit_2(etcd, argv):
    r = bgpctl(etcd, *argv)
    assert r.returncode == 2, r
    assert "Traceback" not in r.stderr


def test_unreachable_etcd_exits_1_with_one_line(tmp_path):
    class Dead:
        endpoint = f"http://127.0.0.1:{free_port()}"

    r = bgpctl(Dead, "get", "ippools")
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "cannot reach etcd" in r.stderr


def test_version():
    r = subprocess.run([BGPCTL, "--version"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and r.stdout.startswith("bgpctl (podbgp) ")


def test_file_datastore_as_subprocess(tmp_path):
    cfg = tmp_path / "podbgp.yaml"
    env = {**os.environ, "DATASTORE_TYPE": "file", "PODBGP_CONFIG_FILE": str(cfg)}

    def run(*argv, stdin=None):
        return subprocess.run([BGPCTL, *argv], input=stdin, capture_output=True, text=True,
                              env=env, timeout=30)

    assert run("create", "-f", "-", stdin=DOC_POOL).returncode == 0
    assert run("create", "-f", "-", stdin=DOC_POOL).returncode == 1
    r = run("get", "ippool", "default-ipv4-ippool", "-o", "json")
    assert json.loads(r.stdout)["spec"]["cidr"] == "192.168.0.0/16"
    assert run("delete", "ippool", "default-ipv4-ippool").returncode == 0
    assert "default-ipv4-ippool" not in cfg.read_text()
