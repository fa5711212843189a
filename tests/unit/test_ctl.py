"""bgpctl in-process against the file datastore: verbs, output, exit codes."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from bgpd.ctl import cli as ctl

POOL = """\
apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: default-ipv4-ippool
spec:
  cidr: 192.168.0.0/16
  ipipMode: Always
  natOutgoing: true
"""
PEERS = """\
apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata: {name: tor}
spec: {peerIP: 192.0.2.1, asNumber: 64513, node: node1}
---
apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata: {name: rr}
spec: {peerIP: 192.0.2.2, asNumber: "1.10", nodeSelector: "rack == 'a'"}
---
apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata: {name: everyone}
spec: {peerIP: 192.0.2.3, asNumber: 64515}
"""


@pytest.fixture
def run(tmp_path, capsys, monkeypatch):
    cfg = tmp_path / "podbgp.yaml"
    for var in ("DATASTORE_TYPE", "PODBGP_CONFIG_FILE", "ETCD_ENDPOINTS"):
        monkeypatch.delenv(var, raising=False)

    def _run(*argv: str, stdin: str | None = None):
        if stdin is not None:
            import io

            monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
        code = ctl.main(["--datastore", "file", "--config-file", str(cfg), *argv])
        out, err = capsys.readouterr()
        return code, out, err

    _run.cfg = cfg
    _run.tmp = tmp_path
    return _run


def put_file(run, name: str, text: str) -> str:
    p = run.tmp / name
    p.write_text(text)
    return str(p)


def test_apply_get_roundtrip_and_verbs(run):
    f = put_file(run, "pool.yaml", POOL)
    code, out, err = run("apply", "-f", f)
    assert (code, err) == (0, "")
    assert out == "Successfully applied 1 'IPPool' resource(s)\n"

    code, out, _ = run("get", "ippools")
    assert code == 0
    assert out.splitlines() == ["NAME                  CIDR             SELECTOR",
                                "default-ipv4-ippool   192.168.0.0/16   all()"]
    code, out, _ = run("get", "IPPool", "-o", "wide")
    header, row = out.splitlines()
    assert header.split() == ["NAME", "CIDR", "NAT", "IPIPMODE", "VXLANMODE", "DISABLED",
                              "DISABLEBGPEXPORT", "SELECTOR"]
    assert row.split() == ["default-ipv4-ippool", "192.168.0.0/16", "true", "Always", "Never",
                           "false", "false", "all()"]

    code, out, _ = run("get", "ippool", "default-ipv4-ippool", "-o", "yaml")
    doc = yaml.safe_load(out)
    assert doc["kind"] == "IPPool" and doc["spec"]["ipipMode"] == "Always"
    assert doc["spec"]["natOutgoing"] is True and doc["spec"]["blockSize"] == 26

    code, out, _ = run("get", "ippools", "-o", "json")
    listing = json.loads(out)
    assert listing["kind"] == "IPPoolList" and len(listing["items"]) == 1
    # The List output is valid input again (calicoctl round trip).
    f2 = put_file(run, "list.json", out)
    assert run("replace", "-f", f2)[0] == 0

    code, _, err = run("create", "-f", f)
    assert code == 1
    assert err == ("Failed to create 'IPPool' resource: resource already exists: "
                   "IPPool(default-ipv4-ippool)\n")
    assert run("delete", "ippool", "default-ipv4-ippool")[0] == 0
    code, _, err = run("replace", "-f", f)
    assert code == 1 and "resource does not exist: IPPool(default-ipv4-ippool)" in err
    code, _, err = run("delete", "-f", f)
    assert code == 1 and "does not exist" in err
    assert run("create", "-f", "-", stdin=POOL)[0] == 0
    assert run("delete", "-f", "-", stdin=POOL)[0] == 0


def test_get_bgppeers_node_column(run):
    assert run("create", "-f", put_file(run, "peers.yaml", PEERS))[0] == 0
    code, out, _ = run("get", "bgppeers")
    assert code == 0
    rows = [re.split(r" {3,}", line) for line in out.splitlines()]  # cells hold spaces
    assert rows[0] == ["NAME", "PEERIP", "NODE", "ASN"]
    assert rows[1:] == [["everyone", "192.0.2.3", "(global)", "64515"],
                        ["rr", "192.0.2.2", "rack == 'a'", "65546"],
                        ["tor", "192.0.2.1", "node1", "64513"]]


def test_invalid_input_writes_nothing(run):
    assert run("apply", "-f", put_file(run, "p.yaml", POOL))[0] == 0
    before = run.cfg.read_text()
    bad = POOL.replace("default-ipv4-ippool", "second") + "---\n" + \
        POOL.replace("default-ipv4-ippool", "third").replace("192.168.0.0/16", "10.0.0.1/8")
    code, out, err = run("apply", "-f", put_file(run, "bad.yaml", bad))
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and 'IPPool "third"' in err and "spec.cidr" in err
    code, _, err = run("apply", "-f", put_file(run, "broken.yaml", "kind: [oops\n"))
    assert code == 1 and "YAML" in err and err.count("\n") == 1
    assert run.cfg.read_text() == before


def test_apply_is_strict_but_a_stored_unknown_field_round_trips(run):
    # calicoctl refuses a field that is not in Calico's API, naming it; so does bgpctl.
    typo = POOL.replace("natOutgoing: true", "natOutgoing: true\n  natOutgoin: true")
    code, out, err = run("apply", "-f", put_file(run, "typo.yaml", typo))
    assert code == 1 and out == ""
    assert err == ("typo.yaml: IPPool \"default-ipv4-ippool\": spec.natOutgoin: True: "
                   "unknown field\n").replace("typo.yaml", str(run.tmp / "typo.yaml"))
    # Data the datastore already holds (written by calico-node) keeps every field through
    # get -o yaml and an edit of a field podbgp does model.
    node = ("apiVersion: projectcalico.org/v3\nkind: Node\nmetadata: {name: n1}\n"
            "spec:\n  bgp: {ipv4Address: 10.0.0.1/24}\n"
            "  interfaces: [{name: eth0, addresses: [10.0.0.1/24, 'fd00::1/64']}]\n"
            "status: {podCIDRs: [10.244.1.0/24]}\n")
    run.cfg.write_text(node)
    code, out, _ = run("get", "node", "n1", "-o", "yaml")
    doc = yaml.safe_load(out)
    assert doc["spec"]["interfaces"] == [{"name": "eth0",
                                          "addresses": ["10.0.0.1/24", "fd00::1/64"]}]
    doc["spec"]["bgp"]["asNumber"] = 64700
    assert run("apply", "-f", "-", stdin=yaml.safe_dump(doc))[0] == 0
    code, out, _ = run("get", "node", "n1", "-o", "yaml")
    again = yaml.safe_load(out)
    assert again["spec"]["interfaces"] == doc["spec"]["interfaces"]
    assert again["status"] == {"podCIDRs": ["10.244.1.0/24"]}
    assert again["spec"]["bgp"]["asNumber"] == 64700


@pytest.mark.parametrize("argv", [
    ["get"], ["frobnicate"], ["apply"], ["delete", "ippool"], ["get", "ippool", "-o", "xml"],
    ["delete", "-f", "x.yaml", "ippool", "p"],
])
def test_usage_errors_exit_2(run, argv):
    code, _, err = run(*argv)
    assert code == 2
    assert err.count("\n") == 1 and "error" in err


def test_file_datastore_needs_a_path(capsys, monkeypatch):
    monkeypatch.delenv("PODBGP_CONFIG_FILE", raising=False)
    assert ctl.main(["--datastore", "file", "get", "ippools"]) == 2
    assert "--config-file" in capsys.readouterr().err


def test_env_fallbacks(tmp_path, capsys, monkeypatch):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(POOL)
    monkeypatch.setenv("DATASTORE_TYPE", "file")
    monkeypatch.setenv("PODBGP_CONFIG_FILE", str(cfg))
    assert ctl.main(["get", "ippools"]) == 0
    assert "default-ipv4-ippool" in capsys.readouterr().out


def test_unknown_kind_and_missing_resource_fail_with_one_line(run):
    code, _, err = run("get", "widgets")
    assert code == 1 and "widgets" in err and err.count("\n") == 1
    code, _, err = run("get", "ippool", "nope")
    assert code == 1 and "IPPool(nope)" in err


def test_missing_plugin_says_not_available(monkeypatch, capsys):
    monkeypatch.setattr(ctl, "PLUGINS", (("ipam", "bgpd.no_such_plugin_module", "ipam"),))
    assert ctl.main(["ipam", "show", "--show-blocks"]) == 1
    assert "not available yet" in capsys.readouterr().err


def test_no_traceback_on_unexpected_error(run, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("disk on fire\nsecond line")

    monkeypatch.setattr(ctl, "load_resources", boom)
    code, _, err = run("apply", "-f", "-", stdin=POOL)
    assert code == 1
    assert err == "bgpctl: RuntimeError: disk on fire second line\n"


def test_table_format_matches_calicoctl_padding():
    out = ctl.format_table([["NAME", "CIDR"], ["p", "10.0.0.0/8"]])
    assert out == "NAME    CIDR\np       10.0.0.0/8\n"


def test_datastore_options_are_accepted_after_the_command() -> None:
    from bgpd.ctl.cli import hoist_global_options

    assert hoist_global_options(["get", "ippools", "--etcd-endpoints", "http://e:1", "-o", "yaml"]
                                ) == ["--etcd-endpoints", "http://e:1", "get", "ippools", "-o",
                                      "yaml"]
    assert hoist_global_options(["apply", "-f", "-", "--datastore=file", "--config-file", "c.yaml"]
                                ) == ["--datastore=file", "--config-file", "c.yaml", "apply", "-f",
                                      "-"]
    # Everything else keeps its order; "-f -" is not mistaken for an option value.
    assert hoist_global_options(["delete", "ippool", "p1"]) == ["delete", "ippool", "p1"]


def test_get_nodes_wide_shows_inherited_as_in_parentheses(run):
    nodes = """\
apiVersion: projectcalico.org/v3
kind: Node
metadata: {name: n1}
spec: {bgp: {ipv4Address: 10.0.0.1/24}}
---
apiVersion: projectcalico.org/v3
kind: Node
metadata: {name: n2}
spec: {bgp: {ipv4Address: 10.0.0.2/24, asNumber: 65002}}
"""
    assert run("apply", "-f", put_file(run, "nodes.yaml", nodes))[0] == 0
    rows = [ln.split() for ln in run("get", "nodes", "-o", "wide")[1].splitlines()]
    assert rows == [["NAME", "ASN", "IPV4", "IPV6"], ["n1", "(64512)", "10.0.0.1/24"],
                    ["n2", "65002", "10.0.0.2/24"]]
    conf = """\
apiVersion: projectcalico.org/v3
kind: BGPConfiguration
metadata: {name: default}
spec: {asNumber: 65100}
"""
    assert run("apply", "-f", put_file(run, "conf.yaml", conf))[0] == 0
    rows = [ln.split() for ln in run("get", "nodes", "-o", "wide")[1].splitlines()]
    assert rows[1] == ["n1", "(65100)", "10.0.0.1/24"]
