"""Network policy: enforcement latency, and what a loaded policy table costs pods.

    sudo .venv/bin/python -m bench.policy [--changes 100] [--policies 1000]
        [--endpoints 5000] [--seconds 1] [--rounds 7] [--json FILE]

One node (lab.podnet: pods wired as podbgp-cni wires them) with a client and
a server pod; the cluster around them is data: ``--endpoints``
WorkloadEndpoints of pods on 50 other nodes in 100 namespaces, and
``--policies`` policies (10 per namespace: a Kubernetes default-deny, allows
from other apps, from labelled namespaces, egress to CIDRs). Ten of them
select the bench server (a default deny, allows from the client on the TCP
ports used below), as a real cluster's pod is selected by a few policies, not
by all.

1. Enforcement latency (the real agent): etcd and ``podbgp-policy`` in the
   node's namespace, the data loaded, the agent ready; then ``--changes``
   times a NetworkPolicy allowing UDP from the client to the server is written
   to etcd or deleted (over etcd's JSON gateway, as Calico's writers use etcd).
   The client sends a UDP datagram every millisecond, each from a new source
   port never used before in the run (a new conntrack flow, so each one meets
   the rules in force), carrying its send time; the server echoes. Latency of a change = from the etcd write to
   the first datagram sent after it that got through (allow), or to just after
   the last one that did (deny). Clocks: CLOCK_MONOTONIC, one kernel.
2. Cost on the pods' traffic, each variant in turn, ``--rounds`` times, in the
   same run: no table; the table with no policies; the table with everything
   loaded (the same compiler's output, loaded with one nft transaction); and,
   for scale, a table where all the policies select the server. TCP
   connections per second (connect + close, 64 in flight, Python on both
   ends) and throughput (iperf3, one stream) from client to server.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import json
import os
import selectors
import socket
import statistics
import subprocess
import sys
import time
from collections import deque
from pathlib import Path

from bench.common import REPO, percentile, require_root, table

CRR_PORT = 7000
IPERF_PORT = 5201
UDP_PORT = 80
NODE = "n1"
TOGGLE = "bench-udp-toggle"


# ------------------------------------------------------------------ data


def gen_cluster(n_eps: int, n_pols: int, all_select_server: bool = False):
    """(WorkloadEndpoints, policy resources) of the simulated cluster."""
    from config.endpoints import host_interface_name, pod_endpoint
    from config.parse import parse_resource

    weps = [
        pod_endpoint(node=NODE, namespace="bench", pod=name, endpoint="eth0", container_id=name,
                     interface_name=host_interface_name("bench", name), mac=None,
                     ip_networks=[ip + "/32"], labels={"app": name})
        for name, ip in (("client", "10.77.0.1"), ("server", "10.77.0.2"))]
    for k in range(n_eps):
        ns, pod = f"ns{k % 100}", f"p{k}"
        weps.append(pod_endpoint(
            node=f"n{2 + k % 50}", namespace=ns, pod=pod, endpoint="eth0", container_id=pod,
            interface_name=host_interface_name(ns, pod), mac=None,
            ip_networks=[f"10.{100 + k // 250}.{k % 250}.1/32"],
            labels={"app": f"a{k % 10}", "ver": f"v{k % 3}"}))
    pols = []
    for i in range(n_pols):
        if all_select_server or i < 10:
            ns, sel = "bench", "app == 'server'"
        else:
            ns, sel = f"ns{i % 100}", f"app == 'a{i % 10}'"
        if i % 10 == 0:  # a Kubernetes default-deny (as kube-controllers stores it)
            spec = {"order": 1000, "selector": "projectcalico.org/orchestrator == 'k8s'",
                    "types": ["Ingress"]}
            name = f"knp.default.deny-{i}"
        else:
            src = "app == 'client'" if ns == "bench" else f"app == 'a{(i + 1) % 10}'"
            ports = [CRR_PORT, IPERF_PORT] if ns == "bench" else [80, 8000 + i % 100]
            spec = {"order": 100 + i % 7, "selector": sel, "types": ["Ingress", "Egress"],
                    "ingress": [
                        {"action": "Allow", "protocol": "TCP", "source": {"selector": src},
                         "destination": {"ports": ports}},
                        {"action": "Allow", "protocol": "TCP",
                         "source": {"namespaceSelector": f"team == 't{i % 5}'"},
                         "destination": {"ports": [443]}}],
                    "egress": [{"action": "Allow"}]}
            name = f"p{i}"
        pols.append(parse_resource({"apiVersion": "projectcalico.org/v3",
                                    "kind": "NetworkPolicy",
                                    "metadata": {"name": name, "namespace": ns}, "spec": spec}))
    return weps, pols


def toggle_policy() -> dict:
    return {"apiVersion": "projectcalico.org/v3", "kind": "NetworkPolicy",
            "metadata": {"name": TOGGLE, "namespace": "bench"},
            "spec": {"order": 1, "selector": "app == 'server'", "types": ["Ingress"],
                     "ingress": [{"action": "Allow", "protocol": "UDP",
                                  "source": {"selector": "app == 'client'"},
                                  "destination": {"ports": [UDP_PORT]}}]}}


def engine_script(weps, pols) -> str:
    from policy.agent import feed
    from policy.engine import Engine
    from policy.ruleset import render_full

    e = Engine(NODE)
    for r in [*weps, *pols]:
        feed(e, r)
    return render_full(e.ruleset())


# ------------------------------------------------------ workers (in netns)


class EtcdGateway:
    """etcd's v3 JSON gateway over one kept-alive HTTP connection."""

    def __init__(self, endpoint: str) -> None:
        host, port = endpoint.split("//", 1)[1].rsplit(":", 1)
        self.conn = http.client.HTTPConnection(host, int(port), timeout=10)

    def call(self, path: str, body: dict) -> dict:
        self.conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        resp = self.conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"etcd {path}: HTTP {resp.status} {data[:200]!r}")
        return json.loads(data)

    @staticmethod
    def b64(s: str | bytes) -> str:
        return base64.b64encode(s.encode() if isinstance(s, str) else s).decode()

    def put_many(self, items: list[tuple[str, bytes]]) -> None:
        for i in range(0, len(items), 100):  # etcd's default --max-txn-ops is 128
            ops = [{"requestPut": {"key": self.b64(k), "value": self.b64(v)}}
                   for k, v in items[i:i + 100]]
            self.call("/v3/kv/txn", {"success": ops})

    def put(self, key: str, value: bytes) -> None:
        self.call("/v3/kv/put", {"key": self.b64(key), "value": self.b64(value)})

    def delete(self, key: str) -> None:
        self.call("/v3/kv/deleterange", {"key": self.b64(key)})


