"""FileDatastore: load, poll for edits, keep the last good snapshot, atomic CRUD."""

from __future__ import annotations

import asyncio
import os

import pytest

from config.datastore import ResourceExists, ResourceNotFound
from config.errors import ConfigError
from config.file_store import FileDatastore
from config.parse import parse_resource, to_calico_dict

POOL = """\
apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: {name}
spec:
  cidr: {cidr}
"""
PEER = """\
apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata:
  name: rr1
spec:
  peerIP: 192.0.2.1
  asNumber: 64513
"""
AFFINITY = """\
apiVersion: projectcalico.org/v3
kind: BlockAffinity
metadata:
  name: node1-10-1-0-0-26
spec:
  node: node1
  cidr: 10.1.0.0/26
  state: confirmed
  deleted: "false"
"""


def docs(*parts: str) -> str:
    return "---\n".join(parts)


async def wait_snapshot(store, pred, timeout: float = 5.0):
    async def run():
        async for snap in store.snapshots():
            if pred(snap):
                return snap
        raise AssertionError("closed")

    return await asyncio.wait_for(run(), timeout)


def write(path, text: str) -> None:
    # Replace like an editor does (new inode), so the poll sees it even
    # within one mtime tick.
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@pytest.fixture
async def store(tmp_path):
    s = FileDatastore(tmp_path / "podbgp.yaml", poll_interval=0.02)
    yield s
    await s.close()


async def test_load_and_watch_edits(store):
    write(store.path, docs(POOL.format(name="p1", cidr="10.1.0.0/16"), PEER, AFFINITY))
    await store.start()
    snap = store.snapshot
    assert set(snap.ippools) == {"p1"} and set(snap.bgp_peers) == {"rr1"}
    assert [(a.node, a.cidr, a.advertised) for a in snap.affinities] == [
        ("node1", "10.1.0.0/26", True)]
    assert snap.revision == 1

    write(store.path, docs(POOL.format(name="p2", cidr="10.2.0.0/16"), PEER))
    snap = await wait_snapshot(store, lambda s: "p2" in s.ippools)
    assert set(snap.ippools) == {"p2"} and snap.affinities == ()
    assert snap.revision == 2


async def test_one_invalid_document_rejects_that_resource_alone(store):
    # Issue 13: one rejected document used to discard the whole file (a peer edit was
    # lost because an unrelated pool had a typo). Now each document is its own unit.
    write(store.path, docs(POOL.format(name="p1", cidr="10.1.0.0/16"),
                           POOL.format(name="p2", cidr="10.2.0.0/16"), PEER))
    await store.start()
    good = store.snapshot

    # p2 becomes invalid (host bits set), p1 changes validly, a new bad pool appears.
    write(store.path, docs(POOL.format(name="p1", cidr="10.9.0.0/16"),
                           POOL.format(name="p2", cidr="10.2.0.1/16"), PEER,
                           POOL.format(name="bad", cidr="10.3.0.1/16")))
    snap = await wait_snapshot(store, lambda s: s.rejected)
    assert snap.ippools["p1"].spec.cidr == "10.9.0.0/16"  # the valid edit applies
    assert snap.ippools["p2"].spec.cidr == "10.2.0.0/16"  # last good p2 stays in force
    assert "bad" not in snap.ippools  # never valid: nothing to keep
    assert set(snap.bgp_peers) == {"rr1"}
    assert snap.revision == good.revision + 1
    assert sorted(k.rsplit(": ", 1)[1] for k in snap.rejected) == ["IPPool/bad", "IPPool/p2"]
    assert all("spec.cidr" in why for why in snap.rejected.values())
    assert sum(store.stats.rejected_total.values()) == 2

    # The same problems again (another edit elsewhere) are not counted twice.
    write(store.path, docs(POOL.format(name="p1", cidr="10.8.0.0/16"),
                           POOL.format(name="p2", cidr="10.2.0.1/16"), PEER,
                           POOL.format(name="bad", cidr="10.3.0.1/16")))
    snap = await wait_snapshot(store, lambda s: s.ippools["p1"].spec.cidr == "10.8.0.0/16")
    assert sum(store.stats.rejected_total.values()) == 2 and len(snap.rejected) == 2

    # Unreadable YAML: nothing of the file is known, the whole last good snapshot stays.
    write(store.path, "kind: [unclosed\n")
    snap = await wait_snapshot(store, lambda s: "YAML" in next(iter(s.rejected.values()), ""))
    assert snap.ippools["p1"].spec.cidr == "10.8.0.0/16" and set(snap.bgp_peers) == {"rr1"}
    assert sum(store.stats.rejected_total.values()) == 3

    write(store.path, POOL.format(name="p1", cidr="10.7.0.0/16"))
    snap = await wait_snapshot(store, lambda s: not s.rejected)
    assert snap.ippools["p1"].spec.cidr == "10.7.0.0/16" and set(snap.ippools) == {"p1"}


