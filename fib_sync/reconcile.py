"""One reconcile pass: (re-)read the kernel when needed, diff, apply, account.

Owned by fib_sync/. `Reconciler` holds the syncer's view of our routes in the
kernel (`view`), the routes that currently fail and the prefixes held by
someone else. It is synchronous and knows nothing of asyncio: `FibSyncer` runs
`run_pass` in its executor thread, one pass at a time, and tests drive it
directly against `tests.helpers.fake_kernel.FakeKernel`.

Routes are keyed by internal key (`Route._key`, see fib_sync.route) throughout:
targets, the view, `failing`, `gone`, `only`. Targets and the view map each key to
its shared `RouteSpec` (not a `Route`: see fib_sync.route); `fib_sync.route.specs_keyed`
builds such a mapping. Routes are built only for the parts handed to the kernel
backend, a part at a time.

The kernel backend protocol (NetlinkKernel, FakeKernel):
  dump(tables) -> dict[IKey, Route]      our tagged routes, by internal key
  apply_stream(iterable of (delete, replace, add)) -> [OpError]   may raise StateUnknown
      (each a list of (internal key, RouteSpec) items; OpError.route is a Route)
"""

from __future__ import annotations

import errno
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import islice
from typing import Protocol

import structlog

from .netlink import ADD, DELETE, REPLACE, OpError, StateUnknown
from .route import (
    IKey,
    Item,
    Route,
    RouteKind,
    RouteSpec,
    diff_maps,
    full_key,
    internal_key,
    route_of,
    spec_of,
)

log = structlog.get_logger(__name__)


class KernelBackend(Protocol):
    def dump(self, tables: Iterable[int]) -> dict[IKey, Route]: ...

    def apply_stream(
        self, parts: Iterable[tuple[list[Item], list[Item], list[Item]]]
    ) -> list[OpError]: ...


PART = 1024  # keys diffed per part of a streamed plan
BULK_PART = 8192  # routes per part when everything is added (nothing to compare)


class _StreamedPlan:
    """A pass's diff, computed part by part as the kernel backend consumes it
    (`parts()`), accumulated for the counters, and booked into the view part
    by part while the kernel applies the next one. Booking is optimistic: the
    pass undoes the few routes the kernel refused (`old` keeps what a
    replaced key held). Owned by one pass."""

    def __init__(
        self,
        target: Mapping[IKey, RouteSpec],
        view: dict[IKey, RouteSpec],
        only: set[IKey] | None,
    ) -> None:
        self.target, self.view = target, view
        self.add: Mapping[IKey, RouteSpec] = {}
        self.replace: dict[IKey, RouteSpec] = {}
        self.delete: Mapping[IKey, RouteSpec] = {}
        self.old: dict[IKey, RouteSpec] = {}
        self.keys: list[IKey] = []
        self.bulk = only is None and (not view or not target)
        if self.bulk:
            # Install or flush everything: nothing to compare, no copies.
            self.add, _, self.delete, _ = diff_maps(target, view)
        elif only is None:
            self.keys = list(target)
            self.delete = {k: r for k, r in view.items() if k not in target}
        else:
            self.keys = list(only)
        self.empty = not (self.add or self.delete or self.keys)

    def parts(self) -> Iterator[tuple[list[Item], list[Item], list[Item]]]:
        view = self.view
        if self.bulk:
            if self.delete:  # the whole view: the pass empties it afterwards
                yield list(self.delete.items()), [], []
            if self.add:
                # A part's (key, spec) items at a time, not 100k of them at once: the
                # target is the pass's own snapshot here (nothing changes it meanwhile).
                items = iter(self.add.items())
                while part := list(islice(items, BULK_PART)):
                    yield [], [], part
                    view.update(part)
            return
        if self.delete:
            yield list(self.delete.items()), [], []
            for k in self.delete:
                del view[k]
        keys, target = self.keys, self.target
        add, replace, delete, old = self.add, self.replace, self.delete, self.old
        for i in range(0, len(keys), PART):
            a, r, d, same = diff_maps(target, view, keys[i : i + PART], old)
            if a or r or d:
                yield list(d.items()), list(r.items()), list(a.items())
                add.update(a)  # type: ignore[attr-defined]
                replace.update(r)
                delete.update(d)  # type: ignore[attr-defined]
                view.update(a)
                view.update(r)
                for k in d:
                    del view[k]
            if same:
                view.update(same)  # identity-fast next time (see diff_maps)


