"""A multi-member etcd cluster in network namespaces, with its faults (kill, partition).

Owned by lab/: ``Lab(etcd_members=3)`` builds one (``make demo`` can too, see
lab/demo.py), and the reliability tests drive its faults. Each member runs
in its own namespace on the lab segment (10.99.0.2, .3, .4, client port 2379,
peer port 2380), as etcd runs for users: several endpoints, members failing,
a leader changing, one member cut off from the others.

Processes are started through the caller's ``spawn`` (the lab records each
PID and ends it by PID); every member keeps its data directory across
``kill``/``start``. ``partition`` puts iptables rules in the member's own
namespace only (dropping etcd peer traffic both ways; its clients can still
reach it, the nasty case: a member without a leader still serves reads and
watches), and ``heal`` removes them.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lab.poll import wait_for

CLIENT_PORT = 2379
PEER_PORT = 2380
# Wider than a single test etcd's 10/100 ms: three members on a busy 2-core
# machine otherwise hold spurious elections; a real failover still takes < 1 s.
HEARTBEAT_MS = 50
ELECTION_MS = 500

Spawn = Callable[[list[str], str, Path], subprocess.Popen]


def _run(ns: str, *cmd: str, check: bool = True, timeout: float = 10) -> subprocess.CompletedProcess:
    r = subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True,
                       timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} in {ns} failed ({r.returncode}): "
                           f"{r.stderr.strip() or r.stdout.strip()}")
    return r


@dataclass
class EtcdMember:
    name: str
    ns: str
    ip: str
    data_dir: Path
    log: Path
    proc: subprocess.Popen | None = None
    local: bool = False  # also listen on 127.0.0.1:2379 inside its namespace

    @property
    def client_url(self) -> str:
        return f"http://{self.ip}:{CLIENT_PORT}"

    @property
    def peer_url(self) -> str:
        return f"http://{self.ip}:{PEER_PORT}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class EtcdCluster:
    """``members`` share one initial cluster; ``spawn(cmd, ns, log)`` runs a process."""

    def __init__(self, members: list[EtcdMember], spawn: Spawn, token: str) -> None:
        self.members = {m.name: m for m in members}
        self._spawn = spawn
        self.token = token
        self.partitioned: set[str] = set()

    # ------------------------------------------------------------ endpoints
    @property
    def endpoints(self) -> str:
        """Every member's client URL, comma-separated (ETCD_ENDPOINTS / --etcd-endpoints)."""
        return ",".join(m.client_url for m in self.members.values())

    def member_at(self, url: str | None) -> EtcdMember | None:
        for m in self.members.values():
            if url and m.ip in url:
                return m
        return None

    # ------------------------------------------------------------- lifecycle
    def _cmd(self, m: EtcdMember) -> list[str]:
        listen = m.client_url + (f",http://127.0.0.1:{CLIENT_PORT}" if m.local else "")
        initial = ",".join(f"{x.name}={x.peer_url}" for x in self.members.values())
        return [shutil.which("etcd") or "etcd", "--name", m.name, "--data-dir", str(m.data_dir),
                "--listen-client-urls", listen, "--advertise-client-urls", m.client_url,
                "--listen-peer-urls", m.peer_url, "--initial-advertise-peer-urls", m.peer_url,
                "--initial-cluster", initial, "--initial-cluster-state", "new",
                "--initial-cluster-token", self.token,
                "--heartbeat-interval", str(HEARTBEAT_MS),
                "--election-timeout", str(ELECTION_MS), "--log-level", "error"]

    def start_all(self, timeout: float = 30) -> None:
        """Start every member that is not running (together: a new cluster needs quorum)."""
        for m in self.members.values():
            if not m.running:
                m.proc = self._spawn(self._cmd(m), m.ns, m.log)
        self.wait(lambda: all(self.healthy(n) for n in self.members), timeout,
                  "every etcd member healthy")

    def start(self, name: str, timeout: float = 30) -> None:
        """Restart one member (same data dir: it rejoins and catches up)."""
        m = self.members[name]
        if not m.running:
            m.proc = self._spawn(self._cmd(m), m.ns, m.log)
        self.wait(lambda: self.healthy(name), timeout, f"etcd member {name} healthy")

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        m = self.members[name]
        if m.proc is not None:
            if m.proc.poll() is None:
                m.proc.send_signal(sig)
            try:
                m.proc.wait(10)
            except subprocess.TimeoutExpired:
                m.proc.kill()
                m.proc.wait(10)
            m.proc = None

    def stop_all(self) -> None:
        for name in self.members:
            self.kill(name, signal.SIGTERM)

    # ---------------------------------------------------------------- faults
    def partition(self, name: str) -> None:
        """Cut ``name`` off from the other members (peer traffic dropped both ways);
        its clients still reach it."""
        ns = self.members[name].ns
        for chain, way in (("INPUT", "--dport"), ("OUTPUT", "--dport"), ("INPUT", "--sport")):
            _run(ns, "iptables", "-w", "-A", chain, "-p", "tcp", way, str(PEER_PORT), "-j", "DROP")
        self.partitioned.add(name)

    def heal(self, name: str) -> None:
        _run(self.members[name].ns, "iptables", "-w", "-F")
        self.partitioned.discard(name)

    # ---------------------------------------------------------------- status
    def healthy(self, name: str) -> bool:
        m = self.members[name]
        if not m.running:
            return False
        r = _run(m.ns, "curl", "-s", "-m", "1", f"{m.client_url}/health", check=False)
        return '"health":"true"' in r.stdout

    def status(self, name: str) -> dict:
        """``etcdctl endpoint status`` of one member: member_id, leader, raft_term..."""
        m = self.members[name]
        r = _run(m.ns, shutil.which("etcdctl") or "etcdctl", f"--endpoints={m.client_url}",
                 "--command-timeout=2s", "endpoint", "status", "-w", "json")
        header = json.loads(r.stdout)[0]["Status"]["header"]
        st = json.loads(r.stdout)[0]["Status"]
        return {"member_id": header["member_id"], "leader": st["leader"],
                "raft_term": st.get("raftTerm", header.get("raft_term")),
                "revision": header["revision"]}

    def leader(self, timeout: float = 15) -> str:
        """The name of the member every reachable, unpartitioned member calls leader."""
        def find() -> str | None:
            ids: dict[int, str] = {}
            leaders = set()
            for name, m in self.members.items():
                if not m.running or name in self.partitioned:
                    continue
                try:
                    st = self.status(name)
                except (RuntimeError, ValueError, KeyError, IndexError,
                        subprocess.TimeoutExpired):
                    return None
                ids[st["member_id"]] = name
                leaders.add(st["leader"])
            if len(leaders) == 1:
                lid = leaders.pop()
                return ids.get(lid)
            return None

        return self.wait(find, timeout, "one etcd leader")

    def make_leader(self, name: str, timeout: float = 15) -> None:
        """Move leadership to ``name`` (etcdctl move-leader, sent to the current leader)."""
        current = self.leader(timeout)
        if current == name:
            return
        target = format(self.status(name)["member_id"], "x")
        lead = self.members[current]
        _run(lead.ns, shutil.which("etcdctl") or "etcdctl", f"--endpoints={lead.client_url}",
             "move-leader", target)
        self.wait(lambda: self.leader(timeout) == name, timeout, f"{name} leads")

    def etcdctl(self, *args: str, ns: str | None = None, check: bool = True) -> str:
        """etcdctl against every endpoint, from ``ns`` (default: the first member's)."""
        ns = ns or next(iter(self.members.values())).ns
        r = _run(ns, shutil.which("etcdctl") or "etcdctl", f"--endpoints={self.endpoints}",
                 "--command-timeout=5s", *args, check=check, timeout=20)
        return r.stdout

    wait = staticmethod(wait_for)
