"""The multi-node lab: N podbgp nodes in network namespaces on one L2 segment.

Used by `make demo`, the end-to-end tests and the benchmarks. Layout (names
carry a per-run prefix, e.g. ``pl3f2a``):

    <p>sw    : the "switch" namespace holding bridge ``br0`` (the L2 segment)
    <p>etcd  : etcd, 10.99.0.2/24 on the segment (``etcd_members=3``: a real
               cluster, <p>etcd2 / <p>etcd3 at .3 / .4; see lab/etcd_cluster.py)
    <p>n1..  : one namespace per node, eth0 = 10.99.0.1X/24, ip_forward on,
               one real ``bgpd`` process inside, pods behind a CNI ``cni0`` bridge
    <p>n1p1..: pods, created with ``podbgp-cni`` (Calico's routed model: a veth per
               pod, /32, one host route each) + ``podbgp-ipam`` in host mode, or with
               the real CNI ``bridge`` plugin + ``podbgp-ipam`` (``cni="bridge"``)
    <p>x1..  : optional external peers (e.g. a BIRD top-of-rack router)

Everything the lab creates is recorded in a state file under
``/run/podbgp-lab/`` (namespaces, PIDs, temp dir) so that ``down()``, Ctrl-C,
a failure, or the NEXT run (when this one was killed) removes it all.
Processes are ended by PID, never by name.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from lab.etcd_cluster import EtcdCluster, EtcdMember
from lab.poll import wait_for

REPO = Path(__file__).resolve().parent.parent
STATE_DIR = Path(os.environ.get("PODBGP_LAB_STATE", "/run/podbgp-lab"))
SEGMENT = "10.99.0"
ETCD_IP = f"{SEGMENT}.2"
ETCD_PORT = 2379
CNI_BIN_DIR = "/usr/lib/cni"


def bin_path(name: str) -> str:
    """A console script of this install (the venv's bin: bgpd, bgpctl, exabgp...), else PATH."""
    cand = Path(sys.executable).parent / name
    if cand.exists():
        return str(cand)
    found = shutil.which(name)
    if not found:
        raise RuntimeError(f"{name} not found: run `make deps`")
    return found


def run(*cmd: str, ns: str | None = None, check: bool = True, input: str | None = None,
        env: dict | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    full = ["ip", "netns", "exec", ns, *cmd] if ns else list(cmd)
    r = subprocess.run(full, capture_output=True, text=True, input=input, env=env,
                       timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(full)} failed ({r.returncode}): {r.stderr.strip() or r.stdout.strip()}")
    return r


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks (/proc/PID/stat field 22), None if gone.

    Recorded with every PID so a later cleanup never kills a process that merely
    reused the number of one this lab started.
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rpartition(")")[2].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_pid(pid: int, sig: int = signal.SIGTERM, wait: float = 5.0) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and _pid_alive(pid):
        with contextlib.suppress(ChildProcessError):
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                return
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def _ns_pids(ns: str) -> list[int]:
    r = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
    return [int(p) for p in r.stdout.split() if p.isdigit()]


def _del_ns(ns: str) -> None:
    for pid in _ns_pids(ns):
        _kill_pid(pid, signal.SIGKILL, wait=2)
    subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def write_state(path: Path, namespaces: list[str], pids: list[int], workdir: Path) -> None:
    """Record what a lab (or benchmark) made, for cleanup_leftovers() after a crash."""
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    me = os.getpid()
    tmp.write_text(json.dumps({
        "owner": [me, _start_time(me)], "namespaces": namespaces,
        "pids": [[p, _start_time(p)] for p in pids], "workdir": str(workdir)}))
    tmp.rename(path)


def cleanup_leftovers() -> list[str]:
    """Remove what crashed earlier runs left behind (their owner PID is gone)."""
    removed: list[str] = []
    if not STATE_DIR.is_dir():
        return removed
    for f in STATE_DIR.glob("*.json"):
        try:
            st = json.loads(f.read_text())
        except (OSError, ValueError):
            f.unlink(missing_ok=True)
            continue
        owner = st.get("owner", [0, None])
        owner_pid, owner_start = owner if isinstance(owner, list) else (owner, None)
        if _pid_alive(int(owner_pid)) and owner_start in (None, _start_time(int(owner_pid))):
            continue  # its owner still runs (a state file without start times: trust the PID)
        for entry in st.get("pids", []):
            pid, started = entry if isinstance(entry, list) else (entry, None)
            if started is not None and _start_time(int(pid)) == started:
                _kill_pid(int(pid), signal.SIGKILL, wait=1)
        for ns in st.get("namespaces", []):
            _del_ns(ns)
            removed.append(ns)
        if st.get("workdir"):
            shutil.rmtree(st["workdir"], ignore_errors=True)
        f.unlink(missing_ok=True)
    return removed


@dataclass
class Pod:
    name: str
    node: str
    ns: str
    ip: str
    container_id: str
    host_if: str = ""  # the pod's host-side interface (podbgp-cni), "" under a bridge
    labels: dict[str, str] = field(default_factory=dict)
    result: dict = field(default_factory=dict)  # the CNI ADD result
    namespace: str = "default"  # the pod's Kubernetes namespace (K8S_POD_NAMESPACE)


@dataclass
class Node:
    name: str
    index: int
    ns: str
    ip: str
    http: str = "127.0.0.1:9179"
    proc: subprocess.Popen | None = None
    log_path: Path | None = None
    pods: dict[str, Pod] = field(default_factory=dict)
    cni_agent: subprocess.Popen | None = None
    policy_agent: subprocess.Popen | None = None
    policy_http: str = "127.0.0.1:9180"


class Throwaway:
    """``with`` for a lab: up() on entry (down() when up() fails half-way), down() on exit."""

    def up(self) -> None:
        raise NotImplementedError

    def down(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            self.up()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.down()


def metric_sum(text: str, metric: str, **labels: str) -> float:
    """The sum of the samples of ``metric`` in a /metrics ``text`` whose labels include
    ``labels``; 0.0 when absent."""
    total = 0.0
    for line in text.splitlines():
        head, _, value = line.rpartition(" ")
        if (head == metric or head.startswith(metric + "{")) and all(
                f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total



def write_cni_plugins(bin_dir: Path, forwarder: bool = True) -> str:
    """podbgp-cni and podbgp-ipam in ``bin_dir`` as a node has them: the compiled
    forwarder (cni/forward.c) with its Python launchers beside it when it is built and
    ``forwarder`` is True, else the fast Python launchers (python -IS) themselves, as
    podbgp-install-cni writes them. Returns which: "forwarder" or "python"."""
    from cni import forward
    from cni.shim import launcher_text

    if forwarder and forward.built():
        forward.install(bin_dir, lambda plugin: launcher_text(forward.ENTRIES[plugin]))
        return "forwarder"
    for plugin, entry in forward.ENTRIES.items():
        (bin_dir / plugin).write_text(launcher_text(entry))
        (bin_dir / plugin).chmod(0o755)
    return "python"


class Lab(Throwaway):
    """A throwaway multi-node lab. Use as a context manager, or up()/down()."""

    def __init__(self, nodes: int = 3, workdir: Path | None = None, prefix: str | None = None,
                 asn: int = 64512, log_level: str = "info",
                 ipam_options: dict | None = None, etcd_members: int = 1,
                 cni: str = "podbgp-cni", cni_options: dict | None = None,
                 cni_agent: bool = True) -> None:
        self.prefix = prefix or ("pl" + uuid.uuid4().hex[:4])
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="podbgp-lab-"))
        self.n_nodes = nodes
        self.asn = asn
        self.log_level = log_level
        # Extra keys for the `ipam` section of the pods' CNI config (podbgp-ipam's
        # options, e.g. empty_block_release_seconds); each lab gets its own lock file
        # so parallel labs do not serialise each other's CNI calls.
        self.ipam_options = {"lock_file": str(self.workdir / "ipam.lock"), **(ipam_options or {})}
        # The pods' main CNI plugin: "podbgp-cni" (routed, Calico's model) or "bridge"
        # (Debian's bridge plugin with podbgp-ipam's block mode). cni_options: extra
        # top-level keys of the pods' network configuration.
        if cni not in ("podbgp-cni", "bridge"):
            raise ValueError(f"cni must be podbgp-cni or bridge, not {cni!r}")
        self.cni = cni
        self.cni_options = dict(cni_options or {})
        # podbgp-cni's node agent (cni/agent.py), started with a node's first pod when True;
        # either way the pods' config names a socket of this lab's own, so an agent
        # of the host (or of another lab) never serves this lab's pods.
        self.cni_agent = cni_agent and cni == "podbgp-cni"
        self.sw = f"{self.prefix}sw"
        self.etcd_ns = f"{self.prefix}etcd"
        self.nodes: dict[str, Node] = {}
        self.externals: dict[str, Node] = {}
        self.namespaces: list[str] = []
        self.pids: list[int] = []
        self.etcd_proc: subprocess.Popen | None = None
        if etcd_members not in (1, 3, 5):
            raise ValueError(f"etcd_members: {etcd_members}: use 1, 3 or 5")
        self.etcd_members = etcd_members
        self.etcd: EtcdCluster | None = None  # the cluster when etcd_members > 1
        self._state_file = STATE_DIR / f"{self.prefix}.json"
        self._next_link = 0

    # ------------------------------------------------------------ bookkeeping
    def _save_state(self) -> None:
        write_state(self._state_file, self.namespaces, self.pids, self.workdir)

    def _add_ns(self, name: str) -> str:
        self.namespaces.append(name)
        self._save_state()
        run("ip", "netns", "add", name)
        run("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def _spawn(self, cmd: list[str], ns: str, log_path: Path, env: dict | None = None) -> subprocess.Popen:
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(["ip", "netns", "exec", ns, *cmd], stdout=log, stderr=log,
                                    env=env, start_new_session=True)
        self.pids.append(proc.pid)
        self._save_state()
        return proc

    def _veth_to_switch(self, ns: str, ifname: str, addr: str | None) -> None:
        self._next_link += 1
        outer = f"{self.prefix}v{self._next_link}"
        run("ip", "link", "add", outer, "type", "veth", "peer", "name", ifname, "netns", ns)
        run("ip", "link", "set", outer, "netns", self.sw)
        run("ip", "-n", self.sw, "link", "set", outer, "master", "br0", "up")
        if addr:
            run("ip", "-n", ns, "addr", "add", addr, "dev", ifname)
        run("ip", "-n", ns, "link", "set", ifname, "up")

    # ------------------------------------------------------------------- up
    def up(self) -> None:
        cleanup_leftovers()
        self._save_state()
        self._add_ns(self.sw)
        run("ip", "-n", self.sw, "link", "add", "br0", "type", "bridge")
        run("ip", "-n", self.sw, "link", "set", "br0", "up")
        if self.etcd_members > 1:
            self._start_etcd_cluster()
        else:
            self._add_ns(self.etcd_ns)
            self._veth_to_switch(self.etcd_ns, "eth0", f"{ETCD_IP}/24")
            self._start_etcd()
        for i in range(1, self.n_nodes + 1):
            self.add_node(f"node{i}")

    def _start_etcd(self) -> None:
        data = self.workdir / "etcd"
        url = f"http://{ETCD_IP}:{ETCD_PORT}"
        peer = f"http://{ETCD_IP}:2380"
        self.etcd_proc = self._spawn(
            [shutil.which("etcd") or "etcd", "--name", "lab", "--data-dir", str(data),
             "--listen-client-urls", f"{url},http://127.0.0.1:{ETCD_PORT}",
             "--advertise-client-urls", url, "--listen-peer-urls", peer,
             "--initial-advertise-peer-urls", peer, "--initial-cluster", f"lab={peer}",
             "--initial-cluster-state", "new", "--heartbeat-interval", "10",
             "--election-timeout", "100", "--log-level", "error"],
            self.etcd_ns, self.workdir / "etcd.log")
        self.wait_for(lambda: self._etcd_healthy(), 15, "etcd to become healthy")

    def _start_etcd_cluster(self) -> None:
        members = []
        for i in range(1, self.etcd_members + 1):
            ns = self.etcd_ns if i == 1 else f"{self.etcd_ns}{i}"
            self._add_ns(ns)
            ip = f"{SEGMENT}.{1 + i}"
            self._veth_to_switch(ns, "eth0", f"{ip}/24")
            members.append(EtcdMember(f"m{i}", ns, ip, self.workdir / f"etcd-m{i}",
                                      self.workdir / f"etcd-m{i}.log", local=(i == 1)))
        self.etcd = EtcdCluster(members, lambda cmd, ns, log: self._spawn(cmd, ns, log),
                                token=self.prefix)
        self.etcd.start_all()

    def _etcd_healthy(self) -> bool:
        r = run("curl", "-s", "-m", "1", f"http://127.0.0.1:{ETCD_PORT}/health", ns=self.etcd_ns,
                check=False)
        return '"health":"true"' in r.stdout

    def stop_etcd(self) -> None:
        if self.etcd is not None:
            self.etcd.stop_all()
        if self.etcd_proc:
            _kill_pid(self.etcd_proc.pid, signal.SIGTERM)
            self.etcd_proc = None

    def start_etcd(self) -> None:
        if self.etcd is not None:
            self.etcd.start_all()
        elif not self.etcd_proc:
            self._start_etcd()

    @property
    def etcd_endpoint(self) -> str:
        """What podbgp's tools get as --etcd-endpoints (every member's URL for a cluster)."""
        if self.etcd is not None:
            return self.etcd.endpoints
        return f"http://{ETCD_IP}:{ETCD_PORT}"

    def add_node(self, name: str) -> Node:
        idx = len(self.nodes) + 1
        ns = self._add_ns(f"{self.prefix}n{idx}")
        ip = f"{SEGMENT}.{10 + idx}"
        self._veth_to_switch(ns, "eth0", f"{ip}/24")
        run("sysctl", "-qw", "net.ipv4.ip_forward=1", ns=ns)
        node = Node(name=name, index=idx, ns=ns, ip=ip)
        self.nodes[name] = node
        return node

    def agent_socket(self, node: Node) -> str:
        return str(self.workdir / f"{node.name}-cni.sock")

    def start_cni_agent(self, name: str) -> None:
        """Run ``podbgp-cni agent`` in the node's namespace; wait until it listens."""
        node = self.nodes[name]
        sock = self.agent_socket(node)
        node.cni_agent = self._spawn([bin_path("podbgp-cni"), "agent", "--socket", sock],
                                     node.ns, self.workdir / f"{name}-cni-agent.log",
                                     env=self.env(node))
        self.wait_for(lambda: os.path.exists(sock) or node.cni_agent.poll() is not None, 60,
                      f"the CNI agent of {name} to listen")
        if node.cni_agent.poll() is not None:
            raise RuntimeError(f"the CNI agent of {name} exited: "
                               + (self.workdir / f"{name}-cni-agent.log").read_text()[-500:])

    def stop_cni_agent(self, name: str) -> None:
        node = self.nodes[name]
        if node.cni_agent is not None:
            _kill_pid(node.cni_agent.pid, signal.SIGTERM, wait=5)
            node.cni_agent = None

    def add_external(self, name: str, index: int | None = None) -> Node:
        """A namespace on the segment for a non-podbgp peer (BIRD ToR, FRR, GoBGP...).

        Gets 10.99.0.(100+index); the caller runs its daemon with ``spawn_in``.
        """
        idx = index if index is not None else len(self.externals) + 1
        ns = self._add_ns(f"{self.prefix}x{idx}")
        ip = f"{SEGMENT}.{100 + idx}"
        self._veth_to_switch(ns, "eth0", f"{ip}/24")
        run("sysctl", "-qw", "net.ipv4.ip_forward=1", ns=ns)
        node = Node(name=name, index=idx, ns=ns, ip=ip)
        self.externals[name] = node
        return node

    def spawn_in(self, ns: str, cmd: list[str], log_name: str,
                 env: dict | None = None) -> subprocess.Popen:
        """Run a process inside a lab namespace; it is killed (by PID) on down()."""
        return self._spawn(cmd, ns, self.workdir / log_name, env=env)

    # --------------------------------------------------------------- podbgp
    def env(self, node: Node | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ETCD_", "NODENAME"))}
        env.update({"DATASTORE_TYPE": "etcdv3", "ETCD_ENDPOINTS": self.etcd_endpoint})
        if node:
            env["NODENAME"] = node.name
        return env

    def bgpctl(self, *args: str, node: str | None = None, input: str | None = None,
               check: bool = True) -> subprocess.CompletedProcess:
        ns = self.nodes[node].ns if node else self.etcd_ns
        return run(bin_path("bgpctl"), "--etcd-endpoints", self.etcd_endpoint, *args, ns=ns,
                   input=input, check=check, env=self.env())

    def apply(self, yaml_text: str) -> None:
        self.bgpctl("apply", "-f", "-", input=yaml_text)

    def register_node(self, node: Node, asn: int | None = None, labels: dict | None = None,
                      rr_cluster_id: str | None = None) -> None:
        """Write the Node resource (Calico's calico-node does this at start)."""
        bgp = {"ipv4Address": f"{node.ip}/24"}
        if asn:
            bgp["asNumber"] = asn
        if rr_cluster_id:
            bgp["routeReflectorClusterID"] = rr_cluster_id
        doc = {"apiVersion": "projectcalico.org/v3", "kind": "Node",
               "metadata": {"name": node.name, "labels": labels or {}},
               "spec": {"bgp": bgp}}
        self.apply(json.dumps(doc))

    def start_daemon(self, name: str, *extra: str) -> Node:
        node = self.nodes[name]
        assert node.proc is None or node.proc.poll() is not None, f"{name} already running"
        node.log_path = self.workdir / f"{name}.log"
        node.proc = self._spawn(
            [bin_path("bgpd"), "--node", name, "--etcd-endpoints", self.etcd_endpoint,
             "--http-listen", node.http, "--log-format", "json", "--log-level", self.log_level,
             "--state-dir", str(self.workdir / f"{name}-state"), *extra],
            node.ns, node.log_path, env=self.env(node))
        return node

    def stop_daemon(self, name: str, sig: int = signal.SIGTERM) -> None:
        node = self.nodes[name]
        if node.proc is not None:
            _kill_pid(node.proc.pid, sig, wait=10)
            node.proc = None

    def start_policy_agent(self, name: str, *extra: str) -> Node:
        """Run ``podbgp-policy`` in the node's namespace (its own nft table there)."""
        node = self.nodes[name]
        assert node.policy_agent is None or node.policy_agent.poll() is not None, \
            f"the policy agent of {name} already runs"
        node.policy_agent = self._spawn(
            [bin_path("podbgp-policy"), "--node", name, "--etcd-endpoints", self.etcd_endpoint,
             "--http-listen", node.policy_http, "--log-format", "json",
             "--log-level", self.log_level, *extra],
            node.ns, self.workdir / f"{name}-policy.log", env=self.env(node))
        return node

    def stop_policy_agent(self, name: str, sig: int = signal.SIGTERM) -> None:
        node = self.nodes[name]
        if node.policy_agent is not None:
            _kill_pid(node.policy_agent.pid, sig, wait=10)
            node.policy_agent = None

    def policy_ready(self, name: str) -> bool:
        """The node's policy agent answers /readyz with 200 (its table is programmed)."""
        return self.http_get(name, "/readyz", self.nodes[name].policy_http)[0] == 200

    def http_get(self, name: str, path: str, listen: str | None = None) -> tuple[int, str]:
        """GET a path of the node's bgpd (or of ``listen``, another process of the node)."""
        node = self.nodes[name]
        code = ("import sys,urllib.request,urllib.error\n"
                "try:\n r=urllib.request.urlopen(sys.argv[1],timeout=2); print(r.status); print(r.read().decode())\n"
                "except urllib.error.HTTPError as e: print(e.code); print(e.read().decode())\n"
                "except Exception as e: print(0); print(e)\n")
        r = run(sys.executable, "-c", code, f"http://{listen or node.http}{path}", ns=node.ns, check=False)
        status, _, body = r.stdout.partition("\n")
        return int(status or 0), body

    def metric(self, name: str, metric: str, listen: str | None = None, **labels: str) -> float:
        """The sum of the samples of `metric` on the node's /metrics (bgpd's, or that of the
        process listening on `listen`) whose labels include `labels`; 0.0 when absent."""
        code, body = self.http_get(name, "/metrics", listen)
        if code != 200:
            raise RuntimeError(f"/metrics on {name} ({listen or 'bgpd'}): {code} {body[:200]}")
        return metric_sum(body, metric, **labels)

    def ready(self, name: str) -> bool:
        return self.http_get(name, "/readyz")[0] == 200

    def status(self, name: str) -> dict:
        code, body = self.http_get(name, "/status")
        if code != 200:
            raise RuntimeError(f"/status on {name}: {code} {body[:200]}")
        return json.loads(body)

    def routes(self, name: str, proto: str | None = None) -> list[dict]:
        """The node's IPv4 routes (ip -j), optionally only one protocol."""
        args = ["ip", "-j", "route", "show"]
        if proto:
            args += ["proto", proto]
        out = run(*args, ns=self.nodes[name].ns).stdout
        return json.loads(out or "[]")

    def route_prefixes(self, name: str, proto: str | None = None) -> set[str]:
        return {r["dst"] for r in self.routes(name, proto) if r.get("dst") != "default"}

    # ----------------------------------------------------------------- pods
    def cni_conf(self, node: Node, labels: dict[str, str] | None = None) -> dict:
        """The pods' network configuration on ``node``."""
        if self.cni == "bridge":
            return {
                "cniVersion": "1.0.0", "name": "podnet", "type": "bridge", "bridge": "cni0",
                "isGateway": True, "ipMasq": False, "hairpinMode": True,
                "etcd_endpoints": self.etcd_endpoint, "nodename": node.name,
                "agent_socket": self.agent_socket(node),
                "ipam": {"type": "podbgp-ipam", "assign_ipv4": "true",
                         "bridge_single_block": "true", **self.ipam_options},
                **self.cni_options,
            }
        conf = {
            "cniVersion": "1.0.0", "name": "podnet", "type": "podbgp-cni",
            "etcd_endpoints": self.etcd_endpoint, "nodename": node.name,
            "agent_socket": self.agent_socket(node),
            "ipam": {"type": "podbgp-ipam", "assign_ipv4": "true", "address_mode": "host",
                     **self.ipam_options},
            **self.cni_options,
        }
        if labels:
            conf["args"] = {"cni": {"labels": [{"key": k, "value": v}
                                               for k, v in labels.items()]}}
        return conf

    def _cni_path(self) -> str:
        """The CNI_PATH of this lab's pods; its bin dir is made once, atomically (concurrent
        ADDs must never see it half-written)."""
        d = self.workdir / "cni-bin"
        if not d.exists():
            tmp = Path(tempfile.mkdtemp(prefix="cni-bin-", dir=self.workdir))
            write_cni_plugins(tmp, forwarder=True)
            try:
                tmp.rename(d)
            except OSError:  # another thread made it first
                shutil.rmtree(tmp, ignore_errors=True)
        return f"{d}:{CNI_BIN_DIR}"

    def cni_env(self, node: Node, command: str, pod_ns: str | None, container_id: str,
                pod_name: str, ifname: str = "eth0",
                namespace: str = "default") -> dict[str, str]:
        return {**self.env(node), "CNI_COMMAND": command, "CNI_CONTAINERID": container_id,
                "CNI_NETNS": f"/var/run/netns/{pod_ns}" if pod_ns else "",
                "CNI_IFNAME": ifname, "CNI_PATH": self._cni_path(),
                "CNI_ARGS": (f"IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};"
                             f"K8S_POD_NAME={pod_name}")}

    def cni_call(self, node: Node, command: str, pod_ns: str | None, container_id: str,
                 pod_name: str, conf: dict | None = None, env: dict | None = None,
                 timeout: float = 60, namespace: str = "default") -> subprocess.CompletedProcess:
        """Run the pods' main CNI plugin on ``node`` as a runtime would (no check)."""
        plugin = (f"{CNI_BIN_DIR}/bridge" if self.cni == "bridge"
                  else str(Path(self._cni_path().split(":")[0]) / "podbgp-cni"))
        return run(plugin, ns=node.ns, input=json.dumps(conf or self.cni_conf(node)),
                   env=env or self.cni_env(node, command, pod_ns, container_id, pod_name,
                                           namespace=namespace),
                   check=False, timeout=timeout)

    def _cni(self, node: Node, command: str, pod_ns: str, container_id: str,
             pod_name: str | None = None, labels: dict[str, str] | None = None,
             namespace: str = "default") -> dict:
        if self.cni_agent and node.cni_agent is None and command == "ADD":
            self.start_cni_agent(node.name)
        r = self.cni_call(node, command, pod_ns, container_id, pod_name or pod_ns,
                          conf=self.cni_conf(node, labels), namespace=namespace)
        if r.returncode != 0:
            raise RuntimeError(f"CNI {command} on {node.name}: {r.stdout.strip()} {r.stderr.strip()}")
        return json.loads(r.stdout) if r.stdout.strip() else {}

    def add_pod(self, node_name: str, pod: str | None = None,
                labels: dict[str, str] | None = None, namespace: str = "default") -> Pod:
        """One pod on a node; ``namespace`` is its Kubernetes namespace (the
        WorkloadEndpoint's, so policies' namespace selectors apply to it)."""
        node = self.nodes[node_name]
        pod = pod or f"p{len(node.pods) + 1}"
        pod_ns = self._add_ns(f"{node.ns}{pod}")
        cid = uuid.uuid4().hex
        result = self._cni(node, "ADD", pod_ns, cid, pod_ns, labels, namespace)
        ip = result["ips"][0]["address"].split("/")[0]
        host_if = ""
        for iface in result.get("interfaces", []):
            if not iface.get("sandbox"):
                host_if = iface["name"]
        p = Pod(name=pod, node=node_name, ns=pod_ns, ip=ip, container_id=cid, host_if=host_if,
                labels=dict(labels or {}), result=result, namespace=namespace)
        node.pods[pod] = p
        return p

    def add_pods(self, node_name: str, count: int, labels: dict[str, str] | None = None,
                 concurrency: int = 1, prefix: str = "p") -> list[Pod]:
        """``count`` pods on a node, ``concurrency`` CNI ADDs at a time (the namespaces are
        made first, one by one). Raises on the first failed ADD, after all have run."""
        node = self.nodes[node_name]
        if self.cni_agent and node.cni_agent is None:
            self.start_cni_agent(node_name)
        base = len(node.pods)
        todo = []
        for i in range(count):
            name = f"{prefix}{base + i + 1}"
            todo.append((name, self._add_ns(f"{node.ns}{name}"), uuid.uuid4().hex))

        def one(item):
            _name, pod_ns, cid = item
            conf = self.cni_conf(node, labels)
            return item, self.cni_call(node, "ADD", pod_ns, cid, pod_ns, conf=conf)

        done = _concurrently(one, todo, concurrency)
        pods, failed = [], []
        for (name, pod_ns, cid), r in done:
            if r.returncode != 0:
                failed.append(f"{name}: {r.stdout.strip()} {r.stderr.strip()[-300:]}")
                continue
            result = json.loads(r.stdout)
            host_if = next((i["name"] for i in result.get("interfaces", [])
                            if not i.get("sandbox")), "")
            p = Pod(name=name, node=node_name, ns=pod_ns,
                    ip=result["ips"][0]["address"].split("/")[0], container_id=cid,
                    host_if=host_if, labels=dict(labels or {}), result=result)
            node.pods[name] = p
            pods.append(p)
        if failed:
            raise RuntimeError(f"{len(failed)} of {count} CNI ADDs failed on {node_name}: "
                               + "; ".join(failed[:3]))
        return pods

    def del_pods(self, node_name: str, names: list[str] | None = None,
                 concurrency: int = 1) -> None:
        """CNI DEL of the given pods (all of the node's by default), then their namespaces."""
        node = self.nodes[node_name]
        chosen = [node.pods[n] for n in (names if names is not None else list(node.pods))]

        def one(p: Pod):
            return p, self.cni_call(node, "DEL", p.ns, p.container_id, p.ns,
                                    namespace=p.namespace)

        done = _concurrently(one, chosen, concurrency)
        failed = [f"{p.name}: {r.stdout.strip()} {r.stderr.strip()[-300:]}"
                  for p, r in done if r.returncode != 0]
        for p, r in done:
            if r.returncode == 0:
                node.pods.pop(p.name, None)
                _del_ns(p.ns)
                self.namespaces.remove(p.ns)
        self._save_state()
        if failed:
            raise RuntimeError(f"{len(failed)} CNI DELs failed on {node_name}: "
                               + "; ".join(failed[:3]))

    def del_pod(self, node_name: str, pod: str) -> None:
        node = self.nodes[node_name]
        p = node.pods.pop(pod)
        self._cni(node, "DEL", p.ns, p.container_id, p.ns, namespace=p.namespace)
        _del_ns(p.ns)
        self.namespaces.remove(p.ns)
        self._save_state()

    def tcp_exchange(self, src: Pod, dst: Pod, port: int = 7777, timeout: float = 5.0) -> str:
        """Echo a token from src to dst by pod IP over TCP; returns what came back."""
        reply = self.tcp_exchange_many([(src, dst)], port, timeout)[(src.ip, dst.ip)]
        if reply.startswith("ERROR: "):
            raise RuntimeError(f"TCP {src.ip} -> {dst.ip}: {reply[7:]}")
        return reply

    def tcp_exchange_many(self, pairs: list[tuple[Pod, Pod]], port: int = 7788,
                          timeout: float = 5.0) -> dict[tuple[str, str], str]:
        """Echo over TCP for many (src, dst) pod pairs at once: one server per destination
        pod, one client per source pod. Returns (src ip, dst ip) -> what came back, or
        "ERROR: ..." for a pair that failed."""
        dsts = {p.ip: p for _, p in pairs}
        by_src: dict[str, list[Pod]] = {}
        srcs: dict[str, Pod] = {}
        for a, b in pairs:
            by_src.setdefault(a.ip, []).append(b)
            srcs[a.ip] = a
        servers = []
        try:
            for dst in dsts.values():
                proc = subprocess.Popen(
                    ["ip", "netns", "exec", dst.ns, sys.executable, "-c",
                     "import socket,sys\n"
                     "s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
                     f"s.bind(('{dst.ip}',{port}));s.listen(512)\n"
                     "print('ready',flush=True)\n"
                     "while True:\n"
                     " c,a=s.accept();c.settimeout(5)\n"
                     " try:\n"
                     "  d=c.recv(200);c.sendall(b'echo:'+d+b' peer='+a[0].encode())\n"
                     " except OSError: pass\n"
                     " c.close()\n"],
                    stdout=subprocess.PIPE, text=True)
                servers.append(proc)
            for proc in servers:
                assert proc.stdout is not None
                proc.stdout.readline()
            clients = {}
            for src_ip, targets in by_src.items():
                src = srcs[src_ip]
                code = ("import json,socket,sys\n"
                        "for dst in sys.argv[1:]:\n"
                        " try:\n"
                        f"  c=socket.create_connection((dst,{port}),timeout={timeout})\n"
                        f"  c.sendall(('hello-from-{src_ip}-to-'+dst).encode())\n"
                        "  out=c.recv(300).decode();c.close()\n"
                        " except OSError as e: out='ERROR: '+repr(e)\n"
                        " print(json.dumps([dst,out]),flush=True)\n")
                clients[src_ip] = subprocess.Popen(
                    ["ip", "netns", "exec", src.ns, sys.executable, "-c", code,
                     *[t.ip for t in targets]], stdout=subprocess.PIPE, text=True)
            out: dict[tuple[str, str], str] = {}
            for src_ip, proc in clients.items():
                stdout, _ = proc.communicate(timeout=timeout * (len(by_src[src_ip]) + 2))
                for line in stdout.splitlines():
                    dst_ip, reply = json.loads(line)
                    out[(src_ip, dst_ip)] = reply
            for a, b in pairs:
                out.setdefault((a.ip, b.ip), "ERROR: no answer from the client")
            return out
        finally:
            for proc in servers:
                _kill_pid(proc.pid, signal.SIGKILL, wait=1)

    # ------------------------------------------------------------- waiting
    wait_for = staticmethod(wait_for)

    def daemon_log(self, name: str, tail: int = 40) -> str:
        node = self.nodes[name]
        if not node.log_path or not node.log_path.exists():
            return ""
        return "\n".join(node.log_path.read_text(errors="replace").splitlines()[-tail:])

    # ----------------------------------------------------------------- down
    def down(self) -> None:
        for node in self.nodes.values():
            if node.proc is not None:
                _kill_pid(node.proc.pid, signal.SIGTERM, wait=5)
                node.proc = None
        for pid in self.pids:
            _kill_pid(pid, signal.SIGKILL, wait=1)
        for ns in reversed(self.namespaces):
            _del_ns(ns)
        shutil.rmtree(self.workdir, ignore_errors=True)
        self._state_file.unlink(missing_ok=True)
        self.namespaces.clear()
        self.pids.clear()


def _concurrently(fn, items: list, concurrency: int) -> list:
    """``fn`` over ``items``, ``concurrency`` at a time, results in order."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        return list(pool.map(fn, items))


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
