"""Benchmark: pod ADD and DEL latency, podbgp-cni + podbgp-ipam beside bridge + host-local.

    sudo .venv/bin/python -m bench.cni [--pods 100] [--concurrent 20] [--in-process 10]
                                       [--quick] [--json PATH]

One lab node (its namespace, etcd on the lab segment, no bgpd: the daemon is
not on a pod's start path). Two CNI set-ups on that node, measured in the
same run, interleaved call by call so that load on the machine hits both
alike:

* peer: Debian's containernetworking-plugins ``bridge`` + ``host-local``
  (docs/testing.md, "CNI plugins"), the standard set-up, state in a file;
* podbgp: ``podbgp-cni`` + ``podbgp-ipam`` in host mode as a node runs them
  (the node's ``podbgp-cni agent`` listening; the executables are the compiled
  forwarder, cni/forward.c, when `make deps` built it, as podbgp-install-cni
  installs them; else the ``python -IS`` launchers), etcd for IPAM and the
  WorkloadEndpoint;
* podbgp with the Python launchers as the executables (the same agent), for
  comparison, unless ``--no-python-launchers``;
* and, for information, podbgp-cni with no agent (each call does everything
  in its own process), for ``--in-process`` pods.

Each plugin is executed the way a runtime executes it: directly, in the node's
network namespace (this thread enters it), configuration on stdin; the time
is from exec to exit. ``--pods`` sequential ADDs then DELs, then
``--concurrent`` ADDs at once and their DELs at once. The target of issue 14
is ADD p99 <= 2x bridge+host-local.

The last line: ``cni: podbgp-cni ADD p50/p99 a/b ms vs bridge+host-local c/d ms
(p99 e.fx) ...``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.common import percentile, require_root, table
from cni import rtnl
from lab.harness import CNI_BIN_DIR, Lab, run, write_cni_plugins

POOL = {"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
        "metadata": {"name": "bench-pods"},
        "spec": {"cidr": "10.244.0.0/16", "blockSize": 26, "ipipMode": "Never",
                 "vxlanMode": "Never"}}


class Setup:
    """One CNI set-up on the lab node: how to call it and where its pods go."""

    def __init__(self, lab: Lab, name: str, tag: str, plugin: str, conf: dict,
                 cni_path: str | None = None) -> None:
        self.lab, self.name, self.tag, self.cni_path = lab, name, tag, cni_path
        self.plugin, self.conf = plugin, json.dumps(conf)
        self.node = lab.nodes["node1"]
        self.pods: list[tuple[str, str]] = []  # (pod namespace, container id)

    def new_pods(self, n: int) -> list[tuple[str, str]]:
        made = [(self.lab._add_ns(f"{self.node.ns}{self.tag}{len(self.pods) + i}"),
                 uuid.uuid4().hex)
                for i in range(n)]
        self.pods += made
        return made

    def call(self, command: str, pod: tuple[str, str]) -> float:
        pod_ns, cid = pod
        env = self.lab.cni_env(self.node, command, pod_ns, cid, pod_ns)
        if self.cni_path:
            env["CNI_PATH"] = self.cni_path
        with rtnl.in_netns(f"/var/run/netns/{self.node.ns}"):
            t0 = time.perf_counter()
            r = subprocess.run([self.plugin], input=self.conf, env=env, capture_output=True,
                               text=True, timeout=300)
            took = time.perf_counter() - t0
        if r.returncode != 0:
            raise RuntimeError(f"{self.name} {command} failed: {r.stdout.strip()} "
                               f"{r.stderr.strip()[-300:]}")
        return took


def interleaved(setups: list[Setup], command: str, pods: dict[str, list]) -> dict[str, list]:
    out: dict[str, list[float]] = {s.name: [] for s in setups}
    for i in range(max(len(p) for p in pods.values())):
        for s in setups:
            if i < len(pods[s.name]):
                out[s.name].append(s.call(command, pods[s.name][i]))
    return out


def concurrent(s: Setup, command: str, pods: list) -> tuple[list[float], float]:
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=len(pods)) as pool:
        took = list(pool.map(lambda p: s.call(command, p), pods))
    return took, time.perf_counter() - t0


def ms(x: float) -> float:
    return round(x * 1000, 1)


def stats(xs: list[float]) -> dict:
    return {"n": len(xs), "p50_ms": ms(percentile(xs, 50)), "p99_ms": ms(percentile(xs, 99)),
            "max_ms": ms(max(xs)) if xs else None}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench.cni", description=__doc__.splitlines()[0])
    ap.add_argument("--pods", type=int, default=100, help="sequential pods per set-up")
    ap.add_argument("--concurrent", type=int, default=20, help="pods added at once")
    ap.add_argument("--in-process", type=int, default=10,
                    help="sequential pods for podbgp-cni without its agent (0: skip)")
    ap.add_argument("--no-python-launchers", dest="python_launchers", action="store_false",
                    help="skip the set-up with the Python launchers as the executables")
    ap.add_argument("--quick", action="store_true", help="20 sequential, 10 concurrent, 3")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    if a.quick:
        a.pods, a.concurrent, a.in_process = 20, 10, 3
    require_root("bench.cni")
    with Lab(nodes=1, log_level="warning",
             ipam_options={"empty_block_release_seconds": 0}) as lab:
        lab.apply(json.dumps(POOL))
        node = lab.nodes["node1"]
        lab.start_cni_agent("node1")
        bin_dir = Path(lab._cni_path().split(":")[0])
        launchers = ("compiled forwarder" if (bin_dir / "podbgp-cni-python").exists()
                     else "python launchers (forwarder not built: `make deps` with cc)")
        podbgp = Setup(lab, "podbgp-cni", "pc", str(bin_dir / "podbgp-cni"), lab.cni_conf(node))
        py_dir = lab.workdir / "cni-bin-python"
        py_dir.mkdir()
        write_cni_plugins(py_dir, forwarder=False)
        podbgp_py = Setup(lab, "podbgp-cni (python launchers)", "pp",
                          str(py_dir / "podbgp-cni"), {**lab.cni_conf(node), "name": "podnet3"},
                          cni_path=f"{py_dir}:{CNI_BIN_DIR}")
        peer = Setup(lab, "bridge+host-local", "br", f"{CNI_BIN_DIR}/bridge", {
            "cniVersion": "1.0.0", "name": "benchbr", "type": "bridge", "bridge": "cnib0",
            "isGateway": True, "ipMasq": False,
            "ipam": {"type": "host-local", "subnet": "10.88.0.0/16",
                     "dataDir": str(lab.workdir / "host-local")}})
        no_agent_conf = {**lab.cni_conf(node), "name": "podnet2",
                         "agent_socket": str(lab.workdir / "no-agent.sock")}
        in_proc = Setup(lab, "podbgp-cni (no agent)", "pn", str(bin_dir / "podbgp-cni"),
                        no_agent_conf)
        both = [peer, podbgp, *([podbgp_py] if a.python_launchers else [])]
        # One warm-up pod each (first block claim, bridge creation, caches), not counted.
        for s in both:
            warm = s.new_pods(1)
            s.call("ADD", warm[0])

        results: dict = {"pods": a.pods, "concurrent": a.concurrent, "setups": {}}
        seq = {s.name: s.new_pods(a.pods) for s in both}
        add = interleaved(both, "ADD", seq)
        dele = interleaved(both, "DEL", seq)
        conc = {s.name: s.new_pods(a.concurrent) for s in both}
        cadd, cdel, cwall = {}, {}, {}
        for s in both:
            cadd[s.name], cwall[(s.name, "ADD")] = concurrent(s, "ADD", conc[s.name])
        for s in both:
            cdel[s.name], cwall[(s.name, "DEL")] = concurrent(s, "DEL", conc[s.name])
        if a.in_process:
            ip_pods = in_proc.new_pods(a.in_process)
            add[in_proc.name] = [in_proc.call("ADD", p) for p in ip_pods]
            dele[in_proc.name] = [in_proc.call("DEL", p) for p in ip_pods]
        load = run("cat", "/proc/loadavg").stdout.split()[:3]

    rows = []
    for name in [*(s.name for s in both), *([in_proc.name] if a.in_process else [])]:
        entry = {"add": stats(add[name]), "del": stats(dele[name])}
        rows.append([name, f"{a.pods if name != in_proc.name else a.in_process} seq",
                     entry["add"]["p50_ms"], entry["add"]["p99_ms"], entry["del"]["p50_ms"],
                     entry["del"]["p99_ms"], "—"])
        if name in cadd:
            entry["concurrent_add"] = {**stats(cadd[name]),
                                       "wall_ms": ms(cwall[(name, "ADD")])}
            entry["concurrent_del"] = {**stats(cdel[name]),
                                       "wall_ms": ms(cwall[(name, "DEL")])}
            rows.append([name, f"{a.concurrent} at once", entry["concurrent_add"]["p50_ms"],
                         entry["concurrent_add"]["p99_ms"], entry["concurrent_del"]["p50_ms"],
                         entry["concurrent_del"]["p99_ms"],
                         f"{ms(cwall[(name, 'ADD')])} / {ms(cwall[(name, 'DEL')])}"])
        results["setups"][name] = entry
    p, b = results["setups"]["podbgp-cni"], results["setups"]["bridge+host-local"]
    ratio = {k: round(p[k]["p99_ms"] / b[k]["p99_ms"], 2)
             for k in ("add", "del", "concurrent_add", "concurrent_del")}
    results["ratio_p99"] = ratio
    results["loadavg"] = load
    results["launchers"] = launchers
    print(table(["set-up", "pods", "ADD p50 ms", "ADD p99 ms", "DEL p50 ms", "DEL p99 ms",
                 "wall ADD / DEL ms"], rows))
    print(f"\npodbgp-cni's executables: {launchers}")
    print(f"load average during the run: {' '.join(load)} (2 cores, shared)")
    print(f"p99 ratio podbgp-cni / bridge+host-local: ADD {ratio['add']}x, DEL "
          f"{ratio['del']}x, concurrent ADD {ratio['concurrent_add']}x, concurrent DEL "
          f"{ratio['concurrent_del']}x (target: ADD <= 2x)")
    if a.json:
        a.json.write_text(json.dumps(results, indent=1))
    print(f"cni: podbgp-cni ADD p50/p99 {p['add']['p50_ms']}/{p['add']['p99_ms']} ms vs "
          f"bridge+host-local {b['add']['p50_ms']}/{b['add']['p99_ms']} ms (p99 "
          f"{ratio['add']}x), DEL p99 {ratio['del']}x, {a.concurrent} concurrent ADD p99 "
          f"{ratio['concurrent_add']}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
