"""`FibSyncer`: keeps the kernel FIB equal to the desired routes.

Owned by fib_sync/. The daemon owns one FibSyncer and is the only caller of
`set_desired`/`converged`. Inside, one asyncio task (the sync loop) runs
reconcile passes one at a time in a dedicated executor thread, so the
daemon's event loop stays responsive while 100k routes are programmed. Every
trigger only marks state and wakes the loop, so a burst of triggers (many
`set_desired` calls, a storm of netlink notifications) costs one pass:

- `set_desired`: a new whole desired set (diffed against our view);
- the monitor: a tagged route deleted by someone else (repaired with the next
  pass), a foreign route appearing on a prefix we want (a conflict: logged,
  counted, left alone), any link or address change (a link going down drops
  routes with no route notification: full re-read);
- the periodic resync (full re-read), and a retry timer while routes fail.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Callable, Iterable, Mapping

import structlog

from .netlink import (
    RTM_DELADDR,
    RTM_DELLINK,
    RTM_DELROUTE,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTM_NEWROUTE,
    RTMGRP_IPV4_IFADDR,
    RTMGRP_IPV4_ROUTE,
    RTMGRP_IPV6_IFADDR,
    RTMGRP_IPV6_ROUTE,
    RTMGRP_LINK,
    NetlinkKernel,
    attach_monitor_filter,
    iter_messages,
    open_netlink,
    parse_route,
)
from .passloop import PassLoop
from .reconcile import FibStats, KernelBackend, PassReport, Reconciler
from .route import (
    DEFAULT_METRIC,
    RT_TABLE_MAIN,
    IKey,
    Route,
    RouteKey,
    RouteSpec,
    full_key,
    ikey,
    internal_key,
    route_of,
    routes_of,
    spec_of,
)

log = structlog.get_logger(__name__)

DEFAULT_PROTOCOL = 201
_RESERVED_PROTOCOLS = {0, 1, 2, 3, 4}


class FibSyncer(PassLoop):
    """Programs podbgp's routes into one network namespace's FIB.

    Only routes carrying `protocol` are listed, changed or deleted; start-up
    adopts them as stale (never flushes), `converged()` or `stale_timeout`
    sweeps those not re-confirmed, `stop()` leaves the kernel as it is.
    """

    _what = "FibSyncer"

    def __init__(
        self,
        netns: str | None = None,
        protocol: int = DEFAULT_PROTOCOL,
        table: int = RT_TABLE_MAIN,
        metric: int = DEFAULT_METRIC,
        resync_interval: float = 30.0,
        stale_timeout: float | None = 300.0,
        retry_interval: float = 1.0,
        repair_delay: float = 0.005,
        *,
        on_pass: Callable[[PassReport], None] | None = None,
        _kernel: KernelBackend | None = None,
    ) -> None:
        if not isinstance(protocol, int) or not 0 <= protocol <= 255:
            raise ValueError(f"protocol: {protocol!r}: must be 5..255 (a u8 route protocol)")
        if protocol in _RESERVED_PROTOCOLS:
            raise ValueError(f"protocol: {protocol}: 0-4 are the kernel's (unspec..static)")
        if not isinstance(table, int) or not 1 <= table < 2**32 or table in (0, 253, 255):
            raise ValueError(f"table: {table!r}: must be 1..2^32-1 and not default/local")
        if not isinstance(metric, int) or not 0 <= metric < 2**32:
            raise ValueError(f"metric: {metric!r}: must be 0..2^32-1")
        for name, value in (
            ("resync_interval", resync_interval),
            ("retry_interval", retry_interval),
        ):
            if not value > 0:
                raise ValueError(f"{name}: {value!r}: must be > 0 seconds")
        if stale_timeout is not None and not stale_timeout > 0:
            raise ValueError(f"stale_timeout: {stale_timeout!r}: must be > 0 seconds or None")
        self.netns = netns
        self.protocol = protocol
        self.table = table
        self.metric = metric
        self.resync_interval = resync_interval
        self.stale_timeout = stale_timeout
        self.retry_interval = retry_interval
        self.repair_delay = repair_delay
        self.stats = FibStats()
        self.on_pass = on_pass  # the daemon observes pass durations for its histogram
        self._kernel = _kernel
        self._reconciler: Reconciler | None = None
        self._init_loop("fib_sync")
        # Keyed by internal key (fib_sync.route): dst alone for main/DEFAULT_METRIC;
        # each route's shared RouteSpec, not a Route (issue 17: 96 bytes a route).
        self._desired: dict[IKey, RouteSpec] = {}
        self._desired_tables: set[int] = {table}  # tables of desired routes (a superset)
        # Metrics of desired routes (a superset; usually one): whether a foreign
        # route's prefix is wanted is then a few key lookups, without a set of
        # every desired prefix (~100 B a route, rebuilt after every update).
        self._desired_metrics: set[int] = {metric}
        self._whole = True  # the desired set changed as a whole: diff everything
        self._changed: set[IKey] = set()  # keys changed by update()
        self._stale: dict[IKey, RouteSpec] = {}
        self._repair_only = False
        self._gone: set[IKey] = set()
        self._sweep: set[IKey] = set()  # stale keys released by converged()
        self._stale_handle: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------ public API

    async def start(self) -> None:
        """Open netlink in the namespace, adopt our tagged routes as stale,
        start the monitor, the sync loop and the resync timer."""
        if self._started:
            raise RuntimeError("FibSyncer already started")
        loop = asyncio.get_running_loop()
        if self._kernel is None:
            self._kernel = await loop.run_in_executor(
                self._executor, NetlinkKernel, self.netns, self.protocol
            )
            mon = await loop.run_in_executor(
                self._executor,
                open_netlink,
                self.netns,
                RTMGRP_LINK
                | RTMGRP_IPV4_IFADDR
                | RTMGRP_IPV6_IFADDR
                | RTMGRP_IPV4_ROUTE
                | RTMGRP_IPV6_ROUTE,
            )
            attach_monitor_filter(mon, self.protocol, self._kernel.portid)
            self._watch(mon)
        self._reconciler = Reconciler(self._kernel, self.stats)
        adopted = await loop.run_in_executor(self._executor, self._reconciler.adopt, self._tables())
        # Routes desired before start() are re-confirmed, not stale.
        self._stale = {k: r for k, r in adopted.items() if k not in self._desired}
        self._started = True
        log.info(
            "fib_sync_started",
            netns=self.netns,
            protocol=self.protocol,
            table=self.table,
            adopted=len(adopted),
            stale=len(self._stale),
        )
        self._start_tasks("fib_sync")
        if self._stale and self.stale_timeout is not None:
            self._stale_handle = loop.call_later(self.stale_timeout, self._stale_expired)
        if self._desired:
            await self._request()

    async def set_desired(self, routes: Iterable[Route], *, wait: bool = True) -> None:
        """Replace the whole desired set. With `wait`, return once a pass that
        started after this call has finished (the kernel holds the routes, or
        they are counted as failed/conflicting and will be retried)."""
        desired: dict[IKey, RouteSpec] = {}
        table, metric = self.table, self.metric
        tables = {table}
        metrics = {metric}
        get = desired.get
        for r in routes:
            if type(r) is not Route and not isinstance(r, Route):
                raise TypeError(f"desired route {r!r}: not a fib_sync.Route")
            if r.table is None or r.metric is None:
                r = r.with_defaults(table, metric)
            k = r._key
            spec = spec_of(r)
            other = get(k)  # type: ignore[arg-type]
            if other is not None and other is not spec and other != spec:
                raise ValueError(
                    f"desired routes: two different routes for {r.dst} "
                    f"table {r.table} metric {r.metric}: {route_of(k, other)} and {r}"  # type: ignore[arg-type]
                )
            desired[k] = spec  # type: ignore[index]
            if r.table != table:
                tables.add(r.table)  # type: ignore[arg-type]
            if r.metric != metric:
                metrics.add(r.metric)  # type: ignore[arg-type]
        self._desired = desired
        self._desired_tables = tables
        self._desired_metrics = metrics
        self._whole = True
        if self._stale:
            for k in [k for k in self._stale if k in desired]:
                del self._stale[k]  # re-confirmed: live now
        if self._started:
            await self._request(wait=wait)

    async def update(
        self,
        routes: Iterable[Route] = (),
        withdraw: Iterable[Route | RouteKey] = (),
        *,
        wait: bool = True,
    ) -> None:
        """Change part of the desired set: add or replace `routes`, remove
        `withdraw` (routes or keys). Only the touched keys are diffed, so a
        small change to a 100k-route set costs what the change costs."""
        table, metric = self.table, self.metric
        specs: dict[IKey, RouteSpec] = {}
        for r in routes:
            if type(r) is not Route and not isinstance(r, Route):
                raise TypeError(f"desired route {r!r}: not a fib_sync.Route")
            if r.table is None or r.metric is None:
                r = r.with_defaults(table, metric)
            specs[r._key] = spec_of(r)  # type: ignore[index]
        keys = [w.with_defaults(table, metric)._key if isinstance(w, Route)
                else internal_key(tuple(w)) for w in withdraw]
        await self.update_specs(specs, keys, wait=wait)  # type: ignore[arg-type]

    async def update_specs(
        self,
        specs: Mapping[IKey, RouteSpec],
        withdraw: Iterable[IKey] = (),
        *,
        wait: bool = True,
    ) -> None:
        """``update`` in the form fib_sync keeps routes: internal key -> shared
        RouteSpec (table and metric set) to add or replace, internal keys to remove.
        The daemon's route path: no Route is built per route on the way in."""
        table, metric = self.table, self.metric
        tables, metrics = self._desired_tables, self._desired_metrics
        last = None
        for s in specs.values():
            if s is not last:  # specs are shared: a run of routes is one check
                last = s
                if type(s) is not RouteSpec or s.table is None or s.metric is None:
                    raise TypeError(f"desired route spec {s!r}: not a fib_sync RouteSpec "
                                    "with its table and metric")
                if s.table != table:
                    tables.add(s.table)
                if s.metric != metric:
                    metrics.add(s.metric)
        # In place: a copy per call made a burst of deltas quadratic in the set size.
        # A pass reading this dict in the executor only looks keys up (it gets a
        # copy whenever it must iterate: full or whole passes).
        desired = self._desired
        changed = self._changed
        for k in withdraw:
            desired.pop(k, None)
            changed.add(k)
        desired.update(specs)
        changed.update(specs)
        stale = self._stale
        if stale:
            for k in specs:
                stale.pop(k, None)
        if self._started:
            await self._request(wait=wait)

    async def converged(self) -> None:
        """The owner says routing has converged: delete routes still stale."""
        if self._stale_handle is not None:
            self._stale_handle.cancel()
            self._stale_handle = None
        n = len(self._stale)
        self._sweep.update(self._stale)
        self._changed.update(self._stale)
        self._stale.clear()
        log.info("fib_converged", stale_to_sweep=n)
        if self._started:
            await self._request()

    async def compact(self) -> None:
        """Give back what the tables still hold after a large withdrawal: a dict keeps
        its largest size (200,000 withdrawn routes leave the desired set and the view
        sized for 200,000, ~7.6 MB each). Rebuilds them at their current size; changes
        no content. The view is rebuilt in the pass thread, between passes (a pass
        holding the old desired dict reads it as a snapshot; its changed keys are
        diffed again by the next pass, which reads the new one)."""
        self._desired = dict(self._desired)
        self._stale = dict(self._stale)
        rec = self._reconciler
        if rec is not None:
            try:
                await asyncio.get_running_loop().run_in_executor(self._executor, rec.compact)
            except RuntimeError:  # stopped: the executor takes no more work
                pass

    async def stop(self) -> None:
        """Stop monitoring and syncing. The kernel keeps every route."""
        await self._stop_loop(self._stale_handle)
        log.info("fib_sync_stopped", netns=self.netns)

    async def kernel_routes(self) -> dict[RouteKey, Route]:
        """A fresh dump of our tagged routes in the tables we manage."""
        if self._kernel is None:
            raise RuntimeError("FibSyncer not started")
        loop = asyncio.get_running_loop()
        dump = await loop.run_in_executor(self._executor, self._kernel.dump, self._tables())
        return {full_key(k): r for k, r in dump.items()}

    @property
    def desired_routes(self) -> dict[RouteKey, Route]:
        return {full_key(k): route_of(k, s) for k, s in self._desired.items()}

    def desired_values(self) -> list[Route]:
        """The desired routes without their keys (no key triple built per route)."""
        return routes_of(self._desired.items())

    def desired_specs(self) -> list[RouteSpec]:
        """What the desired routes are but their destinations (``kind``, ``nexthops``,
        ...), one entry a route, shared: counting them by kind builds no Route."""
        return list(self._desired.values())

    @property
    def stale_count(self) -> int:
        return len(self._stale)

    @property
    def stale_routes(self) -> dict[RouteKey, Route]:
        return {full_key(k): route_of(k, s) for k, s in self._stale.items()}

    @property
    def failing_routes(self) -> dict[RouteKey, tuple[int, str]]:
        """key -> (errno, kernel reason) of routes that currently fail."""
        if not self._reconciler:
            return {}
        return {full_key(k): v for k, v in self._reconciler.failing.items()}

    @property
    def conflicting_prefixes(self) -> dict[tuple[int, str], str]:
        """(table, dst) -> who holds it, for prefixes we want held by another protocol."""
        return dict(self._reconciler.conflicts) if self._reconciler else {}

    # ------------------------------------------------------------ internals

    def _tables(self) -> set[int]:
        return set(self._desired_tables)

    def _close(self) -> None:
        close = getattr(self._kernel, "close", None)
        if close is not None:
            close()

    async def _request(self, wait: bool = True) -> None:
        self._repair_only = False
        await super()._request(wait)

    def _stale_expired(self) -> None:
        self._stale_handle = None
        log.warning("fib_stale_timeout", stale=len(self._stale), timeout=self.stale_timeout)
        self._sweep.update(self._stale)
        self._changed.update(self._stale)
        self._stale.clear()
        self._wake.set()

    def _on_monitor(self) -> None:
        """Read every pending notification; mark what needs doing; wake once."""
        mon = self._monitor
        if mon is None:
            return
        wake = False
        desired = self._desired
        proto = self.protocol
        while True:
            try:
                data = mon.recv(1 << 20)
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno == errno.ENOBUFS:
                    # Lost notifications: only a full read tells what changed.
                    log.debug("fib_monitor_overflow")
                    self._need_full = True
                    wake = True
                    continue
                raise
            for off, ln, typ, _flags, _seq in iter_messages(data, len(data)):
                if typ in (RTM_NEWROUTE, RTM_DELROUTE):
                    m = parse_route(data, off, ln)
                    t, dst, metric = m.key
                    if m.protocol == proto:
                        key = ikey(t, dst, metric)
                        if typ == RTM_DELROUTE and (key in desired or key in self._stale):
                            self._gone.add(key)
                            wake = True
                        continue
                    # Another protocol: only prefixes we want matter; the full
                    # read notes or clears the conflict.
                    if any(ikey(t, dst, m) in desired for m in self._desired_metrics):
                        self._need_full = True
                        wake = True
                elif typ in (RTM_NEWLINK, RTM_DELLINK, RTM_DELADDR):
                    # A link going down or an address going away removes routes
                    # without any route notification: only a full read tells.
                    self._need_full = True
                    wake = True
                elif typ == RTM_NEWADDR and self._reconciler and self._reconciler.failing:
                    wake = True  # a new connected subnet may make a gateway reachable
        if wake:
            self._repair_only = True if self._gen == self._done_gen else self._repair_only
            self._wake.set()

    def _target(self) -> dict[IKey, RouteSpec]:
        """Desired routes plus adopted routes not yet re-confirmed or swept."""
        if not self._stale:
            return self._desired
        target = dict(self._stale)
        target.update(self._desired)
        return target

    async def _sync_loop(self) -> None:
        loop = asyncio.get_running_loop()
        rec = self._reconciler
        assert rec is not None
        try:
            while True:
                await self._wake.wait()
                if self._repair_only and self.repair_delay:
                    # Let a burst of notifications land: one pass repairs all.
                    await asyncio.sleep(self.repair_delay)
                self._wake.clear()
                gen = self._gen
                full, self._need_full = self._need_full, False
                gone, self._gone = self._gone, set()
                self._repair_only = False
                target = self._target()
                stale_keys, self._sweep = self._sweep, set()
                only: set[IKey] | None = None
                if not self._whole:
                    # The changed set is handed over (a fresh one replaces it
                    # below), not copied: copying 10k keys cost more than diffing them.
                    only = self._changed
                    if gone:
                        only |= gone
                    if rec.failing:
                        only.update(rec.failing)
                if (only is None or full or rec.view is None) and target is self._desired:
                    # This pass iterates the whole target in another thread while
                    # update() may change the live dict: hand it a snapshot.
                    target = dict(target)
                self._whole = False
                self._changed = set()
                report: PassReport = await loop.run_in_executor(
                    self._executor,
                    rec.run_pass,
                    target,
                    self._tables(),
                    full,
                    gone,
                    stale_keys,
                    only,
                )
                # A snapshot of 100k routes must not live on while the loop waits.
                del target, only, gone, stale_keys
                self._after_pass(report, gen)
        except asyncio.CancelledError:
            raise
        except BaseException as e:  # a bug: fail loudly and release waiters
            self._died(e, "fib_sync_loop_died")
            raise

    def _after_pass(self, report: PassReport, gen: int) -> None:
        rec = self._reconciler
        if self.on_pass is not None and (report.applied or report.failures or report.dumped):
            try:
                self.on_pass(report)
            except Exception:
                log.exception("fib_on_pass_failed")
        if report.applied or report.failures or report.dumped:
            log.debug(
                "fib_sync_pass",
                applied=report.applied,
                failures=report.failures,
                conflicts=report.conflicts,
                dumped=report.dumped,
                seconds=round(report.seconds, 4),
            )
        if report.swept:
            log.info("fib_stale_swept", routes=len(report.swept))
        if report.need_full:
            self._need_full = True
            self._wake.set()
        if report.state_unknown:
            self._need_full = True
            self._wake.set()
            return  # waiters wait for a pass that knows the state
        self._passed(gen)
        if rec is not None and rec.failing and self._retry_handle is None:
            self._retry_handle = asyncio.get_running_loop().call_later(
                self.retry_interval, self._retry
            )

    def _retry(self) -> None:
        self._retry_handle = None
        self._wake.set()
