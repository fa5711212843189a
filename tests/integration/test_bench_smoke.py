"""Smoke test of the convergence benchmark: it runs, converges, cleans up, prints its format.

Runs `python -m bench.convergence --quick --dut podbgp,bird2` as a subprocess
(1,000 routes, one trial each) and checks the per-K table, that both DUTs
converged with plausible numbers, the headline line, and that no benchmark
namespace is left behind.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import require_binary, require_root

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.root, pytest.mark.slow]


def _bench_namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.startswith("bc")}


def test_convergence_quick_podbgp_and_bird2():
    require_root()
    require_binary("bird")
    before = _bench_namespaces()
    r = subprocess.run([sys.executable, "-m", "bench.convergence", "--quick", "--dut",
                        "podbgp,bird2"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout}\n{r.stderr[-2000:]}"
    out = r.stdout
    assert "K = 1,000 routes" in out
    assert re.search(r"\|\s+DUT \|\s+ok \|\s+Established->kernel \|\s+1st UPDATE->kernel \|"
                     r"\s+withdraw->gone \|\s+routes/s \|\s+RSS MiB \|", out), out
    rows = {}
    for label in ("podbgp", "BIRD 2"):
        m = re.search(rf"\|\s+{label} \|\s+(\d+) \|\s+([\d.]+) \|\s+([\d.]+) \|\s+([\d.]+) \|"
                      rf"\s+([\d,]+) \|\s+([\d.,]+) \|\s+([\d.]+) \|\s+([\d.]+) \|", out)
        assert m, f"no result row for {label}:\n{out}"
        rows[label] = [float(g.replace(",", "")) for g in m.groups()]
    for label, (ok, est, first, wd, rate, rss_mib, cpu_main, cpu_children) in rows.items():
        # CPU seconds from Established to all in the kernel, in clock ticks (10 ms; BIRD's
        # 1,000 routes take less than one): two cores at most, so no more than twice the
        # wall time plus a tick each; podbgp's Python works tens of ms for 1,000 routes
        assert 0 <= cpu_main + cpu_children <= 2 * est + 0.03, (label, cpu_main, cpu_children)
        if label == "podbgp":
            assert cpu_main > 0, (label, cpu_main)
        assert ok == 1, label
        # Established precedes the first UPDATE: its interval is the longer one
        assert 0 < first <= est < 30, (label, est, first)
        assert 0 < wd < 30, (label, wd)
        # The table prints seconds to 3 decimals; at ~5 ms that rounding alone is 10%.
        lo, hi = 1000 / (est + 0.0005), 1000 / max(est - 0.0005, 1e-6)
        assert lo * 0.99 <= rate <= hi * 1.01, (label, rate, est)
        assert 0.5 < rss_mib < 2000, (label, rss_mib)
    last = out.strip().splitlines()[-1]
    m = re.fullmatch(r"convergence: K=1000: podbgp ([\d.]+)s, BIRD 2 ([\d.]+)s", last)
    assert m, last
    assert float(m.group(1)) == pytest.approx(rows["podbgp"][1], abs=0.0015)
    assert _bench_namespaces() <= before, "benchmark namespaces left behind"


def _rr_namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.startswith("rs")}


def test_rr_scale_quick_podbgp_and_bird2():
    """bench.rr_scale --quick: 20 simulated clients, podbgp and BIRD 2 as the reflector.

    Both must converge with every reflected route correct (RFC 4456 §8: next hop
    kept, ORIGINATOR_ID, CLUSTER_LIST: checked by bench.rrclients on every route),
    with no session reset, and print the comparison and the targets."""
    require_root()
    require_binary("bird")
    before = _rr_namespaces()
    r = subprocess.run([sys.executable, "-m", "bench.rr_scale", "--quick"], cwd=REPO,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout}\n{r.stderr[-2000:]}"
    out = r.stdout
    rows = {}
    for label in ("podbgp", "BIRD 2"):
        m = re.search(rf"\|\s+20 \|\s+{label} \|\s+1/1 \|\s+([\d.]+) \|\s+([\d.]+) \|\s+([\d.]+) \|"
                      rf"\s+([\d,]+) \|", out)
        assert m, f"no result row for {label}:\n{out}"
        rows[label] = [float(g.replace(",", "")) for g in m.groups()]
    for label, (sessions, conv, start, rate) in rows.items():
        # every session is up before the last client completes; the start clock is the longer
        assert 0 < conv <= start < 120, (label, conv, start)
        assert sessions <= start, (label, sessions, start)
        # 20 clients x 19 routes each, over the convergence time (3-decimal rounding)
        assert rate == pytest.approx(380 / conv, rel=0.02, abs=1), (label, rate, conv)
    assert re.search(r"- reflection attributes correct \(next hop, ORIGINATOR_ID, CLUSTER_LIST\)"
                     r": met \(0 wrong\)", out), out
    assert re.search(r"- no session reset under the burst: met \(0 resets\)", out), out
    m = re.search(r"peak RSS MiB \(BIRD / podbgp RR / podbgp node\)", out)
    assert m, out
    last = out.strip().splitlines()[-1]
    assert re.fullmatch(r"rr_scale: N=20 podbgp/BIRD 2 convergence [\d.]+x \(start->all [\d.]+x\)"
                        r", one withdrawal reaches all in [\d.]+ ms \(BIRD 2 [\d.]+ ms\), RSS "
                        r"[\d.]+x a plain node, 0 resets", last), last
    assert _rr_namespaces() <= before, "benchmark namespaces left behind"


def _podnet_namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.startswith(("pn", "pp", "po"))}


def test_policy_quick():
    """bench.policy at toy size: every change takes effect, every variant carries
    traffic (a policy set that blocked the bench traffic fails the run), the
    headline parses, nothing is left behind."""
    require_root()
    require_binary("nft")
    require_binary("iperf3")
    require_binary("wrk")
    require_binary("nginx")
    before = _podnet_namespaces()
    r = subprocess.run([sys.executable, "-m", "bench.policy", "--changes", "6",
                        "--policies", "30", "--endpoints", "100", "--seconds", "0.5",
                        "--rounds", "1", "--pair-rounds", "2"], cwd=REPO, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout}\n{r.stderr[-2000:]}"
    out = r.stdout
    assert "never took effect" not in out, out
    for variant in ("no table", "table, no policies", "30 policies / 100 endpoints",
                    "30 policies all selecting the server"):
        # conn/s, ratio, its 95 % interval, min-max of the ratios, Gbit/s
        m = re.search(rf"\|\s+{re.escape(variant)} \|\s+([\d,]+) \|\s+[\d.]+ \|"
                      r"\s+[\d.]+-[\d.]+ \|\s+[\d.]+-[\d.]+ \|\s+([\d.]+) \|", out)
        assert m, f"no row for {variant}:\n{out}"
        assert int(m.group(1).replace(",", "")) > 0 and float(m.group(2)) > 0, variant
    m = re.search(r"\|\s+all \|\s+(\d+) \|\s+([\d.]+) \|\s+([\d.]+) \|", out)
    assert m and int(m.group(1)) == 6, out
    assert 0 <= float(m.group(3)) < 5000, out  # p50 in ms
    last = out.strip().splitlines()[-1]
    assert re.fullmatch(r"policy: enforcement p50 [\d.]+ ms p99 [\d.]+ ms over 6 changes; "
                        r"30 policies/100 endpoints vs none: connection rate [+-][\d.]+% cost "
                        r"\(95% CI [+-][\d.]+% to [+-][\d.]+%, target <= 10%: "
                        r"unresolvable \(fewer than 5 rounds\)\), "
                        r"throughput ratio [\d.]+ \(data [\d.]+ s\)", last), last
    assert _podnet_namespaces() <= before, "namespaces left behind"


def test_overlay_quick_prints_both_ratios_and_cleans_up():
    require_root()
    require_binary("iperf3")
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    before = {ln.split()[0] for ln in out.splitlines() if ln.startswith(("bov", "bot"))}
    r = subprocess.run([sys.executable, "-m", "bench.overlay", "--blocks", "300", "--reps", "1",
                        "--seconds", "1"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout}\n{r.stderr[-2000:]}"
    last = r.stdout.strip().splitlines()[-1]
    m = re.fullmatch(r"overlay: 300 VXLAN blocks route\+neigh\+FDB podbgp ([\d.]+) s, ip-batch "
                     r"([\d.]+) s, ratio ([\d.]+); iperf3 VXLAN ([\d.]+) Gbit/s, native "
                     r"([\d.]+) Gbit/s \(([\d.]+)\)", last)
    assert m, last
    p, i, ratio, vx, nat, rel = (float(g) for g in m.groups())
    assert ratio == pytest.approx(i / p, rel=0.05)  # printed values are rounded
    assert vx > 0 and nat > 0 and rel == pytest.approx(vx / nat, rel=0.05)
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    after = {ln.split()[0] for ln in out.splitlines() if ln.startswith(("bov", "bot"))}
    assert after <= before, "benchmark namespaces left behind"


def test_cni_quick_measures_both_setups_and_cleans_up():
    """bench.cni at toy size: podbgp-cni and bridge+host-local measured, the ratio line and
    the headline parse and agree with the table, no lab namespace is left behind."""
    require_root()
    require_binary("etcd")
    from lab.harness import STATE_DIR

    before = set(STATE_DIR.glob("*.json")) if STATE_DIR.exists() else set()
    r = subprocess.run([sys.executable, "-m", "bench.cni", "--pods", "3", "--concurrent", "2",
                        "--in-process", "1"], cwd=REPO, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout}\n{r.stderr[-2000:]}"
    rows = {m.group(1): [float(x) for x in m.groups()[1:]] for m in re.finditer(
        r"\|\s+(bridge\+host-local|podbgp-cni|podbgp-cni \((?:no agent|python launchers)\)) \|"
        r"\s+\d+ seq \|\s+([\d.,]+) \|\s+([\d.,]+) \|\s+([\d.,]+) \|\s+([\d.,]+) \|",
        r.stdout.replace(",", ""))}
    assert set(rows) == {"bridge+host-local", "podbgp-cni", "podbgp-cni (python launchers)",
                         "podbgp-cni (no agent)"}, r.stdout
    # The default podbgp set-up is the compiled forwarder (cni/forward.c) once `make deps`
    # built it; CI builds it (scripts/install-deps.sh installs gcc).
    from cni import forward

    if forward.built() or os.environ.get("CI") == "true":
        assert "podbgp-cni's executables: compiled forwarder" in r.stdout, r.stdout
    assert all(v > 0 for vals in rows.values() for v in vals)
    last = r.stdout.strip().splitlines()[-1]
    m = re.fullmatch(r"cni: podbgp-cni ADD p50/p99 ([\d.]+)/([\d.]+) ms vs bridge\+host-local "
                     r"([\d.]+)/([\d.]+) ms \(p99 ([\d.]+)x\), DEL p99 [\d.]+x, 2 concurrent ADD "
                     r"p99 [\d.]+x", last)
    assert m, last
    assert float(m.group(5)) == pytest.approx(float(m.group(2)) / float(m.group(4)), rel=0.05)
    after = set(STATE_DIR.glob("*.json")) if STATE_DIR.exists() else set()
    assert after <= before, "a lab was left behind"
