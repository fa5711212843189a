#!/usr/bin/env python3
"""Render deploy/grafana/preview.png: the dashboard's key panels from a real lab.

    .venv/bin/python deploy/grafana/preview.py [--seconds 90] [--out deploy/grafana/preview.png]

As root (it runs lab/harness.py's lab: network namespaces, etcd, real bgpd).
Two podbgp nodes in a full mesh with pods, and a BIRD 2 top-of-rack router
that peers with both. While the lab runs, things a user sees happen: the ToR
announces more prefixes, one of them outside every IPPool (rejected), a node
restarts (a session flaps, graceful restart keeps its routes), an invalid
BGPPeer is written to etcd (rejected, config stale). Every node's /metrics is
scraped each second, every panel's PromQL is evaluated over the scrapes with
promql.py, and the key panels are drawn with matplotlib in Grafana's layout.
Owned by deploy/grafana; tests/image/test_dashboard.py runs the same lab
steps briefly and renders from them.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import promql  # noqa: E402

DASHBOARD = HERE / "podbgp.json"
NODE_AS, TOR_AS = 64512, 64513
POOL = "10.244.0.0/16"
# Stat row and time-series panels shown in the preview, by title.
STATS = ["Sessions established", "Sessions configured", "Ready", "Config stale",
         "Convergence time after start", "Loc-RIB prefixes"]
SERIES = ["Session up per peer", "Prefixes received per peer (Adj-RIB-In)",
          "Import rejections by reason", "Kernel routes by kind", "FIB sync duration",
          "UPDATEs received", "Session flaps", "Config stale and rejections"]


class TorRouter:
    """BIRD 2 in a lab namespace: originates static prefixes, eBGP to every node."""

    def __init__(self, lab, ext, nodes: list) -> None:
        self.lab, self.ext, self.nodes = lab, ext, nodes
        self.dir = lab.workdir / "tor"
        self.dir.mkdir()
        self.conf, self.sock = self.dir / "bird.conf", self.dir / "bird.ctl"
        self.prefixes: list[str] = []
        self.write()
        bird = shutil.which("bird")
        if not bird:
            raise RuntimeError("needs BIRD 2 (Debian bird2)")
        lab.spawn_in(ext.ns, [bird, "-f", "-c", str(self.conf), "-s", str(self.sock)], "tor.log")
        lab.wait_for(self.sock.exists, 15, "BIRD's control socket")

    def write(self) -> None:
        statics = "".join(f"  route {p} blackhole;\n" for p in self.prefixes)
        peers = "".join(
            f"protocol bgp n{i} {{\n  local {self.ext.ip} as {TOR_AS};\n"
            f"  neighbor {n.ip} as {NODE_AS};\n  connect delay time 1;\n  hold time 9;\n"
            "  ipv4 { import all; export all; };\n}\n" for i, n in enumerate(self.nodes))
        self.conf.write_text(f"router id {self.ext.ip};\nprotocol device {{}}\n"
                             f"protocol static {{\n  ipv4;\n{statics}}}\n{peers}")

    def announce(self, *prefixes: str) -> None:
        self.prefixes += prefixes
        self.write()
        subprocess.run([shutil.which("birdc") or "birdc", "-s", str(self.sock), "configure"],
                       capture_output=True, timeout=10)


def setup(lab) -> TorRouter:
    """Pool, mesh, the ToR as a global peer, both nodes' daemons, two pods each."""
    docs = [
        {"apiVersion": "projectcalico.org/v3", "kind": "IPPool", "metadata": {"name": "pods"},
         "spec": {"cidr": POOL, "blockSize": 26, "ipipMode": "Never", "vxlanMode": "Never"}},
        {"apiVersion": "projectcalico.org/v3", "kind": "BGPConfiguration",
         "metadata": {"name": "default"},
         "spec": {"asNumber": NODE_AS, "nodeToNodeMeshEnabled": True,
                  "nodeMeshMaxRestartTime": "30s"}},
    ]
    for doc in docs:
        lab.apply(json.dumps(doc))
    nodes = list(lab.nodes.values())
    tor = TorRouter(lab, lab.add_external("tor"), nodes)
    lab.apply(json.dumps({"apiVersion": "projectcalico.org/v3", "kind": "BGPPeer",
                          "metadata": {"name": "tor"},
                          "spec": {"peerIP": tor.ext.ip, "asNumber": TOR_AS}}))
    for node in nodes:
        node.http = f"{node.ip}:9179"
        lab.register_node(node)
        lab.start_daemon(node.name)
    for node in nodes:
        lab.wait_for(lambda n=node.name: lab.ready(n), 60, f"{node.name} ready")
        lab.add_pod(node.name)
        lab.add_pod(node.name)
    return tor


def bad_peer(lab) -> None:
    """A BGPPeer that passed bgpctl, then broken in etcd by hand: rejected, last good kept."""
    lab.apply(json.dumps({"apiVersion": "projectcalico.org/v3", "kind": "BGPPeer",
                          "metadata": {"name": "edge"},
                          "spec": {"peerIP": "10.99.0.250", "asNumber": 65010}}))
    time.sleep(1)
    key = "/calico/resources/v3/projectcalico.org/bgppeers/edge"
    value = json.dumps({"kind": "BGPPeer", "apiVersion": "projectcalico.org/v3",
                        "metadata": {"name": "edge"},
                        "spec": {"peerIP": "10.99.0.250", "asNumber": "not-a-number"}})
    subprocess.run(["ip", "netns", "exec", lab.etcd_ns, shutil.which("etcdctl") or "etcdctl",
                    "--endpoints=http://127.0.0.1:2379", "put", key, value],
                   env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"}, check=True,
                   capture_output=True, timeout=10)


