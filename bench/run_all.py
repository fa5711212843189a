"""Run every benchmark and write bench/results/RESULTS.md plus PNG plots.

    sudo bench/run_all [--quick] [--only convergence,latency,...]
    sudo .venv/bin/python -m bench.run_all

Each benchmark runs as its own process (`python -m bench.<name>`), so one that
fails (or is killed) does not take the others down and cleans up after itself;
its printed table goes into RESULTS.md verbatim, its JSON (if any) feeds the
plots: convergence time against K per DUT (log-log) and the event-latency
distribution. The machine description and date head the file.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from bench.common import REPO, RESULTS_DIR, machine, require_root

# name -> (full args, quick args, writes JSON)
BENCHES: dict[str, tuple[list[str], list[str], bool]] = {
    "convergence": ([], ["--k", "1000,5000", "--reps", "1"], True),
    "memory": ([], ["--quick"], True),
    "latency": ([], ["--quick"], True),
    "restart": ([], ["--quick"], True),
    "fib": ([], ["--routes", "20000"], False),
    "rib": ([], ["--prefixes", "5000"], False),
    "config_load": ([], ["--count", "200", "--runs", "2"], False),
    "policy": ([], ["--changes", "20", "--policies", "200", "--endpoints", "1000",
                    "--seconds", "1", "--rounds", "1", "--pair-rounds", "4"], True),
    "rr_scale": ([], ["--quick"], True),
    "soak": ([], ["--quick"], True),
    "overlay": ([], ["--blocks", "2000", "--reps", "1", "--seconds", "2"], False),
    "cni": ([], ["--quick"], True),
}
TITLES = {
    "convergence": "Convergence of K routes into the kernel (and memory)",
    "memory": "Memory of the whole process tree: idle, 20k and 100k routes (RSS, PSS)",
    "latency": "Event latency: block affinity on node A -> route in node B's kernel",
    "restart": "Restart: kill -9 and start of podbgp",
    "fib": "FIB programming: podbgp FibSyncer against `ip -batch`",
    "rib": "RIB: path updates per second and memory per path",
    "config_load": "Config load",
    "policy": "Network policy: enforcement latency and the cost of a loaded table",
    "rr_scale": "Route reflection at scale: podbgp and BIRD 2 as the reflector for N clients",
    "soak": "Churn at scale: a flapping peer and clients resetting in turn, podbgp and BIRD 2",
    "overlay": "Overlay: VXLAN FIB programming against `ip -batch`, VXLAN against native "
               "throughput",
    "cni": "Pod ADD/DEL latency: podbgp-cni + podbgp-ipam against bridge + host-local",
}


def run_bench(name: str, quick: bool, timeout: float) -> dict:
    full, q, has_json = BENCHES[name]
    out_json = RESULTS_DIR / f"{name}.json"
    out_json.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", f"bench.{name}", *(q if quick else full)]
    if has_json:
        cmd += ["--json", str(out_json)]
    print(f"== {' '.join(cmd[1:])}", flush=True)
    t0 = time.monotonic()
    try:
        r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
        rc, stdout, stderr = r.returncode, r.stdout, r.stderr
    except subprocess.TimeoutExpired as e:
        rc, stdout, stderr = -1, (e.stdout or b"").decode() if isinstance(e.stdout, bytes) \
            else (e.stdout or ""), f"timed out after {timeout:.0f}s"
    secs = time.monotonic() - t0
    print(stdout, flush=True)
    if rc != 0:
        print(f"   exit {rc}: {stderr.strip()[-1500:]}", flush=True)
    data = None
    if has_json and out_json.exists():
        data = json.loads(out_json.read_text())
    headline = next((ln for ln in reversed(stdout.strip().splitlines())
                     if ln.startswith(f"{name.split('_')[0]}")), "")
    return {"name": name, "rc": rc, "stdout": stdout, "stderr": stderr[-3000:],
            "seconds": secs, "data": data, "headline": headline}


def plot_convergence(data: dict, path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bench.duts import LABELS

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for d in data["duts"]:
        pts = [(k, data["summary"][f"{d}/{k}"]["established_s"]) for k in data["ks"]
               if data["summary"][f"{d}/{k}"]["n"]]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=LABELS[d])
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("routes (K)")
    ax.set_ylabel("Established -> all K in kernel (s)")
    ax.set_title("Convergence time against K (median)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_latency(data: dict, path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key, label in (("podbgp", "podbgp (etcd -> peer kernel)"),
                       ("calico", "Calico way (BIRD 2 configure -> peer kernel)")):
        xs = sorted(data[key]["samples_ms"])
        if xs:
            ax.plot(xs, [(i + 1) / len(xs) for i in range(len(xs))], label=label,
                    drawstyle="steps-post")
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("fraction of samples (CDF)")
    ax.set_title("Event latency: new block on node A -> route in node B's kernel")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _old_results(path: Path) -> tuple[dict[str, str], list[str]]:
    """Sections (title -> text) and headline lines of an existing RESULTS.md."""
    if not path.exists():
        return {}, []
    text = path.read_text()
    sections = {}
    for part in text.split("\n## ")[1:]:
        title, _, body = part.partition("\n")
        sections[title.strip()] = body.rstrip("\n")
    heads = sections.get("Headlines", "")
    return sections, [ln for ln in heads.splitlines() if ln.startswith("- `")]


KEPT = "(from the previous run of bench/run_all)"


def write_results(results: list[dict], quick: bool) -> Path:
    """RESULTS.md for this run; benchmarks not run this time (``--only``) keep their
    sections and headlines from the previous file, marked with that file's date."""
    out = RESULTS_DIR / "RESULTS.md"
    old_sections, old_heads = _old_results(out)
    ran = {r["name"] for r in results}
    kept = [n for n in BENCHES if n not in ran and TITLES[n] in old_sections]
    m = machine()
    lines = ["# podbgp benchmark results", "",
             f"Written by `bench/run_all{' --quick' if quick else ''}` on {m['date']}. "
             "Every comparison ran in the same run on the same machine, so the ratios "
             "hold better than the absolute figures (the machine is shared: see the load).", "",
             "## Machine", ""]
    lines += [f"- {k}: {v}" for k, v in m.items() if k != "date"]
    lines += ["", "## Headlines", ""]
    lines += [f"- `{r['headline'] or r['name'] + ': no result'}`" for r in results]
    for name in kept:  # from the previous run, which wrote them
        lines += [h for h in old_heads if h.startswith(f"- `{name}:")
                  or h.startswith(f"- `{name.split('_')[0]}:")]
    plots = {"convergence": ("convergence.png", plot_convergence),
             "latency": ("latency.png", plot_latency)}
    for r in results:
        lines += ["", f"## {TITLES[r['name']]}", "",
                  f"`python -m bench.{r['name']}` — {r['seconds']:.0f} s, exit {r['rc']}", ""]
        if r["name"] in plots and r["data"]:
            png, fn = plots[r["name"]]
            try:
                fn(r["data"], RESULTS_DIR / png)
                lines += [f"![{r['name']}]({png})", ""]
            except Exception as e:  # a plot must not lose the tables
                lines += [f"(plot failed: {e})", ""]
        lines += ["```", r["stdout"].strip() or "(no output)", "```"]
        if r["rc"] != 0:
            lines += ["", "stderr (tail):", "```", r["stderr"].strip()[-1500:], "```"]
    for name in kept:
        body = old_sections[TITLES[name]].strip("\n").splitlines()
        while body and body[0] in (KEPT, ""):  # kept before: one marker, not one per run
            body.pop(0)
        lines += ["", f"## {TITLES[name]}", "", KEPT, *body]
    out.write_text("\n".join(lines) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench/run_all", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, one trial each")
    ap.add_argument("--only", help=f"comma-separated subset of {','.join(BENCHES)}")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per benchmark")
    a = ap.parse_args(argv)
    names = list(BENCHES)
    if a.only:
        names = [n.strip() for n in a.only.split(",") if n.strip()]
        bad = [n for n in names if n not in BENCHES]
        if bad:
            ap.error(f"--only: unknown {', '.join(bad)} (known: {', '.join(BENCHES)})")
    require_root("bench/run_all")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    results = [run_bench(n, a.quick, a.timeout) for n in names]
    out = write_results(results, a.quick)
    print(f"\nwrote {out.relative_to(REPO)}")
    for r in results:
        print(r["headline"] or f"{r['name']}: exit {r['rc']}, no headline")
    return 0 if all(r["rc"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
