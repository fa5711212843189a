"""podbgp-cni's command handling up to the first privileged step, and its agent.

Everything here fails (or answers) before an interface, an address or an
etcd key could be touched, so it runs without root: the CNI error object on
stdout with the spec's code (containernetworking/cni SPEC.md "Error"), one
readable line on stderr, the exit status of docs/interfaces.md ("cni/": 1 failed,
2 usage).
"""

from __future__ import annotations

import io
import json
import os
import threading

import pytest

from cni import agent
from cni.plugin import run

BASE = {"cniVersion": "1.0.0", "name": "podnet", "type": "podbgp-cni",
        "etcd_endpoints": "http://127.0.0.1:1", "nodename": "node1",
        "ipam": {"type": "podbgp-ipam"}}
ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c0ffee", "CNI_IFNAME": "eth0",
       "CNI_NETNS": "/var/run/netns/does-not-exist-podbgp-test", "CNI_PATH": "/nonexistent",
       "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0"}


def call(env: dict, conf: dict | str | None = None) -> tuple[int, dict, str]:
    out, err = io.StringIO(), io.StringIO()
    text = conf if isinstance(conf, str) else json.dumps(conf or BASE)
    rc = run(env, text, out, err)
    return rc, (json.loads(out.getvalue()) if out.getvalue() else {}), err.getvalue()


def test_version():
    rc, out, _ = call({"CNI_COMMAND": "VERSION"}, {"cniVersion": "0.4.0"})
    assert rc == 0 and out["cniVersion"] == "0.4.0"
    assert out["supportedVersions"] == ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]


def test_unknown_command_is_a_usage_error():
    rc, out, err = call({**ENV, "CNI_COMMAND": "FROB"})
    assert rc == 2 and out["code"] == 4 and "CNI_COMMAND" in out["msg"]
    assert err.count("\n") == 1 and err.startswith("podbgp-cni: FROB: ")


@pytest.mark.parametrize(("env", "conf", "code", "words"), [
    ({"CNI_CONTAINERID": ""}, None, 4, "CNI_CONTAINERID"),
    ({"CNI_IFNAME": "a/b"}, None, 4, "CNI_IFNAME"),
    ({"CNI_NETNS": ""}, None, 4, "CNI_NETNS"),
    ({"CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=default"}, None, 4, "K8S_POD_NAME"),
    ({}, {**BASE, "args": {"cni": {"labels": [{"key": "app", "value": "x" * 64}]}}}, 7,
     "args.cni.labels"),
    ({}, {**BASE, "args": {"cni": {"labels": [{"key": "bad key", "value": "x"}]}}}, 7,
     "bad key"),
    ({}, {**BASE, "mtu": -1}, 7, "mtu"),
    ({}, "{not json", 6, "not JSON"),
    # The namespace is checked before IPAM is asked for anything.
    ({}, None, 4, "CNI_NETNS: network namespace"),
    ({"CNI_COMMAND": "CHECK"}, {**BASE, "cniVersion": "0.3.1"}, 1, "CHECK"),
    ({"CNI_COMMAND": "CHECK"}, None, 7, "prevResult"),
])
def test_add_and_check_refuse_before_touching_anything(env, conf, code, words):
    rc, out, err = call({**ENV, **env}, conf)
    assert rc == 1 and out["code"] == code, out
    assert words in out["msg"]
    assert out["cniVersion"] in ("1.0.0", "0.3.1", "1.1.0")
    assert err.count("\n") == 1 and "Traceback" not in err


# ------------------------------------------------------------------ the agent


@pytest.fixture
def running_agent(tmp_path):
    path = str(tmp_path / "run" / "cni.sock")
    a = agent.Agent(path)
    a.bind()
    t = threading.Thread(target=a.serve_forever, daemon=True)
    t.start()
    yield a
    a.stop()
    t.join(5)


def test_no_agent_means_run_here(tmp_path):
    assert agent.call(str(tmp_path / "absent.sock"), "cni", {}, "{}") is None
    (tmp_path / "plain").write_text("")
    assert agent.call(str(tmp_path / "plain"), "cni", {}, "{}") is None


def test_agent_runs_the_same_plugin(running_agent):
    assert oct(os.stat(running_agent.path).st_mode & 0o777) == "0o600"
    reply = agent.call(running_agent.path, "cni", {"CNI_COMMAND": "VERSION"},
                       '{"cniVersion": "0.3.1"}')
    assert reply["rc"] == 0 and json.loads(reply["stdout"])["cniVersion"] == "0.3.1"
    # An error comes back exactly as the in-process plugin writes it.
    env = {**ENV, "CNI_CONTAINERID": ""}
    reply = agent.call(running_agent.path, "cni", env, json.dumps(BASE))
    rc, out, err = call(env)
    assert (reply["rc"], json.loads(reply["stdout"]), reply["stderr"]) == (rc, out, err)
    reply = agent.call(running_agent.path, "ipam", {"CNI_COMMAND": "VERSION"}, "{}")
    assert reply["rc"] == 0 and "supportedVersions" in reply["stdout"]
    assert running_agent.served == 3


def test_a_live_agent_keeps_its_socket_a_dead_ones_is_replaced(running_agent, tmp_path):
    with pytest.raises(RuntimeError, match="another CNI agent"):
        agent.Agent(running_agent.path).bind()
    stale = str(tmp_path / "stale.sock")
    import socket

    s = socket.socket(socket.AF_UNIX)
    s.bind(stale)
    s.close()  # the file stays, nothing listens
    a = agent.Agent(stale)
    a.bind()
    a.stop()
    assert not os.path.exists(stale)


def test_garbage_on_the_socket_does_not_kill_the_agent(running_agent):
    import socket

    s = socket.socket(socket.AF_UNIX)
    s.connect(running_agent.path)
    s.sendall(b"\xff\xff\xff\xff")  # a 4 GiB message announced
    s.close()
    reply = agent.call(running_agent.path, "cni", {"CNI_COMMAND": "VERSION"}, "{}")
    assert reply is not None and reply["rc"] == 0
