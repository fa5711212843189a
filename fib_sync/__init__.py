"""fib_sync: keep the kernel FIB exactly equal to podbgp's desired routes.

Owned by fib_sync/; the daemon (bgpd/) is the only caller. It knows nothing of
BGP or config: it is handed whole sets of `Route`s.

Route protocol number: podbgp tags every kernel route it installs with
``rtm_protocol = 201`` (`DEFAULT_PROTOCOL`, configurable). 201 is not used by
the kernel (0-4), iproute2's reserved list (8-18, 42 babel, 99 openr, 186-192
FRR: bgp, isis, ospf, rip, eigrp), BIRD (12), kube-router (17) or Calico's
Felix (80). Only routes carrying this number are ever listed, changed or
deleted; ``ip route show proto 201`` lists podbgp's routes.

Public API:
    Route, NextHop, RouteKind, RouteKey, Plan, diff, same_route
    FibSyncer(netns=None, protocol=201, table=254, metric=20,
              resync_interval=30.0, stale_timeout=300.0)
    FibStats (FibSyncer.stats)
"""

from .reconcile import FibStats
from .route import NextHop, Plan, Route, RouteKey, RouteKind, diff, same_route
from .syncer import DEFAULT_METRIC, DEFAULT_PROTOCOL, FibSyncer

__all__ = [
    "DEFAULT_METRIC",
    "DEFAULT_PROTOCOL",
    "FibStats",
    "FibSyncer",
    "NextHop",
    "Plan",
    "Route",
    "RouteKey",
    "RouteKind",
    "diff",
    "same_route",
]
