"""podbgp-policy: the per-node process that keeps the node's nftables policy table
equal to what the datastore says (docs/architecture.md, "The node's data plane";
docs/policy.md).

Owned by policy/. One asyncio process, separate from bgpd so that a policy
fault never takes routing down. Its loop:

- the datastore (`PolicyDatastore`, etcd) publishes snapshots; each is
  diffed against the previous one by object identity and fed to the `Engine`
  (policies, profiles, endpoints). A policy or profile it cannot enforce
  exactly (a field in its spec it does not know: a match podbgp cannot see
  would make a rule broader) is rejected: logged once, counted, and its last
  good version stays in force.
- the engine's `Ruleset` is written as ONE ``nft -f`` transaction: the
  first time (and after any doubt) a full replacement of the table, then
  only the difference (fib_sync.nft, policy.ruleset).
- every ``--resync-interval`` seconds the kernel's table is read back and
  compared (`check_listing`); a difference (someone deleted a rule, flushed
  a set, removed the table) is logged, counted and repaired with a full
  transaction.

Start and stop: the table is never removed. On start the agent leaves
whatever table it finds in force until the datastore has been read in full,
then replaces it in one transaction, so there is no moment when a pod that
policy isolates is open. If etcd is unreachable, the last programmed rules
stay. Only ``podbgp-policy --remove-table`` removes the table (uninstall).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from config.endpoints import WorkloadEndpoint
from config.parse import unknown_fields
from config.policy import GlobalNetworkPolicy, NetworkPolicy, Profile, protocol_number
from fib_sync.nft import Nft, NftError
from policy.engine import Engine, endpoint_from_parts
from policy.rules import Endpoint, normalize_policy, normalize_profile
from policy.ruleset import TABLE_FAMILY, Ruleset, check_listing, render_diff, render_full

log = structlog.get_logger(__name__)

RETRY_MIN = 0.5
RETRY_MAX = 30.0


@dataclass
class AgentStats:
    """Plain counters (read by policy.metrics at scrape time)."""

    transactions_total: Counter = field(default_factory=Counter)  # full|incremental -> n
    errors_total: Counter = field(default_factory=Counter)  # nft|verify -> n
    rejected_total: Counter = field(default_factory=Counter)  # (kind, reason) -> n
    tamper_repairs_total: int = 0
    last_program_at: float | None = None
    last_error: str | None = None


def endpoint_key(wep: WorkloadEndpoint) -> str:
    """How the engine and bgpctl name an endpoint: ``<namespace>/<name>``."""
    return f"{wep.namespace}/{wep.name}"


def endpoint_of(wep: WorkloadEndpoint) -> Endpoint:
    """The engine's view of a WorkloadEndpoint."""
    spec = wep.spec
    ports = []
    for p in spec.ports:
        if p.name:
            try:
                ports.append((p.name, protocol_number(p.protocol), p.port))
            except (KeyError, TypeError):
                continue  # a protocol without ports (Calico allows TCP/UDP/SCTP only)
    return endpoint_from_parts(
        key=endpoint_key(wep), namespace=wep.namespace, node=spec.node or "",
        iface=spec.interface_name or "", networks=spec.ip_networks,
        labels=wep.labels, profiles=spec.profiles, ports=ports)


class Unenforceable(ValueError):
    """A valid resource the agent cannot enforce exactly; the message says why."""


def feed(engine: Engine, res: Any) -> None:
    """Give one datastore resource to the engine (policy, profile or endpoint).

    Raises `Unenforceable` for a policy or profile with a field in its spec that
    podbgp does not model (a newer Calico's match would make the rule broader if
    ignored) or that fails to compile. Used by the agent and `bgpctl policy show`.
    """
    if isinstance(res, WorkloadEndpoint):
        engine.update_endpoint(endpoint_key(res), endpoint_of(res))
        return
    unknown = [p for p, _ in unknown_fields(res) if p.startswith("spec.")]
    if unknown:
        raise Unenforceable(f"fields podbgp-policy cannot enforce: {', '.join(unknown[:5])}")
    try:
        if isinstance(res, (NetworkPolicy, GlobalNetworkPolicy)):
            p = normalize_policy(res)
            engine.update_policy(p.id, p)
        elif isinstance(res, Profile):
            engine.update_profile(res.metadata.name, normalize_profile(res))
    except Exception as e:  # anything a valid-looking resource provokes: refuse it
        raise Unenforceable(f"cannot be compiled: {e}") from None


