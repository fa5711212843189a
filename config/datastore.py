"""What the two datastores share: the protocol, the snapshot channel, stats.

Owned by config/. The etcd and file datastores each own one
`SnapshotChannel` and one `DatastoreStats`; their watcher task is the only
writer of both. Subscribers (the daemon) only read.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import structlog

_log = structlog.get_logger("config.datastore")

# Kinds a Snapshot carries, and the Snapshot field each one goes to.
SNAPSHOT_FIELDS: dict[str, str] = {
    "IPPool": "ippools",
    "BGPConfiguration": "bgp_configurations",
    "BGPPeer": "bgp_peers",
    "BGPFilter": "bgp_filters",
    "Node": "nodes",
}

# How a rejection reason becomes a metric label: bounded length, because the
# label set must stay small even if a reason text quotes something long.
_REASON_MAX = 60


class DatastoreError(Exception):
    """A CRUD request failed; ``str()`` is the one line bgpctl prints."""


class ResourceExists(DatastoreError):
    def __init__(self, kind: str, name: str) -> None:
        super().__init__(f"resource already exists: {kind}({name})")
        self.kind, self.name = kind, name


class ResourceNotFound(DatastoreError):
    def __init__(self, kind: str, name: str) -> None:
        super().__init__(f"resource does not exist: {kind}({name})")
        self.kind, self.name = kind, name


class ResourceConflict(DatastoreError):
    """The resource changed between read and write (resourceVersion mismatch)."""

    def __init__(self, kind: str, name: str, detail: str = "") -> None:
        msg = f"update conflict: {kind}({name})"
        super().__init__(f"{msg}: {detail}" if detail else msg)
        self.kind, self.name = kind, name


class DatastoreUnavailable(DatastoreError):
    """No endpoint answered (etcd) or the file cannot be read/written."""

    # True when waiting may end it (etcd members answering without a leader yet).
    transient: bool = False


def reason_label(reason: str) -> str:
    """A short, stable label: the reason's head, without the quoted details."""
    reason = " ".join(str(reason).split()).split(": ", 1)[0]
    return reason if len(reason) <= _REASON_MAX else reason[: _REASON_MAX - 3] + "..."


@dataclass
class DatastoreStats:
    """Plain counters, written only by the datastore's own task.

    The daemon copies them into Prometheus (docs/metrics.md); keeping them
    plain keeps config/ free of the metrics library.
    """

    rejected_total: Counter = field(default_factory=Counter)  # (kind, reason) -> n
    unknown_fields_total: Counter = field(default_factory=Counter)  # kind -> n
    reconnects_total: int = 0
    reloads_total: int = 0
    snapshots_total: int = 0
    events_total: int = 0

    def reject(self, kind: str, reason: str) -> None:
        self.rejected_total[(kind or "?", reason_label(reason))] += 1


class UnknownFields:
    """Fields podbgp does not model, in resources read from a datastore.

    Such a resource is used as it is (read leniently, docs/calico-compatibility.md); each field
    is logged once per resource and field (``config_unknown_field``, at
    warning level) and counted once in ``stats.unknown_fields_total[kind]``
    (``podbgp_config_unknown_fields_total{kind}``), however often the
    resource is written again. Owned by one datastore's watcher task.
    """

    def __init__(self, stats: DatastoreStats) -> None:
        self._stats = stats
        self._seen: dict[str, frozenset[str]] = {}

    def note(self, key: str, res: Any) -> None:
        """Record the unknown fields of ``res``, read from ``key``."""
        from config.parse import unknown_fields

        found = unknown_fields(res)
        if not found and key not in self._seen:
            return
        seen = self._seen.get(key, frozenset())
        for path, _ in found:
            if path not in seen:
                self._stats.unknown_fields_total[res.kind] += 1
                _log.warning("config_unknown_field", key=key, kind=res.kind,
                             name=res.metadata.name, field=path,
                             action="ignored; kept and written back unchanged")
        paths = frozenset(path for path, _ in found)
        if paths:
            self._seen[key] = seen | paths
        else:
            self._seen.pop(key, None)

    def forget(self, key: str) -> None:
        """The resource at ``key`` is gone: a new one is logged afresh."""
        self._seen.pop(key, None)

    def keep_only(self, keys: Iterable[str]) -> None:
        """Forget every resource not in ``keys`` (after a full reload)."""
        live = set(keys)
        for key in [k for k in self._seen if k not in live]:
            del self._seen[key]


class SnapshotChannel:
    """Latest-wins broadcast of Snapshots to any number of subscribers.

    The producer calls `publish()`; each subscriber iterates `subscribe()` and
    gets the newest snapshot it has not seen yet, so a slow consumer skips
    intermediate snapshots instead of queueing them. Owned by one datastore.
    """

    def __init__(self) -> None:
        self._latest: Any = None
        self._seq = 0
        self._changed = asyncio.Event()
        self._closed = False

    @property
    def latest(self) -> Any:
        return self._latest

    def publish(self, snapshot: Any) -> None:
        self._latest = snapshot
        self._seq += 1
        # A fresh Event per publication: waiters of the old one all wake once.
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def close(self) -> None:
        self._closed = True
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def subscribe(self) -> AsyncIterator[Any]:
        seen = 0
        while True:
            if self._seq > seen:
                seen = self._seq
                yield self._latest
                continue
            if self._closed:
                return
            await self._changed.wait()


@runtime_checkable
class Datastore(Protocol):
    """What the daemon and bgpctl use; EtcdDatastore and FileDatastore implement it."""

    connected: bool
    revision: int
    stats: DatastoreStats

    async def start(self) -> None: ...
    async def close(self) -> None: ...
    def snapshots(self) -> AsyncIterator[Any]: ...
    async def get(self, kind: str, name: str) -> Any: ...
    async def list(self, kind: str) -> list[Any]: ...
    async def create(self, res: Any) -> Any: ...
    async def apply(self, res: Any) -> Any: ...
    async def replace(self, res: Any) -> Any: ...
    async def delete(self, kind: str, name: str) -> Any: ...


def build_snapshot(
    revision: int,
    resources: Iterable[Any],
    affinities: Iterable[Any],
    rejected: Mapping[str, str],
    lent: Iterable[Any] = (),
) -> Any:
    """A Snapshot from parsed resources (any order), Affinity and Lent records."""
    from config.snapshot import Snapshot

    maps: dict[str, dict[str, Any]] = {f: {} for f in SNAPSHOT_FIELDS.values()}
    for res in resources:
        target = SNAPSHOT_FIELDS.get(res.kind)
        if target is not None:
            maps[target][res.metadata.name] = res
    ordered = {f: dict(sorted(m.items())) for f, m in maps.items()}
    affs = tuple(sorted(affinities, key=lambda a: (a.node, str(a.cidr))))
    return Snapshot(
        revision=revision,
        affinities=affs,
        rejected=dict(sorted(rejected.items())),
        lent=tuple(sorted(lent, key=lambda x: (x.owner, x.ip))),
        **ordered,
    )
