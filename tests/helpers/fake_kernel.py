"""A fake kernel routing table for pure tests of diff, apply and retry logic.

Test-only: it lives in tests/helpers/ (the daemon never uses it). It keeps the rules
the syncer relies on: one route per (table, dst, metric) whatever its
protocol, EEXIST on adding a taken key, ESRCH on deleting a missing or
foreign one, and dumps that list only the given protocol. Faults are
injected per destination (`fail`) or as lost replies (`lose_replies`).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable

from fib_sync.netlink import ADD, DELETE, REPLACE, OpError, StateUnknown
from fib_sync.route import Item, Route, RouteKey, route_of


class FakeKernel:
    def __init__(self, protocol: int) -> None:
        self.protocol = protocol
        self.routes: dict[RouteKey, tuple[Route, int]] = {}  # key -> (route, protocol)
        self.fail: dict[str, int] = {}  # dst -> errno for add/replace
        self.lose_replies = 0  # the next N applies raise StateUnknown after applying
        self.applied_ops = 0
        self.dumps = 0
        self.foreign: dict[tuple[int, str], int] = {}

    def put(self, route: Route, protocol: int) -> None:
        """Someone (us or another daemon) installs a route behind the syncer's back."""
        self.routes[route.key] = (route, protocol)

    def ours(self) -> dict[RouteKey, Route]:
        return {k: r for k, (r, p) in self.routes.items() if p == self.protocol}

    def dump(self, tables: Iterable[int]) -> dict:
        """Our routes in `tables`."""
        self.dumps += 1
        tables = set(tables)
        self.foreign = {
            (k[0], k[1]): p
            for k, (_r, p) in self.routes.items()
            if p != self.protocol and k[0] in tables
        }
        # By internal key, as NetlinkKernel.dump (what Reconciler compares with).
        return {r._key: r for k, r in self.ours().items() if k[0] in tables}

    def apply_stream(
        self, parts: Iterable[tuple[list[Item], list[Item], list[Item]]]
    ) -> list[OpError]:
        """As NetlinkKernel's: parts of (internal key, RouteSpec) items."""
        ops = []
        for delete, replace, add in parts:
            ops += [(DELETE, route_of(*i)) for i in delete]
            ops += [(REPLACE, route_of(*i)) for i in replace]
            ops += [(ADD, route_of(*i)) for i in add]
        return self.apply(ops)

    def apply(self, ops: list[tuple[str, Route]]) -> list[OpError]:
        errors = []
        for op, route in ops:
            self.applied_ops += 1
            key = route.key
            cur = self.routes.get(key)
            code = 0
            if op == DELETE:
                if cur is None or cur[1] != self.protocol:
                    code = errno.ESRCH
                else:
                    del self.routes[key]
            elif route.dst in self.fail:
                code = self.fail[route.dst]
            elif op == ADD and cur is not None:
                code = errno.EEXIST
            else:
                assert op in (ADD, REPLACE)
                self.routes[key] = (route, self.protocol)
            if code:
                errors.append(OpError(op, route, code, os.strerror(code)))
        if self.lose_replies:
            self.lose_replies -= 1
            raise StateUnknown("fake ENOBUFS")
        return errors