class PolicyAgent:
    """Datastore snapshots in, nft transactions out. See the module docstring."""

    def __init__(self, node: str, store: Any, nft: Nft, *, table: str = "podbgp-policy",
                 iface_prefixes: tuple[str, ...] = ("cali",),
                 resync_interval: float = 10.0) -> None:
        self.node = node
        self.store = store
        self.nft = nft
        self.table = table
        self.engine = Engine(node, table=table, iface_prefixes=iface_prefixes)
        self.resync_interval = resync_interval
        self.stats = AgentStats()
        self.applied: Ruleset | None = None  # what the kernel has, as far as we know
        self.snapshot: Any = None
        self.programmed_once = False
        self._seen: dict[str, Any] = {}  # key -> resource object of the last snapshot
        self._rejected: dict[str, str] = {}  # key -> why (the agent's own rejections)
        self._dirty = asyncio.Event()
        self._retry_at = 0.0
        self._backoff = RETRY_MIN
        self._stop = asyncio.Event()
        self._pending_since: float | None = None  # first change not yet programmed
        #: called with the seconds from a change reaching the agent to it being applied
        self.on_programmed: Any = None

    # ------------------------------------------------------------ snapshot

    def absorb(self, snap: Any) -> int:
        """Feed what changed since the last snapshot to the engine; returns the count."""
        last_seq = getattr(self.snapshot, "seq", None)
        self.snapshot = snap
        current: Mapping[str, Any] = snap.resources
        hint = getattr(snap, "changed", None)
        if hint is not None and last_seq is not None and snap.seq == last_seq + 1:
            keys = hint  # only these can differ from what we saw
        else:
            keys = self._seen.keys() | current.keys()
        changed = 0
        for key in keys:
            res = current.get(key)
            old = self._seen.get(key)
            if res is old:
                continue
            if res is None:
                del self._seen[key]
                self._forget(key, old)
            else:
                self._seen[key] = res
                self._take(key, res)
            changed += 1
        # The first snapshot is programmed even when it holds nothing (a fresh
        # cluster without policies or pods): the table must exist, and /readyz
        # waits for that first programming.
        if changed or not self.programmed_once:
            if self._pending_since is None:
                self._pending_since = time.perf_counter()
            self._dirty.set()
        return changed

    def _take(self, key: str, res: Any) -> None:
        try:
            feed(self.engine, res)
        except Unenforceable as e:
            self._reject(key, res.kind, str(e))
            return
        self._rejected.pop(key, None)

    def _reject(self, key: str, kind: str, reason: str) -> None:
        if self._rejected.get(key) != reason:
            log.warning("policy_rejected", key=key, kind=kind, reason=reason,
                        action="not enforced; its last good version (if any) stays")
            self.stats.rejected_total[(kind, reason.split(":")[0])] += 1
        self._rejected[key] = reason

    def _forget(self, key: str, res: Any) -> None:
        self._rejected.pop(key, None)
        if isinstance(res, WorkloadEndpoint):
            self.engine.update_endpoint(endpoint_key(res), None)
        elif isinstance(res, (NetworkPolicy, GlobalNetworkPolicy)):
            ns = res.metadata.namespace if isinstance(res, NetworkPolicy) else None
            self.engine.update_policy(f"{ns}/{res.metadata.name}" if ns else res.metadata.name,
                                      None)
        elif isinstance(res, Profile):
            self.engine.update_profile(res.metadata.name, None)

    # ------------------------------------------------------------ program

    def program(self) -> bool:
        """Write the engine's ruleset: the difference, or everything when in doubt.
        Blocking (runs nft); the agent calls it in a worker thread."""
        t0 = time.perf_counter()
        pending = self._pending_since
        self._pending_since = None
        rs = self.engine.ruleset()
        full = self.applied is None
        script = render_full(rs) if full else render_diff(self.applied, rs)
        if not script:
            self.programmed_once = True
            return True
        try:
            self.nft.apply(script)
        except NftError as e:
            self.applied = None  # state unknown: the next attempt replaces everything
            if self._pending_since is None:
                self._pending_since = pending
            self.stats.errors_total["nft"] += 1
            self.stats.last_error = str(e)
            log.error("policy_program_failed", error=str(e), full=full,
                      rules=rs.rule_count, retry_in=round(self._backoff, 2))
            return False
        self.applied = rs
        self.programmed_once = True
        dt = time.perf_counter() - t0
        self.stats.transactions_total["full" if full else "incremental"] += 1
        if self.on_programmed is not None:
            self.on_programmed(time.perf_counter() - (pending if pending is not None else t0))
        self.stats.last_program_at = time.time()
        self.stats.last_error = None
        log.info("policy_programmed", full=full, seconds=round(dt, 4), rules=rs.rule_count,
                 sets=len(rs.sets), elements=rs.element_count,
                 local_endpoints=len(rs.maps["from-wl"].elements) if "from-wl" in rs.maps
                 else 0)
        return True

    def verify(self) -> list[str]:
        """Compare the kernel's table with what was applied; repair on a difference."""
        if self.applied is None:
            return []
        try:
            listing = self.nft.list_table(TABLE_FAMILY, self.table)
        except NftError as e:
            self.stats.errors_total["verify"] += 1
            log.error("policy_verify_failed", error=str(e))
            return [str(e)]
        problems = check_listing(listing, self.applied)
        if problems:
            self.stats.tamper_repairs_total += 1
            log.warning("policy_table_changed", problems=problems[:10], count=len(problems),
                        action="replacing the table with the programmed rules")
            self.applied = None
            self._dirty.set()
        return problems

    # ------------------------------------------------------------ running

    async def run(self) -> None:
        await self.store.start()
        tasks = [asyncio.create_task(self._watch(), name="policy-watch"),
                 asyncio.create_task(self._programmer(), name="policy-program"),
                 asyncio.create_task(self._resync(), name="policy-resync")]
        try:
            await self._stop.wait()
        finally:
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
            await self.store.close()
            log.info("policy_agent_stopped", table=f"{TABLE_FAMILY} {self.table}",
                     note="table left in place")

    def stop(self) -> None:
        self._stop.set()

    async def _watch(self) -> None:
        async for snap in self.store.snapshots():
            n = self.absorb(snap)
            if n:
                log.debug("policy_snapshot", revision=snap.revision, changed=n)

    async def _programmer(self) -> None:
        while True:
            await self._dirty.wait()
            if self.snapshot is None:  # nothing read yet: leave the old table in force
                self._dirty.clear()
                continue
            delay = self._retry_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            self._dirty.clear()
            if self.applied is not None:
                # a difference: a few ms, in-process nft; a thread hand-off would
                # cost more than it saves under load
                ok = self.program()
            else:  # a whole table (start, repair): seconds at scale, off the loop
                ok = await asyncio.to_thread(self.program)
            if ok:
                self._backoff = RETRY_MIN
            else:
                self._retry_at = time.monotonic() + self._backoff
                self._backoff = min(self._backoff * 2, RETRY_MAX)
                self._dirty.set()

    async def _resync(self) -> None:
        while True:
            await asyncio.sleep(self.resync_interval)
            await asyncio.to_thread(self.verify)

    # ------------------------------------------------------------ reporting

    def ready(self) -> tuple[bool, str]:
        if self.snapshot is None:
            return False, "waiting for the datastore"
        if not self.programmed_once:
            return False, "waiting for the first programming of the table"
        if self.applied is None:
            return False, f"reprogramming after an error: {self.stats.last_error or 'verify'}"
        return True, "ready"

    def status(self) -> dict[str, Any]:
        rs = self.applied
        local = self.engine.local_endpoints()
        return {
            "node": self.node,
            "table": f"{TABLE_FAMILY} {self.table}",
            "ready": self.ready()[1],
            "datastore": {"connected": bool(getattr(self.store, "connected", False)),
                          "revision": getattr(self.snapshot, "revision", None)},
            "endpoints": {"local": len(local), "all": len(self.engine.endpoints)},
            "policies": len(self.engine.policies),
            "profiles": len(self.engine.profiles),
            "rules": rs.rule_count if rs else None,
            "sets": len(rs.sets) if rs else None,
            "set_elements": rs.element_count if rs else None,
            "rejected": dict(sorted({**getattr(self.snapshot, "rejected", {}),
                                     **self._rejected}.items())),
            "last_error": self.stats.last_error,
            "local_endpoints": [
                {"endpoint": e.key, "interface": e.iface,
                 "ingress": [p.id for p in self.engine.applied(e.key, "ingress")],
                 "egress": [p.id for p in self.engine.applied(e.key, "egress")],
                 "profiles": list(e.profiles)} for e in local],
        }

    def status_json(self) -> bytes:
        return (json.dumps(self.status(), indent=1) + "\n").encode()


def install_signal_handlers(agent: PolicyAgent) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, agent.stop)
