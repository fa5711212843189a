"""deploy/grafana/podbgp.json cannot drift from the metrics bgpd exports.

docs/metrics.md is the list of names, types and labels; every PromQL
expression in the dashboard may use only those names, only the labels those
metrics carry, and rate()/increase() only over counters and histogram
buckets.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.conftest import REPO

DASHBOARD = REPO / "deploy" / "grafana" / "podbgp.json"
METRICS_DOC = REPO / "docs" / "metrics.md"
# Added by Prometheus or by the ServiceMonitor, not by bgpd.
TARGET_LABELS = {"instance", "job", "node"}
# The panels the dashboard promises (issue 6, Observability).
REQUIRED = {
    "podbgp_bgp_session_up", "podbgp_bgp_session_flaps_total",
    "podbgp_bgp_prefixes_received", "podbgp_bgp_prefixes_accepted",
    "podbgp_bgp_prefixes_advertised", "podbgp_bgp_prefixes_rejected_total",
    "podbgp_rib_prefixes", "podbgp_kernel_routes", "podbgp_fib_sync_duration_seconds",
    "podbgp_fib_route_failures_total", "podbgp_fib_conflicts",
    "podbgp_datastore_connected", "podbgp_datastore_revision", "podbgp_config_stale",
    "podbgp_convergence_seconds",
}


def documented_metrics(text: str) -> dict[str, tuple[str, set[str]]]:
    """name -> (type, labels) from the markdown table in docs/metrics.md."""
    metrics = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`podbgp_"):
            continue
        labels = set(re.findall(r"`([a-z_]+)`", cells[2]))
        metrics[cells[0].strip("`")] = (cells[1], labels)
    return metrics


def series_name(token: str, metrics: dict) -> str | None:
    """The documented metric a series token belongs to (histograms expand)."""
    if token in metrics:
        return token
    for suffix in ("_bucket", "_sum", "_count"):
        base = token.removesuffix(suffix)
        if base != token and metrics.get(base, ("",))[0] == "histogram":
            return base
    return None


def panels(dashboard: dict) -> list[dict]:
    out = []
    for p in dashboard["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def targets(dashboard: dict) -> list[tuple[str, dict]]:
    return [(p["title"], t) for p in panels(dashboard) for t in p.get("targets", [])]


def check_expr(expr: str, legend: str, metrics: dict) -> list[str]:
    """Everything wrong with one PromQL expression; [] when it is right."""
    errors = []
    tokens = re.findall(r"\bpodbgp_[a-z0-9_]+\b", expr)
    if not tokens:
        errors.append("uses no podbgp metric")
    labels = set(TARGET_LABELS)
    for token in tokens:
        name = series_name(token, metrics)
        if name is None:
            errors.append(f"{token} is not in docs/metrics.md")
            continue
        _, own = metrics[name]
        labels |= own | ({"le"} if token.endswith("_bucket") else set())
        if not re.search(rf"{token}\{{[^}}]*instance=~\"\$instance\"", expr):
            errors.append(f"{token} is not filtered by $instance")
    for fn, token in re.findall(r"\b(rate|increase|irate)\((podbgp_[a-z0-9_]+)", expr):
        name = series_name(token, metrics)
        if name and not (metrics[name][0] == "counter" or token.endswith("_bucket")):
            errors.append(f"{fn}() over {metrics[name][0]} {token}")
    if "histogram_quantile" in expr and "_bucket" not in expr:
        errors.append("histogram_quantile without _bucket")
    used = set()
    for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
        used |= {g.strip() for g in group.split(",") if g.strip()}
    used |= set(re.findall(r"\{\{\s*([a-z_]+)\s*\}\}", legend))
    errors += [f"label {lab} is not on these metrics" for lab in sorted(used - labels)]
    return errors


@pytest.fixture(scope="module")
def metrics() -> dict[str, tuple[str, set[str]]]:
    parsed = documented_metrics(METRICS_DOC.read_text())
    assert len(parsed) >= 20 and parsed["podbgp_fib_sync_duration_seconds"][0] == "histogram"
    return parsed


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def test_every_expression_uses_documented_metrics_and_labels(
    dashboard: dict, metrics: dict
) -> None:
    problems = []
    for title, target in targets(dashboard):
        for error in check_expr(target["expr"], target.get("legendFormat", ""), metrics):
            problems.append(f"{title!r}: {error}: {target['expr']}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("expr", "legend", "wanted"),
    [
        ('podbgp_bgp_sessions_up{instance=~"$instance"}', "", "not in docs"),
        ('rate(podbgp_rib_prefixes{instance=~"$instance"}[5m])', "", "rate() over gauge"),
        ("podbgp_rib_prefixes", "", "not filtered by $instance"),
        ('podbgp_kernel_routes{instance=~"$instance"}', "{{peer}}", "label peer"),
        ('sum by (reason) (podbgp_rib_paths{instance=~"$instance"})', "", "label reason"),
    ],
)
def test_check_expr_catches_drift(metrics: dict, expr: str, legend: str, wanted: str) -> None:
    assert any(wanted in e for e in check_expr(expr, legend, metrics))


def test_dashboard_covers_the_promised_metrics(dashboard: dict, metrics: dict) -> None:
    used = {
        series_name(tok, metrics)
        for _, t in targets(dashboard)
        for tok in re.findall(r"\bpodbgp_[a-z0-9_]+\b", t["expr"])
    }
    assert REQUIRED - used == set()
    quantiles = {
        q for _, t in targets(dashboard)
        for q in re.findall(r"histogram_quantile\((0\.\d+),\s*sum by \([^)]*\ble\b", t["expr"])
    }
    assert {"0.5", "0.99"} <= quantiles


def test_dashboard_variables_and_datasources(dashboard: dict) -> None:
    assert 36 <= dashboard["schemaVersion"] <= 41
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["instance"]["type"] == "query"
    assert "podbgp_" in variables["instance"]["query"]["query"]
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    for p in panels(dashboard):
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        assert all(t["datasource"]["uid"] == "${datasource}" for t in p["targets"]), p["title"]
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, f"{p['title']} is wider than the grid"


def test_panels_do_not_overlap(dashboard: dict) -> None:
    cells: dict[tuple[int, int], str] = {}
    for p in panels(dashboard):
        g = p["gridPos"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = p["title"]


def test_dashboard_is_provisionable_json(dashboard: dict) -> None:
    # Grafana provisioning wants no fixed numeric id and a stable uid.
    assert "id" not in dashboard or dashboard["id"] is None
    assert dashboard["uid"] == "podbgp" and dashboard["title"]
    assert Path(DASHBOARD).read_text().endswith("\n")
