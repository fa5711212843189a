"""The real `podbgp-policy` process: etcd in, nftables out, faults in between.

One node (lab.podnet: pods wired like podbgp-cni wires them, host interfaces
named as config.endpoints.host_interface_name names them), etcd inside the
node's namespace, WorkloadEndpoints written the way podbgp-cni writes them
(config.endpoints.pod_endpoint), policies through `bgpctl`. Reachability is
checked with truth tables (Kubernetes' test/e2e/network/netpol method). The
fault cases are issue 20's: an invalid policy (rejected, named, counted; the
others enforced), a changed table (repaired), a pod whose chains are not
written yet (held). kill -9 and restart under probing and etcd down are
tested on three nodes at once over the real stack
(tests/e2e/test_policy_stack.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from config.endpoints import endpoint_to_json, pod_endpoint
from config.keys import workload_endpoint_key
from lab.netpol import Peer, Prober, eventually
from lab.podnet import PodNet
from tests.conftest import REPO, EtcdServer, free_ports, require_binary, require_root

BIN = REPO / ".venv" / "bin"
PODS = [("a", "x", {"app": "web"}), ("a", "y", {"app": "db"}),
        ("b", "x", {"app": "web"}), ("b", "y", {"app": "db"})]
DENY_A = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: a}
spec: {podSelector: {}, policyTypes: [Ingress]}
"""
NODE = "n1"