def scrape(lab, store: promql.Store, t: float) -> None:
    for node in lab.nodes.values():
        code, body = lab.http_get(node.name, "/metrics")
        if code == 200:
            store.add_scrape(t, body, {"instance": node.http, "job": "podbgp"})


def run_scenario(lab, seconds: float, events: dict[float, Callable[[], None]],
                 store: promql.Store, every: float = 1.0) -> None:
    start = time.monotonic()
    pending = sorted(events.items())
    while (now := time.monotonic() - start) < seconds:
        while pending and pending[0][0] <= now:
            pending.pop(0)[1]()
        scrape(lab, store, time.monotonic() - start)
        time.sleep(max(0.0, every - (time.monotonic() - start - now)))


# --------------------------------------------------------------- rendering


def render(dashboard: dict, store: promql.Store, out: Path, rate_interval: str = "10s") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_title = {p["title"]: p for p in promql.panels(dashboard)}
    times = store.times()
    t_end = times[-1]
    plt.rcParams.update({"font.size": 8, "text.color": "#d8d9da", "axes.labelcolor": "#d8d9da",
                         "xtick.color": "#9fa7b3", "ytick.color": "#9fa7b3"})
    rows = 1 + math.ceil(len(SERIES) / 2)
    fig = plt.figure(figsize=(14, 2.2 + 2.6 * (rows - 1)), facecolor="#111217")
    grid = fig.add_gridspec(rows, 12, height_ratios=[0.7] + [2] * (rows - 1), hspace=0.55,
                            wspace=0.6)
    for i, title in enumerate(STATS):
        ax = fig.add_subplot(grid[0, 2 * i: 2 * i + 2])
        ax.set_facecolor("#181b1f")
        ax.set_xticks([])
        ax.set_yticks([])
        target = by_title[title]["targets"][0]
        vec = promql.evaluate(store, promql.parse(target["expr"], rate_interval), t_end)
        value = vec[0][1] if vec else math.nan
        unit = by_title[title].get("fieldConfig", {}).get("defaults", {}).get("unit", "")
        text = f"{value:.2f} s" if unit == "s" else f"{value:g}"
        ax.text(0.5, 0.42, text, ha="center", va="center", fontsize=20, color="#73bf69")
        ax.set_title(title, fontsize=8, color="#d8d9da")
    for i, title in enumerate(SERIES):
        ax = fig.add_subplot(grid[1 + i // 2, 6 * (i % 2): 6 * (i % 2) + 6])
        ax.set_facecolor("#181b1f")
        for side in ax.spines.values():
            side.set_color("#2c3235")
        ax.grid(color="#2c3235", linewidth=0.5)
        lines: dict[str, tuple[list[float], list[float]]] = {}
        for target in by_title[title]["targets"]:
            tree = promql.parse(target["expr"], rate_interval)
            for t in times:
                for labels, value in promql.evaluate(store, tree, t):
                    name = promql.legend(target.get("legendFormat", ""), labels)
                    name = name if len(name) <= 60 else name[:57] + "..."
                    xs, ys = lines.setdefault(name, ([], []))
                    xs.append(t)
                    ys.append(value)
        for name, (xs, ys) in sorted(lines.items()):
            ax.plot(xs, ys, linewidth=1.2, label=name)
        ax.set_title(title, fontsize=9, color="#d8d9da", loc="left")
        ax.set_xlabel("seconds", fontsize=7)
        if lines:
            ax.legend(fontsize=6, loc="upper left", framealpha=0.3, facecolor="#181b1f",
                      labelcolor="#d8d9da", ncol=2)
    fig.suptitle("podbgp dashboard (deploy/grafana/podbgp.json) — rendered from a lab run",
                 color="#d8d9da", fontsize=11)
    fig.savefig(out, dpi=90, facecolor=fig.get_facecolor())
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=90)
    parser.add_argument("--out", type=Path, default=HERE / "preview.png")
    args = parser.parse_args(argv)
    from lab.harness import Lab

    dashboard = json.loads(DASHBOARD.read_text())
    store = promql.Store()
    with Lab(nodes=2) as lab:
        tor = setup(lab)
        s = args.seconds
        events = {
            0.15 * s: lambda: tor.announce("10.244.200.0/26", "10.244.201.0/26"),
            0.30 * s: lambda: tor.announce("10.66.0.0/24", "10.244.202.0/26"),
            0.45 * s: lambda: bad_peer(lab),
            0.55 * s: lambda: lab.stop_daemon("node2"),
            0.62 * s: lambda: lab.start_daemon("node2"),
            0.80 * s: lambda: lab.add_pod("node1"),
        }
        run_scenario(lab, s, events, store)
        problems = promql.check_dashboard(dashboard, store, store.times()[-1], "10s")
    render(dashboard, store, args.out)
    print(f"wrote {args.out}")
    # The run's totals, for the notes beside the picture.
    for name in ("podbgp_bgp_session_flaps_total", "podbgp_bgp_prefixes_rejected_total",
                 "podbgp_config_rejected_total"):
        for (sname, labels), points in sorted(store.series.items()):
            if sname == name:
                print(f"{name}{dict(labels)} = {points[-1][1]:g}")
    for p in problems:
        print(f"panel problem: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
