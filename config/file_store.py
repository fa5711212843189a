"""The file datastore: one YAML file of projectcalico.org/v3 documents, watched.

Owned by config/. One `FileDatastore` per process; its poll task (started by
`start()`) is the only writer of `revision`, `stats` and the snapshot channel.
CRUD (bgpctl) rewrites the file atomically under an advisory lock and never
touches the poll task's state; the poll task sees the new file like any edit.

Why polling and not inotify: inotify is not in the standard library, and a
watch on the file's inode misses the ways files are really replaced (an
editor's write-and-rename, a Kubernetes ConfigMap's `..data` symlink swap).
One `stat()` every 0.5 s costs nothing, and a content hash guards against
mtime granularity and touch-without-change.

The whole file is one unit: if any document is invalid, the last good
snapshot stays in force (republished with `rejected` saying why), because a
half-applied file could, say, drop a peer whose replacement failed to parse.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import structlog
import yaml

from config import keys as ckeys
from config import parse as cparse
from config.datastore import (
    SNAPSHOT_FIELDS,
    DatastoreStats,
    DatastoreUnavailable,
    ResourceExists,
    ResourceNotFound,
    SnapshotChannel,
    build_snapshot,
)
from config.errors import ConfigError

log = structlog.get_logger(__name__)

POLL_INTERVAL = 0.5
FILE_KINDS = (*SNAPSHOT_FIELDS, "BlockAffinity")


def affinity_of(res: Any) -> Any:
    """A v3 BlockAffinity as the normalized `config.model.Affinity`."""
    return res.to_affinity()


def _check_unique(resources: list[Any]) -> None:
    seen: set[tuple[str, str]] = set()
    for res in resources:
        ident = (res.kind, res.metadata.name)
        if ident in seen:
            raise ConfigError(res.kind, res.metadata.name, "metadata.name", res.metadata.name,
                              "defined twice in the file")
        seen.add(ident)
        if res.kind not in FILE_KINDS:
            raise ConfigError(res.kind, res.metadata.name, "kind", res.kind,
                              f"not supported by the file datastore ({', '.join(FILE_KINDS)})")


def parse_file_text(text: str) -> list[Any]:
    """All resources of one file; raises ConfigError for the first bad document."""
    resources = cparse.parse_yaml_documents(text)
    _check_unique(resources)
    return resources


class FileDatastore:
    """A YAML file as datastore: snapshots for the daemon, CRUD for bgpctl.

    A missing file is an empty configuration (logged), so `bgpctl create`
    can start one from nothing.
    """

    def __init__(self, path: str | os.PathLike, *, poll_interval: float = POLL_INTERVAL) -> None:
        self.path = Path(path)
        self.poll_interval = poll_interval
        self.connected = False
        self.revision = 0
        self.stats = DatastoreStats()
        self._channel = SnapshotChannel()
        self._task: asyncio.Task | None = None
        self._stat: tuple | None = None
        self._digest: bytes | None = None
        self._good: list[Any] = []
        self._rejected_reason: str | None = None

    # --------------------------------------------------------------- watcher

    async def start(self) -> None:
        """Load the file now (a snapshot is available on return), then poll it."""
        if self._task is None:
            self._check()
            self._task = asyncio.create_task(self._poll(), name="file-datastore")

    async def wait_loaded(self, timeout: float | None = None) -> bool:
        """Same as EtcdDatastore's: `start()` already loaded the file."""
        return self._channel.latest is not None

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._channel.close()

    def snapshots(self) -> AsyncIterator[Any]:
        return self._channel.subscribe()

    @property
    def snapshot(self) -> Any:
        return self._channel.latest

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                self._check()
            except Exception as e:  # never let the watcher die; say why and go on
                log.error("config_file_poll_failed", path=str(self.path), error=str(e))

    def _stat_key(self) -> tuple | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _check(self) -> None:
        """Reload if the file changed (stat first, then content hash)."""
        key = self._stat_key()
        if key == self._stat and self.revision:
            return
        self._stat = key
        if key is None:
            data = b""
            if self.revision == 0 or self._digest != hashlib.sha256(b"").digest():
                log.warning("config_file_missing", path=str(self.path))
        else:
            try:
                data = self.path.read_bytes()
            except OSError as e:
                self.connected = False
                log.error("config_file_unreadable", path=str(self.path), error=e.strerror)
                return
        digest = hashlib.sha256(data).digest()
        if digest == self._digest:
            return
        self._digest = digest
        self.connected = True
        try:
            text = data.decode("utf-8")
            resources = parse_file_text(text)
            affinities = [affinity_of(r) for r in resources if r.kind == "BlockAffinity"]
        except (ConfigError, UnicodeDecodeError, ValueError) as e:
            self._reject(e)
            return
        self._good = resources
        self._rejected_reason = None
        self.revision += 1
        self._publish(resources, affinities, {})
        log.info("config_file_loaded", path=str(self.path), revision=self.revision,
                 resources=len(resources))

    def _reject(self, e: Exception) -> None:
        text = str(e)
        kind = e.kind if isinstance(e, ConfigError) else "?"
        reason = e.reason if isinstance(e, ConfigError) and e.reason else text
        self.stats.reject(kind, reason)
        self._rejected_reason = text
        log.warning("config_rejected", key=str(self.path), kind=kind, reason=text,
                    kept_last_good=self.revision > 0)
        good = self._good
        self._publish(good, [affinity_of(r) for r in good if r.kind == "BlockAffinity"],
                      {str(self.path): text})

    def _publish(self, resources: list[Any], affinities: list[Any],
                 rejected: dict[str, str]) -> None:
        self.stats.snapshots_total += 1
        self._channel.publish(build_snapshot(self.revision, resources, affinities, rejected))

    # ------------------------------------------------------------------ CRUD

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # A sidecar lock file: the config file itself is replaced by rename,
        # so a lock on its inode would not exclude the next writer.
        lock_path = self.path.with_name(f".{self.path.name}.lock")
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as e:
            raise DatastoreUnavailable(f"cannot lock {lock_path}: {e.strerror}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _read(self) -> list[Any]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        except (OSError, UnicodeDecodeError) as e:
            raise DatastoreUnavailable(f"cannot read {self.path}: {e}") from e
        return parse_file_text(text)

    def _write(self, resources: list[Any]) -> None:
        docs = [cparse.to_calico_dict(r) for r in resources]
        text = yaml.safe_dump_all(docs, default_flow_style=False, sort_keys=False,
                                  explicit_start=True)
        directory = self.path.parent
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=directory)
        except OSError as e:
            raise DatastoreUnavailable(f"cannot write in {directory}: {e.strerror}") from e
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            with contextlib.suppress(FileNotFoundError):
                os.chmod(tmp, self.path.stat().st_mode & 0o7777)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    @staticmethod
    def _find(resources: list[Any], kind: str, name: str) -> int | None:
        for i, r in enumerate(resources):
            if r.kind == kind and r.metadata.name == name:
                return i
        return None

    async def get(self, kind: str, name: str) -> Any:
        kind = ckeys.normalize_kind(kind)
        resources = self._read()
        i = self._find(resources, kind, name)
        if i is None:
            raise ResourceNotFound(kind, name)
        return resources[i]

    async def list(self, kind: str) -> list[Any]:
        kind = ckeys.normalize_kind(kind)
        return sorted((r for r in self._read() if r.kind == kind), key=lambda r: r.metadata.name)

    async def _edit(self, res: Any, mode: str) -> Any:
        if res.kind not in FILE_KINDS:
            raise ConfigError(res.kind, res.metadata.name, "kind", res.kind,
                              "not supported by the file datastore")
        with self._locked():
            resources = self._read()
            i = self._find(resources, res.kind, res.metadata.name)
            if mode == "create" and i is not None:
                raise ResourceExists(res.kind, res.metadata.name)
            if mode == "replace" and i is None:
                raise ResourceNotFound(res.kind, res.metadata.name)
            if i is None:
                resources.append(res)
            else:
                resources[i] = res
            self._write(resources)
        return res

    async def create(self, res: Any) -> Any:
        return await self._edit(res, "create")

    async def apply(self, res: Any) -> Any:
        return await self._edit(res, "apply")

    async def replace(self, res: Any) -> Any:
        return await self._edit(res, "replace")

    async def delete(self, kind: str, name: str) -> Any:
        kind = ckeys.normalize_kind(kind)
        with self._locked():
            resources = self._read()
            i = self._find(resources, kind, name)
            if i is None:
                raise ResourceNotFound(kind, name)
            gone = resources.pop(i)
            self._write(resources)
        return gone