def worker_load(endpoint: str, path: str) -> None:
    items = [(k, v.encode()) for k, v in json.loads(Path(path).read_text())]
    EtcdGateway(endpoint).put_many(items)


def worker_toggle(endpoint: str, changes: int, gap: float, out: str) -> None:
    from config.keys import key_for

    gw = EtcdGateway(endpoint)
    key = key_for("NetworkPolicy", TOGGLE, "bench")
    value = json.dumps(toggle_policy()).encode()
    marks = []
    time.sleep(gap)
    for i in range(changes):
        allow = i % 2 == 0
        t0 = time.monotonic_ns()
        gw.put(key, value) if allow else gw.delete(key)
        marks.append((t0, allow))
        time.sleep(gap)
    Path(out).write_text(json.dumps(marks))


def worker_udp_flood(addr: str, port: int, seconds: float, interval: float, out: str) -> None:
    """Send a datagram every `interval` s from a new socket; record echoed send times."""
    sel = selectors.DefaultSelector()
    open_socks: deque[socket.socket] = deque()
    got: list[int] = []
    sent = 0
    # Each datagram from its own source port, never reused in a run: a reused port
    # would meet the conntrack entry of an earlier (allowed) datagram and pass as
    # "established", which is conntrack's job, not the policy's.
    ports = iter(range(20000, 65000))
    end = time.monotonic() + seconds
    next_send = time.monotonic()
    while time.monotonic() < end:
        now = time.monotonic()
        if now >= next_send:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setblocking(False)
            with contextlib.suppress(OSError):
                s.bind(("0.0.0.0", next(ports)))
                s.sendto(time.monotonic_ns().to_bytes(8, "big"), (addr, port))
                sent += 1
            sel.register(s, selectors.EVENT_READ)
            open_socks.append(s)
            if len(open_socks) > 300:  # after 300 ms an echo is not coming
                old = open_socks.popleft()
                sel.unregister(old)
                old.close()
            next_send += interval
        for key, _ in sel.select(max(0.0, next_send - time.monotonic())):
            with contextlib.suppress(OSError):
                data = key.fileobj.recv(64)
                if len(data) == 8:
                    got.append(int.from_bytes(data, "big"))
    Path(out).write_text(json.dumps({"sent": sent, "echoed": got}))


