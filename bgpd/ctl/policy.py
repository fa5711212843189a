"""`bgpctl policy show`: which policies select each workload endpoint, in the order
they are evaluated (bgpctl plugin; policy semantics in policy/, docs/policy.md).

Reads the policies, profiles and WorkloadEndpoints from the datastore and
evaluates selection the way podbgp-policy does (the same engine), so it also
answers for endpoints of nodes whose agent is down. A policy the agent would
refuse is listed under REJECTED, not applied.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import yaml


def register(sub: Any) -> None:
    p = sub.add_parser("policy", help="network policy (policy show)")
    verbs = p.add_subparsers(dest="policy_verb", metavar="VERB", required=True)
    show = verbs.add_parser("show", help="the policies selecting each workload endpoint, "
                            "in evaluation order")
    show.add_argument("endpoint", nargs="?", metavar="ENDPOINT",
                      help="a WorkloadEndpoint name or a pod name (default: every endpoint)")
    show.add_argument("-n", "--namespace", metavar="NS", help="namespace (default 'default')")
    show.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace")
    show.add_argument("-o", "--output", choices=("ps", "wide", "yaml", "json"), default="ps")
    show.set_defaults(func=_cmd_show)


def _cmd_show(args: argparse.Namespace) -> Any:
    from bgpd.ctl.cli import DEFAULT_NAMESPACE, RequestFailed, UsageError, _with_store

    if args.all_namespaces and args.endpoint:
        raise UsageError("policy show: give ENDPOINT with -n, not -A")
    if args.datastore != "etcdv3":
        raise UsageError("policy show needs --datastore etcdv3 (WorkloadEndpoints live there)")
    namespace = None if args.all_namespaces else (args.namespace or DEFAULT_NAMESPACE)

    async def run(store: Any) -> int:
        from config.datastore import DatastoreError
        from config.errors import ConfigError

        try:
            resources = [*await store.list("GlobalNetworkPolicy"),
                         *await store.list("NetworkPolicy", None),
                         *await store.list("Profile"),
                         *await store.list("WorkloadEndpoint", None)]
        except (DatastoreError, ConfigError) as e:
            raise RequestFailed(f"Failed to read policies: {e}") from None
        rows, rejected = explain(resources, namespace, args.endpoint)
        if args.endpoint and not rows:
            raise RequestFailed(f"no WorkloadEndpoint {args.endpoint!r} in namespace "
                                f"{namespace!r}")
        sys.stdout.write(render(rows, rejected, args.output))
        return 0

    return _with_store(args, run)


def explain(resources: list[Any], namespace: str | None,
            endpoint: str | None) -> tuple[list[dict], list[str]]:
    """One row per selected endpoint (the policies applying per direction, in order),
    and the resources the agent would refuse."""
    from config.endpoints import WorkloadEndpoint
    from policy.agent import Unenforceable, endpoint_key, feed
    from policy.engine import Engine

    engine = Engine(node="")
    rejected = []
    weps = []
    for res in resources:
        try:
            feed(engine, res)
        except Unenforceable as e:
            ident = (f"{res.metadata.namespace}/{res.metadata.name}"
                     if getattr(res.metadata, "namespace", None) else res.metadata.name)
            rejected.append(f"{res.kind} {ident}: {e}")
        if isinstance(res, WorkloadEndpoint):
            weps.append(res)
    rows = []
    for wep in sorted(weps, key=lambda w: (w.namespace, w.name)):
        if namespace is not None and wep.namespace != namespace:
            continue
        if endpoint and endpoint not in (wep.name, wep.spec.pod):
            continue
        key = endpoint_key(wep)
        rows.append({
            "namespace": wep.namespace, "name": wep.name,
            "workload": wep.spec.workload or wep.spec.pod or "",
            "node": wep.spec.node or "", "interface": wep.spec.interface_name or "",
            "ingress": [p.id for p in engine.applied(key, "ingress")],
            "egress": [p.id for p in engine.applied(key, "egress")],
            "profiles": list(wep.spec.profiles),
        })
    return rows, rejected


def render(rows: list[dict], rejected: list[str], output: str) -> str:
    if output in ("yaml", "json"):
        out = {"endpoints": rows, "rejected": rejected}
        return (json.dumps(out, indent=2) + "\n" if output == "json"
                else yaml.safe_dump(out, default_flow_style=False, sort_keys=False))
    from bgpd.ctl.cli import format_table

    def pols(ids: list[str]) -> str:
        return ", ".join(ids) if ids else "(profiles)"

    head = ["NAMESPACE", "WORKLOAD", "INGRESS", "EGRESS"]
    if output == "wide":
        head = ["NAMESPACE", "NAME", "WORKLOAD", "NODE", "INTERFACE", "INGRESS", "EGRESS",
                "PROFILES"]
    table = [head]
    for r in rows:
        if output == "wide":
            table.append([r["namespace"], r["name"], r["workload"], r["node"], r["interface"],
                          pols(r["ingress"]), pols(r["egress"]), ",".join(r["profiles"])])
        else:
            table.append([r["namespace"], r["workload"], pols(r["ingress"]),
                          pols(r["egress"])])
    text = format_table(table)
    if rejected:
        text += "REJECTED (not enforced):\n" + "".join(f"  {x}\n" for x in rejected)
    return text
