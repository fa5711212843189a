"""Benchmark: routes missing from the kernels during a `kill -9` and restart of podbgp.

    sudo .venv/bin/python -m bench.restart [--blocks 20] [--quick] [--json PATH]

A 2-node lab (real etcd, real bgpd on each node). Each node gets --blocks
confirmed block affinities; once each node's kernel holds the other's blocks
(protocol 201), a poller reads both kernels every 10 ms (/proc/<pid>/net/route
of an anchor process in each namespace) while node1's bgpd is killed with
SIGKILL (its ExaBGP child dies with it: PR_SET_PDEATHSIG) and started again.
Missing = node1's blocks absent from node2's kernel, or node2's from node1's.
Re-convergence = restart -> node1 reports converged (End-of-RIB from node2,
stale routes swept) and node2 has the session back with node1's End-of-RIB.

The last line: `restart: <m> routes missing (max over <n> polls), re-converged in <s> s`.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time

from bench.common import median, proc_routes, require_root, table, wait_in_ns
from lab.harness import Lab, run

POLL = 0.01

PUT = """
import base64, json, sys, urllib.request
for key in sys.argv[2:]:
    body = json.dumps({"key": base64.b64encode(key.encode()).decode(),
                       "value": base64.b64encode(b'{"state":"confirmed"}').decode()}).encode()
    urllib.request.urlopen(urllib.request.Request(sys.argv[1] + "/v3/kv/put", body), timeout=5).read()
"""


def blocks(node_index: int, n: int) -> list[str]:
    return [f"10.244.{node_index * 64 + (i >> 2)}.{(i & 3) * 64}/26" for i in range(n)]


def put_affinities(lab: Lab, node: str, cidrs: list[str]) -> None:
    keys = [f"/calico/ipam/v2/host/{node}/ipv4/block/{c.replace('/', '-')}" for c in cidrs]
    run(sys.executable, "-c", PUT, "http://127.0.0.1:2379", *keys, ns=lab.etcd_ns)


class Poller(threading.Thread):
    """Counts missing routes in both kernels every POLL seconds."""

    def __init__(self, watch: list[tuple[int, set[str]]]) -> None:
        super().__init__(daemon=True)
        self.watch = watch
        self.stop = threading.Event()
        self.samples: list[tuple[float, int]] = []  # (monotonic, missing total)
        self.error: Exception | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                missing = sum(len(want - proc_routes(pid)) for pid, want in self.watch)
                self.samples.append((time.monotonic(), missing))
                self.stop.wait(POLL)
        except Exception as e:  # reported by the main thread
            self.error = e


def one_restart(lab: Lab, poller: Poller) -> dict:
    t_kill = time.monotonic()
    lab.stop_daemon("node1", signal.SIGKILL)
    t_start = time.monotonic()
    lab.start_daemon("node1")

    def converged() -> bool:
        s1 = lab.status("node1")
        s2 = lab.status("node2")
        up2 = [p for p in s2["peers"] if p["address"] == lab.nodes["node1"].ip]
        return bool(s1.get("converged") and up2 and up2[0]["state"] == "up"
                    and up2[0]["end_of_rib"])

    lab.wait_for(converged, 120, "node1 to re-converge after kill -9", interval=0.05)
    t_conv = time.monotonic()
    time.sleep(1.0)  # keep watching after convergence: a late sweep would show here
    during = [m for t, m in poller.samples if t >= t_kill]
    return {"kill_to_restart_s": t_start - t_kill, "reconverge_s": t_conv - t_start,
            "polls": len(during), "max_missing": max(during) if during else -1}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.restart",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", type=int, default=20, help="block affinities per node")
    ap.add_argument("--restarts", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="one restart")
    ap.add_argument("--json", help="write the results to this file")
    a = ap.parse_args(argv)
    if not 1 <= a.blocks <= 256:
        ap.error(f"--blocks: {a.blocks} is out of range 1..256")
    require_root("bench.restart")
    restarts = 1 if a.quick else a.restarts
    results = []
    with Lab(nodes=2, log_level="warning") as lab:
        lab.apply("""
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: bench-pool}
spec: {cidr: 10.244.0.0/16, blockSize: 26, ipipMode: Never, vxlanMode: Never, natOutgoing: false}
""")
        mine = {}
        for node in lab.nodes.values():
            lab.register_node(node)
            mine[node.name] = set(blocks(node.index, a.blocks))
            put_affinities(lab, node.name, sorted(mine[node.name]))
        for name in lab.nodes:
            lab.start_daemon(name)
        anchors = {}
        for name, node in lab.nodes.items():
            anchors[name] = lab.spawn_in(node.ns, ["sleep", "100000"], f"{name}-anchor.log").pid
            wait_in_ns(anchors[name], node.ns)
        watch = [(anchors["node2"], mine["node1"]), (anchors["node1"], mine["node2"])]
        lab.wait_for(lambda: all(not (w - proc_routes(p)) for p, w in watch), 90,
                     "each kernel to hold the other node's blocks", interval=0.1)
        poller = Poller(watch)
        poller.start()
        try:
            for _ in range(restarts):
                results.append(one_restart(lab, poller))
        finally:
            poller.stop.set()
            poller.join(5)
        if poller.error:
            raise poller.error
    rows = [[i + 1, r["polls"], r["max_missing"], r["reconverge_s"]]
            for i, r in enumerate(results)]
    print(f"\nRestart: kill -9 + start of node1's bgpd, {a.blocks} blocks per node, both "
          f"kernels polled every {POLL * 1000:.0f} ms\n")
    print(table(["restart", "polls", "routes missing (max)", "restart->re-converged s"], rows))
    missing = max(r["max_missing"] for r in results)
    conv = median([r["reconverge_s"] for r in results])
    polls = sum(r["polls"] for r in results)
    print(f"\nrestart: {missing} routes missing (max over {polls} polls), "
          f"re-converged in {conv:.2f} s (median of {len(results)})")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"restarts": results, "blocks": a.blocks, "max_missing": missing,
                       "reconverge_median_s": conv}, f, indent=1)
    return 0 if missing == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
