"""podbgp-cni and podbgp-ipam as the compiled forwarder (cni/forward.c) vs the Python launcher.

The forwarder replaces the plugin executables on a node, so a runtime must
not be able to tell them apart: for every call each test runs both, as
processes, with the same environment and the same stdin, and asserts the same
stdout, stderr and exit status byte for byte; where an agent is reached, the
same request bytes on its socket (cni.fast.request's, which cni/agent.py reads).

What the runtime relies on (containernetworking/cni SPEC.md, v1.0.0+):
"Section 2: Execution Protocol" (CNI_COMMAND ADD/DEL/CHECK/VERSION, the
network configuration on stdin, the result on stdout), "Error" (a non-zero exit
with a JSON error object on stdout: cniVersion, code, msg) and its well-known
codes: 4 invalid environment variables, 6 failed to decode content, 7 invalid
network config, 11 try again later.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from cni import forward
from cni.fast import request
from cni.shim import launcher_text

CI = os.environ.get("CI") == "true"
BASE = {"cniVersion": "0.4.0", "name": "podnet", "type": "podbgp-cni",
        "etcd_endpoints": "http://127.0.0.1:1", "nodename": "node1",
        "ipam": {"type": "podbgp-ipam"}}
ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c0ffee", "CNI_IFNAME": "eth0",
       "CNI_NETNS": "/var/run/netns/does-not-exist-podbgp-test", "CNI_PATH": "/nonexistent",
       "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0",
       "PATH": "/usr/bin:/bin"}
PLUGINS = ("podbgp-cni", "podbgp-ipam")


def _no_compiler() -> None:
    if CI:
        pytest.fail("no C compiler in CI: scripts/install-deps.sh installs gcc")
    pytest.skip("no C compiler (cc) on this machine")


@pytest.fixture(scope="module")
def forwarder(tmp_path_factory) -> Path:
    """cni/forward.c compiled now, from the source under test: warnings-clean."""
    cc = forward.compiler()
    if cc is None:
        _no_compiler()
    out = tmp_path_factory.mktemp("forward") / "podbgp-cni-forward"
    r = subprocess.run([cc, *forward.CFLAGS, "-o", str(out), str(forward.SOURCE)],
                       capture_output=True, text=True)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    return out


@pytest.fixture
def bins(tmp_path, forwarder) -> Path:
    d = tmp_path / "bin"
    d.mkdir()
    forward.install(d, lambda plugin: launcher_text(forward.ENTRIES[plugin]), forwarder)
    return d


def test_make_built_the_forwarder():
    """`make deps` (scripts/install-deps.sh) compiles it: in CI it must be there and current."""
    if forward.built() is None:
        if CI or forward.compiler() is not None:
            pytest.fail(f"{forward.BINARY} missing or older than {forward.SOURCE}: "
                        "`make deps` did not build it")
        _no_compiler()
    assert os.access(forward.built(), os.X_OK)


def test_install_lays_out_both_plugins_and_their_launchers(bins, forwarder, tmp_path,
                                                           monkeypatch):
    assert {p.name for p in bins.iterdir()} == {"podbgp-cni", "podbgp-ipam",
                                                "podbgp-cni-python", "podbgp-ipam-python"}
    assert os.path.samefile(bins / "podbgp-cni", bins / "podbgp-ipam")
    assert (bins / "podbgp-cni").read_bytes() == forwarder.read_bytes()
    assert "launch('ipam')" in (bins / "podbgp-ipam-python").read_text()
    monkeypatch.setattr(forward, "BINARY", tmp_path / "never-built")
    with pytest.raises(forward.BuildError, match="not built"):
        forward.install(tmp_path, str)


class FakeAgent:
    """A unix socket that records each request's bytes and answers as told:
    ``reply`` (an object), ``raw`` (bytes after the length), ``hangup`` (read the
    request, close), ``header`` (a length and nothing else)."""

    def __init__(self, path: Path, mode: str = "reply", answer=None) -> None:
        self.path, self.mode, self.answer = str(path), mode, answer
        self.requests: list[bytes] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(8)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _recv(self, conn, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = conn.recv(n - len(data))
            if not chunk:
                break
            data += chunk
        return data

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                head = self._recv(conn, 4)
                body = self._recv(conn, int.from_bytes(head, "big")) if len(head) == 4 else b""
                self.requests.append(head + body)
                if self.mode == "reply":
                    data = json.dumps(self.answer).encode()
                    conn.sendall(len(data).to_bytes(4, "big") + data)
                elif self.mode == "raw":
                    conn.sendall(len(self.answer).to_bytes(4, "big") + self.answer)
                elif self.mode == "header":
                    conn.sendall(self.answer)

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(5)


@pytest.fixture
def agents(tmp_path):
    made: list[FakeAgent] = []

    def make(name: str = "agent.sock", mode: str = "reply", answer=None) -> FakeAgent:
        a = FakeAgent(tmp_path / name, mode, answer)
        made.append(a)
        return a

    yield make
    for a in made:
        a.close()


def run(exe: Path, env: dict, stdin: bytes, *args: str) -> tuple[int, bytes, bytes]:
    r = subprocess.run([str(exe), *args], input=stdin, env=env, capture_output=True,
                       timeout=120)
    return r.returncode, r.stdout, r.stderr


def both(bins: Path, plugin: str, env: dict, stdin: bytes | str, *args: str):
    """The forwarder's and the Python launcher's (rc, stdout, stderr): asserted equal."""
    data = stdin.encode() if isinstance(stdin, str) else stdin
    fwd = run(bins / plugin, env, data, *args)
    py = run(bins / (plugin + "-python"), env, data, *args)
    assert fwd == py
    return fwd


# ------------------------------------------------------------------ forwarded calls


@pytest.mark.parametrize("plugin", PLUGINS)
@pytest.mark.parametrize("command,rc", [("ADD", 0), ("DEL", 0), ("CHECK", 7)])
def test_a_forwarded_call_is_the_same_request_and_the_same_answer(bins, agents, plugin,
                                                                   command, rc):
    # What the agent says is written as is: non-ASCII, an astral character, a
    # surrogate-escaped byte (a plugin's output that was not UTF-8), the exit status.
    out = json.dumps({"cniVersion": "0.4.0", "code": 7, "msg": "bad"}) if rc else (
        '{"cniVersion": "0.4.0", "ips": [], "note": "caf\u00e9 \u2603 \U0001f600"}')
    agent = agents(answer={"rc": rc, "stdout": out, "stderr": "warn: \udcff\u00e9\n"})
    # LANG: without a locale CPython adds LC_CTYPE=C.UTF-8 to its own environment (PEP 538
    # locale coercion), so the Python launcher's request has one variable more (below).
    env = {**{k.encode(): v.encode() for k, v in ENV.items()}, b"LANG": b"C.UTF-8",
           b"CNI_COMMAND": command.encode(), b"PODBGP_CNI_SOCKET": agent.path.encode(),
           b"WEIRD": b"tab\tquote\"back\\slash\x01 caf\xc3\xa9 \xff\xed\xa0\x80 \xf0\x9f\x98\x80"}
    stdin = (json.dumps({**BASE, "args": {"cni": {"labels": {"app": "caf\u00e9"}}}},
                        ensure_ascii=False).encode() + b"\n\x80\n")
    got = both(bins, plugin, env, stdin)
    assert got[0] == rc and got[1] == out.encode()
    assert got[2] == "warn: \udcff\u00e9\n".encode("utf-8", "surrogateescape")
    fwd_req, py_req = agent.requests
    assert fwd_req == py_req
    decoded = {k.decode("utf-8", "surrogateescape"): v.decode("utf-8", "surrogateescape")
               for k, v in env.items()}
    assert fwd_req == request(plugin.removeprefix("podbgp-"), decoded,
                              stdin.decode("utf-8", "surrogateescape"))
    if command == "ADD":  # the forwarder passes the environment it was given, exactly
        del env[b"LANG"]
        both(bins, plugin, env, stdin)
        fwd_env, py_env = (json.loads(r[4:])["env"] for r in agent.requests[2:])
        assert fwd_env == {k.decode("utf-8", "surrogateescape"):
                           v.decode("utf-8", "surrogateescape") for k, v in env.items()}
        assert py_env == {**fwd_env, "LC_CTYPE": "C.UTF-8"}


def test_the_real_agent_answers_the_forwarder_as_it_answers_python(bins, tmp_path):
    """cni/agent.py itself reads the forwarder's request: podbgp-ipam's bad config (code 7)."""
    from cni import agent

    a = agent.Agent(str(tmp_path / "real.sock"))
    a.bind()
    t = threading.Thread(target=a.serve_forever, daemon=True)
    t.start()
    try:
        env = {**ENV, "PODBGP_CNI_SOCKET": a.path}
        conf = json.dumps({**BASE, "cniVersion": "9.9.9"})
        rc, out, _ = both(bins, "podbgp-ipam", env, conf)
        assert a.served == 2 and rc != 0 and json.loads(out)["code"] == 1  # incompatible
    finally:
        a.stop()
        t.join(5)


# ------------------------------------------------------------------ the socket


def test_agent_socket_is_a_top_level_string_of_the_config(bins, agents):
    named = agents("named.sock", answer={"rc": 0, "stdout": "named\n", "stderr": ""})
    env_agent = agents("env.sock", answer={"rc": 0, "stdout": "env\n", "stderr": ""})
    env = {**ENV, "PODBGP_CNI_SOCKET": env_agent.path}
    escaped = named.path.replace("/", "\\/").replace("named", "n\\u0061med")
    cases = [
        # JSON escapes in the path are decoded (SPEC: the config is JSON, RFC 8259)
        (f'{{"cniVersion": "0.4.0", "agent_socket": "{escaped}"}}', b"named\n"),
        # the last of repeated keys, as Python's json keeps it
        (json.dumps(BASE)[:-1] + f', "agent_socket": "/nope", "agent_socket": "{named.path}"}}',
         b"named\n"),
        # not top level: a plugin's or IPAM's key, not the network's
        (json.dumps({**BASE, "ipam": {"type": "podbgp-ipam", "agent_socket": named.path}}),
         b"env\n"),
        (json.dumps({**BASE, "x": '"agent_socket": "' + named.path + '"'}), b"env\n"),
        # not a non-empty string: the environment's
        (json.dumps({**BASE, "agent_socket": 5}), b"env\n"),
        (json.dumps({**BASE, "agent_socket": ""}), b"env\n"),
        (json.dumps([{"agent_socket": named.path}]), b"env\n"),
    ]
    for conf, said in cases:
        assert both(bins, "podbgp-cni", env, conf) == (0, said, b""), conf


@pytest.mark.parametrize("conf", [
    '{"cniVersion": "0.4.0", "agent_socket": NaN}',  # Python's json reads NaN
    '{"cniVersion": "0.4.0", "agent_socket": "/x" ',  # not JSON
    '{"agent_socket": "/x\\u0000y"}',  # a NUL in the path
    '{"agent_socket": "/x\\ud800"}',  # a lone surrogate
    '{"agent_socket": "/' + "a" * 120 + '"}',  # longer than sun_path
    '{"agent_socket": "/x", "d": ' + "[" * 2000 + "]" * 2000 + "}",  # deeper than MAX_DEPTH
])
def test_a_config_the_forwarder_cannot_read_exactly_goes_to_python(bins, agents, conf):
    """Left to the Python launcher, which does what it always does with it (CNI error
    6 or 7 from the plugin run here, or a call forwarded to the environment's agent)."""
    agent = agents(answer={"rc": 0, "stdout": "forwarded\n", "stderr": ""})
    both(bins, "podbgp-cni", {**ENV, "PODBGP_CNI_SOCKET": agent.path}, conf)
    both(bins, "podbgp-ipam", {**ENV, "PODBGP_CNI_SOCKET": str(Path(agent.path).parent / "no")},
         conf)


# ------------------------------------------------------------------ not forwarded


@pytest.mark.parametrize("plugin", PLUGINS)
def test_no_agent_runs_the_plugin_in_process_the_same(bins, tmp_path, plugin):
    env = {**ENV, "PODBGP_CNI_SOCKET": str(tmp_path / "absent.sock")}
    rc, out, err = both(bins, plugin, env, json.dumps(BASE))
    assert rc != 0 and isinstance(json.loads(out)["code"], int) and err
    # Not JSON: SPEC "Error" code 6 (failed to decode content), whoever reads it.
    rc, out, _ = both(bins, plugin, env, "{not json")
    assert rc != 0 and json.loads(out)["code"] in (6, 7)
    # A large config (more than a pipe holds) is handed over whole.
    big = json.dumps({**BASE, "pad": "x" * 300_000, "cniVersion": "9.9.9"})
    rc, out, _ = both(bins, plugin, env, big)
    assert rc != 0 and json.loads(out)["code"] == 1  # SPEC: 1 incompatible CNI version


@pytest.mark.parametrize("plugin", PLUGINS)
def test_version_help_and_a_missing_environment_are_pythons(bins, agents, plugin):
    agent = agents(answer={"rc": 0, "stdout": "forwarded\n", "stderr": ""})
    env = {**ENV, "PODBGP_CNI_SOCKET": agent.path}
    rc, out, _ = both(bins, plugin, {**env, "CNI_COMMAND": "VERSION"}, '{"cniVersion": "0.3.1"}')
    assert rc == 0 and json.loads(out)["cniVersion"] == "0.3.1"
    assert "1.0.0" in json.loads(out)["supportedVersions"]
    if plugin == "podbgp-cni":
        rc, out, _ = both(bins, plugin, env, "", "--help")
        assert rc == 0 and b"podbgp-cni agent" in out
    assert agent.requests == []
    # No CNI_COMMAND: the Python launcher's (cni.shim forwards it too, when an agent listens).
    no_command = {k: v for k, v in env.items() if k != "CNI_COMMAND"}
    assert both(bins, plugin, no_command, json.dumps(BASE)) == (0, b"forwarded\n", b"")
    no_agent = {**no_command, "PODBGP_CNI_SOCKET": agent.path + ".absent"}
    for absent in (no_agent, {**no_agent, "CNI_COMMAND": ""}):
        rc, out, _ = both(bins, plugin, absent, json.dumps(BASE))
        assert rc == 2 and json.loads(out)["code"] == 4  # SPEC: invalid environment variables


# ------------------------------------------------------------------ the agent fails


@pytest.mark.parametrize("mode,answer,why", [
    ("hangup", None, "peer closed the connection"),
    ("header", b"\xff\xff\xff\xff", "message of 4294967295 bytes is larger than 16777216"),
    ("raw", b"{not json", "not JSON"),
    ("raw", b'{"rc": 0} {}', "extra data"),
    ("reply", {"rc": "0", "stdout": "", "stderr": ""}, "integer rc"),
    ("reply", {"rc": 0, "stdout": None, "stderr": ""}, "string stdout"),
    ("reply", [0], "integer rc"),
])
@pytest.mark.parametrize("plugin", PLUGINS)
def test_an_agent_failing_mid_request_is_code_11_the_same(bins, agents, plugin, mode, answer,
                                                          why):
    """SPEC "Error": 11 Try again later; the request is not redone (it may have run)."""
    agent = agents(mode=mode, answer=answer)
    conf = json.dumps({**BASE, "cniVersion": "0.4.0", "agent_socket": agent.path})
    rc, out, err = both(bins, plugin, ENV, conf)
    assert rc == 1 and len(agent.requests) == 2
    obj = json.loads(out)
    assert obj == {"cniVersion": "0.4.0", "code": 11, "msg": obj["msg"]}
    assert obj["msg"].startswith(f"the CNI agent at {agent.path} failed: ") and why in obj["msg"]
    assert err.decode() == f"{plugin}: {obj['msg']}\n"


def test_without_any_socket_setting_both_use_the_default_path(bins):
    """Neither agent_socket nor PODBGP_CNI_SOCKET: /var/run/podbgp-cni/agent.sock."""
    from cni.fast import DEFAULT_AGENT_SOCKET

    if os.path.exists(DEFAULT_AGENT_SOCKET):
        pytest.skip(f"an agent may listen at {DEFAULT_AGENT_SOCKET} on this machine")
    rc, out, _ = both(bins, "podbgp-cni", {**ENV, "CNI_NETNS": ""}, json.dumps(BASE))
    assert rc != 0 and json.loads(out)["code"] == 4  # run here: SPEC 4, CNI_NETNS missing


def test_install_command_puts_both_plugins_in_a_directory(tmp_path):
    """`python -m cni.forward --install DIR` (README "Set-up on a node"), run twice."""
    import sys

    if forward.built() is None:
        if CI or forward.compiler() is not None:
            pytest.fail("the forwarder is not built: `make deps` builds it")
        _no_compiler()
    for _ in range(2):
        r = subprocess.run([sys.executable, "-m", "cni.forward", "--install", str(tmp_path)],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "podbgp-cni", "podbgp-cni-python", "podbgp-ipam", "podbgp-ipam-python"]
    r = subprocess.run([str(tmp_path / "podbgp-ipam")], input='{"cniVersion": "1.0.0"}',
                       env={"CNI_COMMAND": "VERSION"}, capture_output=True, text=True)
    assert r.returncode == 0 and json.loads(r.stdout)["cniVersion"] == "1.0.0"
    r = subprocess.run([sys.executable, "-m", "cni.forward", "--install", str(tmp_path / "x")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "is not a directory" in r.stderr


def test_an_agent_whose_backlog_is_full_is_waited_for_then_run_here(bins, tmp_path):
    """An agent that accepts nothing (every slot busy, its listen backlog full): both wait
    2 s for a place (SO_SNDTIMEO), then run the plugin here, with the same answer. The
    Python launcher used to die with a BlockingIOError traceback and no error object."""
    path = str(tmp_path / "busy.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(0)
    filler = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    filler.setblocking(False)
    try:
        filler.connect(path)  # the one place a backlog of 0 holds
        conf = json.dumps({k: v for k, v in BASE.items() if k != "ipam"})
        rc, out, err = both(bins, "podbgp-cni", {**ENV, "PODBGP_CNI_SOCKET": path}, conf)
        assert rc == 1 and json.loads(out)["code"] == 7 and b"ipam" in err  # run here
        assert b"Traceback" not in err
    finally:
        filler.close()
        srv.close()
