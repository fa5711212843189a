"""podbgp against a real 3-member etcd cluster: members killed, the leader killed, a
member partitioned, history compacted while a client is away, IPAM during a leader change.

One lab for the module (``Lab(nodes=1, etcd_members=3)``, lab/etcd_cluster.py):
three etcd 3.4 members in their own namespaces on the lab segment and one node
running the real ``bgpd`` with all three endpoints, as users run it
(Calico: ``ETCD_ENDPOINTS=http://a:2379,http://b:2379,http://c:2379``).
Beside the daemon, ``tests.helpers.etcd_probe`` runs the daemon's own watcher
(``config.etcd_store.EtcdDatastore``) in the node's namespace and prints every
key it applies, so a test sees not only "the route is there at the end" but
"every write arrived once, in order, across every fault".

What etcd promises and these tests hold podbgp to (etcd docs, "API guarantees"
and "Failure modes"; clientv3's WithRequireLeader): a watch resumed at revision
r+1 delivers every event after r exactly once, or fails as compacted; a member
cut off from the quorum can serve nothing current, so a client must leave it.
"""

from __future__ import annotations

import concurrent.futures
import ipaddress
import json
import os
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator

import pytest

from lab.harness import Lab, bin_path
from tests.conftest import require, require_binary, require_root
from tests.helpers.etcd_probe import Probe

pytestmark = [pytest.mark.root, pytest.mark.etcd, pytest.mark.slow]

NODE = "node1"
POOL = "10.244.0.0/16"
AFFINITY = "/calico/ipam/v2/host/node1/ipv4/block/"


def block(i: int) -> str:
    """The i-th /26 of the pool (0..1023)."""
    return f"10.244.{i // 4}.{(i % 4) * 64}/26"


def affinity_key(i: int) -> str:
    return AFFINITY + block(i).replace("/", "-")


def key_block(key: str) -> str:
    return key.rsplit("/", 1)[1].replace("-", "/")


def key_index(key: str) -> int:
    """affinity_key(i) -> i."""
    third, fourth = ipaddress.ip_network(key_block(key)).network_address.packed[2:4]
    return third * 4 + fourth // 64


class SequenceWriter:
    """Writes node1's BlockAffinities 1, 2, 3... one at a time through etcdctl from the
    node's namespace, to the members that are up and not partitioned. A write that
    fails is retried with the same number, so the sequence has no holes; a failed
    write may still have committed, so every attempt's value differs (trailing
    spaces, which the parser ignores) and a replayed event is told from a retry."""

    def __init__(self, lab: Lab, start: int = 1) -> None:
        self.lab, self.next = lab, start
        self.written: list[int] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        cluster = self.lab.etcd
        assert cluster is not None
        attempt = 0
        while not self._stop.is_set():
            attempt += 1
            eps = ",".join(m.client_url for n, m in cluster.members.items()
                           if m.running and n not in cluster.partitioned)
            r = subprocess.run(
                ["ip", "netns", "exec", self.lab.nodes[NODE].ns, require_binary("etcdctl"),
                 f"--endpoints={eps}", "--command-timeout=3s", "put", affinity_key(self.next),
                 json.dumps({"state": "confirmed", "deleted": False}) + " " * attempt],
                capture_output=True, text=True, timeout=20)
            if r.returncode == 0:
                self.written.append(self.next)
                self.next += 1
            else:
                self.failures.append(r.stderr.strip()[-200:])
            self._stop.wait(0.03)

    def __enter__(self) -> SequenceWriter:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(30)

    def wait_more(self, n: int, timeout: float = 30) -> None:
        """Until n more writes have succeeded (so each fault sees traffic)."""
        target = len(self.written) + n
        Lab.wait_for(lambda: len(self.written) >= target, timeout, f"{n} more etcd writes")


def etcd_keys(lab: Lab, prefix: str = AFFINITY) -> set[str]:
    out = lab.etcd.etcdctl("get", prefix, "--prefix", "--keys-only", ns=lab.nodes[NODE].ns)
    return {line for line in out.splitlines() if line.strip()}


def metric(lab: Lab, name: str, **labels: str) -> float:
    code, body = lab.http_get(NODE, "/metrics")
    assert code == 200, body
    for line in body.splitlines():
        head, _, value = line.rpartition(" ")
        if (head == name or head.startswith(name + "{")) and all(
                f'{k}="{v}"' in head for k, v in labels.items()):
            return float(value)
    return 0.0


