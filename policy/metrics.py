"""podbgp-policy's Prometheus metrics (names and meanings: docs/policy.md).

Read at scrape time from the agent's plain state (AgentStats, the engine, the
last applied Ruleset, the datastore's stats); only the programming-latency
histogram is observed as it happens. Labels are bounded (kinds, reasons,
stages), never pod or policy names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bgpd import __version__
from bgpd.ops.metrics import datastore_families
from bgpd.ops.promtext import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Histogram,
    Registry,
    generate_latest,
)

if TYPE_CHECKING:
    from policy.agent import PolicyAgent

PROGRAM_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class PolicyCollector:
    def __init__(self, agent: PolicyAgent) -> None:
        self.a = agent

    def collect(self):
        a = self.a
        info = GaugeMetricFamily("podbgp_policy_build_info", "Build information (always 1).",
                                 labels=["version"])
        info.add_metric([__version__], 1)
        yield info
        yield GaugeMetricFamily("podbgp_policy_ready", "1 when /readyz is 200.",
                                value=1 if a.ready()[0] else 0)
        eps = GaugeMetricFamily("podbgp_policy_endpoints",
                                "WorkloadEndpoints known: on this node (programmed) and in all.",
                                labels=["scope"])
        eps.add_metric(["local"], len(a.engine.local_endpoints()))
        eps.add_metric(["cluster"], len(a.engine.endpoints))
        yield eps
        yield GaugeMetricFamily("podbgp_policy_policies",
                                "NetworkPolicies and GlobalNetworkPolicies in force.",
                                value=len(a.engine.policies))
        yield GaugeMetricFamily("podbgp_policy_profiles", "Profiles known.",
                                value=len(a.engine.profiles))
        rs = a.applied
        yield GaugeMetricFamily("podbgp_policy_rules", "Rules in the programmed table.",
                                value=rs.rule_count if rs else 0)
        yield GaugeMetricFamily("podbgp_policy_sets", "Named sets in the programmed table.",
                                value=len(rs.sets) if rs else 0)
        yield GaugeMetricFamily("podbgp_policy_set_elements",
                                "Elements of all named sets in the programmed table.",
                                value=rs.element_count if rs else 0)
        tx = CounterMetricFamily("podbgp_policy_transactions",
                                 "nft transactions applied, by type (full, incremental).",
                                 labels=["type"])
        for kind in ("full", "incremental"):
            tx.add_metric([kind], a.stats.transactions_total[kind])
        yield tx
        err = CounterMetricFamily("podbgp_policy_errors",
                                  "Failures by stage (nft: a transaction was refused; verify: "
                                  "the table could not be read back).", labels=["stage"])
        for stage in ("nft", "verify"):
            err.add_metric([stage], a.stats.errors_total[stage])
        yield err
        rej = CounterMetricFamily("podbgp_policy_rejected",
                                  "Valid resources the agent cannot enforce exactly (not "
                                  "enforced; the last good version stays).",
                                  labels=["kind", "reason"])
        for (kind, reason), n in sorted(a.stats.rejected_total.items()):
            rej.add_metric([kind, reason], n)
        yield rej
        yield CounterMetricFamily("podbgp_policy_table_repairs",
                                  "Times the table was found changed by someone else and "
                                  "rewritten.", value=a.stats.tamper_repairs_total)
        snap = a.snapshot
        yield from datastore_families(a.store, "etcdv3", snap.revision if snap else 0)


class PolicyMetrics:
    def __init__(self, agent: PolicyAgent) -> None:
        self.registry = Registry()
        self.registry.register(PolicyCollector(agent))
        self.programming_seconds = Histogram(
            "podbgp_policy_programming_duration_seconds",
            "From a datastore change reaching the agent to the nft transaction applied.",
            buckets=PROGRAM_BUCKETS, registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)
