"""natOutgoing in podbgp's own nftables table (``inet podbgp-nat``).

Owned by fib_sync/. The daemon is the only caller; it hands whole sets of
CIDRs and knows nothing of nft. All nft work goes through the shared driver
`fib_sync.nft.Nft` (atomic ``nft -f -`` transactions, podbgp's tables only).

Semantics are Calico's (Felix rules/nat.go, dataplane/linux/masq_mgr.go):
traffic from an address in a pool with ``natOutgoing: true`` to a destination
outside ALL pools (disabled ones included; LoadBalancer-only pools excluded)
is masqueraded to the node's address. Pool membership lives in four interval
sets (``pools4``/``masq4``/``pools6``/``masq6``); the two rules never change,
so a pool change is a set rewrite in one transaction, not a rule rewrite.

Keeping it (the route discipline, for a table):
- the table is podbgp's alone; nothing else is read or written;
- ``sync()`` writes only what differs: nothing when the table is what was
  last written and the sets are right, the sets alone when only pools
  changed, the whole table (delete + create in ONE transaction: no moment
  without it) when it is missing or someone changed it;
- someone changing or deleting it is seen by comparing its fingerprint
  (`fib_sync.nft.fingerprint`: handles and counters left out) with the one
  read back after the last write; ``check()`` does that periodically;
- left in place on stop (established flows keep their conntrack NAT and new
  ones are still masqueraded across a restart) and adopted on start: the
  fingerprint and the sets last written are kept in a small state file, so a
  restarted daemon that finds the table exactly as it left it writes nothing;
- not made while no pool is natOutgoing (a table without masquerade CIDRs
  changes no packet): then ``sync()`` only asks the kernel over netlink whether
  the table is there, and libnftables stays unloaded (issue 17: 1.3 MiB of an
  idle daemon). A table that is there (a previous run's, say) is adopted and
  kept as always: its masquerade sets are emptied, it is repaired if changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import structlog

from .nft import Nft, NftError, TableState, fingerprint

log = structlog.get_logger(__name__)

FAMILY = "inet"
TABLE = "podbgp-nat"
SETS = ("pools4", "masq4", "pools6", "masq6")


@dataclass(frozen=True, slots=True)
class NatSpec:
    """The CIDRs of every pool (``pools``: never masqueraded towards) and of
    the natOutgoing pools (``masq``), canonical and collapsed per family."""

    pools4: tuple[str, ...] = ()
    masq4: tuple[str, ...] = ()
    pools6: tuple[str, ...] = ()
    masq6: tuple[str, ...] = ()

    @classmethod
    def from_pools(cls, pools: Iterable[tuple[str, bool]]) -> NatSpec:
        """From (cidr, natOutgoing) pairs. Raises ValueError naming a bad CIDR."""
        nets: dict[str, list] = {name: [] for name in SETS}
        for cidr, masq in pools:
            try:
                net = ipaddress.ip_network(cidr, strict=True)
            except ValueError as e:
                raise ValueError(f"pool CIDR {cidr!r}: {e}") from None
            v = str(net.version)
            nets[f"pools{v}"].append(net)
            if masq:
                nets[f"masq{v}"].append(net)
        return cls(**{k: tuple(str(n) for n in ipaddress.collapse_addresses(v))
                      for k, v in nets.items()})

    def as_dict(self) -> dict[str, list[str]]:
        return {name: list(getattr(self, name)) for name in SETS}


def _elements(cidrs: tuple[str, ...]) -> str:
    return ", ".join(cidrs)


def table_script(spec: NatSpec) -> str:
    """The whole table, replacing whatever is there, as one transaction."""
    sets = []
    for name in SETS:
        kind = "ipv4_addr" if name.endswith("4") else "ipv6_addr"
        cidrs = getattr(spec, name)
        elems = f" elements = {{ {_elements(cidrs)} }};" if cidrs else ""
        sets.append(f"    set {name} {{ type {kind}; flags interval;{elems} }}")
    return "\n".join([
        f"add table {FAMILY} {TABLE}",
        f"delete table {FAMILY} {TABLE}",
        f"table {FAMILY} {TABLE} {{",
        *sets,
        "    chain postrouting {",
        "        type nat hook postrouting priority srcnat; policy accept;",
        '        ip saddr @masq4 ip daddr != @pools4 counter masquerade comment "natOutgoing"',
        '        ip6 saddr @masq6 ip6 daddr != @pools6 counter masquerade comment "natOutgoing"',
        "    }",
        "}",
        "",
    ])


def sets_script(old: NatSpec, new: NatSpec) -> str:
    """Rewrite the sets that changed (the rules stay), as one transaction."""
    lines = []
    for name in SETS:
        cidrs = getattr(new, name)
        if getattr(old, name) == cidrs:
            continue
        lines.append(f"flush set {FAMILY} {TABLE} {name}")
        if cidrs:
            lines.append(f"add element {FAMILY} {TABLE} {name} {{ {_elements(cidrs)} }}")
    return "\n".join(lines) + ("\n" if lines else "")


@dataclass
class NatStats:
    """Plain counters for metrics; written by the NatTable only."""

    table_writes: int = 0  # whole-table transactions
    set_updates: int = 0  # set-only transactions (a pool change)
    repairs: int = 0  # whole-table rewrites because it was missing or changed by someone
    adopted: int = 0  # starts that found the table as last written
    errors: int = 0  # failed nft transactions or reads
    checks: int = 0


class NatTable:
    """Keeps ``inet podbgp-nat`` equal to a NatSpec (synchronous: one `nft`
    process per call; the async `NatSyncer` runs it in a thread)."""

    def __init__(self, nft: Nft, state_file: str | os.PathLike | None = None) -> None:
        self.nft = nft
        self.state_file = Path(state_file) if state_file else None
        self.stats = NatStats()
        self.written: NatSpec | None = None  # what the table holds, as far as we know
        self.fp: str | None = None  # its fingerprint, read back after our last write
        self.last_error: str = ""

    # ------------------------------------------------------------ state file

    def load_state(self) -> None:
        """What the last run wrote (adoption): used only if the table still matches."""
        if self.state_file is None:
            return
        try:
            doc = json.loads(self.state_file.read_text())
            self.written = NatSpec(**{k: tuple(doc["spec"][k]) for k in SETS})
            self.fp = str(doc["fingerprint"])
        except (OSError, ValueError, KeyError, TypeError):
            self.written, self.fp = None, None

    def _save_state(self) -> None:
        if self.state_file is None or self.written is None:
            return
        tmp = self.state_file.with_suffix(".tmp")
        with contextlib.suppress(OSError):
            self.state_file.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps({"fingerprint": self.fp, "spec": self.written.as_dict()}))
            tmp.replace(self.state_file)

    # ------------------------------------------------------------ sync

    def _read_back(self, spec: NatSpec) -> None:
        self.written = spec
        self.fp = fingerprint(self.nft.list_table(FAMILY, TABLE))
        self._save_state()

    def sync(self, spec: NatSpec) -> str:
        """Make the table hold `spec`. Returns what was done: "unchanged",
        "adopted", "sets", "created", "repaired", or "not needed" (no pool to
        masquerade and no table: nothing is written, and the nft library is not
        even loaded — one netlink question). Raises NftError."""
        if not (spec.masq4 or spec.masq6) and not self.nft.table_exists(FAMILY, TABLE):
            self.written, self.fp = None, None  # none of ours there, none wanted
            return "not needed"
        state = self.nft.state(FAMILY, TABLE, self.fp)
        first = self.stats.table_writes + self.stats.set_updates + self.stats.adopted == 0
        try:
            if state is TableState.OK and self.written is not None:
                if self.written == spec:
                    if first:
                        self.stats.adopted += 1
                        log.info("nat_table_adopted", table=f"{FAMILY} {TABLE}")
                        return "adopted"
                    return "unchanged"
                self.nft.apply(sets_script(self.written, spec))
                self.stats.set_updates += 1
                self._read_back(spec)
                log.info("nat_sets_updated", **spec.as_dict())
                return "sets"
            self.nft.apply(table_script(spec))
        except NftError as e:
            self.stats.errors += 1
            self.last_error = str(e)
            raise
        self.stats.table_writes += 1
        action = "created"
        # A table this process (or, per the state file, the last one) wrote and
        # that is now missing or different: someone else did that.
        if (state is TableState.TAMPERED and self.fp is not None) or (
                state is TableState.MISSING and not first and self.written is not None):
            action = "repaired"
            self.stats.repairs += 1
            log.warning("nat_table_repaired", table=f"{FAMILY} {TABLE}",
                        was="missing" if state is TableState.MISSING else "changed by someone")
        else:
            log.info("nat_table_written", table=f"{FAMILY} {TABLE}", **spec.as_dict())
        self._read_back(spec)
        self.last_error = ""
        return action

    def check(self, spec: NatSpec) -> str:
        """The periodic check: repair a missing or changed table."""
        self.stats.checks += 1
        return self.sync(spec)


class NatSyncer:
    """The async face of `NatTable`: `set_desired` (a pool change), a periodic
    check (someone deleted or changed the table), never a removal on stop."""

    def __init__(self, netns: str | None = None, check_interval: float = 30.0,
                 state_file: str | os.PathLike | None = None, *,
                 on_change: Callable[[str], None] | None = None,
                 _nft: Nft | None = None) -> None:
        if not check_interval > 0:
            raise ValueError(f"check_interval: {check_interval!r}: must be > 0 seconds")
        self.table = NatTable(_nft or Nft(netns=netns), state_file)
        self.check_interval = check_interval
        self.on_change = on_change
        self.desired: NatSpec | None = None
        self.last_action = ""
        self.last_sync_epoch = 0.0
        self._lock = asyncio.Lock()
        self._task: asyncio.Task | None = None

    @property
    def stats(self) -> NatStats:
        return self.table.stats

    @property
    def error(self) -> str:
        return self.table.last_error

    async def start(self) -> None:
        self.table.load_state()
        self._task = asyncio.create_task(self._checker(), name="nat_check")

    async def set_desired(self, spec: NatSpec) -> str:
        """Write `spec` now (returns what was done; an nft failure is logged,
        counted and retried by the periodic check, and returns "error")."""
        self.desired = spec
        return await self._sync(self.table.sync)

    async def _sync(self, fn) -> str:
        spec = self.desired
        if spec is None:
            return "nothing desired"
        async with self._lock:
            try:
                action = await asyncio.to_thread(fn, spec)
            except NftError as e:
                log.error("nat_sync_failed", error=str(e))
                action = "error"
        self.last_action = action
        self.last_sync_epoch = time.time()
        if self.on_change is not None and action not in ("unchanged", "adopted", "not needed"):
            self.on_change(action)
        return action

    async def check(self) -> str:
        return await self._sync(self.table.check)

    async def _checker(self) -> None:
        while True:
            await asyncio.sleep(self.check_interval)
            await self.check()

    async def stop(self) -> None:
        """Stop checking; the table stays (traffic keeps its NAT across a restart)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