def blackholes(lab: Lab) -> set[str]:
    return {r["dst"] for r in lab.routes(NODE, "201") if r.get("type") == "blackhole"}


@pytest.fixture(scope="module")
def cluster_lab() -> Iterator[Lab]:
    require_root()
    require_binary("etcd")
    require_binary("iptables")
    with Lab(nodes=1, etcd_members=3) as lab:
        lab.apply(json.dumps({"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
                              "metadata": {"name": "pool"},
                              "spec": {"cidr": POOL, "blockSize": 26, "ipipMode": "Never",
                                       "vxlanMode": "Never"}}))
        lab.register_node(lab.nodes[NODE])
        lab.start_daemon(NODE, "--convergence-timeout", "1")
        lab.wait_for(lambda: lab.ready(NODE), 30, "bgpd ready")
        yield lab


@pytest.fixture
def probe(cluster_lab: Lab) -> Iterator[Probe]:
    p = Probe(cluster_lab.nodes[NODE].ns, cluster_lab.etcd_endpoint,
              cluster_lab.workdir / f"probe-{uuid.uuid4().hex[:6]}.log")
    try:
        Lab.wait_for(lambda: (p.connection() or {}).get("connected"), 20, "probe connected")
        yield p
    finally:
        p.stop()
        cluster = cluster_lab.etcd
        for name in list(cluster.partitioned):
            cluster.heal(name)
        cluster.start_all()  # a test that failed half way leaves no member down


def _moved_off(probe: Probe, url: str, timeout: float, what: str) -> dict:
    return Lab.wait_for(
        lambda: (c := probe.connection()) and c["connected"] and c["endpoint"] != url and c,
        timeout, what)


def test_watch_resumes_across_member_faults(cluster_lab: Lab, probe: Probe) -> None:
    """Kill the member the watcher uses, then the leader, then cut the watcher's member
    off from the quorum, all while numbered BlockAffinities are written: the watcher
    ends with exactly etcd's keys, applied each once and in order, and the daemon
    installed a blackhole for every one of them."""
    lab, cluster = cluster_lab, cluster_lab.etcd
    reconnects_before = metric(lab, "podbgp_datastore_reconnects_total")
    with SequenceWriter(lab) as writer:
        writer.wait_more(10)

        # 1. The member the watcher is connected to dies: it moves to another one.
        first = cluster.member_at(probe.connection()["endpoint"])
        cluster.kill(first.name)
        _moved_off(probe, first.client_url, 15, f"watcher off killed {first.name}")
        writer.wait_more(10)
        cluster.start(first.name)
        writer.wait_more(5)

        # 2. The leader dies (a new one is elected; writes go on after the election).
        leader = cluster.leader()
        cluster.kill(leader)
        Lab.wait_for(lambda: cluster.leader() != leader, 20, "a new etcd leader")
        writer.wait_more(10)
        Lab.wait_for(lambda: (probe.connection() or {}).get("connected"), 15,
                     "watcher connected after the leader died")
        cluster.start(leader)
        writer.wait_more(5)

        # 3. The watcher's member is cut off from the other two. It still answers its
        # clients, so without etcd's require-leader the watch would hang on it, silently
        # stale; the watcher must leave it and see writes made DURING the partition.
        cut = cluster.member_at(probe.connection()["endpoint"])
        cluster.partition(cut.name)
        t_cut = time.monotonic()
        moved = _moved_off(probe, cut.client_url, 20, f"watcher off partitioned {cut.name}")
        during = len(writer.written)
        writer.wait_more(10)
        seen_during = set(probe.view())
        assert affinity_key(writer.written[during]) in seen_during or Lab.wait_for(
            lambda: affinity_key(writer.written[during]) in probe.view(), 10,
            "a write made during the partition reaching the watcher before it heals")
        cluster.heal(cut.name)
        leave_seconds = moved["at"] - t_cut
        writer.wait_more(5)

    truth = etcd_keys(lab)
    assert len(truth) == len(writer.written) >= 55, (len(truth), len(writer.written))
    Lab.wait_for(lambda: probe.view() == truth, 20, "watcher view == etcd keys")
    applied = probe.watch_applied()
    twice = [k for k, n in Counter(applied).items() if n > 1]
    assert twice == [], f"applied twice by the watch: {twice[:5]}"
    order = [key_index(k) for k, _ in applied]
    assert order == sorted(order), "watch events out of write order"
    reloads = [x for x in probe.snapshot_lines() if x["t"] == "load" and x["reload"]]
    assert reloads == [], f"no compaction happened, yet the watcher reloaded: {reloads}"
    assert leave_seconds < 15, leave_seconds

    # The daemon: every block is a blackhole in its kernel, its datastore says connected,
    # and it counted its reconnects.
    want = {key_block(k) for k in truth}
    lab.wait_for(lambda: want <= blackholes(lab), 30, "a blackhole per written block")
    assert lab.nodes[NODE].proc.poll() is None
    # Eventually, not at once: the healed member can set off one more election (etcd
    # without pre-vote), which ends the daemon's require-leader watch again and it comes
    # back after its backoff (<= 5 s). CI saw connected=false right after the heal.
    lab.wait_for(lambda: lab.status(NODE)["datastore"]["connected"] is True, 20,
                 "the daemon's datastore connected again after the heal")
    assert metric(lab, "podbgp_datastore_connected", datastore="etcdv3") == 1
    assert lab.ready(NODE)
    # At least the partition ended the daemon's watch ("no leader") or the kill did.
    assert metric(lab, "podbgp_datastore_reconnects_total") > reconnects_before
    # bgpctl with the same three endpoints works while the first member is down.
    cluster.kill("m1")
    try:
        out = lab.bgpctl("get", "ippools", "-o", "json", node=NODE).stdout
        assert "10.244.0.0/16" in out
    finally:
        cluster.start("m1")


