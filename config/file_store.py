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

Each document is its own unit, as each key is in etcd: an invalid document
rejects that resource alone (its last good version stays in force, and the
snapshot's `rejected` says why), every other document applies. Only a file
that is not readable YAML at all keeps the whole last good snapshot. A
document with fields podbgp does not model is used and those fields are kept
(read leniently, `config.datastore.UnknownFields`); bgpctl's CRUD edits the
file document by document, so it neither drops a field nor a document it
cannot parse.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
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
    UnknownFields,
    build_snapshot,
)
from config.errors import ConfigError

log = structlog.get_logger(__name__)

POLL_INTERVAL = 0.5
FILE_KINDS = (*SNAPSHOT_FIELDS, "BlockAffinity")


def affinity_of(res: Any) -> Any:
    """A v3 BlockAffinity as the normalized `config.model.Affinity`."""
    return res.to_affinity()


def _identity(doc: Any) -> tuple[str, str] | None:
    """(kind, name) of a decoded document, when it has both as strings."""
    if not isinstance(doc, dict):
        return None
    kind, meta = doc.get("kind"), doc.get("metadata")
    name = meta.get("name") if isinstance(meta, dict) else None
    if isinstance(kind, str) and isinstance(name, str) and name:
        return kind, name
    return None


def parse_file_documents(path: str, docs: list[Any]) -> tuple[
        list[Any], dict[str, ConfigError], dict[str, tuple[str, str]]]:
    """Parse each document on its own: (good resources, rejected, rejected identities).

    ``rejected`` maps a key naming the document (``<path>: IPPool/p1`` or
    ``<path>: document 3``) to its error; a bad document rejects that
    resource alone. ``rejected identities`` maps the same keys to the
    (kind, name) of the resource whose last good version should stay. A
    resource defined twice is rejected (both documents): which one is meant
    is not knowable.
    """
    ids = [_identity(d) for d in docs]
    counts: dict[tuple[str, str], int] = {}
    for ident in ids:
        if ident is not None:
            counts[ident] = counts.get(ident, 0) + 1
    good: list[Any] = []
    rejected: dict[str, ConfigError] = {}
    rejected_ids: dict[str, tuple[str, str]] = {}
    for number, (doc, ident) in enumerate(zip(docs, ids, strict=True), start=1):
        where = f"{path}: {ident[0]}/{ident[1]}" if ident else f"{path}: document {number}"
        try:
            if ident is not None and counts[ident] > 1:
                raise ConfigError(ident[0], ident[1], "metadata.name", ident[1],
                                  "defined twice in the file")
            res = cparse.parse_document(doc, number)
            if res.kind not in FILE_KINDS:
                raise ConfigError(res.kind, res.metadata.name, "kind", res.kind,
                                  f"not supported by the file datastore ({', '.join(FILE_KINDS)})")
        except ConfigError as e:
            rejected[where] = e
            if ident is not None:
                rejected_ids[where] = ident
            continue
        good.append(res)
    return good, rejected, rejected_ids


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
        self._good: dict[tuple[str, str], Any] = {}  # (kind, name) -> last good resource
        self._logged: dict[str, str] = {}  # rejected document -> reason already logged
        self._unknown = UnknownFields(self.stats)

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
            docs = cparse.load_yaml_documents(data.decode("utf-8"))
        except (ConfigError, UnicodeDecodeError) as e:
            self._reject_file(e)
            return
        good, rejected, rejected_ids = parse_file_documents(str(self.path), docs)
        resources = {(r.kind, r.metadata.name): r for r in good}
        texts = {where: str(e) for where, e in rejected.items()}
        for where, e in rejected.items():
            ident = rejected_ids.get(where)
            kept = ident in self._good and ident not in resources
            if ident is not None and kept:
                resources[ident] = self._good[ident]  # last good version stays in force
            if self._logged.get(where) != texts[where]:  # log once per distinct problem
                kind = e.kind if e.kind != "?" else (ident[0] if ident else "?")
                log.warning("config_rejected", key=where, kind=kind, reason=texts[where],
                            kept_last_good=kept)
                self.stats.reject(kind, e.reason or texts[where])
        self._logged = texts
        for ident, res in resources.items():
            self._unknown.note(f"{self.path}: {ident[0]}/{ident[1]}", res)
        self._unknown.keep_only(f"{self.path}: {k}/{n}" for k, n in resources)
        self._good = resources
        self.revision += 1
        values = list(resources.values())
        self._publish(values, [affinity_of(r) for r in values if r.kind == "BlockAffinity"],
                      texts)
        log.info("config_file_loaded", path=str(self.path), revision=self.revision,
                 resources=len(values), rejected=len(rejected))

    def _reject_file(self, e: Exception) -> None:
        """Unreadable as YAML: nothing of it is known, the whole last good snapshot stays."""
        text = str(e)
        reason = e.reason if isinstance(e, ConfigError) and e.reason else text
        self.stats.reject("YAML", reason)
        log.warning("config_rejected", key=str(self.path), kind="YAML", reason=text,
                    kept_last_good=self.revision > 0)
        self._logged = {}
        good = list(self._good.values())
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
        """The file's decoded documents, as they are (List items expanded)."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        except (OSError, UnicodeDecodeError) as e:
            raise DatastoreUnavailable(f"cannot read {self.path}: {e}") from e
        return cparse.load_yaml_documents(text)  # unreadable YAML: ConfigError, no edit

    def _write(self, docs: list[Any]) -> None:
        text = yaml.safe_dump_all(docs, default_flow_style=False, sort_keys=False,
                                  explicit_start=True)
        directory = self.path.parent
        # tempfile (with shutil, random, bz2, lzma: ~0.5 MiB) only when a write comes: a
        # daemon reading the file never writes it (issue 17)
        import tempfile

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
    def _find(docs: list[Any], kind: str, name: str) -> list[int]:
        return [i for i, d in enumerate(docs) if _identity(d) == (kind, name)]

    async def get(self, kind: str, name: str) -> Any:
        kind = ckeys.normalize_kind(kind)
        docs = self._read()
        found = self._find(docs, kind, name)
        if not found:
            raise ResourceNotFound(kind, name)
        return cparse.parse_document(docs[found[0]], found[0] + 1)

    async def list(self, kind: str) -> list[Any]:
        """Every valid resource of ``kind``; an invalid document is skipped (and logged)."""
        kind = ckeys.normalize_kind(kind)
        out = []
        for number, doc in enumerate(self._read(), start=1):
            ident = _identity(doc)
            if ident is None or ident[0] != kind:
                continue
            try:
                out.append(cparse.parse_document(doc, number))
            except ConfigError as e:
                log.warning("config_rejected", key=f"{self.path}: {kind}/{ident[1]}",
                            kind=kind, reason=str(e))
        return sorted(out, key=lambda r: r.metadata.name)

    async def _edit(self, res: Any, mode: str) -> Any:
        if res.kind not in FILE_KINDS:
            raise ConfigError(res.kind, res.metadata.name, "kind", res.kind,
                              "not supported by the file datastore")
        with self._locked():
            docs = self._read()
            found = self._find(docs, res.kind, res.metadata.name)
            if mode == "create" and found:
                raise ResourceExists(res.kind, res.metadata.name)
            if mode == "replace" and not found:
                raise ResourceNotFound(res.kind, res.metadata.name)
            doc = cparse.to_calico_dict(res)
            if found:  # the first definition is replaced, any duplicate goes
                docs[found[0]] = doc
                docs = [d for i, d in enumerate(docs) if i not in found[1:]]
            else:
                docs.append(doc)
            self._write(docs)  # every other document as it was, valid or not
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
            docs = self._read()
            found = self._find(docs, kind, name)
            if not found:
                raise ResourceNotFound(kind, name)
            gone = docs[found[0]]
            self._write([d for i, d in enumerate(docs) if i not in found])
        try:
            return cparse.parse_document(gone, found[0] + 1)
        except ConfigError:
            return None  # it was invalid; it is gone all the same
