"""``Changes``: what one RIB operation changed, for the daemon to hand on.

Owned by rib/ (built by ``rib.table.Rib``); the daemon reads it once and moves
the parts: ``best`` to /status and metrics, ``exports`` to the speaker,
``kernel_remove``/``kernel_add`` to fib_sync, ``rejected`` to the log and the
rejection counter, ``teardown`` to session control.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from dataclasses import dataclass, field, fields

from rib.bestpath import BestReason
from rib.kernel import KernelRoute
from rib.path import Path
from rib.policy import ExportAttrs, RejectReason


@dataclass(frozen=True, slots=True)
class BestChange:
    """The Loc-RIB entry for ``prefix`` changed. ``new`` None: no route any more."""

    prefix: str
    old: Path | None
    new: Path | None
    multipath: tuple[Path, ...]  # the new ECMP set, best first; () when withdrawn
    reason: BestReason


_BC_SET = {name: BestChange.__dict__[name].__set__
           for name in ("prefix", "old", "new", "multipath", "reason")}
assert tuple(f.name for f in fields(BestChange)) == tuple(_BC_SET), "update best_change"


def best_change(
    prefix: str, old: Path | None, new: Path | None, multipath: tuple[Path, ...],
    reason: BestReason, *, _new=object.__new__, _p=_BC_SET["prefix"], _o=_BC_SET["old"],
    _n=_BC_SET["new"], _m=_BC_SET["multipath"], _r=_BC_SET["reason"],
) -> BestChange:
    """``BestChange(...)`` for the RIB's hot path (one per changed prefix): the same
    object without the frozen dataclass's object.__setattr__ per field."""
    b = _new(BestChange)
    _p(b, prefix)
    _o(b, old)
    _n(b, new)
    _m(b, multipath)
    _r(b, reason)
    return b


@dataclass(frozen=True, slots=True)
class Rejection:
    peer_key: Hashable
    prefix: str
    reason: RejectReason


@dataclass(slots=True)
class ExportDelta:
    """What to send one peer. ``full``: this is the whole Adj-RIB-Out (session start);
    the speaker should send it all and nothing else is outstanding."""

    announce: dict[ExportAttrs, list[str]] = field(default_factory=dict)
    withdraw: list[str] = field(default_factory=list)
    full: bool = False

    def batches(self) -> Iterator[tuple[ExportAttrs, tuple[str, ...]]]:
        """(attributes, prefixes) groups: one ``announce attributes ... nlri ...`` each."""
        for attrs, prefixes in self.announce.items():
            yield attrs, tuple(prefixes)

    def __len__(self) -> int:
        return sum(map(len, self.announce.values())) + len(self.withdraw)


@dataclass(slots=True)
class Changes:
    best: list[BestChange] = field(default_factory=list)
    exports: dict[Hashable, ExportDelta] = field(default_factory=dict)
    kernel_add: list[KernelRoute] = field(default_factory=list)  # install or replace
    kernel_remove: list[KernelRoute] = field(default_factory=list)  # apply before adds
    rejected: list[Rejection] = field(default_factory=list)
    teardown: list[Hashable] = field(default_factory=list)  # max-prefix: end these sessions

    def __bool__(self) -> bool:
        return bool(
            self.best or self.exports or self.kernel_add or self.kernel_remove
            or self.rejected or self.teardown
        )

    def export_for(self, key: Hashable) -> ExportDelta:
        delta = self.exports.get(key)
        if delta is None:
            delta = self.exports[key] = ExportDelta()
        return delta