def test_compaction_while_disconnected_reloads_everything(cluster_lab: Lab,
                                                          probe: Probe) -> None:
    """The watcher is cut off from every member while keys are written AND deleted and
    etcd compacts past its revision: on return its resume is refused as compacted and
    it reloads in full, ending with exactly etcd's keys (the deletions included)."""
    lab, cluster = cluster_lab, cluster_lab.etcd
    ns = lab.nodes[NODE].ns
    base = 600
    for i in range(base, base + 5):
        cluster.etcdctl("put", affinity_key(i), '{"state":"confirmed","deleted":false}', ns=ns)
    Lab.wait_for(lambda: {affinity_key(i) for i in range(base, base + 5)} <= probe.view(),
                 15, "watcher has the first keys")
    # Cut the node's namespace off from etcd's client port with resets (both the probe
    # and bgpd: the daemon must come back through the same reload).
    rule = ["OUTPUT", "-p", "tcp", "--dport", "2379", "-j", "REJECT",
            "--reject-with", "tcp-reset"]
    subprocess.run(["ip", "netns", "exec", ns, "iptables", "-w", "-A", *rule], check=True)
    try:
        Lab.wait_for(lambda: not probe.connection()["connected"], 20, "watcher disconnected")
        lab.wait_for(lambda: metric(lab, "podbgp_datastore_connected", datastore="etcdv3") == 0,
                     30, "bgpd says disconnected")
        assert lab.ready(NODE), "bgpd keeps serving its last configuration"
        m1 = cluster.members["m1"].ns  # write from elsewhere while the node is cut off
        for i in range(base + 5, base + 10):
            cluster.etcdctl("put", affinity_key(i), '{"state":"confirmed","deleted":false}',
                            ns=m1)
        cluster.etcdctl("del", affinity_key(base), ns=m1)
        cluster.etcdctl("del", affinity_key(base + 6), ns=m1)
        rev = cluster.status("m1")["revision"]
        cluster.etcdctl("compact", str(rev), ns=m1)
    finally:
        subprocess.run(["ip", "netns", "exec", ns, "iptables", "-w", "-D", *rule], check=True)
    truth = etcd_keys(lab)
    Lab.wait_for(lambda: probe.view() == truth, 30, "watcher view == etcd keys after reload")
    reloads = [x for x in probe.snapshot_lines() if x["t"] == "load" and x["reload"]]
    assert len(reloads) == 1, reloads
    assert affinity_key(base) not in probe.view() and affinity_key(base + 6) not in probe.view()
    # bgpd went through the same: its kernel has the new blocks and lost the deleted ones.
    lab.wait_for(lambda: metric(lab, "podbgp_datastore_connected", datastore="etcdv3") == 1,
                 30, "bgpd reconnected")
    want = {block(i) for i in range(base + 1, base + 10) if i != base + 6}
    lab.wait_for(lambda: want <= blackholes(lab) and block(base) not in blackholes(lab)
                 and block(base + 6) not in blackholes(lab), 30,
                 "bgpd's blackholes follow the reload")


