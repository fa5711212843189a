"""policy.metrics: exactly the metrics docs/policy.md (and docs/metrics.md for the
datastore's) documents, with their types and labels, fed from the agent's state."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from types import SimpleNamespace

from prometheus_client.parser import text_string_to_metric_families

from policy.agent import AgentStats
from policy.engine import Engine, endpoint_from_parts
from policy.metrics import PolicyMetrics
from tests.unit.test_metrics import documented, exposed_families, sample

POLICY_DOC = Path(__file__).resolve().parents[2] / "docs" / "policy.md"


class FakeAgent:
    def __init__(self) -> None:
        self.engine = Engine("n1")
        self.engine.update_endpoint("a/x", endpoint_from_parts(
            "a/x", "a", "n1", "cali1", ["10.0.0.1/32"], {}, ["kns.a"]))
        self.engine.update_endpoint("a/y", endpoint_from_parts(
            "a/y", "a", "n2", "cali2", ["10.0.0.2/32"], {}, ["kns.a"]))
        self.applied = self.engine.ruleset()
        self.stats = AgentStats(transactions_total=Counter({"full": 1, "incremental": 4}),
                                errors_total=Counter({"nft": 2}),
                                rejected_total=Counter({("NetworkPolicy", "fields"): 1}),
                                tamper_repairs_total=3)
        self.store = SimpleNamespace(connected=True, stats=SimpleNamespace(
            reconnects_total=1, rejected_total=Counter({("NetworkPolicy", "bad"): 2}),
            unknown_fields_total=Counter()))
        self.snapshot = SimpleNamespace(revision=7)

    def ready(self):
        return True, "ready"


def documented_policy() -> dict:
    import re

    out = {}
    for line in POLICY_DOC.read_text().splitlines():
        m = re.match(r"\|\s*`(podbgp_\w+)`\s*\|\s*(\w+)\s*\|([^|]*)\|", line)
        if m:
            out[m.group(1)] = (m.group(2), frozenset(re.findall(r"`(\w+)`", m.group(3))))
    return out


def scrape(agent) -> dict:
    m = PolicyMetrics(agent)
    m.programming_seconds.observe(0.004)
    return {f.name: f for f in text_string_to_metric_families(m.render().decode())}


def test_exposed_match_the_docs() -> None:
    doc = documented_policy()
    assert len(doc) >= 12
    shared = {n: v for n, v in documented().items()
              if n.startswith(("podbgp_datastore_", "podbgp_config_rejected",
                               "podbgp_config_unknown"))}
    exposed = exposed_families(scrape(FakeAgent()))
    want = {**doc, **shared}
    assert set(exposed) == set(want)
    for name, (typ, labels) in want.items():
        assert exposed[name][0] == typ, name
        if exposed[name][1]:
            assert exposed[name][1] == labels, name


def test_values_come_from_the_agent() -> None:
    fams = scrape(FakeAgent())
    assert sample(fams, "podbgp_policy_endpoints", scope="local") == 1
    assert sample(fams, "podbgp_policy_endpoints", scope="cluster") == 2
    assert sample(fams, "podbgp_policy_rules") == FakeAgent().applied.rule_count > 0
    assert sample(fams, "podbgp_policy_transactions_total", type="incremental") == 4
    assert sample(fams, "podbgp_policy_errors_total", stage="nft") == 2
    assert sample(fams, "podbgp_policy_rejected_total", kind="NetworkPolicy",
                  reason="fields") == 1
    assert sample(fams, "podbgp_policy_table_repairs_total") == 3
    assert sample(fams, "podbgp_config_rejected_total", kind="NetworkPolicy", reason="bad") == 2
    assert sample(fams, "podbgp_datastore_revision") == 7
    assert sample(fams, "podbgp_policy_programming_duration_seconds_bucket", le="0.005") == 1
    assert sample(fams, "podbgp_policy_ready") == 1
