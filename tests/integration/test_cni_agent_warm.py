"""The CNI agent's warm state (cni/warm.py) against a real etcd: never a stale answer.

The agent keeps, per worker thread, an event loop and the etcd client of the
previous call. What it must not change: a pool deleted or changed in etcd
between two ADDs is what the next ADD sees; an etcd that went away gives the
next ADD CNI code 11 ("try again later", SPEC.md "Error") and STATUS code 50,
as a fresh process would; after etcd is back the next ADD works; ADDs at once
through two agents (two nodes) never hand out one address twice (Calico's
block CAS, docs/ipam.md). podbgp-ipam is driven through the real agent
(cni.agent.Agent, cni.fast's request) with no root needed: IPAM touches only
etcd and its lock file.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from cni import agent, warm
from config import keys

pytestmark = pytest.mark.etcd


def pool(name: str, cidr: str, block_size: int = 28) -> str:
    return json.dumps({"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
                       "metadata": {"name": name},
                       "spec": {"cidr": cidr, "blockSize": block_size, "ipipMode": "Never",
                                "vxlanMode": "Never"}})


def put_pool(etcd, name: str, cidr: str) -> None:
    etcd.etcdctl("put", keys.resource_key("IPPool", name), pool(name, cidr))


class Node:
    """One node's agent on a socket in tmp_path, serving from a thread."""

    def __init__(self, tmp_path, etcd, name: str) -> None:
        self.name, self.etcd = name, etcd
        self.agent = agent.Agent(str(tmp_path / f"{name}.sock"))
        self.agent.bind()
        self.thread = threading.Thread(target=self.agent.serve_forever, daemon=True)
        self.thread.start()
        self.lock = str(tmp_path / f"{name}.lock")

    def conf(self, version: str = "1.0.0") -> str:
        return json.dumps({"cniVersion": version, "name": "podnet", "type": "podbgp-cni",
                           "etcd_endpoints": self.etcd.endpoint, "nodename": self.name,
                           "ipam": {"type": "podbgp-ipam", "lock_file": self.lock,
                                    "empty_block_release_seconds": 0}})

    def ipam(self, command: str, cid: str, version: str = "1.0.0") -> tuple[int, dict]:
        env = {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_IFNAME": "eth0",
               "CNI_NETNS": "/var/run/netns/x", "CNI_PATH": "/nonexistent",
               "CNI_ARGS": f"K8S_POD_NAMESPACE=default;K8S_POD_NAME={cid}"}
        reply = agent.call(self.agent.path, "ipam", env, self.conf(version))
        assert reply is not None, "the agent did not answer"
        out = json.loads(reply["stdout"]) if reply["stdout"].strip() else {}
        return reply["rc"], out

    def add(self, cid: str) -> ipaddress.IPv4Address:
        rc, out = self.ipam("ADD", cid)
        assert rc == 0, out
        return ipaddress.ip_interface(out["ips"][0]["address"]).ip

    def stop(self) -> None:
        self.agent.stop()
        self.thread.join(5)


@pytest.fixture
def nodes(tmp_path, etcd):
    made = [Node(tmp_path, etcd, "node1"), Node(tmp_path, etcd, "node2")]
    yield made
    for n in made:
        n.stop()


def test_a_worker_reuses_its_client_and_replaces_one_that_stopped_answering(etcd):
    from ipam.etcd import EtcdSettings

    settings = EtcdSettings(etcd.endpoint)
    etcd.etcdctl("put", "/podbgp-test/k", "before")
    seen: dict = {}

    def worker() -> None:
        warm.enable()
        try:
            async def get(c):
                return (await c.get(b"/podbgp-test/k")).value

            c1 = warm.run(warm.connect(settings, timeout=3))
            warm.run(warm.release(c1))
            c2 = warm.run(warm.connect(settings, timeout=3))
            seen["same"] = c1 is c2
            seen["first"] = warm.run(get(c2))
            warm.run(warm.release(c2))
            etcd.stop()
            with pytest.raises(ConnectionError):
                warm.run(warm.connect(settings, timeout=3))
            etcd.start()
            etcd.etcdctl("put", "/podbgp-test/k", "after")
            c3 = warm.run(warm.connect(settings, timeout=5))
            seen["fresh"] = c3 is not c2
            seen["after"] = warm.run(get(c3))
            warm.run(warm.release(c3))
        finally:
            warm.close()

    before = warm.stats()
    t = threading.Thread(target=worker)
    t.start()
    t.join(60)
    after = warm.stats()
    assert seen == {"same": True, "first": b"before", "fresh": True, "after": b"after"}
    assert after["reused"] - before["reused"] >= 1
    assert after["dropped"] - before["dropped"] >= 1  # the client of the dead etcd


def test_outside_a_worker_nothing_is_kept(etcd):
    from ipam.etcd import EtcdSettings

    async def twice():
        c1 = await warm.connect(EtcdSettings(etcd.endpoint), timeout=3)
        await warm.release(c1)
        c2 = await warm.connect(EtcdSettings(etcd.endpoint), timeout=3)
        await warm.release(c2)
        return c1 is c2

    assert not warm.enabled()
    assert asyncio.run(twice()) is False