def worker_crr_server(port: int) -> None:
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", port))
    srv.listen(4096)
    while True:
        c, _ = srv.accept()
        c.close()


def worker_crr_client(addr: str, port: int, seconds: float, conc: int = 64) -> None:
    """TCP connections per second: connect, and close once connected; `conc` in flight."""
    sel = selectors.DefaultSelector()
    done = failed = 0
    end = time.monotonic() + seconds

    def start() -> None:
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex((addr, port))
        sel.register(s, selectors.EVENT_WRITE)

    for _ in range(conc):
        start()
    while time.monotonic() < end:
        for key, _ in sel.select(0.5):
            s = key.fileobj
            sel.unregister(s)
            if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                done += 1
            else:
                failed += 1
            s.close()
            start()
    print(json.dumps({"connections": done, "failed": failed, "seconds": seconds}))


# ---------------------------------------------------------------- driver


def ns_run(ns: str, *cmd: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def worker(ns: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    r = ns_run(ns, sys.executable, "-m", "bench.policy", *args, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"worker {args[0]} in {ns}: {r.stderr.strip()[-800:]}")
    return r


def nft_apply(ns: str, script: str) -> float:
    from fib_sync.nft import Nft

    t0 = time.perf_counter()
    Nft(ns).apply(script)
    return time.perf_counter() - t0


def measure_cost(net, variants: dict[str, str | None], seconds: float, rounds: int,
                 client, server) -> dict:
    """Connections/s and throughput per variant, interleaved `rounds` times."""
    from fib_sync.nft import Nft

    crr_srv = subprocess.Popen(["ip", "netns", "exec", server.netns, sys.executable, "-m",
                                "bench.policy", "--crr-server", str(CRR_PORT)], cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    iperf_srv = subprocess.Popen(["ip", "netns", "exec", server.netns, "iperf3", "-s", "-p",
                                  str(IPERF_PORT)], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
    results: dict[str, dict[str, list[float]]] = {v: {"crr": [], "gbps": [], "load_s": []}
                                                 for v in variants}
    try:
        time.sleep(1.0)
        for _ in range(rounds):
            for name, script in variants.items():
                Nft(net.node).delete_table("inet", "podbgp-policy")
                if script is not None:
                    results[name]["load_s"].append(nft_apply(net.node, script))
                r = worker(client.netns, "--crr-client", server.ip, str(CRR_PORT), str(seconds),
                           timeout=seconds + 60)
                res = json.loads(r.stdout)
                if res["failed"] > res["connections"] * 0.01:
                    raise RuntimeError(f"{name}: {res['failed']} connections failed: the "
                                       "policies do not allow the bench traffic")
                results[name]["crr"].append(res["connections"] / seconds)
                # iperf3 takes whole seconds (0 would mean "forever")
                r = ns_run(client.netns, "iperf3", "-c", server.ip, "-p", str(IPERF_PORT),
                           "-t", str(max(1, round(seconds))), "--connect-timeout", "3000",
                           "-J", timeout=seconds + 60)
                bps = json.loads(r.stdout)["end"]["sum_received"]["bits_per_second"]
                results[name]["gbps"].append(bps / 1e9)
    finally:
        for p in (crr_srv, iperf_srv):
            p.kill()
            p.wait(5)
        Nft(net.node).delete_table("inet", "podbgp-policy")
    return results


def measure_latency(net, workdir: Path, weps, pols, changes: int, gap: float,
                    client, server) -> dict:
    from config.endpoints import endpoint_to_json
    from config.keys import key_for, workload_endpoint_key
    from config.parse import to_json
    from lab.netpol import Prober
    from tests.conftest import EtcdServer, free_ports

    cport, pport, hport = free_ports(3)
    etcd = EtcdServer(workdir / "etcd-data", cport, pport, netns=net.node)
    etcd.start()
    agent = None
    echo = None
    try:
        items = [(workload_endpoint_key(w.namespace, w.name), endpoint_to_json(w).decode())
                 for w in weps]
        items += [(key_for("NetworkPolicy", p.metadata.name, p.metadata.namespace),
                   to_json(p).decode()) for p in pols]
        data = workdir / "load.json"
        data.write_text(json.dumps(items))
        t0 = time.perf_counter()
        worker(net.node, "--load", etcd.endpoint, str(data))
        load_s = time.perf_counter() - t0
        log = open(workdir / "agent.log", "wb")  # noqa: SIM115
        agent = subprocess.Popen(
            ["ip", "netns", "exec", net.node, str(REPO / ".venv" / "bin" / "podbgp-policy"),
             "--node", NODE, "--etcd-endpoints", etcd.endpoint,
             "--http-listen", f"127.0.0.1:{hport}", "--log-format", "json"],
            stdout=log, stderr=log)
        log.close()
        t0 = time.perf_counter()
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            r = ns_run(net.node, "curl", "-s", "-m", "1", f"http://127.0.0.1:{hport}/readyz")
            if r.stdout.startswith("ready"):
                break
            if agent.poll() is not None:
                raise RuntimeError("agent exited: " + (workdir / "agent.log").read_text()[-800:])
            time.sleep(0.2)
        else:
            raise RuntimeError("agent not ready: " + (workdir / "agent.log").read_text()[-800:])
        ready_s = time.perf_counter() - t0
        echo = Prober(server.netns, tcp="", udp=str(UDP_PORT))
        flood_out, marks_out = workdir / "flood.json", workdir / "marks.json"
        duration = (changes + 2) * gap + 1.0
        flood = subprocess.Popen(["ip", "netns", "exec", client.netns, sys.executable, "-m",
                                  "bench.policy", "--udp-flood", server.ip, str(UDP_PORT),
                                  str(duration), "0.001", str(flood_out)], cwd=REPO)
        time.sleep(0.3)
        worker(net.node, "--toggle", etcd.endpoint, str(changes), str(gap), str(marks_out))
        flood.wait(duration + 30)
        flood_data = json.loads(flood_out.read_text())
        marks = json.loads(marks_out.read_text())
        metrics = ns_run(net.node, "curl", "-s", f"http://127.0.0.1:{hport}/metrics").stdout
    finally:
        if echo is not None:
            echo.close()
        if agent is not None:
            agent.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                agent.wait(10)
            if agent.poll() is None:
                agent.kill()
        etcd.stop(sig_kill=True)
    echoed = sorted(flood_data["echoed"])
    lat = {"allow": [], "deny": []}
    for i, (t0, allow) in enumerate(marks):
        t_next = marks[i + 1][0] if i + 1 < len(marks) else t0 + int(gap * 1e9)
        window = [t for t in echoed if t0 <= t < t_next]
        if allow:
            lat["allow"].append(((window[0] - t0) / 1e6) if window else float("nan"))
        else:
            # after the last datagram that got through, the next one 1 ms later was dropped
            lat["deny"].append(((window[-1] - t0) / 1e6 + 1.0) if window else 0.0)
    return {"allow_ms": lat["allow"], "deny_ms": lat["deny"], "sent": flood_data["sent"],
            "echoed": len(echoed), "load_s": load_s, "agent_ready_s": ready_s,
            "metrics": metrics}


def _histogram(text: str, name: str) -> dict[str, float]:
    out = {}
    for line in (text or "").splitlines():
        for part in ("sum", "count"):
            if line.startswith(f"{name}_{part} "):
                out[part] = float(line.split()[1])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.policy",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--changes", type=int, default=100)
    ap.add_argument("--policies", type=int, default=1000)
    ap.add_argument("--endpoints", type=int, default=5000)
    ap.add_argument("--seconds", type=float, default=1.0, help="per measurement")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--gap", type=float, default=0.3, help="seconds between changes")
    ap.add_argument("--json")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    # worker modes (run inside the namespaces)
    ap.add_argument("--load", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--toggle", nargs=4, help=argparse.SUPPRESS)
    ap.add_argument("--udp-flood", nargs=5, help=argparse.SUPPRESS)
    ap.add_argument("--crr-server", help=argparse.SUPPRESS)
    ap.add_argument("--crr-client", nargs=3, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.load:
        worker_load(*a.load)
        return 0
    if a.toggle:
        worker_toggle(a.toggle[0], int(a.toggle[1]), float(a.toggle[2]), a.toggle[3])
        return 0
    if a.udp_flood:
        addr, port, secs, interval, out = a.udp_flood
        worker_udp_flood(addr, int(port), float(secs), float(interval), out)
        return 0
    if a.crr_server:
        worker_crr_server(int(a.crr_server))
        return 0
    if a.crr_client:
        worker_crr_client(a.crr_client[0], int(a.crr_client[1]), float(a.crr_client[2]))
        return 0
    require_root("bench.policy")
    import tempfile

    from lab.podnet import PodNet

    workdir = Path(tempfile.mkdtemp(prefix="podbgp-bench-policy-"))
    t0 = time.perf_counter()
    weps, pols = gen_cluster(a.endpoints, a.policies)
    _, worst = gen_cluster(0, a.policies, all_select_server=True)
    variants = {
        "no table": None,
        "table, no policies": engine_script(weps[:2], []),
        f"{a.policies} policies / {a.endpoints} endpoints": engine_script(weps, pols),
        f"{a.policies} policies all selecting the server": engine_script(weps[:2], worst),
    }
    gen_s = time.perf_counter() - t0
    with PodNet() as net:
        client = net.add_pod("bench", "client", "10.77.0.1", {"app": "client"})
        server = net.add_pod("bench", "server", "10.77.0.2", {"app": "server"})
        cost = measure_cost(net, variants, a.seconds, a.rounds, client, server) \
            if a.rounds else {v: {"crr": [1.0], "gbps": [1.0], "load_s": []} for v in variants}
        lat = measure_latency(net, workdir, weps, pols, a.changes, a.gap, client, server)
    if a.keep:
        print(f"work directory kept: {workdir}")
    else:
        subprocess.run(["rm", "-rf", str(workdir)])

    med = {v: {k: statistics.median(xs) for k, xs in r.items() if xs} for v, r in cost.items()}
    base_name = "table, no policies"
    loaded_name = f"{a.policies} policies / {a.endpoints} endpoints"

    def paired(v: str, k: str) -> float:
        # each round's variants ran back to back: the ratio within a round cancels the
        # machine's drifting load better than a ratio of medians
        return statistics.median(x / b for x, b in zip(cost[v][k], cost[base_name][k],
                                                      strict=True))

    rows = []
    for v, m in med.items():
        rows.append([v, round(m["crr"]), round(paired(v, "crr"), 3),
                     round(m["gbps"], 2), round(paired(v, "gbps"), 3),
                     round(m["load_s"], 3) if "load_s" in m else "-"])
    print(f"Pod-to-pod TCP on one node, client -> server ({a.rounds} rounds of {a.seconds:g} s "
          "each, the variants back to back in every round; medians, and the median of the "
          "per-round ratios)")
    print(table(["table", "conn/s", "vs no policies", "Gbit/s", "vs no policies",
                 "nft load (s)"], rows))
    allow, deny = lat["allow_ms"], lat["deny_ms"]
    both = [x for x in allow + deny if x == x]
    print(f"\nEnforcement latency: NetworkPolicy written to etcd -> in force in the data plane "
          f"({a.changes} changes, {a.policies} policies / {a.endpoints} endpoints loaded; "
          f"etcd load {lat['load_s']:.1f} s, agent ready after {lat['agent_ready_s']:.1f} s), "
          "ms")
    print(table(["change", "n", "min", "p50", "p90", "p99", "max"], [
        [name, len(xs), min(xs), percentile(xs, 50), percentile(xs, 90), percentile(xs, 99),
         max(xs)] for name, xs in (("allow (policy created)", [x for x in allow if x == x]),
                                   ("deny (policy deleted)", deny), ("all", both)) if xs]))
    prog = {k: v for k, v in _histogram(lat["metrics"],
                                         "podbgp_policy_programming_duration_seconds").items()}
    if prog.get("count"):
        print(f"(inside the agent, change received -> transaction applied: mean "
              f"{prog['sum'] / prog['count'] * 1000:.1f} ms over {prog['count']:.0f} "
              "transactions; the rest is etcd's watch and scheduling)")
    missing = sum(1 for x in allow if x != x)
    if missing:
        print(f"({missing} allow changes never took effect within {a.gap:g} s)")
    cost_pct = (1 - paired(loaded_name, "crr")) * 100
    thr_ratio = paired(loaded_name, "gbps")
    headline = (f"policy: enforcement p50 {percentile(both, 50):.1f} ms p99 "
                f"{percentile(both, 99):.1f} ms over {len(both)} changes; "
                f"{a.policies} policies/{a.endpoints} endpoints vs none: connection rate "
                f"{cost_pct:+.1f}% cost, throughput ratio {thr_ratio:.2f} (data {gen_s:.1f} s)")
    if a.json:
        Path(a.json).write_text(json.dumps({"cost": cost, "latency": {
            k: v for k, v in lat.items() if k != "metrics"}, "headline": headline}))
    print(f"\n{headline}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    sys.exit(main())
