"""Block affinity and pod address allocation in etcd, Calico's way, CAS-safe.

Owned by ipam/. ``Allocator`` is used by the CNI plugin (one short-lived
process per pod event), by ``bgpctl ipam`` and by tests; any number of them,
in any number of processes and hosts, may work on the same datastore at once.

Correctness under concurrency rests on one rule: every read-modify-write of
a block, handle or affinity is an etcd transaction that compares the
``mod_revision`` read (0 for "absent") and is retried from a fresh read when
the comparison fails. An address is assigned by ONE transaction that writes
both the block and the handle, so a crash never leaves one without the other
(Calico writes the handle first and repairs later; a single txn needs no repair).

Blocks are claimed as Calico claims them (``claimAffineBlock``):
  1. create the affinity ``pending`` (only if absent),
  2. create the block with ``affinity: host:<node>`` (only if absent — the
     compare that makes two nodes never share a block),
  3. flip the affinity to ``confirmed``.
The daemon advertises only confirmed affinities, so a half-done claim is
never routed.

Empty blocks are released (block and affinity deleted in one txn) after
``release_grace`` seconds empty, so the daemon withdraws them. The default is
300 s: a pod being recreated on a node that ran only it (DEL then ADD within
seconds) must not make the whole cluster withdraw and re-learn the block.
Calico keeps empty affine blocks forever; podbgp gives them back. The time a
block became empty is kept outside Calico's tree, in
``/podbgp/ipam/v1/empty-blocks/<cidr->`` = ``{"since": <unix time>}``, written
and removed in the same transactions that empty and fill the block, so Calico
tools never see a field they do not know.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import json
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from ipam.model import (
    AFFINITY_CONFIRMED,
    AFFINITY_PENDING,
    BLOCK_PREFIX,
    HOST_PREFIX,
    AffinityRecord,
    IPAMBlock,
    IPAMConfig,
    IPAMHandle,
    IPAMModelError,
    affinity_key,
    block_key,
    cidr_from_key,
    handle_key,
)
from ipam.model import IPAM_CONFIG_KEY as CONFIG_KEY
from ipam.pools import PoolInfo, load_node_labels, load_pools, select_pools

log = structlog.get_logger(__name__)

__all__ = [
    "EMPTY_PREFIX",
    "AllocationStats",
    "Allocator",
    "Assignment",
    "IPAMConflictError",
    "IPAMError",
    "NoFreeAddressError",
    "block_gateway",
    "bridge_reserved",
]

EMPTY_PREFIX = "/podbgp/ipam/v1/empty-blocks/"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class IPAMError(Exception):
    """An allocation request that cannot be met; ``str()`` says why."""


class NoFreeAddressError(IPAMError):
    """No address left in this node's blocks and no block may be claimed."""


class IPAMConflictError(IPAMError):
    """Too many concurrent writers: the CAS kept failing; try again later."""


def bridge_reserved(block: IPAMBlock) -> frozenset[int]:
    """Ordinals never handed to pods when the block is a bridge's subnet.

    The network address (0), the gateway the ``bridge`` plugin puts on the
    bridge (1, the plugin's default gateway: network + 1) and, for IPv4, the
    broadcast address (last).
    """
    if block.cidr.version == 4:
        return frozenset({0, 1, block.size - 1})
    return frozenset({0, 1})


def block_gateway(cidr: Network) -> Address:
    """The gateway of a block used as a bridge subnet (ordinal 1)."""
    return cidr.network_address + 1


@dataclass(frozen=True, slots=True)
class Assignment:
    """One assigned address and the block (its subnet) it came from."""

    address: Address
    block: Network

    @property
    def interface(self) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
        return ipaddress.ip_interface(f"{self.address}/{self.block.prefixlen}")


@dataclass
class AllocationStats:
    """Plain counters; one Allocator owns and writes them."""

    assigned: int = 0
    released: int = 0
    conflicts: int = 0
    blocks_claimed: int = 0
    blocks_released: int = 0
    claim_races_lost: int = 0


@dataclass
class _Read:
    value: bytes | None
    mod_revision: int = 0