def _cni_add(lab: Lab, node: str, lock: str, container: str) -> tuple[int, str, str]:
    conf = json.dumps({"cniVersion": "1.0.0", "name": "podnet", "type": "bridge",
                       "etcd_endpoints": lab.etcd_endpoint, "nodename": node,
                       "ipam": {"type": "podbgp-ipam", "lock_file": lock,
                                "assign_ipv4": "true", "bridge_single_block": "true"}})
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ETCD_", "NODENAME"))}
    env.update({"CNI_COMMAND": "ADD", "CNI_CONTAINERID": container, "CNI_NETNS": "/dev/null",
                "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni"})
    r = subprocess.run(["ip", "netns", "exec", lab.nodes[NODE].ns, bin_path("podbgp-ipam")],
                       input=conf, capture_output=True, text=True, env=env, timeout=120)
    return r.returncode, r.stdout, r.stderr


def test_ipam_concurrent_allocations_during_leader_change(cluster_lab: Lab) -> None:
    """24 pods allocated concurrently by podbgp-ipam (three 'nodes', two lock files
    each, so allocations really race on the same blocks) while the etcd leader, the
    member they all dial first, is killed: no address is handed out twice, every ADD
    either succeeds or fails with a clear error, and a retry (as the kubelet does)
    succeeds without leaving a second address behind."""
    lab, cluster = cluster_lab, cluster_lab.etcd
    require(os.path.exists(bin_path("podbgp-ipam")), "needs the podbgp-ipam console script")
    jobs = [(f"ipam{n}", str(lab.workdir / f"ipam-{n}-{k}.lock"), f"c{n}{k}{i:02d}")
            for n in range(3) for k in range(2) for i in range(4)]
    # The leader is the member every client dials first (m1, the first endpoint): its
    # death is both a leader change and the loss of the clients' connection.
    leader = "m1"
    cluster.make_leader(leader)
    results: dict[str, tuple[int, str, str]] = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=6) as pool:
        futures = {pool.submit(_cni_add, lab, *job): job[2] for job in jobs}
        for n, fut in enumerate(concurrent.futures.as_completed(futures)):
            results[futures[fut]] = fut.result()
            if n == 2:  # three done, the next ones in flight
                cluster.kill(leader)
    cluster.start(leader)
    failed = {c: r for c, r in results.items() if r[0] != 0}
    for c, (_, out, err) in failed.items():
        assert "podbgp-ipam: ADD:" in err and json.loads(out).get("msg"), (c, out, err)
    for c in list(failed):  # the kubelet retries a failed ADD with the same container id
        job = next(j for j in jobs if j[2] == c)
        results[c] = _cni_add(lab, *job)
    assert all(r[0] == 0 for r in results.values()), {c: r for c, r in results.items()
                                                      if r[0] != 0}
    ips = [json.loads(out)["ips"][0]["address"] for _, out, _ in results.values()]
    dup = [ip for ip, n in Counter(ips).items() if n > 1]
    assert dup == [], f"addresses handed out twice: {dup}"
    assert len(ips) == len(jobs)
    # etcd agrees: each address is held by exactly the container it was given to, and
    # no retry left a second address behind for a container.
    holder: dict[str, str] = {}
    out = cluster.etcdctl("get", "/calico/ipam/v2/assignment/ipv4/block/", "--prefix",
                          "--print-value-only", ns=lab.nodes[NODE].ns)
    for line in out.splitlines():
        if not line.startswith("{"):
            continue
        blk = json.loads(line)
        net = ipaddress.ip_network(blk["cidr"])
        for ordinal, attr in enumerate(blk.get("allocations") or []):
            if attr is None:
                continue
            handle = (blk["attributes"][attr] or {}).get("handle_id") or ""
            if handle.startswith("podnet."):
                holder[str(net.network_address + ordinal)] = handle
    given = {json.loads(out)["ips"][0]["address"].split("/")[0]: f"podnet.{c}"
             for c, (_, out, _) in results.items()}
    assert holder == given
