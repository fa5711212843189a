"""rib: podbgp's routing table (pure: no I/O, no event loop).

Public names are re-exported here; see ``rib.table.Rib`` for the operations.
"""

from rib.bestpath import BestReason, select_best
from rib.changes import BestChange, Changes, ExportDelta, Rejection
from rib.inputs import (
    NEXT_HOP_SELF,
    ClusterRoutes,
    EncapMode,
    FilterAction,
    FilterRule,
    FilterSource,
    MatchOperator,
    MaxPrefixAction,
    NextHopMode,
    PeerPolicy,
    Pool,
    PrefixAdvertisement,
    RibConfig,
)
from rib.kernel import KernelRoute, RouteKind
from rib.path import LOCAL_PEER, Origin, Path, PeerKind, PeerRef, Withdraw
from rib.policy import ExportAttrs, RejectReason
from rib.table import Rib, rib_from

__all__ = [
    "LOCAL_PEER",
    "NEXT_HOP_SELF",
    "BestChange",
    "BestReason",
    "Changes",
    "ClusterRoutes",
    "EncapMode",
    "ExportAttrs",
    "ExportDelta",
    "FilterAction",
    "FilterRule",
    "FilterSource",
    "KernelRoute",
    "MatchOperator",
    "MaxPrefixAction",
    "NextHopMode",
    "Origin",
    "Path",
    "PeerKind",
    "PeerPolicy",
    "PeerRef",
    "Pool",
    "PrefixAdvertisement",
    "RejectReason",
    "Rejection",
    "Rib",
    "RibConfig",
    "RouteKind",
    "Withdraw",
    "rib_from",
    "select_best",
]