async def test_duplicate_and_unsupported_documents_are_rejected(store):
    write(store.path, docs(POOL.format(name="p1", cidr="10.1.0.0/16"),
                           POOL.format(name="p1", cidr="10.2.0.0/16"),
                           POOL.format(name="p3", cidr="10.3.0.0/16"),
                           "apiVersion: projectcalico.org/v3\nkind: FelixConfiguration\n"
                           "metadata: {name: default}\nspec: {}\n"))
    await store.start()
    assert set(store.snapshot.ippools) == {"p3"}  # which p1 is meant is not knowable
    reasons = " ".join(store.snapshot.rejected.values())
    assert "defined twice" in reasons and "FelixConfiguration" in reasons


async def test_unknown_fields_are_used_logged_once_and_counted(store):
    # calico-node v3.31+ writes fields podbgp may not know; reading never drops for them.
    node = ("apiVersion: projectcalico.org/v3\nkind: Node\nmetadata: {name: n1}\n"
            "spec:\n  bgp: {ipv4Address: 10.0.0.1/24, futureKnob: 3}\n  futureList: [1]\n")
    write(store.path, docs(node, PEER))
    await store.start()
    snap = store.snapshot
    assert snap.nodes["n1"].spec.bgp.ipv4 == "10.0.0.1" and not snap.rejected
    assert store.stats.unknown_fields_total == {"Node": 2}
    write(store.path, docs(node, PEER.replace("64513", "64514")))
    await wait_snapshot(store, lambda s: s.bgp_peers["rr1"].spec.as_number == 64514)
    assert store.stats.unknown_fields_total == {"Node": 2}  # once per resource and field


async def test_missing_file_is_empty_config(store):
    await store.start()
    assert store.snapshot.ippools == {} and not store.snapshot.rejected


def _pool(name: str, cidr: str, **spec):
    return parse_resource({"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
                           "metadata": {"name": name}, "spec": {"cidr": cidr, **spec}})


async def test_crud_edits_file_atomically(store):
    await store.create(_pool("p1", "10.1.0.0/16"))
    with pytest.raises(ResourceExists, match=r"IPPool\(p1\)"):
        await store.create(_pool("p1", "10.1.0.0/16"))
    with pytest.raises(ResourceNotFound):
        await store.replace(_pool("p2", "10.2.0.0/16"))
    await store.apply(_pool("p2", "10.2.0.0/16"))
    await store.replace(_pool("p1", "10.1.0.0/16", natOutgoing=True))
    assert (await store.get("ippools", "p1")).spec.nat_outgoing is True
    assert [r.metadata.name for r in await store.list("IPPool")] == ["p1", "p2"]
    await store.delete("ippool", "p2")
    with pytest.raises(ResourceNotFound):
        await store.delete("ippool", "p2")
    # What was written is a valid file the watcher loads, and no temp file is left.
    await store.start()
    assert set(store.snapshot.ippools) == {"p1"}
    assert sorted(p.name for p in store.path.parent.iterdir()
                  if not p.name.startswith(".podbgp.yaml.lock")) == ["podbgp.yaml"]


async def test_crud_keeps_documents_and_fields_it_does_not_model(store):
    # bgpctl edits the file document by document: an invalid document and fields
    # podbgp does not model are written back as they were.
    bad = POOL.format(name="bad", cidr="10.2.0.1/16")
    node = ("apiVersion: projectcalico.org/v3\nkind: Node\nmetadata: {name: n1}\n"
            "spec:\n  interfaces: [{name: eth0, addresses: [10.0.0.1/24]}]\n"
            "  futureList: [1, null]\nstatus: {futureStatus: x}\n")
    write(store.path, docs(bad, node))
    await store.apply(_pool("p1", "10.1.0.0/16"))
    text = store.path.read_text()
    assert "10.2.0.1/16" in text
    n1 = await store.get("node", "n1")
    out = to_calico_dict(n1)
    assert out["spec"]["futureList"] == [1, None] and out["status"] == {"futureStatus": "x"}
    assert out["spec"]["interfaces"] == [{"name": "eth0", "addresses": ["10.0.0.1/24"]}]
    assert [r.metadata.name for r in await store.list("ippool")] == ["p1"]  # bad skipped
    with pytest.raises(ConfigError, match=r"spec\.cidr"):
        await store.get("ippool", "bad")
    await store.delete("ippool", "bad")
    assert "10.2.0.1/16" not in store.path.read_text()


async def test_crud_refuses_to_edit_an_unreadable_file(store):
    write(store.path, "kind: [unclosed\n")
    before = store.path.read_text()
    with pytest.raises(ConfigError, match="invalid YAML"):
        await store.apply(_pool("p1", "10.1.0.0/16"))
    assert store.path.read_text() == before