@dataclass
class FibStats:
    """Plain counters for metrics; written by the syncer only, read by anyone."""

    installed: int = 0
    replaced: int = 0
    deleted: int = 0
    failed: int = 0  # routes that started failing (one per route and reason)
    failing: int = 0  # routes failing right now
    conflicts: int = 0  # prefixes found held by another protocol (once each)
    repairs: int = 0  # routes re-installed after someone else removed them
    adopted: int = 0  # tagged routes found at start
    swept: int = 0  # stale routes deleted after convergence
    passes: int = 0
    full_resyncs: int = 0
    state_unknown: int = 0  # ENOBUFS: replies lost, table re-read
    last_sync_seconds: float = 0.0
    sync_seconds_total: float = 0.0
    max_sync_seconds: float = 0.0


@dataclass
class PassReport:
    """What one pass did; the syncer logs it and wakes waiters."""

    applied: int = 0
    failures: int = 0
    conflicts: int = 0
    state_unknown: bool = False
    seconds: float = 0.0
    dumped: bool = False
    need_full: bool = False  # the next pass must re-read the kernel
    swept: list[Route] = field(default_factory=list)


class Reconciler:
    """Owns the view of our kernel routes and the failure/conflict books."""

    def __init__(self, kernel: KernelBackend, stats: FibStats | None = None) -> None:
        self.kernel = kernel
        self.stats = stats or FibStats()
        self.view: dict[IKey, RouteSpec] | None = None  # None: never read
        self.failing: dict[IKey, tuple[int, str]] = {}
        self.conflicts: dict[tuple[int, str], str] = {}  # (table, dst) -> holder

    def adopt(self, tables: Iterable[int]) -> dict[IKey, RouteSpec]:
        """Read our tagged routes (start-up): they become the view, nothing changes."""
        self.view = self._read(tables)
        self.stats.adopted += len(self.view)
        return dict(self.view)

    def _read(self, tables: Iterable[int]) -> dict[IKey, RouteSpec]:
        """The kernel's routes of ours, as the view keeps them (a dump's Routes go
        with this call)."""
        return {k: spec_of(r) for k, r in self.kernel.dump(tables).items()}

    def compact(self) -> None:
        """Rebuild the view and the failure books at their current size (see
        FibSyncer.compact). Run where passes run, never during one."""
        if self.view is not None:
            self.view = dict(self.view)
        self.failing = dict(self.failing)

    def note_conflict(self, key: IKey | tuple[int, str], holder: str) -> None:
        """A route of another protocol holds a prefix we want (same table):
        log once, count once, leave it alone. If it holds our exact key the
        kernel refuses ours (EEXIST) until it goes; at another metric both
        exist and the kernel prefers the lower metric."""
        if type(key) is str:
            key = full_key(key)
        prefix = (key[0], key[1])
        if prefix in self.conflicts:
            return
        self.conflicts[prefix] = holder
        self.stats.conflicts += 1
        log.warning("fib_conflict", table=prefix[0], dst=prefix[1], holder=holder)

    def run_pass(
        self,
        target: Mapping[IKey, RouteSpec],
        tables: Iterable[int],
        full: bool = False,
        gone: Iterable[IKey] = (),
        stale_keys: Iterable[IKey] = (),
        only: set[IKey] | None = None,
    ) -> PassReport:
        """Make the kernel hold `target` (desired plus still-stale routes).

        `full`: re-read the kernel first (periodic resync, link change, lost
        replies). `gone`: keys the monitor saw deleted by someone else.
        `stale_keys`: adopted keys not in `target` any more — their deletes are
        sweeps, counted apart. `only`: the caller knows nothing else changed
        since the last pass (a repair, a retry, a delta): diff these keys only,
        not the whole 100k-route set.
        """
        t0 = time.monotonic()
        report = PassReport()
        st = self.stats
        repairs: set[IKey] = set()
        for k in [k for k in self.failing if k not in target]:
            del self.failing[k]
        if full or self.view is None:
            old = self.view
            self.view = self._read(tables)
            report.dumped = True
            st.full_resyncs += 1
            if old is not None:
                repairs = {k for k in old if k in target and k not in self.view}
            self._check_foreign(target, getattr(self.kernel, "foreign", {}))
        for k in gone:
            k = internal_key(k)
            if k in target and self.view.pop(k, None) is not None:
                repairs.add(k)
        view = self.view
        plan = _StreamedPlan(target, view, None if only is None or report.dumped else only)
        if plan.empty:
            self._finish(report, t0)
            return report
        try:
            # The diff runs lazily, part by part, while the kernel applies the
            # previous part (NetlinkKernel.apply_stream pipelines).
            errors = self.kernel.apply_stream(plan.parts())
        except StateUnknown as e:
            st.state_unknown += 1
            report.state_unknown = True
            log.warning("fib_state_unknown", reason=str(e))
            self.view = None  # next pass re-reads
            self._finish(report, t0)
            return report
        add, replace, delete = plan.add, plan.replace, plan.delete
        if plan.bulk and delete:
            self.view = view = {}  # `delete` was the whole view
        refused: dict[str, set[IKey]] = {ADD: set(), REPLACE: set(), DELETE: set()}
        for err in errors:
            # Rare: undo the optimistic booking of what the kernel refused.
            key = err.route._key
            refused[err.op].add(key)  # type: ignore[arg-type]
            if err.op == ADD:
                view.pop(key, None)  # type: ignore[call-overload]
            elif err.op == REPLACE:
                view[key] = plan.old[key]  # type: ignore[index]
            else:
                view[key] = spec_of(err.route)  # type: ignore[index]
            self._refused(err, key, report, view, repairs)  # type: ignore[arg-type]
        r_add, r_rep, r_del = refused[ADD], refused[REPLACE], refused[DELETE]
        if delete:
            stale = {internal_key(k) for k in stale_keys}
            n_swept = 0
            if stale:
                for key, spec in delete.items():
                    if key in stale and key not in r_del:
                        n_swept += 1
                        report.swept.append(route_of(key, spec))
            done = len(delete) - len(r_del)
            st.swept += n_swept
            st.deleted += done - n_swept
            report.applied += done
        if replace:
            done = len(replace) - len(r_rep)
            st.replaced += done
            report.applied += done
        if add:
            done = len(add) - len(r_add)
            if repairs:
                st.repairs += len(repairs.intersection(add).difference(r_add))
            st.installed += done
            report.applied += done
        if self.failing:
            for key in [
                k for k in self.failing
                if (k in add and k not in r_add) or (k in replace and k not in r_rep)
            ]:
                self._recovered(key)
        st.failing = len(self.failing)
        self._finish(report, t0)
        return report

    def _refused(
        self, err: OpError, key: IKey, report: PassReport, view: dict, repairs: set
    ) -> None:
        op = err.op
        if op == DELETE and err.errno == errno.ESRCH:
            view.pop(key, None)  # already gone: that is what we wanted
        elif op == ADD and err.errno == errno.EEXIST:
            # Not in our view, yet taken: another protocol holds the key, or
            # our view is behind. A full read tells which (and notes the
            # conflict); a full read that already happened did.
            report.conflicts += 1
            if not report.dumped:
                report.need_full = True
            elif (full_key(key)[0], full_key(key)[1]) not in self.conflicts:
                self.note_conflict(key, "another protocol (EEXIST)")
        else:
            report.failures += 1
            self._failed(key, err)

    def _failed(self, key: IKey, err: OpError) -> None:
        prev = self.failing.get(key)
        if prev is not None and prev[0] == err.errno:
            return  # logged and counted already; retried silently
        self.failing[key] = (err.errno, err.reason)
        self.stats.failed += 1
        table, dst, metric = full_key(key)
        log.warning(
            "fib_route_failed",
            op=err.op,
            table=table,
            dst=dst,
            metric=metric,
            errno=errno.errorcode.get(err.errno, err.errno),
            reason=err.reason,
        )

    def _recovered(self, key: IKey) -> None:
        if self.failing.pop(key, None) is not None:
            table, dst, metric = full_key(key)
            log.info("fib_route_recovered", table=table, dst=dst, metric=metric)

    def _check_foreign(self, target: Mapping[IKey, RouteSpec], foreign: Mapping) -> None:
        """After a full read: note new conflicts, drop those that went away."""
        wanted = {full_key(k)[:2] for k in target} if (foreign or self.conflicts) else set()
        metrics = getattr(self.kernel, "foreign_metric", {})
        blackholes = (
            {(t, dst): m for k, s in target.items() if s.kind is RouteKind.BLACKHOLE
             for t, dst, m in (full_key(k),)}
            if foreign else {}
        )
        for prefix, proto in foreign.items():
            if prefix not in wanted:
                continue
            # Our blackhole for an own block is the fallback behind the CNI's connected
            # route for that block (different metric): that is by design, not a conflict.
            if prefix in blackholes and metrics.get(prefix, blackholes[prefix]) != blackholes[prefix]:
                continue
            self.note_conflict(prefix, f"protocol {proto}")
        for prefix in [p for p in self.conflicts if p not in foreign or p not in wanted
                       or (p in blackholes and metrics.get(p, blackholes[p]) != blackholes[p])]:
            del self.conflicts[prefix]
            log.info("fib_conflict_resolved", table=prefix[0], dst=prefix[1])

    def _finish(self, report: PassReport, t0: float) -> None:
        report.seconds = time.monotonic() - t0
        st = self.stats
        st.passes += 1
        st.last_sync_seconds = report.seconds
        st.sync_seconds_total += report.seconds
        st.max_sync_seconds = max(st.max_sync_seconds, report.seconds)
