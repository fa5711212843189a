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


class PolicyDatastore(EtcdDatastore):
    """The etcd datastore, keeping the policy kinds and WorkloadEndpoints."""

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
        return PolicySnapshot(self.revision, dict(self._resources), dict(self._rejected))
