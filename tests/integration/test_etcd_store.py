"""EtcdDatastore against a real etcd: load, watch, reconnect, compaction, rejection, CRUD."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from config.datastore import ResourceExists, ResourceNotFound
from config.etcd_store import EtcdDatastore
from config.keys import RESOURCES_PREFIX, affinity_key, resource_key
from config.parse import parse_resource
from tests.helpers.wait import until

pytestmark = pytest.mark.etcd


def pool_json(name: str, cidr: str, **spec) -> str:
    return json.dumps({"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
                       "metadata": {"name": name}, "spec": {"cidr": cidr, **spec}})


def put(etcd, key: str, value: str) -> None:
    etcd.etcdctl("put", key, value)


def current_revision(etcd) -> int:
    out = etcd.etcdctl("get", "/", "--prefix", "--keys-only", "--limit=1", "-w", "json")
    return int(json.loads(out)["header"]["revision"])


async def wait_snapshot(store, pred, timeout: float = 10.0):
    async def run():
        async for snap in store.snapshots():
            if pred(snap):
                return snap
        raise AssertionError("snapshot channel closed")

    return await asyncio.wait_for(run(), timeout)


async def wait_until(cond, timeout: float, step: float = 0.05) -> None:
    await until(cond, timeout, "the store condition", interval=step)


@pytest.fixture
async def store(etcd):
    s = EtcdDatastore(etcd.endpoint)
    yield s
    await s.close()


async def test_initial_load_then_watch_sees_changes(etcd, store):
    put(etcd, resource_key("IPPool", "p1"), pool_json("p1", "10.1.0.0/16"))
    put(etcd, affinity_key("node1", "10.1.0.0/26"), '{"state":"confirmed","deleted":false}')
    # Another Calico kind in the same prefix must be ignored, not rejected.
    put(etcd, RESOURCES_PREFIX + "felixconfigurations/default", '{"kind":"FelixConfiguration"}')
    await store.start()
    snap = await wait_snapshot(store, lambda s: "p1" in s.ippools)
    assert store.connected
    assert snap.ippools["p1"].spec.cidr == "10.1.0.0/16"
    assert [(a.node, a.cidr, a.state) for a in snap.affinities] == [
        ("node1", "10.1.0.0/26", "confirmed")]
    assert dict(snap.rejected) == {}
    first_rev = snap.revision
    assert first_rev == current_revision(etcd)

    put(etcd, resource_key("IPPool", "p2"), pool_json("p2", "10.2.0.0/16"))
    etcd.etcdctl("del", resource_key("IPPool", "p1"))
    snap = await wait_snapshot(store, lambda s: "p2" in s.ippools and "p1" not in s.ippools)
    assert snap.revision > first_rev
    assert snap.revision == current_revision(etcd)

    etcd.etcdctl("del", affinity_key("node1", "10.1.0.0/26"))
    snap = await wait_snapshot(store, lambda s: not s.affinities)
    assert list(snap.ippools) == ["p2"]


async def test_malformed_and_invalid_values_are_rejected_and_last_good_kept(etcd, store):
    k1, k2, k3 = (resource_key("IPPool", n) for n in ("p1", "p2", "p3"))
    put(etcd, k1, pool_json("p1", "10.1.0.0/16"))
    put(etcd, k3, pool_json("p3", "10.3.0.0/16"))
    await store.start()
    await wait_snapshot(store, lambda s: "p1" in s.ippools)

    put(etcd, k1, "{not json")
    # p2 never had a good version: host bits set in the CIDR.
    put(etcd, k2, pool_json("p2", "10.2.0.1/16"))
    snap = await wait_snapshot(store, lambda s: k1 in s.rejected and k2 in s.rejected)
    assert snap.ippools["p1"].spec.cidr == "10.1.0.0/16"  # last good version kept
    assert "p2" not in snap.ippools  # never good: left out
    assert snap.ippools["p3"].spec.cidr == "10.3.0.0/16"  # the rest stays usable
    assert "JSON" in snap.rejected[k1]
    assert "spec.cidr" in snap.rejected[k2]
    assert sum(store.stats.rejected_total.values()) == 2
    assert all(kind == "IPPool" for kind, _ in store.stats.rejected_total)

    # Fixing the value clears the rejection and takes the new version.
    put(etcd, k1, pool_json("p1", "10.9.0.0/16", natOutgoing=True))
    snap = await wait_snapshot(store, lambda s: k1 not in s.rejected)
    assert snap.ippools["p1"].spec.cidr == "10.9.0.0/16"
    assert k2 in snap.rejected
    assert sum(store.stats.rejected_total.values()) == 2


@pytest.mark.slow
async def test_etcd_down_10s_then_resume_sees_changes_made_while_away(etcd, store):
    put(etcd, resource_key("IPPool", "p1"), pool_json("p1", "10.1.0.0/16"))
    await store.start()
    before = await wait_snapshot(store, lambda s: "p1" in s.ippools)

    t0 = time.monotonic()
    etcd.stop(sig_kill=True)
    await wait_until(lambda: not store.connected, 5)
    assert store.snapshot is before  # the last snapshot stays in force
    # Down for 10 s; come back while the watcher sleeps in its (capped) backoff,
    # so the writes below happen while it is still disconnected.
    await wait_until(lambda: time.monotonic() - t0 >= 10 and store.next_retry_at is not None
                     and store.next_retry_at - time.monotonic() > 1.0, 17)
    etcd.start()
    put(etcd, resource_key("IPPool", "p2"), pool_json("p2", "10.2.0.0/16"))
    etcd.etcdctl("del", resource_key("IPPool", "p1"))
    assert not store.connected, "watcher reconnected before the writes; test is not testing resume"

    snap = await wait_snapshot(store, lambda s: "p2" in s.ippools and "p1" not in s.ippools, 8)
    elapsed = time.monotonic() - t0
    print(f"\nresumed after etcd was down {elapsed:.1f} s; reconnect attempts "
          f"{store.stats.reconnects_total}")
    assert store.connected
    assert store.stats.reconnects_total >= 5
    assert store.stats.reloads_total == 0  # resumed from the revision, no reload
    assert snap.revision == current_revision(etcd)


async def test_compacted_revision_while_away_forces_full_reload(etcd, store):
    for n in ("p1", "p2"):
        put(etcd, resource_key("IPPool", n), pool_json(n, f"10.{n[1]}.0.0/16"))
    await store.start()
    await wait_snapshot(store, lambda s: {"p1", "p2"} <= set(s.ippools))

    etcd.stop(sig_kill=True)
    await wait_until(lambda: store.next_retry_at is not None
                     and store.next_retry_at - time.monotonic() > 2.5, 10)
    etcd.start()
    etcd.etcdctl("del", resource_key("IPPool", "p1"))
    put(etcd, resource_key("IPPool", "p3"), pool_json("p3", "10.3.0.0/16"))
    etcd.etcdctl("compact", str(current_revision(etcd)))
    assert not store.connected

    snap = await wait_snapshot(store, lambda s: "p3" in s.ippools, 8)
    assert set(snap.ippools) == {"p2", "p3"}  # the deleted key is gone after the reload
    assert store.stats.reloads_total == 1
    assert snap.revision == current_revision(etcd)


async def test_thousand_resources_load_under_a_second(etcd):
    import aetcd

    client = aetcd.Client(host="127.0.0.1", port=etcd.client_port)
    try:
        ops = []
        for i in range(1000):
            name = f"r{i:04d}"
            if i % 3 == 0:
                val = pool_json(name, f"10.{i // 250}.{i % 250}.0/24")
                kind = "IPPool"
            elif i % 3 == 1:
                val = json.dumps({"apiVersion": "projectcalico.org/v3", "kind": "BGPPeer",
                                  "metadata": {"name": name},
                                  "spec": {"peerIP": f"192.0.{i // 250}.{i % 250 + 1}",
                                           "asNumber": 64000 + i}})
                kind = "BGPPeer"
            else:
                val = json.dumps({"apiVersion": "projectcalico.org/v3", "kind": "Node",
                                  "metadata": {"name": name},
                                  "spec": {"bgp": {"ipv4Address": f"172.16.{i // 250}."
                                                                  f"{i % 250 + 1}/24"}}})
                kind = "Node"
            ops.append(client.transactions.put(resource_key(kind, name).encode(), val.encode()))
        for j in range(0, len(ops), 100):
            await client.transaction(compare=[], success=ops[j:j + 100], failure=[])
    finally:
        await client.close()

    store = EtcdDatastore(etcd.endpoint)
    try:
        t0 = time.perf_counter()
        await store.start()
        assert await store.wait_loaded(10)
        elapsed = time.perf_counter() - t0
    finally:
        await store.close()
    snap = store.snapshot
    total = len(snap.ippools) + len(snap.bgp_peers) + len(snap.nodes)
    print(f"\nloaded {total} resources from etcd in {elapsed * 1000:.0f} ms")
    assert total == 1000 and not snap.rejected
    assert elapsed < 1.0


async def test_crud_has_calico_semantics(etcd, store):
    res = parse_resource({"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
                          "metadata": {"name": "p1"}, "spec": {"cidr": "10.1.0.0/16"}})
    with pytest.raises(ResourceNotFound):
        await store.replace(res)
    created = await store.create(res)
    assert created.metadata.uid and created.metadata.creation_timestamp
    assert created.metadata.resource_version
    with pytest.raises(ResourceExists, match=r"IPPool\(p1\)"):
        await store.create(res)

    stored = json.loads(etcd.etcdctl("get", "--print-value-only", resource_key("IPPool", "p1")))
    assert stored["metadata"]["uid"] == created.metadata.uid
    assert "resourceVersion" not in stored["metadata"]  # etcd's mod revision is that
    assert stored["spec"] == {"cidr": "10.1.0.0/16", "ipipMode": "Never",
                              "vxlanMode": "Never", "blockSize": 26, "nodeSelector": "all()",
                              "allowedUses": ["Workload", "Tunnel"]}

    changed = parse_resource({"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
                              "metadata": {"name": "p1"},
                              "spec": {"cidr": "10.1.0.0/16", "natOutgoing": True}})
    replaced = await store.replace(changed)
    assert replaced.spec.nat_outgoing is True
    assert replaced.metadata.uid == created.metadata.uid  # identity survives an update
    assert int(replaced.metadata.resource_version) > int(created.metadata.resource_version)

    applied = await store.apply(parse_resource({
        "apiVersion": "projectcalico.org/v3", "kind": "IPPool", "metadata": {"name": "p2"},
        "spec": {"cidr": "10.2.0.0/16"}}))
    assert [r.metadata.name for r in await store.list("ippools")] == ["p1", "p2"]
    assert (await store.get("ippool", "p2")).metadata.uid == applied.metadata.uid

    await store.delete("IPPool", "p1")
    with pytest.raises(ResourceNotFound):
        await store.get("IPPool", "p1")
    with pytest.raises(ResourceNotFound):
        await store.delete("IPPool", "p1")


async def test_unknown_fields_are_used_counted_once_and_survive_a_write(etcd, store):
    # Issue 13: calico-node v3.31+ writes spec.interfaces into every Node; podbgp used to
    # drop the whole Node for it. A field podbgp does not model is now ignored (logged once
    # per resource and field, counted) and written back unchanged.
    key = resource_key("Node", "n1")
    node = {"apiVersion": "projectcalico.org/v3", "kind": "Node",
            "metadata": {"name": "n1", "uid": "u-1"},
            "spec": {"bgp": {"ipv4Address": "10.0.0.1/24", "futureBGPKnob": "x"},
                     "futureSpec": {"deep": [1, None]}},
            "status": {"podCIDRs": ["10.244.0.0/24"], "futureStatus": None}}
    put(etcd, key, json.dumps(node))
    await store.start()
    snap = await wait_snapshot(store, lambda s: "n1" in s.nodes)
    assert snap.nodes["n1"].spec.bgp.ipv4 == "10.0.0.1" and not snap.rejected
    assert store.stats.unknown_fields_total == {"Node": 3}
    node["spec"]["bgp"]["asNumber"] = 64600  # a rewrite with the same unknown fields
    put(etcd, key, json.dumps(node))
    await wait_snapshot(store, lambda s: s.nodes["n1"].spec.bgp.as_number == 64600)
    assert store.stats.unknown_fields_total == {"Node": 3}

    # bgpctl-style read-modify-write through the datastore keeps every field.
    got = await store.get("node", "n1")
    bgp = got.spec.bgp.model_copy(update={"as_number": 64601})
    await store.replace(got.model_copy(update={"spec": got.spec.model_copy(update={"bgp": bgp})}))
    stored = json.loads(etcd.etcdctl("get", "--print-value-only", key))
    assert stored["spec"]["futureSpec"] == {"deep": [1, None]}
    assert stored["spec"]["bgp"] == {"ipv4Address": "10.0.0.1/24", "futureBGPKnob": "x",
                                     "asNumber": 64601}
    assert stored["status"] == node["status"]
    assert stored["metadata"]["uid"] == "u-1"


async def test_endpoints_are_tried_in_turn(etcd):
    from tests.conftest import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    store = EtcdDatastore(f"{dead},{etcd.endpoint}")
    try:
        await store.start()
        assert await store.wait_loaded(10)
        assert store.endpoint == etcd.endpoint
        assert store.connected
    finally:
        await store.close()


async def test_borrowed_addresses_of_ipam_blocks_reach_the_snapshot(etcd, store):
    # An IPAM block write matters to routing only when its borrowed addresses change;
    # a pod coming and going on the block's own node publishes no snapshot.
    from config.model import Lent

    key = "/calico/ipam/v2/assignment/ipv4/block/10.244.1.0-30"

    def block(nodes):
        attrs = [{"handle_id": f"h{i}", "secondary": {"node": n}} for i, n in enumerate(nodes)]
        allocs = list(range(len(nodes))) + [None] * (4 - len(nodes))
        return json.dumps({"cidr": "10.244.1.0/30", "affinity": "host:n1",
                           "allocations": allocs,
                           "unallocated": list(range(len(nodes), 4)),
                           "attributes": attrs, "strictAffinity": False,
                           "sequenceNumber": 1, "sequenceNumberForAllocation": {},
                           "deleted": False})

    put(etcd, key, block(["n1"]))
    await store.start()
    snap = await wait_snapshot(store, lambda s: s is not None)
    assert snap.lent == ()
    put(etcd, key, block(["n1", "n2"]))
    snap = await wait_snapshot(store, lambda s: s.lent)
    assert snap.lent == (Lent("10.244.1.1", "n2", "n1"),)
    published = store.stats.snapshots_total
    put(etcd, key, block(["n1", "n2", "n1"]))  # another own pod: nothing new to route
    put(etcd, "/calico/ipam/v2/handle/h9", '{"block": {}, "deleted": false}')
    put(etcd, resource_key("IPPool", "p9"), pool_json("p9", "10.9.0.0/16"))  # a marker
    snap = await wait_snapshot(store, lambda s: "p9" in s.ippools)
    assert store.stats.snapshots_total == published + 1 and snap.lent == (
        Lent("10.244.1.1", "n2", "n1"),)
    put(etcd, key, "{not json")  # unreadable: lends nothing, never fatal
    snap = await wait_snapshot(store, lambda s: not s.lent)
    etcd.etcdctl("del", key)
    put(etcd, key, block(["n1", "n3"]))
    snap = await wait_snapshot(store, lambda s: s.lent)
    assert snap.lent == (Lent("10.244.1.1", "n3", "n1"),) and not snap.rejected


async def test_reads_ride_out_a_leader_change_and_other_errors_do_not_retry(etcd, store,
                                                                           monkeypatch):
    # Found by tests/integration/test_etcd_cluster.py: `bgpctl get` right after the leader
    # was killed failed with "UNAVAILABLE: etcdserver: leader changed". etcd's clientv3
    # retries immutable RPCs on UNAVAILABLE (client/v3/retry.go, isSafeRetryImmutableRPC);
    # so do our reads. Other codes fail at once.
    import types

    import grpc

    from config.datastore import DatastoreUnavailable

    put(etcd, resource_key("IPPool", "p"), pool_json("p", "10.244.0.0/16"))
    real_crud = store._crud
    failures: list = []

    def failing(code, times):
        async def crud():
            client = await real_crud()

            def rng(*args, **kwargs):
                if len(failures) < times:
                    failures.append(code)
                    raise grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(),
                                               details="etcdserver: leader changed")
                return client.kvstub.Range(*args, **kwargs)
            return types.SimpleNamespace(kvstub=types.SimpleNamespace(Range=rng))
        failures.clear()
        store._crud = crud

    failing(grpc.StatusCode.UNAVAILABLE, 2)
    assert (await store.get("IPPool", "p")).spec.cidr == "10.244.0.0/16"
    assert len(failures) == 2
    failing(grpc.StatusCode.UNAVAILABLE, 2)
    assert [p.metadata.name for p in await store.list("IPPool")] == ["p"]
    assert len(failures) == 2

    failing(grpc.StatusCode.PERMISSION_DENIED, 5)
    with pytest.raises(DatastoreUnavailable, match="PERMISSION_DENIED"):
        await store.get("IPPool", "p")
    assert len(failures) == 1

    # Retried until the budget is spent: pauses 0.2 + 0.5 + 1.0, the next 1.0 would pass 2 s.
    import config.etcd_store as es
    monkeypatch.setattr(es, "READ_RETRY_BUDGET", 2.0)
    failing(grpc.StatusCode.UNAVAILABLE, 99)
    with pytest.raises(DatastoreUnavailable, match="leader changed"):
        await store.get("IPPool", "p")
    assert len(failures) == 4  # the first try and three more, then the error


async def test_reads_wait_out_an_election_but_not_a_dead_cluster(etcd, store):
    # Found by the fresh-clone CI run (tests/integration/test_etcd_cluster.py): right after
    # the leader was killed, `bgpctl get` met one member refusing connections and two that
    # answered "member has no leader" (an election under way) and failed at once. A member
    # that answers without a leader is an election that will end: the read waits for it.
    # Every member refusing (nothing there) fails at once.
    from config.datastore import DatastoreUnavailable

    put(etcd, resource_key("IPPool", "p"), pool_json("p", "10.244.0.0/16"))
    real_connect = store._connect
    calls: list = []

    def connect_failing(times, transient):
        async def connect():
            if len(calls) < times:
                calls.append(transient)
                err = DatastoreUnavailable("cannot reach etcd: m2: member has no leader")
                err.transient = transient
                raise err
            return await real_connect()
        calls.clear()
        store._crud_client = None
        store._connect = connect

    connect_failing(3, transient=True)
    assert (await store.get("IPPool", "p")).spec.cidr == "10.244.0.0/16"
    assert calls == [True] * 3
    connect_failing(3, transient=False)
    with pytest.raises(DatastoreUnavailable, match="no leader"):
        await store.list("IPPool")
    assert calls == [False]
