"""What the policy agent watches: Calico's policy kinds and every WorkloadEndpoint.

Owned by policy/. `PolicyDatastore` is config's `EtcdDatastore` (connection,
endpoint failover, backoff, watch resume, compaction reload, last good value
kept for a bad one) with two things changed: which keys it keeps
(``networkpolicies/<ns>/<name>``, ``globalnetworkpolicies/<name>``,
``profiles/<name>``, ``workloadendpoints/<ns>/<name>``) and the snapshot it
publishes (`PolicySnapshot`: key -> parsed resource, plus the keys whose
current value was rejected and why). Unchanged resources keep their object
identity from one snapshot to the next, so the agent diffs snapshots by
identity.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from config import keys as ckeys
from config import parse as cparse
from config.etcd_store import EtcdDatastore

POLICY_KINDS = ("NetworkPolicy", "GlobalNetworkPolicy", "Profile", "WorkloadEndpoint")


@dataclass(frozen=True)
class PolicySnapshot:
    revision: int
    resources: Mapping[str, Any] = field(default_factory=dict)  # etcd key -> resource
    rejected: Mapping[str, str] = field(default_factory=dict)  # etcd key -> reason
    # Publication number, and the keys put or deleted since publication seq - 1
    # (None after a full load). A reader that saw seq - 1 need look at those only;
    # one that missed a publication (the channel keeps only the latest) diffs all.
    seq: int = 0
    changed: frozenset[str] | None = None


class PolicyDatastore(EtcdDatastore):
    """The etcd datastore, keeping the policy kinds and WorkloadEndpoints."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._seq = 0
        self._changed: set[str] | None = None  # None: everything (a full load)

    async def _load(self, client: Any) -> None:
        self._changed = None
        await super()._load(client)

    def _apply_put(self, key: str, raw: bytes, *args: Any) -> bool:
        kept = super()._apply_put(key, raw, *args)
        if kept and self._changed is not None:
            self._changed.add(key)
        return kept

    def _apply_delete(self, key: str) -> bool:
        hit = super()._apply_delete(key)
        if hit and self._changed is not None:
            self._changed.add(key)
        return hit

    def _parser_for(self, key: str) -> tuple[str, Any] | None:
        ns_key = ckeys.parse_namespaced_key(key)
        if ns_key is not None:
            return ("resource", cparse.parse_namespaced_json) if ns_key[0] in POLICY_KINDS \
                else None
        parsed = ckeys.parse_resource_key(key)
        if parsed is not None and parsed[0] in POLICY_KINDS:
            return "resource", cparse.parse_json
        return None

    def _build_snapshot(self) -> PolicySnapshot:
        self._seq += 1
        changed = None if self._changed is None else frozenset(self._changed)
        self._changed = set()
        return PolicySnapshot(self.revision, dict(self._resources), dict(self._rejected),
                              seq=self._seq, changed=changed)
