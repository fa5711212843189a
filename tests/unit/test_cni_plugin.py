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
from tests.helpers.wait import until_sync

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
    # The agent's workers serve connections side by side: the VERSION call can be
    # answered before the worker holding the garbage has counted it.
    until_sync(lambda: running_agent.stats.bad_requests == 1, timeout=10,
               what="the garbage connection counted as one bad request",
               detail=lambda: f"bad_requests={running_agent.stats.bad_requests}")
    assert running_agent.stats.bad_requests == 1


# ------------------------------------------------------------------ the launchers


def launcher(tmp_path, entry: str):
    from cni.shim import launcher_text

    path = tmp_path / entry
    path.write_text(launcher_text(entry))
    path.chmod(0o755)
    return str(path)


def run_launcher(path: str, env: dict, conf: str, *args: str) -> tuple[int, str, str]:
    import subprocess

    r = subprocess.run([path, *args], input=conf, env=env, capture_output=True, text=True,
                       timeout=120)
    return r.returncode, r.stdout, r.stderr


def test_the_fast_path_imports_only_builtins():
    """What a launcher loads before it hands the call to the agent (cni.fast): nothing of
    the standard library's Python modules, so a pod event costs one bare interpreter start."""
    import subprocess
    import sys

    import cni

    pkg = os.path.dirname(os.path.dirname(os.path.abspath(cni.__file__)))
    code = (f"import sys; before = set(sys.modules); sys.path.insert(0, {pkg!r}); "
            "import cni.fast; print(' '.join(sorted(set(sys.modules) - before)))")
    out = subprocess.run([sys.executable, "-IS", "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert set(out) <= {"cni", "cni.fast", "_json", "_socket", "posix"}, out


def test_fast_json_reads_what_json_reads():
    from cni.fast import loads, request

    for text in ('{"a": [1, -2.5e3, true, null, "\\u00e9\\n"], "b": {}}', " [NaN] \n", '"x"'):
        assert json.dumps(loads(text)) == json.dumps(json.loads(text))
    for bad in ("", "{", '{"a": 1} x', "[1,]"):
        with pytest.raises(ValueError):
            loads(bad)
    env = {"A": "\u00e9\udcff", "CNI_COMMAND": "ADD"}
    body = request("cni", env, '{"k": "v"}\n')
    assert int.from_bytes(body[:4], "big") == len(body) - 4
    assert json.loads(body[4:]) == {"plugin": "cni", "env": env, "stdin": '{"k": "v"}\n'}


@pytest.mark.parametrize("entry,plugin", [("cni_main", "cni"), ("ipam_main", "ipam")])
def test_launchers_forward_to_the_agent_and_run_here_without_it(running_agent, tmp_path,
                                                                  entry, plugin):
    exe = launcher(tmp_path, entry)
    env = {**ENV, "PATH": os.environ.get("PATH", ""), "CNI_CONTAINERID": ""}
    conf = json.dumps({**BASE, "agent_socket": running_agent.path})
    got = run_launcher(exe, env, conf)
    assert running_agent.served == 1
    reply = agent.call(running_agent.path, plugin, env, conf)
    assert got == (reply["rc"], reply["stdout"], reply["stderr"])
    assert got[0] != 0 and isinstance(json.loads(got[1])["code"], int)
    # No agent at the socket the config names: the same answer, worked out in the process.
    alone = run_launcher(exe, env, json.dumps({**BASE, "agent_socket": str(tmp_path / "no")}))
    assert (alone[0], json.loads(alone[1])) == (got[0], json.loads(got[1]))
    assert running_agent.served == 2
    # VERSION is answered by the launcher itself.
    rc, out, _ = run_launcher(exe, {**env, "CNI_COMMAND": "VERSION"}, '{"cniVersion": "0.4.0"}')
    assert rc == 0 and json.loads(out)["cniVersion"] == "0.4.0" and running_agent.served == 2


def test_an_agent_that_fails_mid_request_means_try_again(tmp_path):
    import socket

    path = str(tmp_path / "bad.sock")
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    srv.listen(1)

    def hang_up():
        conn, _ = srv.accept()
        conn.recv(4)
        conn.close()

    t = threading.Thread(target=hang_up, daemon=True)
    t.start()
    env = {**ENV, "PATH": os.environ.get("PATH", "")}
    rc, out, err = run_launcher(launcher(tmp_path, "cni_main"), env,
                                json.dumps({**BASE, "agent_socket": path}))
    t.join(5)
    srv.close()
    assert rc == 1 and json.loads(out)["code"] == 11 and "CNI agent" in err


# ------------------------------------------------------------------ the agent's metrics


def scrape(text: str) -> dict[tuple[str, tuple], float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_agent_counts_bad_configs_by_cni_error_code(running_agent):
    """Bad input from outside is counted where it comes in (GUIDE "Standards"): every
    failed call by the code of its CNI error object (SPEC.md "Error": 7 invalid network
    configuration, 6 decode failure), successes by command."""
    from cni.metrics import AgentMetrics

    metrics = AgentMetrics(running_agent.stats)
    for conf in ({**BASE, "mtu": -1}, {**BASE, "interface_prefix": "toolong"}, "{not json"):
        reply = agent.call(running_agent.path, "cni", ENV,
                           conf if isinstance(conf, str) else json.dumps(conf))
        assert reply["rc"] == 1
    reply = agent.call(running_agent.path, "ipam", ENV, json.dumps({**BASE, "ipam": "x"}))
    assert reply["rc"] == 1 and json.loads(reply["stdout"])["code"] == 7
    assert agent.call(running_agent.path, "cni", {"CNI_COMMAND": "VERSION"}, "{}")["rc"] == 0
    assert agent.call(running_agent.path, "cni", {**ENV, "CNI_COMMAND": "FROB"},
                      json.dumps(BASE))["rc"] == 2
    got = scrape(metrics.render().decode())

    def err(plugin, command, code, reason):
        return got.get(("podbgp_cni_errors_total", (("code", code), ("command", command),
                                                    ("plugin", plugin), ("reason", reason))))

    assert err("cni", "ADD", "7", "invalid_config") == 2
    assert err("cni", "ADD", "6", "decode_failure") == 1
    assert err("ipam", "ADD", "7", "invalid_config") == 1
    assert err("cni", "other", "4", "invalid_environment") == 1  # the command is bounded
    req = {k[1]: v for k, v in got.items() if k[0] == "podbgp_cni_requests_total"}
    assert req[(("command", "VERSION"), ("plugin", "cni"), ("result", "ok"))] == 1
    assert req[(("command", "ADD"), ("plugin", "cni"), ("result", "error"))] == 3
    assert got[("podbgp_cni_requests_in_flight", ())] == 0
    assert got[("podbgp_cni_request_duration_seconds_count",
                (("command", "ADD"), ("plugin", "cni")))] == 3


def test_agent_process_serves_metrics_and_names_a_bad_listen_address(tmp_path):
    """`podbgp-cni agent` as a user starts it: /metrics on --http-listen; an address in
    use or not an address is a one-line error and a non-zero exit, not a traceback."""
    import signal
    import socket
    import subprocess
    import sys
    import urllib.request

    def agent_cmd(*args):
        return [sys.executable, "-c", "import sys; from cni.shim import cni_main; "
                "sys.exit(cni_main())", "agent", "--socket", str(tmp_path / "a.sock"), *args]

    r = subprocess.run(agent_cmd("--http-listen", "nowhere"), capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2 and "--http-listen" in r.stderr and "Traceback" not in r.stderr
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        port = busy.getsockname()[1]
        r = subprocess.run(agent_cmd("--http-listen", f"127.0.0.1:{port}"), capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 1 and f"127.0.0.1:{port} (--http-listen)" in r.stderr
        assert "Traceback" not in r.stderr and not (tmp_path / "a.sock").exists()
    finally:
        busy.close()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(agent_cmd("--http-listen", f"127.0.0.1:{port}"),
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if '"cni_agent_listening"' in line:
                break
        listening = json.loads(lines[-1])
        assert listening["http"] == f"127.0.0.1:{port}", lines
        url = f"http://{listening['http']}/metrics"
        reply = agent.call(str(tmp_path / "a.sock"), "cni", ENV, json.dumps({**BASE, "mtu": "x"}))
        assert reply["rc"] == 1 and json.loads(reply["stdout"])["code"] == 7
        with urllib.request.urlopen(url, timeout=10) as resp:
            got = scrape(resp.read().decode())
        assert got[("podbgp_cni_errors_total", (("code", "7"), ("command", "ADD"),
                                                ("plugin", "cni"), ("reason", "invalid_config")))] == 1
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)
    assert proc.returncode == 0 and not (tmp_path / "a.sock").exists()


def test_the_agents_metrics_are_the_documented_ones(running_agent):
    """docs/cni.md's table and what /metrics exposes: same names, types and labels."""
    import re

    from prometheus_client.parser import text_string_to_metric_families

    from cni.metrics import AgentMetrics
    from tests.conftest import REPO

    doc = {}
    for line in (REPO / "docs" / "cni.md").read_text().splitlines():
        m = re.match(r"\|\s*`(podbgp_\w+)`\s*\|\s*(\w+)\s*\|([^|]*)\|", line)
        if m:
            doc[m.group(1)] = (m.group(2), frozenset(re.findall(r"`(\w+)`", m.group(3))))
    metrics = AgentMetrics(running_agent.stats)
    agent.call(running_agent.path, "cni", ENV, json.dumps({**BASE, "mtu": -1}))
    exposed = {}
    for fam in text_string_to_metric_families(metrics.render().decode()):
        labels = frozenset(k for s in fam.samples for k in s.labels if k != "le")
        exposed[fam.name + ("_total" if fam.type == "counter" else "")] = (fam.type, labels)
    assert len(doc) >= 7 and doc == exposed
