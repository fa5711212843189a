"""How fast the etcd datastore loads N Calico resources (and sees one change).

Starts a throwaway etcd (Debian etcd-server) on free loopback ports, writes N
resources in Calico's JSON (a third each IPPools, BGPPeers, Nodes), then
times `EtcdDatastore.start()` to the first whole snapshot, and one PUT to the
snapshot that reflects it. Prints the figures; `etcdctl get --prefix` of the
same keys is timed alongside as the floor (what reading alone costs).

Usage: ``python -m bench.config_load [--count N] [--runs R]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from config.etcd_store import EtcdDatastore
from config.keys import RESOURCES_PREFIX, resource_key


def resources(n: int) -> list[tuple[str, str]]:
    out = []
    for i in range(n):
        name = f"r{i:05d}"
        a, b = divmod(i, 250)
        if i % 3 == 0:
            doc = {"kind": "IPPool", "spec": {"cidr": f"10.{a}.{b}.0/24", "ipipMode": "Always"}}
        elif i % 3 == 1:
            doc = {"kind": "BGPPeer", "spec": {"peerIP": f"192.0.{a}.{b + 1}",
                                               "asNumber": 64000 + i % 1000}}
        else:
            doc = {"kind": "Node", "spec": {"bgp": {"ipv4Address": f"172.16.{a}.{b + 1}/24"}}}
        doc = {"apiVersion": "projectcalico.org/v3", **doc, "metadata": {"name": name}}
        out.append((resource_key(doc["kind"], name), json.dumps(doc, separators=(",", ":"))))
    return out


async def fill(port: int, items: list[tuple[str, str]]) -> None:
    import aetcd

    client = aetcd.Client(host="127.0.0.1", port=port)
    try:
        for j in range(0, len(items), 100):  # etcd allows 128 ops per txn
            ops = [client.transactions.put(k.encode(), v.encode()) for k, v in items[j:j + 100]]
            await client.transaction(compare=[], success=ops, failure=[])
    finally:
        await client.close()


async def one_run(endpoint: str, n: int) -> tuple[float, float]:
    store = EtcdDatastore(endpoint)
    try:
        t0 = time.perf_counter()
        await store.start()
        if not await store.wait_loaded(30):
            raise SystemExit("etcd datastore did not load")
        load = time.perf_counter() - t0
        snap = store.snapshot
        got = len(snap.ippools) + len(snap.bgp_peers) + len(snap.nodes)
        if got != n or snap.rejected:
            raise SystemExit(f"loaded {got} of {n}, rejected {len(snap.rejected)}")
        it = store.snapshots()
        await anext(it)  # the loaded snapshot
        t1 = time.perf_counter()
        doc = json.dumps({"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
                          "metadata": {"name": "bench-change"},
                          "spec": {"cidr": "10.250.0.0/16"}})
        import aetcd

        client = aetcd.Client(host=endpoint.split("//")[1].split(":")[0],
                              port=int(endpoint.rsplit(":", 1)[1]))
        try:
            await client.put(resource_key("IPPool", "bench-change").encode(), doc.encode())
            snap = await asyncio.wait_for(anext(it), 10)
            while "bench-change" not in snap.ippools:
                snap = await asyncio.wait_for(anext(it), 10)
            change = time.perf_counter() - t1
            await client.delete(resource_key("IPPool", "bench-change").encode())
        finally:
            await client.close()
        return load, change
    finally:
        await store.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()

    from tests.conftest import EtcdServer, free_ports

    if shutil.which("etcd") is None:
        raise SystemExit("needs etcd (Debian etcd-server)")
    tmp = Path(tempfile.mkdtemp(prefix="podbgp-bench-"))
    client_port, peer_port = free_ports(2)
    server = EtcdServer(tmp / "etcd-data", client_port, peer_port)
    server.start()
    try:
        asyncio.run(fill(client_port, resources(args.count)))
        loads, changes, floors = [], [], []
        for _ in range(args.runs):
            load, change = asyncio.run(one_run(server.endpoint, args.count))
            loads.append(load)
            changes.append(change)
            t0 = time.perf_counter()
            subprocess.run(["etcdctl", f"--endpoints={server.endpoint}", "get", "--prefix",
                            RESOURCES_PREFIX], capture_output=True, check=True,
                           env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"})
            floors.append(time.perf_counter() - t0)
        load_ms = statistics.median(loads) * 1000
        floor_ms = statistics.median(floors) * 1000
        print(f"config_load: {args.count} resources, median of {args.runs}: "
              f"load+validate {load_ms:.1f} ms "
              f"({args.count / statistics.median(loads):,.0f} resources/s); "
              f"etcdctl get --prefix (read only, incl. process start) {floor_ms:.1f} ms "
              f"(ratio {load_ms / floor_ms:.2f}); "
              f"one change to snapshot {statistics.median(changes) * 1000:.1f} ms")
    finally:
        server.stop(sig_kill=True)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
