"""deploy/grafana/podbgp.json against /metrics of real nodes: no empty panel.

Owned by tests/image/ (with deploy/grafana). tests/unit/test_deploy_grafana.py
checks the dashboard against docs/metrics.md; this checks it against what a
running bgpd really exports. A two-node lab (lab/harness.py) with pods and a
BIRD 2 top-of-rack peer (deploy/grafana/preview.py's set-up: a prefix
outside every pool is rejected, a hand-broken BGPPeer makes the config
stale) is scraped twice; every panel's PromQL is evaluated over those
scrapes (deploy/grafana/promql.py) and must return series whose labels its
legend names. The preview renderer then draws from the same scrapes.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path

import pytest

from lab.harness import Lab
from tests.conftest import REPO, require_binary, require_root

GRAFANA = REPO / "deploy" / "grafana"


def load(name: str):
    """A deploy/grafana script as a module, registered as preview.py imports it."""
    spec = importlib.util.spec_from_file_location(name, GRAFANA / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def promql():
    return load("promql")


@pytest.fixture(scope="module")
def preview(promql):
    return load("preview")


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads((GRAFANA / "podbgp.json").read_text())


SCRAPE = """\
# TYPE podbgp_bgp_session_up gauge
podbgp_bgp_session_up{peer="10.0.0.2",peer_type="global"} 1.0
# TYPE podbgp_bgp_prefixes_rejected_total counter
podbgp_bgp_prefixes_rejected_total{peer="10.0.0.2",reason="not-in-pool"} 3.0
# TYPE podbgp_fib_sync_duration_seconds histogram
podbgp_fib_sync_duration_seconds_bucket{le="0.01"} 2.0
podbgp_fib_sync_duration_seconds_bucket{le="0.1"} 4.0
podbgp_fib_sync_duration_seconds_bucket{le="+Inf"} 4.0
podbgp_fib_sync_duration_seconds_count 4.0
podbgp_fib_sync_duration_seconds_sum 0.1
"""


def test_evaluator_matches_prometheus_on_a_known_scrape(promql) -> None:
    store = promql.Store()
    store.add_scrape(0.0, SCRAPE, {"instance": "n1:9179"})
    later = SCRAPE.replace("} 3.0", "} 7.0").replace('"0.1"} 4.0', '"0.1"} 8.0').replace(
        '"+Inf"} 4.0', '"+Inf"} 8.0')
    store.add_scrape(10.0, later, {"instance": "n1:9179"})

    def ev(expr: str):
        # Samples at 0 and 10 s; windows are left-open as in Prometheus, so 11 s.
        return promql.evaluate(store, promql.parse(expr, "11s"), 10.0)

    assert ev('sum(podbgp_bgp_session_up{instance=~"$instance"})') == [({}, 1.0)]
    assert ev("rate(podbgp_bgp_prefixes_rejected_total[$__rate_interval])")[0][1] == 0.4
    # increase() over 11 s from samples 10 s apart: extrapolated to the window, 4 * 11 / 10.
    ((labels, value),) = ev("sum by (reason) (increase(podbgp_bgp_prefixes_rejected_total[11s]))")
    assert labels == {"reason": "not-in-pool"} and abs(value - 4.4) < 1e-9
    # 4 new observations, all in (0.01, 0.1]: the median interpolates inside that bucket
    # as Prometheus does: 0.01 + 0.09 * (2 - 0) / 4.
    q = ev("histogram_quantile(0.5, sum by (instance, le) "
           "(rate(podbgp_fib_sync_duration_seconds_bucket[$__rate_interval])))")
    assert q[0][0] == {"instance": "n1:9179"} and abs(q[0][1] - 0.055) < 1e-9
    with pytest.raises(promql.PromQLError, match="rate\\(\\) over gauge"):
        ev("rate(podbgp_bgp_session_up[10s])")


def test_check_catches_a_renamed_metric_and_a_missing_label(promql) -> None:
    store = promql.Store()
    store.add_scrape(0.0, SCRAPE, {"instance": "n1:9179"})
    board = {"panels": [
        {"title": "renamed", "targets": [
            {"expr": 'podbgp_bgp_sessions_up{instance=~"$instance"}', "legendFormat": "x"}]},
        {"title": "label", "targets": [
            {"expr": 'podbgp_bgp_session_up{instance=~"$instance"}',
             "legendFormat": "{{instance}} {{node}}"}]},
        {"title": "filtered", "targets": [
            {"expr": 'podbgp_bgp_session_up{peer_type="mesh"}', "legendFormat": ""}]},
    ]}
    problems = promql.check_dashboard(board, store, 0.0, "10s")
    assert len(problems) == 3, problems
    assert "no series podbgp_bgp_sessions_up" in problems[0]
    assert "does not have" in problems[1]
    assert "none match the labels" in problems[2]


@pytest.mark.slow
@pytest.mark.root
def test_every_panel_has_data_from_running_nodes(promql, preview, dashboard,
                                                 tmp_path: Path) -> None:
    require_root()
    require_binary("etcd")
    require_binary("bird")
    require_binary("etcdctl")
    store = promql.Store()
    with Lab(nodes=2) as lab:
        tor = preview.setup(lab)
        tor.announce("10.244.200.0/26", "10.66.0.0/24")  # in the pool; outside every pool
        preview.bad_peer(lab)

        def settled() -> bool:
            for name in lab.nodes:
                peers = {p["address"]: p["state"] for p in lab.status(name)["peers"]}
                if peers.get(tor.ext.ip) != "up":
                    return False
            _, body = lab.http_get("node1", "/metrics")
            return ("podbgp_config_rejected_total{" in body
                    and 'reason="not-in-pool"' in body)

        lab.wait_for(settled, 60, "sessions with the ToR, a rejected prefix, a rejected resource")
        start = time.monotonic()
        for _ in range(3):
            preview.scrape(lab, store, time.monotonic() - start)
            time.sleep(1.0)
    t_end = store.times()[-1]
    problems = promql.check_dashboard(dashboard, store, t_end, "5s")
    assert not problems, "\n".join(problems)
    # The dashboard's $instance variable: label_values(podbgp_build_info, instance).
    instances = {dict(labels)["instance"] for (name, labels) in store.series
                 if name == "podbgp_build_info"}
    assert instances == {f"{n.ip}:9179" for n in lab.nodes.values()}
    out = tmp_path / "preview.png"
    preview.render(dashboard, store, out, rate_interval="5s")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20_000