class Env:
    def __init__(self, net: PodNet, etcd: EtcdServer, http: int, workdir: Path) -> None:
        self.net = net
        self.etcd = etcd
        self.http = http
        self.workdir = workdir
        self.agent: subprocess.Popen | None = None
        self.probers: dict[str, Prober] = {}

    # ---------------------------------------------------------------- agent

    def start_agent(self, *extra: str) -> None:
        assert self.agent is None
        log = open(self.workdir / "agent.log", "ab")  # noqa: SIM115
        self.agent = subprocess.Popen(
            ["ip", "netns", "exec", self.net.node, str(BIN / "podbgp-policy"),
             "--node", NODE, "--etcd-endpoints", self.etcd.endpoint,
             "--http-listen", f"127.0.0.1:{self.http}", "--resync-interval", "1",
             "--log-format", "json", *extra], stdout=log, stderr=log)
        log.close()

    def stop_agent(self, sig: int = signal.SIGTERM) -> None:
        if self.agent is None:
            return
        self.agent.send_signal(sig)
        try:
            self.agent.wait(10)
        except subprocess.TimeoutExpired:
            self.agent.kill()
            self.agent.wait(5)
        self.agent = None

    def log(self) -> str:
        p = self.workdir / "agent.log"
        return p.read_text()[-4000:] if p.exists() else ""

    def http_get(self, path: str) -> tuple[int, str]:
        r = subprocess.run(["ip", "netns", "exec", self.net.node, "curl", "-s", "-m", "2",
                            "-w", "\n%{http_code}", f"http://127.0.0.1:{self.http}{path}"],
                           capture_output=True, text=True)
        body, _, code = r.stdout.rpartition("\n")
        return int(code or 0), body

    def wait_ready(self, timeout: float = 20) -> None:
        wait_for(lambda: self.http_get("/readyz")[0] == 200, timeout,
                 f"agent ready\n{self.log()}")

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of `name` whose labels include `labels`."""
        _, body = self.http_get("/metrics")
        total = 0.0
        for line in body.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            series, _, value = line.rpartition(" ")
            metric, _, rest = series.partition("{")
            if metric != name:
                continue
            have = dict(kv.split("=", 1) for kv in rest.rstrip("}").split(",") if "=" in kv)
            if all(have.get(k) == f'"{v}"' for k, v in labels.items()):
                total += float(value)
        return total

    # ------------------------------------------------------------ datastore

    def put_endpoint(self, peer: Peer) -> None:
        wep = pod_endpoint(node=NODE, namespace=peer.ns, pod=peer.name, endpoint="eth0",
                           container_id=f"c{peer.ns}{peer.name}",
                           interface_name=self.net.iface(peer), mac=None,
                           ip_networks=[f"{peer.ip}/32"], labels=dict(peer.labels))
        self.etcd.etcdctl("put", workload_endpoint_key(peer.ns, wep.name),
                          endpoint_to_json(wep).decode())

    def bgpctl(self, *args: str, stdin: str | None = None) -> None:
        env = {**os.environ, "ETCD_ENDPOINTS": self.etcd.endpoint}
        r = subprocess.run(["ip", "netns", "exec", self.net.node, str(BIN / "bgpctl"), *args],
                           input=stdin, capture_output=True, text=True, env=env, timeout=30)
        assert r.returncode == 0, r.stderr

    def clear_policies(self) -> None:
        for plural in ("networkpolicies", "globalnetworkpolicies", "profiles"):
            self.etcd.etcdctl("del", "--prefix",
                              f"/calico/resources/v3/projectcalico.org/{plural}/")

    # --------------------------------------------------------------- probes

    def eventually(self, allowed, timeout: float = 10) -> None:
        everyone = [*self.net.pods.values(), self.net.outside]
        report = eventually(self.probers, everyone, allowed, timeout=timeout,
                            probe_timeout=0.4, confirm=False)
        assert report is None, f"{report}\nagent log:\n{self.log()}"


def wait_for(pred, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    require_root()
    require_binary("nft")
    require_binary("etcd")
    workdir = tmp_path_factory.mktemp("policy-agent")
    with PodNet() as net:
        client, peer, http = free_ports(3)
        etcd = EtcdServer(workdir / "etcd-data", client, peer, netns=net.node)
        etcd.start()
        e = Env(net, etcd, http, workdir)
        try:
            for i, (ns, name, labels) in enumerate(PODS, start=1):
                p = net.add_pod(ns, name, f"10.77.0.{i}", labels)
                e.put_endpoint(p)
            for p in [*net.pods.values(), net.outside]:
                e.probers[p.id] = Prober(p.netns)
            yield e
        finally:
            e.stop_agent(signal.SIGKILL)
            for pr in e.probers.values():
                pr.close()
            etcd.stop(sig_kill=True)


@pytest.fixture
def agent(env):
    """A fresh agent and no policies; afterwards the agent stopped and its table removed."""
    env.clear_policies()
    env.start_agent()
    env.wait_ready()
    try:
        yield env
    finally:
        env.stop_agent()
        subprocess.run(["ip", "netns", "exec", env.net.node, str(BIN / "podbgp-policy"),
                        "--remove-table"], capture_output=True)


def into_a_blocked(s, d, proto, port) -> bool:
    return d.ns != "a"


def test_enforces_and_follows_the_datastore(agent):
    agent.eventually(lambda *a: True)
    assert agent.metric("podbgp_policy_endpoints", scope="local") == 4
    agent.bgpctl("apply", "-f", "-", stdin=DENY_A)
    agent.eventually(into_a_blocked)
    # status names the policy on each of a's endpoints, in order
    _, body = agent.http_get("/status")
    status = json.loads(body)
    ax = next(e for e in status["local_endpoints"] if e["endpoint"].startswith("a/"))
    assert ax["ingress"] == ["a/knp.default.deny-all"] and ax["egress"] == []
    assert agent.metric("podbgp_policy_rules") > 20
    assert agent.metric("podbgp_policy_transactions_total") >= 2
    assert agent.metric("podbgp_policy_programming_duration_seconds_count") >= 2
    # a policy deleted restores connectivity
    agent.bgpctl("delete", "-f", "-", stdin=DENY_A)
    agent.eventually(lambda *a: True)


def test_invalid_policy_rejected_named_counted_others_enforced(agent):
    base = "/calico/resources/v3/projectcalico.org/networkpolicies/b/"
    agent.etcd.etcdctl("put", base + "broken", '{"kind": "NetworkPolicy", "spec": ')
    agent.etcd.etcdctl("put", base + "bad-selector", json.dumps({
        "apiVersion": "projectcalico.org/v3", "kind": "NetworkPolicy",
        "metadata": {"name": "bad-selector", "namespace": "b"},
        "spec": {"selector": "app == ", "ingress": [{"action": "Deny"}]}}))
    # a field of a newer Calico: refused rather than enforced too broadly
    agent.etcd.etcdctl("put", base + "future", json.dumps({
        "apiVersion": "projectcalico.org/v3", "kind": "NetworkPolicy",
        "metadata": {"name": "future", "namespace": "b"},
        "spec": {"selector": "all()", "ingress": [
            {"action": "Allow", "source": {"domains": ["x.example"]}}]}}))
    agent.bgpctl("apply", "-f", "-", stdin=DENY_A)
    # b's pods: the only valid policy there is none, so b stays open; a is closed
    agent.eventually(into_a_blocked)
    _, body = agent.http_get("/status")
    rejected = json.loads(body)["rejected"]
    assert "value is not valid JSON" in rejected[base + "broken"]
    assert "spec.selector" in rejected[base + "bad-selector"]
    assert "spec.ingress[0].source.domains" in rejected[base + "future"]
    assert agent.metric("podbgp_config_rejected_total", kind="NetworkPolicy") >= 2
    assert agent.metric("podbgp_policy_rejected_total") >= 1
    assert "policy_rejected" in agent.log()


def test_table_changed_by_someone_else_is_repaired(agent):
    agent.bgpctl("apply", "-f", "-", stdin=DENY_A)
    agent.eventually(into_a_blocked)
    node = agent.net.node
    # someone flushes our forward chain (a's pods would be open) ...
    subprocess.run(["ip", "netns", "exec", node, "nft", "flush", "chain", "inet",
                    "podbgp-policy", "forward"], check=True)
    wait_for(lambda: agent.metric("podbgp_policy_table_repairs_total") >= 1, 10, "repair")
    agent.eventually(into_a_blocked, timeout=5)
    # ... or deletes the whole table
    subprocess.run(["ip", "netns", "exec", node, "nft", "delete", "table", "inet",
                    "podbgp-policy"], check=True)
    wait_for(lambda: agent.metric("podbgp_policy_table_repairs_total") >= 2, 10, "repair")
    agent.eventually(into_a_blocked, timeout=5)
    assert "policy_table_changed" in agent.log()


def test_new_pod_is_held_until_its_chains_exist(agent):
    net = agent.net
    new = net.add_pod("b", "late", "10.77.0.9", {"app": "web"})
    agent.probers[new.id] = Prober(new.netns)
    try:
        src = agent.probers["b/x"]
        # veth and route exist (CNI ADD under way) but no WorkloadEndpoint yet: held
        for _ in range(3):
            slot = src.start("tcp", new.ip, 80, 0.3)
            assert slot[0].wait(5) and not slot[1]["ok"], "an unprogrammed pod was reachable"
        assert agent.metric("podbgp_policy_endpoints", scope="local") == 4
        agent.put_endpoint(new)
        agent.eventually(lambda *a: True)
    finally:
        agent.probers.pop(new.id).close()
        del net.pods[new.id]
        agent.etcd.etcdctl("del", "--prefix", "/calico/resources/v3/projectcalico.org/"
                           "workloadendpoints/b/n1-k8s-late-")


def test_remove_table_and_bad_options(env):
    r = subprocess.run([str(BIN / "podbgp-policy"), "--table", "filter"], capture_output=True,
                       text=True)
    assert r.returncode == 2 and "--table" in r.stderr
    r = subprocess.run([str(BIN / "podbgp-policy"), "--resync-interval", "x"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "--resync-interval" in r.stderr and "Traceback" not in r.stderr
