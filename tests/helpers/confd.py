"""Calico's confd test suite as facts: per case, the inputs and the BGP sessions BIRD gets.

tests/fixtures/confd_cases.json holds, for each case of projectcalico/calico's
``confd/tests/*_test.go`` (commit 87c15906), facts derived from it in our own
schema (scripts/derive_confd_cases.py wrote it from a checkout; tests do not need
that script nor Calico): the Go test and line, the mock-data and golden paths it
cites, the node confd renders for, the secrets of daemon-mode steps, the resources
that decide sessions (reduced; a step's edit already applied), and per BIRD
``protocol bgp`` the session's facts (neighbour address/port/AS, local AS, router
id, source, passive, TTL, restart and keepalive time, route-reflector client and
cluster id, password, next hop, allow local as, add paths, BGPFilters on import
and export).

`plan_sessions` turns podbgp's plan into the same dicts, so a test compares the two.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

TABLE = Path(__file__).resolve().parents[1] / "fixtures" / "confd_cases.json"


@dataclass(frozen=True)
class Case:
    name: str  # compiled_templates/<name>/ in Calico's tree
    test: str  # the Go test (file, function or line) that defines it
    node: str
    resources: tuple[dict, ...] = ()
    sessions: dict[str, dict] = field(default_factory=dict)
    secrets: dict[str, dict[str, str]] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)  # calico-node's environment
    # Tests with no golden assert only how many IPv4 sessions bird.cfg has.
    ipv4_session_count: int | None = None
    sources: tuple[str, ...] = ()  # the Calico paths the facts come from


@cache
def _table() -> dict:
    return json.loads(TABLE.read_text())


def _load() -> tuple[Case, ...]:
    t = _table()
    defaults = t["session_defaults"]
    return tuple(
        Case(name=c["name"], test=c["test"], node=c["node"],
             resources=tuple(c["resources"]),
             sessions={n: {**copy.deepcopy(defaults), **s} for n, s in c["sessions"].items()},
             secrets=c["secrets"], env=c["env"],
             ipv4_session_count=c["ipv4_session_count"], sources=(*c["inputs"], *c["expected"]))
        for c in t["cases"])


CASES: tuple[Case, ...] = _load()
SOURCE: dict[str, str] = _table()["source"]  # repository and commit


def case(name: str) -> Case:
    (c,) = [c for c in CASES if c.name == name]
    return c


def case_documents(case: Case) -> list[dict]:
    """The case's resources as projectcalico.org/v3 documents (to parse as a datastore would)."""
    docs = []
    for r in case.resources:
        meta: dict[str, Any] = {"name": r["name"]}
        if "labels" in r:
            meta["labels"] = copy.deepcopy(r["labels"])
        docs.append({"apiVersion": "projectcalico.org/v3", "kind": r["kind"], "metadata": meta,
                     "spec": copy.deepcopy(r["spec"])})
    return docs


def expected_sessions(case: Case) -> dict[str, dict]:
    return copy.deepcopy(case.sessions)


# ----------------------------------------------------------------- podbgp side


def _filters(snap: Any, names: tuple[str, ...], direction: str, ipv6: bool) -> list[str]:
    """The filters confd calls on a session: those that exist and have rules for the
    direction and family (bgp_processor.go buildImportFilter/buildExportFilter)."""
    attr = f"{direction}_v{6 if ipv6 else 4}"
    out = []
    for n in names:
        f = snap.bgp_filters.get(n)
        if f is not None and getattr(f.spec, attr):
            out.append(n)
    return out


def plan_sessions(plan: Any, snap: Any) -> dict[str, dict]:
    """podbgp's PeerPlan (every planned session) as the table's session dicts, by name."""
    out: dict[str, dict] = {}
    for p in plan.planned:
        out[p.name] = {
            "ip": p.address, "port": p.port, "as": p.peer_as, "local_as": p.local_as,
            "router_id": p.router_id,
            "source": p.local_address if p.bind_source else None,
            "ttl": p.ttl_security, "passive": p.passive,
            "restart_time": p.graceful_restart_time, "keepalive": p.keepalive_time,
            "rr_client": p.rr_client, "rr_cluster_id": p.rr_cluster_id if p.rr_client else None,
            "password": p.password,
            "next_hop": {"Keep": "keep", "Self": "self"}.get(str(p.next_hop_mode)),
            "allow_local_as": p.num_allowed_local_as, "add_paths": p.add_paths,
            "import_filters": _filters(snap, p.filters, "import", p.ipv6),
            "export_filters": _filters(snap, p.filters, "export", p.ipv6),
        }
    return out


def secret_reader(case: Case) -> Callable[[str, str], str | None]:
    def read(name: str, key: str) -> str | None:
        return case.secrets.get(name, {}).get(key)
    return read
