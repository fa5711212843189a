"""FileDatastore: load, poll for edits, keep the last good snapshot, atomic CRUD."""

from __future__ import annotations

import asyncio
import os

import pytest

from config.datastore import ResourceExists, ResourceNotFound
from config.errors import ConfigError
from config.file_store import FileDatastore
from config.parse import parse_resource

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


async def test_invalid_edit_keeps_whole_last_good_snapshot(store):
    write(store.path, docs(POOL.format(name="p1", cidr="10.1.0.0/16"), PEER))
    await store.start()
    good = store.snapshot

    # One bad document (host bits set) among good ones: nothing of the edit applies.
    write(store.path, docs(POOL.format(name="p1", cidr="10.9.0.0/16"),
                           POOL.format(name="bad", cidr="10.2.0.1/16")))
    snap = await wait_snapshot(store, lambda s: s.rejected)
    assert snap.ippools["p1"].spec.cidr == "10.1.0.0/16"
    assert set(snap.bgp_peers) == {"rr1"}
    assert snap.revision == good.revision
    (reason,) = snap.rejected.values()
    assert 'IPPool "bad"' in reason and "spec.cidr" in reason
    assert sum(store.stats.rejected_total.values()) == 1

    write(store.path, "kind: [unclosed\n")
    snap = await wait_snapshot(store, lambda s: "YAML" in next(iter(s.rejected.values()), ""))
    assert snap.ippools["p1"].spec.cidr == "10.1.0.0/16"
    assert sum(store.stats.rejected_total.values()) == 2

    write(store.path, POOL.format(name="p1", cidr="10.7.0.0/16"))
    snap = await wait_snapshot(store, lambda s: not s.rejected)
    assert snap.ippools["p1"].spec.cidr == "10.7.0.0/16"
    assert snap.revision == good.revision + 1


async def test_duplicate_and_unsupported_documents_are_rejected(store):
    write(store.path, docs(POOL.format(name="p1", cidr="10.1.0.0/16"),
                           POOL.format(name="p1", cidr="10.2.0.0/16")))
    await store.start()
    assert store.snapshot.ippools == {}
    assert "defined twice" in next(iter(store.snapshot.rejected.values()))


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


async def test_crud_refuses_to_edit_an_invalid_file(store):
    write(store.path, POOL.format(name="bad", cidr="10.2.0.1/16"))
    before = store.path.read_text()
    with pytest.raises(ConfigError, match=r"spec\.cidr"):
        await store.apply(_pool("p1", "10.1.0.0/16"))
    assert store.path.read_text() == before