@dataclass
class _NodeState:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class Allocator:
    """Assigns and releases addresses for pods; claims and releases blocks.

    ``client`` is a connected aetcd client (not closed here). ``reserve`` picks
    ordinals of a block never to hand out (``bridge_reserved`` for plugins that
    use the block as an L2 subnet). ``borrow`` lets a node take addresses from
    other nodes' blocks when its own are full and no block can be claimed and
    the IPAM config is not strictAffinity; off by default because a borrowed
    address needs a /32 route that BGP block advertisement does not give.
    """

    def __init__(
        self,
        client: Any,
        *,
        release_grace: float = 300.0,
        max_conflicts: int = 200,
        reserve: Callable[[IPAMBlock], frozenset[int]] | None = None,
        borrow: bool = False,
        max_node_blocks: int | None = None,
        pool_loader: Callable[[Any], Awaitable[list[PoolInfo]]] = load_pools,
        labels_loader: Callable[[Any, str], Awaitable[dict[str, str]]] = load_node_labels,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.release_grace = release_grace
        self.max_conflicts = max_conflicts
        self.reserve = reserve or (lambda _b: frozenset())
        self.borrow = borrow
        # At most this many blocks per node and family (None: IPAMConfig's maxBlocksPerHost
        # alone). The CNI plugin sets 1 under the bridge plugin, which keeps one gateway.
        self.max_node_blocks = max_node_blocks
        self._pool_loader = pool_loader
        self._labels_loader = labels_loader
        self._clock = clock
        self._nodes: dict[str, _NodeState] = {}
        # Releases in one process mostly hit the same few blocks: one at a
        # time here turns CAS conflicts into waiting, as for assignments.
        self._release_lock = asyncio.Lock()
        self.stats = AllocationStats()

    # ------------------------------------------------------------ etcd basics

    async def _get(self, key: str) -> _Read:
        got = await self.client.get(key.encode())
        if got is None:
            return _Read(None, 0)
        return _Read(got.value, got.mod_revision)

    def _mod_is(self, key: str, rev: int) -> Any:
        # mod_revision of an absent key compares as 0, so one form covers
        # "unchanged since read" and "still absent".
        return self.client.transactions.mod(key.encode()) == rev

    def _put(self, key: str, value: bytes) -> Any:
        return self.client.transactions.put(key.encode(), value)

    def _delete(self, key: str) -> Any:
        return self.client.transactions.delete(key.encode())

    async def _txn(self, compare: list, success: list) -> bool:
        ok, _ = await self.client.transaction(compare=compare, success=success, failure=[])
        return bool(ok)

    async def _conflict(self, attempt: int, what: str, **ctx: Any) -> None:
        self.stats.conflicts += 1
        if attempt >= self.max_conflicts:
            raise IPAMConflictError(
                f"{what}: gave up after {attempt} conflicting concurrent updates"
            )
        log.debug("ipam_cas_conflict", what=what, attempt=attempt, **ctx)
        # Jittered backoff so writers that collided do not collide again in step.
        await asyncio.sleep(random.uniform(0, min(0.05, 0.001 * attempt)))

    async def pools(self) -> list[PoolInfo]:
        """Every valid IPPool, as allocation sees them."""
        return await self._pool_loader(self.client)

    async def config(self) -> IPAMConfig:
        got = await self._get(CONFIG_KEY)
        if got.value is None:
            return IPAMConfig()
        return IPAMConfig.from_json(CONFIG_KEY, got.value)

    async def set_config(self, cfg: IPAMConfig) -> None:
        await self.client.put(CONFIG_KEY.encode(), cfg.to_json())

    async def read_block(self, cidr: Network) -> tuple[IPAMBlock | None, int]:
        key = block_key(cidr)
        got = await self._get(key)
        if got.value is None:
            return None, 0
        return IPAMBlock.from_json(key, got.value), got.mod_revision

    async def read_handle(self, handle_id: str) -> tuple[IPAMHandle | None, int]:
        key = handle_key(handle_id)
        got = await self._get(key)
        if got.value is None:
            return None, 0
        return IPAMHandle.from_json(key, got.value), got.mod_revision

    async def node_affinities(self, node: str, version: int
                              ) -> list[tuple[Network, AffinityRecord, int]]:
        """This node's affinities of one family: (cidr, record, mod_revision)."""
        prefix = f"{HOST_PREFIX}{node}/ipv{version}/block/"
        out = []
        for meta in await self.client.get_prefix(prefix.encode()):
            key = meta.key.decode()
            try:
                out.append((cidr_from_key(key), AffinityRecord.from_json(key, meta.value),
                            meta.mod_revision))
            except IPAMModelError as exc:
                log.warning("ipam_affinity_unreadable", key=key, error=str(exc))
        return out

    async def block_cidrs(self, version: int) -> set[Network]:
        prefix = f"{BLOCK_PREFIX}ipv{version}/block/"
        res = await self.client.get_prefix(prefix.encode(), keys_only=True)
        out = set()
        for meta in res:
            try:
                out.add(cidr_from_key(meta.key.decode()))
            except IPAMModelError:
                continue
        return out

    async def blocks(self, version: int | None = None) -> list[IPAMBlock]:
        """Every readable block (of one family, or both)."""
        prefixes = [f"{BLOCK_PREFIX}ipv{v}/block/" for v in ((version,) if version else (4, 6))]
        out = []
        for prefix in prefixes:
            for meta in await self.client.get_prefix(prefix.encode()):
                key = meta.key.decode()
                try:
                    out.append(IPAMBlock.from_json(key, meta.value))
                except IPAMModelError as exc:
                    log.warning("ipam_block_unreadable", key=key, error=str(exc))
        return out

    # ------------------------------------------------------------ assignment

    async def auto_assign(
        self,
        handle_id: str,
        node: str,
        *,
        num_v4: int = 1,
        num_v6: int = 0,
        attrs: Mapping[str, str] | None = None,
        v4_pools: Sequence[str] | None = None,
        v6_pools: Sequence[str] | None = None,
    ) -> tuple[list[Assignment], list[Assignment]]:
        """Give ``handle_id`` ``num_v4`` IPv4 and ``num_v6`` IPv6 addresses on ``node``.

        Idempotent: addresses the handle already holds count towards the
        numbers, so a repeated request returns the same addresses.
        Raises NoFreeAddressError, IPAMConflictError, ValueError (bad pools).
        """
        handle_key(handle_id)  # validates the id before anything is written
        secondary = {"node": node, **(attrs or {})}
        pools = await self._pool_loader(self.client)
        labels = await self._labels_loader(self.client, node)
        state = self._nodes.setdefault(node, _NodeState())
        result: list[list[Assignment]] = []
        for version, n, requested in ((4, num_v4, v4_pools), (6, num_v6, v6_pools)):
            if n <= 0:
                result.append([])
                continue
            usable = select_pools(pools, version, labels, requested)
            if not usable:
                raise NoFreeAddressError(
                    f"no enabled IPv{version} pool whose nodeSelector matches node {node!r}"
                )
            # One writer per node inside this process: assignments on one node
            # all hit the same block, so serialising them here turns CAS
            # conflicts into waiting (the CNI plugin adds a host-wide flock).
            async with state.lock:
                result.append(await self._assign_family(handle_id, node, version, n,
                                                        secondary, usable))
        return result[0], result[1]

    async def _held(self, handle: IPAMHandle | None, handle_id: str, version: int
                    ) -> list[Assignment]:
        if handle is None:
            return []
        held = []
        for cidr_text in handle.block:
            cidr = ipaddress.ip_network(cidr_text)
            if cidr.version != version:
                continue
            block, _ = await self.read_block(cidr)
            if block is not None:
                held += [Assignment(ip, block.cidr) for ip in block.ips_of(handle_id)]
        return held

    async def _assign_family(self, handle_id: str, node: str, version: int, n: int,
                             secondary: Mapping[str, str], pools: list[PoolInfo]
                             ) -> list[Assignment]:
        attempt = 0
        while True:
            hkey = handle_key(handle_id)
            hread = await self._get(hkey)
            handle = IPAMHandle.from_json(hkey, hread.value) if hread.value else None
            held = await self._held(handle, handle_id, version)
            if len(held) >= n:
                return sorted(held, key=lambda a: a.address)[:n]
            need = n - len(held)
            outcome = await self._assign_into_node_blocks(
                handle_id, node, version, need, secondary, pools,
                handle or IPAMHandle(handle_id), hread.mod_revision)
            if outcome == "assigned":
                continue  # re-read: the handle now holds them
            if outcome == "conflict":
                attempt += 1
                await self._conflict(attempt, f"assign {handle_id}", node=node)
                continue
            # "full": all of this node's usable blocks are full.
            cfg = await self.config()
            claimed = await self._claim_block(node, version, pools, cfg)
            if claimed == "claimed":
                continue
            if claimed == "conflict":
                attempt += 1
                await self._conflict(attempt, f"claim block for {node}", node=node)
                continue
            if self.borrow and not cfg.strict_affinity:
                outcome = await self._borrow(handle_id, node, version, need, secondary, pools,
                                             handle or IPAMHandle(handle_id), hread.mod_revision)
                if outcome == "assigned":
                    continue
                if outcome == "conflict":
                    attempt += 1
                    await self._conflict(attempt, f"borrow for {handle_id}", node=node)
                    continue
            raise NoFreeAddressError(
                f"node {node!r}: no free IPv{version} address in its blocks and no block "
                f"can be claimed ({claimed}) in pools "
                + ", ".join(f"{p.name} ({p.cidr})" for p in pools)
            )

    async def _assign_in_block(self, block: IPAMBlock, brev: int, handle_id: str, need: int,
                               secondary: Mapping[str, str], handle: IPAMHandle, hrev: int
                               ) -> str:
        skip = self.reserve(block)
        take = min(need, block.free_count(skip))
        if take <= 0:
            return "full"
        new_block, ips = block.assign(take, handle_id, secondary, skip)
        new_handle = handle.add(block.cidr, take)
        ok = await self._txn(
            [self._mod_is(block.key, brev), self._mod_is(handle_key(handle_id), hrev)],
            [self._put(block.key, new_block.to_json()),
             self._put(handle_key(handle_id), new_handle.to_json()),
             self._delete(_empty_key(block.cidr))],
        )
        if not ok:
            return "conflict"
        self.stats.assigned += take
        log.debug("ipam_assigned", handle=handle_id, ips=[str(i) for i in ips],
                  block=str(block.cidr))
        return "assigned"

    async def _assign_into_node_blocks(self, handle_id: str, node: str, version: int, need: int,
                                       secondary: Mapping[str, str], pools: list[PoolInfo],
                                       handle: IPAMHandle, hrev: int) -> str:
        for cidr, aff, _rev in sorted(await self.node_affinities(node, version),
                                      key=lambda t: int(t[0].network_address)):
            if not aff.confirmed or not any(cidr.subnet_of(p.cidr) for p in pools):
                continue
            block, brev = await self.read_block(cidr)
            if block is None or block.host != node or block.deleted:
                continue
            outcome = await self._assign_in_block(block, brev, handle_id, need, secondary,
                                                  handle, hrev)
            if outcome != "full":
                return outcome
        return "full"

    async def _borrow(self, handle_id: str, node: str, version: int, need: int,
                      secondary: Mapping[str, str], pools: list[PoolInfo],
                      handle: IPAMHandle, hrev: int) -> str:
        for cidr in sorted(await self.block_cidrs(version), key=lambda c: int(c.network_address)):
            if not any(cidr.subnet_of(p.cidr) for p in pools):
                continue
            block, brev = await self.read_block(cidr)
            if block is None or block.host == node or block.strict_affinity:
                continue
            outcome = await self._assign_in_block(block, brev, handle_id, need, secondary,
                                                  handle, hrev)
            if outcome != "full":
                if outcome == "assigned":
                    log.info("ipam_borrowed", node=node, block=str(cidr), owner=block.host)
                return outcome
        return "full"

    # ------------------------------------------------------------ block claim

    async def _claim_block(self, node: str, version: int, pools: list[PoolInfo],
                           cfg: IPAMConfig) -> str:
        """Claim one free block for node. Returns "claimed", "conflict" or why not."""
        if not cfg.auto_allocate_blocks:
            return "autoAllocateBlocks is false"
        mine = await self.node_affinities(node, version)
        if cfg.max_blocks_per_host and len(mine) >= cfg.max_blocks_per_host:
            return f"maxBlocksPerHost {cfg.max_blocks_per_host} reached"
        if self.max_node_blocks and len(mine) >= self.max_node_blocks:
            return f"this node may hold {self.max_node_blocks} block(s) and has {len(mine)}"
        taken = await self.block_cidrs(version)
        for pool in pools:
            for cidr in _candidate_blocks(pool, node):
                if cidr in taken:
                    continue
                outcome = await self._claim(node, cidr, cfg)
                if outcome == "lost":
                    # Someone else got it between our list and our create.
                    self.stats.claim_races_lost += 1
                    taken.add(cidr)
                    continue
                return outcome
        return "no free block left in the pools"

    async def _claim(self, node: str, cidr: Network, cfg: IPAMConfig) -> str:
        akey, bkey = affinity_key(node, cidr), block_key(cidr)
        pending = AffinityRecord(AFFINITY_PENDING).to_json()
        # 1. affinity pending (only if absent).
        ok, resp = await self.client.transaction(
            compare=[self.client.transactions.version(akey.encode()) == 0],
            success=[self._put(akey, pending)],
            failure=[],
        )
        if not ok:
            return "lost"
        arev = resp[0].response_put.header.revision
        # 2. the block (only if absent).
        block = IPAMBlock.new(cidr, node, strict_affinity=cfg.strict_affinity)
        ok = await self._txn(
            [self.client.transactions.create(bkey.encode()) == 0],
            [self._put(bkey, block.to_json()),
             self._put(_empty_key(cidr), _empty_value(self._clock()))],
        )
        if not ok:
            await self._txn([self._mod_is(akey, arev)], [self._delete(akey)])
            return "lost"
        # 3. affinity confirmed.
        ok = await self._txn([self._mod_is(akey, arev)],
                             [self._put(akey, AffinityRecord(AFFINITY_CONFIRMED).to_json())])
        if not ok:
            # Only a release sweep deletes affinities; it ran between 2 and 3.
            return "conflict"
        self.stats.blocks_claimed += 1
        log.info("ipam_block_claimed", node=node, block=str(cidr))
        return "claimed"

    # ------------------------------------------------------------ release

    async def release_by_handle(self, handle_id: str) -> list[Address]:
        """Free every address of ``handle_id``; [] when it holds none (idempotent)."""
        async with self._release_lock:
            released = await self._release_handle(handle_id)
        if released:
            await self._sweep_if_immediate()
        return released

    async def _release_handle(self, handle_id: str) -> list[Address]:
        hkey = handle_key(handle_id)
        released: list[Address] = []
        attempt = 0
        while True:
            hread = await self._get(hkey)
            if hread.value is None:
                break
            handle = IPAMHandle.from_json(hkey, hread.value)
            if not handle.block:
                ok = await self._txn([self._mod_is(hkey, hread.mod_revision)],
                                     [self._delete(hkey)])
                if ok:
                    break
                attempt += 1
                await self._conflict(attempt, f"release {handle_id}")
                continue
            cidr = ipaddress.ip_network(next(iter(handle.block)))
            block, brev = await self.read_block(cidr)
            new_handle = handle.remove(cidr, handle.block[str(cidr)])
            ops = [self._put(hkey, new_handle.to_json()) if new_handle.block
                   else self._delete(hkey)]
            compare = [self._mod_is(hkey, hread.mod_revision)]
            ips: list[Address] = []
            if block is not None:
                new_block, _per_handle, ips = block.release(handle_id=handle_id)
                compare.append(self._mod_is(block.key, brev))
                if ips:
                    ops.append(self._put(block.key, new_block.to_json()))
                    if new_block.is_empty:
                        ops.append(self._put(_empty_key(cidr), _empty_value(self._clock())))
            if await self._txn(compare, ops):
                released += ips
                continue
            attempt += 1
            await self._conflict(attempt, f"release {handle_id}")
        self.stats.released += len(released)
        if released:
            log.debug("ipam_released", handle=handle_id, ips=[str(i) for i in released])
        return released

    async def release_ip(self, ip: str | Address) -> str | None:
        """Free one address. Returns the handle that held it, or None if it was free.

        Raises IPAMError when no block contains ip.
        """
        addr = ipaddress.ip_address(ip) if isinstance(ip, str) else ip
        attempt = 0
        while True:
            containing = [c for c in await self.block_cidrs(addr.version) if addr in c]
            if not containing:
                raise IPAMError(f"{addr} is not in any allocation block")
            block, brev = await self.read_block(containing[0])
            if block is None:
                continue  # deleted since listed: list again
            owner = block.handle_of(addr)
            if block.allocations[block.ordinal(addr)] is None:
                return None
            new_block, _per, _ips = block.release(ips=[addr])
            compare = [self._mod_is(block.key, brev)]
            ops = [self._put(block.key, new_block.to_json())]
            if new_block.is_empty:
                ops.append(self._put(_empty_key(block.cidr), _empty_value(self._clock())))
            if owner is not None:
                hkey = handle_key(owner)
                hread = await self._get(hkey)
                compare.append(self._mod_is(hkey, hread.mod_revision))
                if hread.value is not None:
                    h = IPAMHandle.from_json(hkey, hread.value).remove(block.cidr, 1)
                    ops.append(self._put(hkey, h.to_json()) if h.block else self._delete(hkey))
            if await self._txn(compare, ops):
                self.stats.released += 1
                log.info("ipam_ip_released", ip=str(addr), handle=owner)
                await self._sweep_if_immediate()
                return owner or ""
            attempt += 1
            await self._conflict(attempt, f"release {addr}")

    async def _sweep_if_immediate(self) -> None:
        if self.release_grace <= 0:
            await self.release_empty_blocks()

    async def release_empty_blocks(self, grace: float | None = None) -> list[Network]:
        """Delete blocks (and their affinity) empty for at least ``grace`` seconds."""
        grace = self.release_grace if grace is None else grace
        now = self._clock()
        released = []
        for meta in await self.client.get_prefix(EMPTY_PREFIX.encode()):
            mkey = meta.key.decode()
            try:
                cidr = cidr_from_key(mkey)
                since = float(json.loads(meta.value)["since"])
            except (IPAMModelError, ValueError, KeyError, TypeError):
                log.warning("ipam_empty_marker_unreadable", key=mkey)
                await self._txn([self._mod_is(mkey, meta.mod_revision)], [self._delete(mkey)])
                continue
            if now - since < grace:
                continue
            block, brev = await self.read_block(cidr)
            if block is None or not block.is_empty:
                # Stale marker (block refilled by a writer that predates markers).
                await self._txn([self._mod_is(mkey, meta.mod_revision),
                                 self._mod_is(block_key(cidr), brev)], [self._delete(mkey)])
                continue
            ops = [self._delete(block.key), self._delete(mkey)]
            if block.host:
                ops.append(self._delete(affinity_key(block.host, cidr)))
            # A writer that assigns into the block meanwhile changes its
            # mod_revision and this txn does nothing: the block stays.
            if await self._txn([self._mod_is(block.key, brev),
                                self._mod_is(mkey, meta.mod_revision)], ops):
                self.stats.blocks_released += 1
                released.append(cidr)
                log.info("ipam_block_released", block=str(cidr), node=block.host,
                         empty_for=round(now - since, 1))
        return released


def _empty_key(cidr: Network) -> str:
    return f"{EMPTY_PREFIX}ipv{cidr.version}/{str(cidr).replace('/', '-')}"


def _empty_value(now: float) -> bytes:
    return json.dumps({"since": now}).encode()


def _candidate_blocks(pool: PoolInfo, node: str):
    """Every block of the pool, starting at a node-specific offset.

    Different nodes start at different places so that they rarely race for
    the same block (Calico shuffles per host for the same reason); the order
    is stable per node so a node's blocks cluster together.
    """
    if pool.block_size < pool.cidr.prefixlen:
        return
    count = 1 << (pool.block_size - pool.cidr.prefixlen)
    step = 1 << (pool.cidr.max_prefixlen - pool.block_size)
    start = int.from_bytes(hashlib.sha256(node.encode()).digest()[:8], "big") % count
    base = int(pool.cidr.network_address)
    cls = type(pool.cidr)
    for i in range(count):
        idx = (start + i) % count
        yield cls((base + idx * step, pool.block_size))
