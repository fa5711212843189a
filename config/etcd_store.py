"""The etcd datastore: Calico's etcd layout, read and watched, written by bgpctl.

Owned by config/. One `EtcdDatastore` per process; its watcher task (started
by `start()`) is the only writer of the resource state, `revision`,
`connected`, `stats` and the snapshot channel. CRUD calls (bgpctl) use their
own short-lived requests and never touch the watcher's state.

Why the raw gRPC stubs rather than aetcd's high-level watch: aetcd hands out
one event at a time, but a Calico transaction is one watch *response*; taking
whole responses lets one snapshot reflect one revision, and lets us see the
`compact_revision` of a resumed watch directly.

One range watch covers every prefix we read (`/calico/ipam/v2/assignment/`
and `/calico/ipam/v2/host/` sort before `/calico/resources/v3/projectcalico.org/`),
so there is a single revision to resume from; keys between them (IPAM handles,
the IPAM config) are ignored. Of an IPAM block only its borrowed addresses are
kept (`Snapshot.lent`), and a block write publishes a snapshot only when those
change, so pods coming and going in their own node's blocks cost a parse, not a
new plan.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

import aetcd
import grpc
import structlog
from aetcd import rpc
from aetcd.utils import prefix_range_end

from config import keys as ckeys
from config import parse as cparse
from config.datastore import (
    SNAPSHOT_FIELDS,
    DatastoreStats,
    DatastoreUnavailable,
    ResourceConflict,
    ResourceExists,
    ResourceNotFound,
    SnapshotChannel,
    UnknownFields,
    build_snapshot,
)
from config.errors import ConfigError
from config.etcd_client import EtcdClient, parse_endpoints, read_credentials

log = structlog.get_logger(__name__)

BACKOFF_MIN = 0.1
BACKOFF_MAX = 5.0
RPC_TIMEOUT = 5.0
PROBE_TIMEOUT = 2.0
# A read answered UNAVAILABLE (a leader election, "etcdserver: leader changed", a member
# going away), or refused because every member that answered has no leader yet, is tried
# again after these pauses (the last repeats) until READ_RETRY_BUDGET seconds have passed,
# as etcd's clientv3 retries immutable RPCs until its context ends (client/v3/retry.go,
# isSafeRetryImmutableRPC). Writes are not retried. An election after the leader died
# takes an election timeout or more, longer on a loaded machine (CI saw > 1.7 s).
READ_RETRY_PAUSES = (0.2, 0.5, 1.0)
READ_RETRY_BUDGET = 8.0

# etcd's "require leader" metadata (clientv3.WithRequireLeader): a member that has
# lost its leader (partitioned from the others) ends the watch with "no leader"
# instead of serving it on, silently stale, until the partition heals.
REQUIRE_LEADER = (("hasleader", "true"),)

# Keepalive so a silently dead etcd (no RST) is noticed in ~15 s; etcd's
# default --grpc-keepalive-min-time is 5 s, so 10 s pings are accepted.
_CHANNEL_OPTIONS = {
    "grpc.keepalive_time_ms": 10_000,
    "grpc.keepalive_timeout_ms": 5_000,
    "grpc.keepalive_permit_without_calls": 1,
    "grpc.http2.max_pings_without_data": 0,
    "grpc.max_receive_message_length": 256 * 1024 * 1024,
    # We do our own capped backoff; do not let gRPC wait up to 120 s.
    "grpc.initial_reconnect_backoff_ms": 100,
    "grpc.max_reconnect_backoff_ms": 5_000,
}


class _Compacted(Exception):
    def __init__(self, compact_revision: int) -> None:
        super().__init__(f"revision compacted below {compact_revision}")
        self.compact_revision = compact_revision


def _now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _kind_of_key(key: str) -> str:
    if key.startswith(ckeys.IPAM_HOST_PREFIX):
        return "BlockAffinity"
    parsed = ckeys.parse_resource_key(key) or ckeys.parse_namespaced_key(key)
    return parsed[0] if parsed else "?"


class EtcdDatastore:
    """Calico's etcd datastore: snapshots for the daemon, CRUD for bgpctl.

    ``endpoints`` are tried in turn (starting from the last one that worked);
    ``ca``/``cert``/``key`` are PEM file paths for TLS (``https://`` endpoints,
    or any endpoint when ``ca`` is given).
    """

    def __init__(
        self,
        endpoints: str | Sequence[str] = "http://127.0.0.1:2379",
        ca: str | None = None,
        cert: str | None = None,
        key: str | None = None,
        *,
        backoff_min: float = BACKOFF_MIN,
        backoff_max: float = BACKOFF_MAX,
        rpc_timeout: float = RPC_TIMEOUT,
    ) -> None:
        self._endpoints = parse_endpoints(endpoints)
        self._ca, self._cert, self._key = ca, cert, key
        if (cert is None) != (key is None):
            raise ValueError("etcd TLS: give both a client certificate and its key, or neither")
        self._credentials: grpc.ChannelCredentials | None = None
        self._backoff_min, self._backoff_max = backoff_min, backoff_max
        self._rpc_timeout = rpc_timeout
        self._ep_index = 0
        self._crud_client: EtcdClient | None = None

        self.connected = False
        self.revision = 0
        self.stats = DatastoreStats()
        #: monotonic time of the next reconnect attempt while disconnected (else None)
        self.next_retry_at: float | None = None
        self.endpoint: str | None = None

        # Watcher state: key -> last good parsed value; key -> why its current
        # value is rejected (the last good one, if any, stays above).
        self._resources: dict[str, Any] = {}
        self._affinities: dict[str, Any] = {}
        self._rejected: dict[str, str] = {}
        self._lent: dict[str, tuple] = {}  # IPAM block key -> its borrowed addresses
        self._block_errors: dict[str, str] = {}
        self._unknown = UnknownFields(self.stats)
        self._channel = SnapshotChannel()
        self._task: asyncio.Task | None = None
        self._backoff = backoff_min
        self._loaded = asyncio.Event()

    # ------------------------------------------------------------ connection

    def _creds(self) -> grpc.ChannelCredentials:
        if self._credentials is None:
            try:
                self._credentials = read_credentials(self._ca, self._cert, self._key)
            except OSError as e:
                raise DatastoreUnavailable(f"etcd TLS: {e.strerror}") from e
        return self._credentials

    def _make_client(self, host: str, port: int, tls: bool) -> EtcdClient:
        creds = self._creds() if (tls or self._ca) else None
        return EtcdClient(host, port, creds, timeout=self._rpc_timeout, options=_CHANNEL_OPTIONS)

    async def _connect(self) -> EtcdClient:
        """A client to the first endpoint that answers, starting at the last good one."""
        errors = []
        leaderless = False
        n = len(self._endpoints)
        for i in range(n):
            idx = (self._ep_index + i) % n
            host, port, tls = self._endpoints[idx]
            client = self._make_client(host, port, tls)
            try:
                await client.connect()
                status = await client.maintenancestub.Status(rpc.StatusRequest(),
                                                             timeout=PROBE_TIMEOUT)
                if not status.leader:
                    # Cut off from the other members, or an election under way: its data
                    # may be stale.
                    leaderless = True
                    raise DatastoreUnavailable("member has no leader")
            except (TimeoutError, grpc.RpcError, aetcd.ClientError, OSError,
                    DatastoreUnavailable) as e:
                errors.append(f"{host}:{port}: {_rpc_text(e)}")
                with contextlib.suppress(Exception):
                    await client.close()
                continue
            self._ep_index = idx
            self.endpoint = f"{'https' if tls else 'http'}://{host}:{port}"
            return client
        err = DatastoreUnavailable("cannot reach etcd: " + "; ".join(errors))
        err.transient = leaderless  # a member answered: an election may end it
        raise err

    # --------------------------------------------------------------- watcher

    async def start(self) -> None:
        """Start the watcher task (returns at once; see `wait_loaded`)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="etcd-watcher")

    async def wait_loaded(self, timeout: float | None = None) -> bool:
        """True once the first full load produced a snapshot."""
        try:
            await asyncio.wait_for(self._loaded.wait(), timeout)
            return True
        except TimeoutError:
            return False

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._crud_client is not None:
            with contextlib.suppress(Exception):
                await self._crud_client.close()
            self._crud_client = None
        self.connected = False
        self._channel.close()

    def snapshots(self) -> AsyncIterator[Any]:
        return self._channel.subscribe()

    @property
    def snapshot(self) -> Any:
        """The latest snapshot (None before the first load)."""
        return self._channel.latest

    async def _run(self) -> None:
        self._backoff = self._backoff_min
        need_reload = True
        while True:
            client: EtcdClient | None = None
            try:
                client = await self._connect()
                if need_reload:
                    await self._load(client)
                    need_reload = False
                    self._established()
                await self._watch(client, on_established=self._established)
                raise DatastoreUnavailable("watch stream ended")
            except _Compacted as e:
                log.warning("etcd_watch_compacted", resume_from=self.revision + 1,
                            compact_revision=e.compact_revision)
                need_reload = True
                continue  # reload at once: etcd is up, only our history is gone
            except asyncio.CancelledError:
                raise
            except Exception as e:  # any failure: keep the last snapshot, retry
                was = self.connected
                self.connected = False
                self.stats.reconnects_total += 1
                backoff = self._backoff
                self.next_retry_at = time.monotonic() + backoff
                log.warning("etcd_disconnected" if was else "etcd_unreachable",
                            error=_rpc_text(e), retry_in=round(backoff, 2),
                            revision=self.revision)
                await asyncio.sleep(backoff)
                self._backoff = min(backoff * 2, self._backoff_max)
            finally:
                if client is not None:
                    with contextlib.suppress(Exception):
                        await client.close()

    def _established(self) -> None:
        if not self.connected:
            log.info("etcd_connected", endpoint=self.endpoint, revision=self.revision)
        self.connected = True
        self.next_retry_at = None
        self._backoff = self._backoff_min  # a working watch resets the backoff

    async def _range(self, client: EtcdClient, prefix: str, revision: int = 0) -> Any:
        req = rpc.RangeRequest(key=prefix.encode(),
                               range_end=prefix_range_end(prefix.encode()),
                               revision=revision)
        try:
            return await client.kvstub.Range(req, timeout=self._rpc_timeout)
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.OUT_OF_RANGE:
                raise _Compacted(revision) from e
            raise

    async def _load(self, client: EtcdClient) -> None:
        """Full load of both prefixes at one revision; replaces the state."""
        t0 = time.perf_counter()
        res_resp = await self._range(client, ckeys.RESOURCES_PREFIX)
        rev = res_resp.header.revision
        aff_resp = await self._range(client, ckeys.IPAM_HOST_PREFIX, revision=rev)
        blocks = (await self._range(client, ckeys.IPAM_BLOCK_PREFIX, revision=rev)).kvs \
            if self._wants_blocks() else ()
        old_res, old_aff = self._resources, self._affinities
        self._resources, self._affinities, self._lent = {}, {}, {}
        old_rejected, self._rejected = self._rejected, {}
        for kv in (*res_resp.kvs, *aff_resp.kvs, *blocks):
            key = kv.key.decode("utf-8", "replace")
            self._apply_put(key, kv.value, old_res, old_aff, old_rejected)
        self._unknown.keep_only(self._resources)
        reload = self.revision != 0
        self.revision = rev
        if reload:
            self.stats.reloads_total += 1
        self.connected = True  # before publishing: a subscriber may look at it
        self._publish()
        self._loaded.set()
        log.info("etcd_loaded", revision=rev, resources=len(self._resources),
                 affinities=len(self._affinities), rejected=len(self._rejected),
                 seconds=round(time.perf_counter() - t0, 3), reload=reload)

    def _apply_put(self, key: str, raw: bytes, old_res: dict | None = None,
                   old_aff: dict | None = None, old_rejected: dict | None = None) -> bool:
        """Parse one value into the state; False if the key is not ours."""
        old_res = self._resources if old_res is None else old_res
        old_aff = self._affinities if old_aff is None else old_aff
        old_rejected = self._rejected if old_rejected is None else old_rejected
        route = self._parser_for(key)
        if route is None:
            return False  # another Calico kind (felixconfigurations, ...): not ours
        where, parse = route
        if where == "block":
            return self._apply_block(key, raw, parse)
        if where == "affinity":
            target, previous = self._affinities, old_aff
        else:
            target, previous = self._resources, old_res
        try:
            value = parse(key, raw)
        except Exception as e:  # ConfigError, or anything a hostile value provokes
            reason = e.reason if isinstance(e, ConfigError) and e.reason else str(e)
            text = str(e)
            kind = e.kind if isinstance(e, ConfigError) and e.kind != "?" else _kind_of_key(key)
            if old_rejected.get(key) != text:  # log once per distinct problem
                log.warning("config_rejected", key=key, kind=kind, reason=text,
                            kept_last_good=key in previous)
                self.stats.reject(kind, reason)
            self._rejected[key] = text
            if key in previous:
                target[key] = previous[key]
            return True
        target[key] = value
        if target is self._resources:
            self._unknown.note(key, value)
        self._rejected.pop(key, None)
        return True

    def _apply_block(self, key: str, raw: bytes, parse: Any) -> bool:
        """An IPAM block: only its borrowed addresses matter (``Snapshot.lent``); True
        when they changed. A block podbgp cannot read lends nothing (logged once)."""
        try:
            lent = parse(key, raw)
        except Exception as e:  # a hostile or foreign value: never fatal
            text = str(e)
            if self._block_errors.get(key) != text:
                self._block_errors[key] = text
                log.warning("ipam_block_unreadable", key=key, reason=text[:200],
                            note="its borrowed addresses are not routed")
            lent = ()
        else:
            self._block_errors.pop(key, None)
        if self._lent.get(key, ()) == lent:
            return False
        if lent:
            self._lent[key] = lent
        else:
            self._lent.pop(key, None)
        return True

    def _wants_blocks(self) -> bool:
        """Whether this datastore keeps IPAM blocks (a subclass that does not, e.g. the
        policy agent's, neither loads nor watches them)."""
        return self._parser_for(ckeys.IPAM_BLOCK_PREFIX + "ipv4/block/0.0.0.0-32") is not None

    def _parser_for(self, key: str) -> tuple[str, Any] | None:
        """("affinity"|"resource"|"block", parse function) for a key this datastore
        keeps, None for one it ignores. A subclass watching other kinds (the policy
        agent's) overrides this and `_build_snapshot`."""
        if key.startswith(ckeys.IPAM_HOST_PREFIX):
            return "affinity", cparse.parse_affinity
        if key.startswith(ckeys.IPAM_BLOCK_PREFIX) and "/block/" in key:
            return "block", cparse.parse_block_lending
        parsed_key = ckeys.parse_resource_key(key)
        if parsed_key is None or parsed_key[0] not in SNAPSHOT_FIELDS:
            return None
        return "resource", cparse.parse_json

    def _build_snapshot(self) -> Any:
        return build_snapshot(self.revision, self._resources.values(),
                              self._affinities.values(), self._rejected,
                              [x for lent in self._lent.values() for x in lent])

    def _apply_delete(self, key: str) -> bool:
        hit = False
        for d in (self._resources, self._affinities, self._rejected, self._lent):
            hit = d.pop(key, None) is not None or hit
        self._unknown.forget(key)
        return hit

    def _publish(self) -> None:
        snap = self._build_snapshot()
        self.stats.snapshots_total += 1
        self._channel.publish(snap)

    async def _watch(self, client: EtcdClient, on_established: Any = None) -> None:
        # One range from the IPAM blocks to the resources: blocks, config, handles
        # (ignored), host affinities, then /calico/resources/v3/...
        first = ckeys.IPAM_BLOCK_PREFIX if self._wants_blocks() else ckeys.IPAM_HOST_PREFIX
        start = first.encode()
        end = prefix_range_end(ckeys.RESOURCES_PREFIX.encode())
        create = rpc.WatchRequest(create_request=rpc.WatchCreateRequest(
            key=start, range_end=end, start_revision=self.revision + 1,
            progress_notify=True))
        stop = asyncio.Event()

        async def requests() -> AsyncIterator[Any]:
            yield create
            # Keep the request side open for the life of the stream.
            await stop.wait()

        call = client.watchstub.Watch(requests(), metadata=REQUIRE_LEADER)
        try:
            async for resp in call:
                if resp.compact_revision:
                    raise _Compacted(resp.compact_revision)
                if resp.canceled:
                    raise DatastoreUnavailable(f"watch canceled: {resp.cancel_reason}")
                if resp.created:
                    if on_established:
                        on_established()
                    continue
                if not resp.events:
                    # Progress notification: every event up to this revision has
                    # been sent, so a resume may start after it (fewer reloads).
                    self.revision = max(self.revision, resp.header.revision)
                    continue
                changed = False
                last = self.revision
                for ev in resp.events:
                    self.stats.events_total += 1
                    key = ev.kv.key.decode("utf-8", "replace")
                    if ev.type == rpc.Event.EventType.PUT:
                        changed = self._apply_put(key, ev.kv.value) or changed
                    else:
                        changed = self._apply_delete(key) or changed
                    last = max(last, ev.kv.mod_revision)
                if resp.events:
                    self.revision = last
                if changed:
                    self._publish()
        finally:
            stop.set()
            call.cancel()

    # ------------------------------------------------------------------ CRUD

    async def _crud(self) -> EtcdClient:
        if self._crud_client is None:
            self._crud_client = await self._connect()
        return self._crud_client

    async def _get_raw(self, key: str) -> Any | None:
        client = await self._crud()
        resp = await client.kvstub.Range(rpc.RangeRequest(key=key.encode()),
                                         timeout=self._rpc_timeout)
        return resp.kvs[0] if resp.kvs else None

    @staticmethod
    def _decorate(res: Any, kv: Any) -> Any:
        """The parsed resource with resourceVersion = the key's mod revision."""
        md = res.metadata.model_copy(update={"resource_version": str(kv.mod_revision)})
        return res.model_copy(update={"metadata": md})

    def _parse_stored(self, key: str, kv: Any) -> Any:
        if ckeys.parse_namespaced_key(key) is not None:
            return self._decorate(cparse.parse_namespaced_json(key, kv.value), kv)
        return self._decorate(cparse.parse_json(key, kv.value), kv)

    @staticmethod
    def _ident(kind: str, name: str, namespace: str | None) -> str:
        return f"{namespace}/{name}" if ckeys.is_namespaced(kind) and namespace else name

    async def _read(self, fn: Any) -> Any:
        """``await fn()`` guarded, tried again while etcd answers UNAVAILABLE or has no
        leader yet, for up to READ_RETRY_BUDGET seconds."""
        deadline = time.monotonic() + READ_RETRY_BUDGET
        for attempt in itertools.count():
            try:
                return await self._guard(fn())
            except DatastoreUnavailable as e:
                cause = e.__cause__
                pause = READ_RETRY_PAUSES[min(attempt, len(READ_RETRY_PAUSES) - 1)]
                retryable = e.transient or (
                    isinstance(cause, grpc.aio.AioRpcError)
                    and cause.code() == grpc.StatusCode.UNAVAILABLE)
                if not retryable or time.monotonic() + pause > deadline:
                    raise
                log.info("etcd_read_retry", error=str(e), retry_in=pause)
                await asyncio.sleep(pause)

    async def get(self, kind: str, name: str, namespace: str | None = None) -> Any:
        kind = ckeys.normalize_kind(kind)
        key = ckeys.key_for(kind, name, namespace)
        kv = await self._read(lambda: self._get_raw(key))
        if kv is None:
            raise ResourceNotFound(kind, self._ident(kind, name, namespace))
        return self._parse_stored(key, kv)

    async def list(self, kind: str, namespace: str | None = None) -> list[Any]:
        """Every resource of ``kind``; for a namespaced kind, of one namespace or (None) all."""
        kind = ckeys.normalize_kind(kind)
        namespaced = ckeys.is_namespaced(kind)
        prefix = (ckeys.namespaced_prefix(kind, namespace) if namespaced
                  else ckeys.resource_prefix(kind))

        async def rng() -> Any:
            client = await self._crud()
            return await client.kvstub.Range(
                rpc.RangeRequest(key=prefix.encode(), range_end=prefix_range_end(prefix.encode())),
                timeout=self._rpc_timeout)

        resp = await self._read(rng)
        out = []
        for kv in resp.kvs:
            key = kv.key.decode()
            if not namespaced and "/" in key[len(prefix):]:
                continue  # a namespaced kind's deeper key; not a cluster resource
            if namespaced and ckeys.parse_namespaced_key(key) is None:
                continue
            out.append(self._parse_stored(key, kv))
        return sorted(out, key=lambda r: (r.metadata.namespace or "", r.metadata.name))

    def _value(self, res: Any, existing: dict | None) -> tuple[str, bytes]:
        """The key and the JSON Calico would store (uid/creationTimestamp filled)."""
        doc = cparse.to_calico_dict(res)
        md = doc.setdefault("metadata", {})
        # etcd's mod revision is the resourceVersion; Calico does not store it.
        md.pop("resourceVersion", None)
        prev_md = (existing or {}).get("metadata", {})
        for field, make in (("uid", lambda: str(uuid.uuid4())),
                            ("creationTimestamp", _now_rfc3339)):
            if not md.get(field):
                md[field] = prev_md.get(field) or make()
        key = ckeys.key_for(res.kind, res.metadata.name, res.metadata.namespace)
        return key, json.dumps(doc, separators=(",", ":")).encode()

    async def _txn(self, compare: Any, key: str, value: bytes) -> tuple[bool, int]:
        client = await self._crud()
        req = rpc.TxnRequest(
            compare=[compare],
            success=[rpc.RequestOp(request_put=rpc.PutRequest(key=key.encode(), value=value))],
            failure=[],
        )
        resp = await client.kvstub.Txn(req, timeout=self._rpc_timeout)
        return resp.succeeded, resp.header.revision

    @staticmethod
    def _cmp(key: str, target: str, value: int) -> Any:
        c = rpc.Compare(key=key.encode(), result=rpc.Compare.EQUAL)
        if target == "version":
            c.target = rpc.Compare.VERSION
            c.version = value
        else:
            c.target = rpc.Compare.MOD
            c.mod_revision = value
        return c

    async def _guard(self, coro: Any) -> Any:
        try:
            return await coro
        except grpc.aio.AioRpcError as e:
            self._crud_client = None
            raise DatastoreUnavailable(f"etcd request failed: {_rpc_text(e)}") from e

    async def create(self, res: Any) -> Any:
        key, value = self._value(res, None)
        ok, _ = await self._guard(self._txn(self._cmp(key, "version", 0), key, value))
        md = res.metadata
        if not ok:
            raise ResourceExists(res.kind, self._ident(res.kind, md.name, md.namespace))
        return await self.get(res.kind, md.name, md.namespace)

    async def replace(self, res: Any) -> Any:
        return await self._update(res, must_exist=True)

    async def apply(self, res: Any) -> Any:
        return await self._update(res, must_exist=False)

    async def _update(self, res: Any, must_exist: bool) -> Any:
        md = res.metadata
        key = ckeys.key_for(res.kind, md.name, md.namespace)
        ident = self._ident(res.kind, md.name, md.namespace)
        wanted_rv = res.metadata.resource_version
        for _ in range(5):  # retry only a lost race with another writer
            kv = await self._read(lambda: self._get_raw(key))
            if kv is None:
                if must_exist:
                    raise ResourceNotFound(res.kind, ident)
                _, value = self._value(res, None)
                ok, _ = await self._guard(self._txn(self._cmp(key, "version", 0), key, value))
            else:
                if must_exist and wanted_rv and str(kv.mod_revision) != str(wanted_rv):
                    raise ResourceConflict(res.kind, ident,
                                           f"resourceVersion {wanted_rv} is not the current "
                                           f"{kv.mod_revision}")
                try:
                    existing = json.loads(kv.value)
                except ValueError:
                    existing = None  # overwrite a malformed value with a good one
                _, value = self._value(res, existing if isinstance(existing, dict) else None)
                ok, _ = await self._guard(
                    self._txn(self._cmp(key, "mod", kv.mod_revision), key, value))
            if ok:
                return await self.get(res.kind, md.name, md.namespace)
        raise ResourceConflict(res.kind, ident, "changed concurrently; retry")

    async def delete(self, kind: str, name: str, namespace: str | None = None) -> Any:
        kind = ckeys.normalize_kind(kind)
        key = ckeys.key_for(kind, name, namespace)
        client = await self._guard(self._crud())
        resp = await self._guard(client.kvstub.DeleteRange(
            rpc.DeleteRangeRequest(key=key.encode(), prev_kv=True), timeout=self._rpc_timeout))
        if not resp.deleted:
            raise ResourceNotFound(kind, self._ident(kind, name, namespace))
        try:
            return self._parse_stored(key, resp.prev_kvs[0])
        except ConfigError:
            return None  # it was malformed; it is gone all the same


def _rpc_text(e: BaseException) -> str:
    if isinstance(e, grpc.aio.AioRpcError):
        return f"{e.code().name}: {e.details()}"
    return str(e) or type(e).__name__