def test_pool_deleted_or_changed_between_two_adds_is_seen(etcd, nodes):
    node = nodes[0]
    put_pool(etcd, "p1", "10.61.0.0/16")
    reused = warm.stats()["reused"]
    assert node.add("c1") in ipaddress.ip_network("10.61.0.0/16")
    assert node.add("c2") in ipaddress.ip_network("10.61.0.0/16")
    assert warm.stats()["reused"] > reused, "the agent did not reuse a client: test is moot"
    etcd.etcdctl("del", keys.resource_key("IPPool", "p1"))
    rc, out = node.ipam("ADD", "c3")
    assert rc == 1 and out["code"] == 100 and "no enabled IPv4 pool" in out["msg"], out
    put_pool(etcd, "p2", "10.62.0.0/16")
    assert node.add("c4") in ipaddress.ip_network("10.62.0.0/16")
    rc, out = node.ipam("STATUS", "s", version="1.1.0")
    assert rc == 0, out


def test_etcd_gone_then_back_between_two_adds(etcd, nodes):
    node = nodes[0]
    put_pool(etcd, "p1", "10.63.0.0/16")
    first = node.add("c1")
    node.add("c2")  # the worker's client is warm now
    etcd.stop()
    try:
        rc, out = node.ipam("ADD", "c3")
        assert rc == 1 and out["code"] == 11, out
        rc, out = node.ipam("STATUS", "s", version="1.1.0")
        assert rc == 1 and out["code"] == 50, out
    finally:
        etcd.start()
    third = node.add("c3")
    assert third not in (first,) and third in ipaddress.ip_network("10.63.0.0/16")
    # The ADD that failed while etcd was away left nothing: c3 holds exactly one address.
    handles = etcd.etcdctl("get", "--prefix", "/calico/ipam/v2/handle/", "--keys-only").split()
    assert sorted(h.rsplit(".", 1)[-1] for h in handles) == ["c1", "c2", "c3"]


def test_concurrent_adds_through_two_agents_never_share_an_address(etcd, nodes):
    put_pool(etcd, "p1", "10.64.0.0/24")  # /28 blocks: 16 blocks, forces claims
    cids = [(nodes[i % 2], f"k{i}") for i in range(24)]
    with ThreadPoolExecutor(max_workers=len(cids)) as pool_:
        got = list(pool_.map(lambda nc: (nc[0].name, nc[0].add(nc[1])), cids))
    addrs = [a for _, a in got]
    assert len(set(addrs)) == len(addrs) == 24
    # And again, after every worker holds a warm client: still no address twice.
    more = [(nodes[i % 2], f"m{i}") for i in range(16)]
    with ThreadPoolExecutor(max_workers=len(more)) as pool_:
        addrs += list(pool_.map(lambda nc: nc[0].add(nc[1]), more))
    assert len(set(addrs)) == len(addrs) == 40
    out = etcd.etcdctl("get", "--prefix", "/calico/ipam/v2/handle/", "--keys-only").split()
    assert len(out) == 40


def test_an_add_reads_the_pools_once_and_the_next_add_reads_them_again(etcd, tmp_path,
                                                                        monkeypatch):
    """The pools an ADD assigns from are the pools its result's routes name (block mode):
    one read per call, never carried over to the next call."""
    import io

    import ipam.cni

    reads = []
    real = ipam.cni.load_pools

    async def counting(client):
        reads.append(1)
        return await real(client)

    monkeypatch.setattr(ipam.cni, "load_pools", counting)
    put_pool(etcd, "p1", "10.65.0.0/16")
    conf = {"cniVersion": "1.0.0", "name": "podnet", "type": "ptp",
            "etcd_endpoints": etcd.endpoint, "nodename": "node1",
            "ipam": {"type": "podbgp-ipam", "lock_file": str(tmp_path / "lock"),
                     "address_mode": "block"}}

    def add(cid):
        out = io.StringIO()
        env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": cid, "CNI_IFNAME": "eth0",
               "CNI_NETNS": "/x", "CNI_PATH": "/x"}
        assert ipam.cni.run(env, json.dumps(conf), out, io.StringIO()) == 0, out.getvalue()
        return json.loads(out.getvalue())

    r1 = add("r1")
    assert len(reads) == 1 and r1["routes"] == [{"dst": "10.65.0.0/16"}]
    etcd.etcdctl("del", keys.resource_key("IPPool", "p1"))
    put_pool(etcd, "p2", "10.66.0.0/16")
    r2 = add("r2")
    assert len(reads) == 2 and r2["routes"] == [{"dst": "10.66.0.0/16"}]
    assert ipaddress.ip_interface(r2["ips"][0]["address"]).ip in ipaddress.ip_network(
        "10.66.0.0/16")
