"""Network policy: enforcement latency, and what a loaded policy table costs pods.

    sudo .venv/bin/python -m bench.policy [--changes 100] [--policies 1000]
        [--endpoints 5000] [--seconds 2] [--rounds 15] [--pair-rounds 60] [--json FILE]

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
2. Connection-rate cost, side by side (the target: cost <= 10 %). Two
   client/server pairs, one per node, each node its own table, measured at the
   same time, so both see the same machine load second by second (at load
   12-15 on 2 cores, one variant measured in turn ranged from 1,500 to 7,300
   conn/s between rounds, and the per-round ratios from 0.55 to 2.05): TCP connections per second by wrk (C,
   one thread, ``--conns`` in flight, ``Connection: close``: a new TCP
   connection, so a new conntrack flow meeting the rules, per request) against
   nginx (one process, keepalive off, 204 to everything). ``--pair-rounds``
   rounds of the table with no policies on one node and everything loaded on
   the other, the nodes swapped every round; first a quarter as many A/A rounds
   (no policies on both) show the method's own noise. The cost is the median of
   the per-round ratios with a distribution-free 95 % interval of that median
   (order statistics): the target is met when the whole interval is within it,
   not met when it is all outside, and unresolvable otherwise.
3. For scale, one node, each variant in turn, ``--rounds`` rounds (order
   rotated): no table; the table with no policies; everything loaded (the same
   compiler's output, loaded with one nft transaction); a table where all the
   policies select the server. wrk as above and throughput (iperf3, one
   stream, 1 s); per-round ratios to the table with no policies.
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


# (pod, IP, app label) of the bench's client and server, and of the second pair
# (node 1) that the side-by-side measurement runs at the same time
PAIR_A = (("client", "10.77.0.1", "client"), ("server", "10.77.0.2", "server"))
PAIR_B = (("client-b", "10.77.0.3", "client"), ("server-b", "10.77.0.4", "server"))


def local_endpoints(pair) -> list:
    """WorkloadEndpoints of a client/server pair on the node whose table is built."""
    from config.endpoints import host_interface_name, pod_endpoint

    return [pod_endpoint(node=NODE, namespace="bench", pod=name, endpoint="eth0",
                         container_id=name, interface_name=host_interface_name("bench", name),
                         mac=None, ip_networks=[ip + "/32"], labels={"app": app})
            for name, ip, app in pair]


def gen_cluster(n_eps: int, n_pols: int, all_select_server: bool = False):
    """(WorkloadEndpoints, policy resources) of the simulated cluster."""
    from config.endpoints import host_interface_name, pod_endpoint
    from config.parse import parse_resource

    weps = local_endpoints(PAIR_A)
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


NGINX_CONF = """\
# bench/policy.py: the connection-rate server (nginx, one process, no files but these)
daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 8192; multi_accept on; }}
http {{
    access_log off;
    keepalive_timeout 0;
    client_body_temp_path {dir}/nginx-tmp;
    proxy_temp_path {dir}/nginx-tmp;
    fastcgi_temp_path {dir}/nginx-tmp;
    uwsgi_temp_path {dir}/nginx-tmp;
    scgi_temp_path {dir}/nginx-tmp;
    server {{
        listen {port} backlog=4096;
        location / {{ return 204; }}
    }}
}}
"""


def start_crr_server(ns: str, workdir: Path, port: int) -> subprocess.Popen:
    """nginx in `ns` answering every request with 204 and closing (keepalive off)."""
    conf = workdir / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=workdir, port=port))
    return subprocess.Popen(["ip", "netns", "exec", ns, "nginx", "-p", str(workdir), "-c",
                             str(conf), "-e", str(workdir / "nginx-error.log")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def parse_wrk(out: str) -> dict:
    """wrk's summary: requests/s, and its socket errors and non-2xx responses."""
    import re

    m = re.search(r"^Requests/sec:\s+([\d.]+)", out, re.M)
    if not m:
        raise RuntimeError(f"wrk printed no rate:\n{out[-800:]}")
    errors = 0
    e = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if e:
        # with "Connection: close" wrk counts the server's close after a response as a
        # read "error" on some versions; connect/write/timeout are real failures
        errors += int(e.group(1)) + int(e.group(3)) + int(e.group(4))
    n = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if n:
        errors += int(n.group(1))
    r = re.search(r"(\d+) requests in", out)
    return {"rate": float(m.group(1)), "errors": errors,
            "requests": int(r.group(1)) if r else 0}


def crr_round(client_ns: str, addr: str, port: int, seconds: int, conns: int) -> dict:
    r = ns_run(client_ns, "wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "-H",
               "Connection: close", f"http://{addr}:{port}/", timeout=seconds + 60)
    if r.returncode != 0:
        raise RuntimeError(f"wrk exit {r.returncode}: {r.stderr.strip()[-400:]}")
    return parse_wrk(r.stdout)


def measure_cost(net, variants: dict[str, str | None], seconds: float, rounds: int,
                 client, server, workdir: Path, conns: int = 64) -> dict:
    """Connections/s (wrk against nginx, a new TCP connection per request) and
    throughput (iperf3) per variant; every round runs each variant once, the order
    rotated from round to round so no variant always follows the same one."""
    from fib_sync.nft import Nft

    crr_srv = start_crr_server(server.netns, workdir, CRR_PORT)
    iperf_srv = subprocess.Popen(["ip", "netns", "exec", server.netns, "iperf3", "-s", "-p",
                                  str(IPERF_PORT)], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
    results: dict[str, dict[str, list[float]]] = {v: {"crr": [], "gbps": [], "load_s": []}
                                                 for v in variants}
    names = list(variants)
    secs = max(1, round(seconds))  # wrk and iperf3 take whole seconds
    try:
        time.sleep(1.0)
        if crr_srv.poll() is not None:
            raise RuntimeError("nginx exited: " + (workdir / "nginx-error.log").read_text()[-800:])
        for k in range(rounds):
            for name in names[k % len(names):] + names[:k % len(names)]:
                script = variants[name]
                Nft(net.node).delete_table("inet", "podbgp-policy")
                if script is not None:
                    results[name]["load_s"].append(nft_apply(net.node, script))
                time.sleep(0.2)  # let the transaction's deferred work settle
                res = crr_round(client.netns, server.ip, CRR_PORT, secs, conns)
                if res["errors"] > res["requests"] * 0.01:
                    raise RuntimeError(f"{name}: {res['errors']} of {res['requests']} "
                                       "requests failed: the policies do not allow the "
                                       "bench traffic")
                results[name]["crr"].append(res["rate"])
                r = ns_run(client.netns, "iperf3", "-c", server.ip, "-p", str(IPERF_PORT),
                           "-t", "1", "--connect-timeout", "3000", "-J", timeout=60)
                bps = json.loads(r.stdout)["end"]["sum_received"]["bits_per_second"]
                results[name]["gbps"].append(bps / 1e9)
    finally:
        for p in (crr_srv, iperf_srv):
            p.kill()
            p.wait(5)
        Nft(net.node).delete_table("inet", "podbgp-policy")
    return results


def measure_side_by_side(nodes: list[str], pairs: list, first: tuple[str, str],
                         second: tuple[str, str], rounds: int, seconds: int, conns: int,
                         workdir: Path) -> list[float]:
    """Two client/server pairs, each on its own node (its own table), measured AT
    THE SAME TIME, so both see the same machine load second by second. `first` and
    `second` are a variant's table for node 0 and for node 1; one node gets the
    first variant and the other the second, swapped every round so that neither
    node always runs the same one. Returns the per-round ratios rate(second) /
    rate(first)."""
    from fib_sync.nft import Nft

    servers = []
    for k, (_client, server) in enumerate(pairs):
        d = workdir / f"side{k}"
        d.mkdir(exist_ok=True)
        servers.append(start_crr_server(server.netns, d, CRR_PORT))
    ratios: list[float] = []
    try:
        time.sleep(1.0)
        for r in range(rounds):
            swap = r % 2
            placed = [second[0], first[1]] if swap else [first[0], second[1]]
            for node, script in zip(nodes, placed, strict=True):
                Nft(node).delete_table("inet", "podbgp-policy")
                nft_apply(node, script)
            time.sleep(0.2)
            runs = [subprocess.Popen(
                ["ip", "netns", "exec", client.netns, "wrk", "-t1", f"-c{conns}",
                 f"-d{seconds}s", "-H", "Connection: close",
                 f"http://{server.ip}:{CRR_PORT}/"], stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True) for client, server in pairs]
            res = [parse_wrk(p.communicate(timeout=seconds + 60)[0]) for p in runs]
            for x in res:
                if x["errors"] > x["requests"] * 0.01:
                    raise RuntimeError(f"side by side: {x['errors']} of {x['requests']} "
                                       "requests failed")
            r_first, r_second = (res[1], res[0]) if swap else (res[0], res[1])
            ratios.append(r_second["rate"] / r_first["rate"])
    finally:
        for p in servers:
            p.kill()
            p.wait(5)
        for node in nodes:
            Nft(node).delete_table("inet", "podbgp-policy")
    return ratios


def median_ci(xs: list[float], level: float = 0.95) -> tuple[float, float]:
    """Distribution-free interval for the median: the order statistics x_(k) and
    x_(n-k+1), k the largest with P(Binomial(n, 1/2) < k) <= (1 - level) / 2
    (min and max when n is too small for any)."""
    from math import comb

    xs, n = sorted(xs), len(xs)
    tail, k, cdf = (1 - level) / 2, 0, 0.0
    while k < n:
        cdf += comb(n, k) / 2 ** n  # P(X <= k)
        if cdf > tail:
            break
        k += 1
    k = max(k, 1)  # x_(k), 1-based; k = 1 is min-max
    return xs[k - 1], xs[n - k]


def ratio_stats(xs: list[float], base: list[float]) -> dict:
    """Paired per-round ratios x/base: median, min, max and a 95 % interval of the
    median (order statistics, no assumption about the noise's distribution)."""
    rs = [x / b for x, b in zip(xs, base, strict=True)]
    return {"median": statistics.median(rs), "min": min(rs), "max": max(rs),
            "ci": median_ci(rs), "n": len(rs)}


def verdict(st: dict, max_cost: float = 0.10) -> str:
    """'met' when the whole 95 % interval of the rate ratio is at or above 1 - max_cost,
    'not met' when it is all below, else 'unresolvable' (the noise spans the target)."""
    lo, hi = st["ci"]
    if st["n"] < 5:
        return "unresolvable (fewer than 5 rounds)"
    if lo >= 1 - max_cost:
        return "met"
    if hi < 1 - max_cost:
        return "not met"
    return "unresolvable"


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
    ap.add_argument("--seconds", type=float, default=2.0,
                    help="connection-rate measurement per variant and round (whole seconds)")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--conns", type=int, default=64, help="connections wrk keeps in flight")
    ap.add_argument("--pair-rounds", type=int, default=60,
                    help="side-by-side rounds (loaded vs no policies, at the same time)")
    ap.add_argument("--gap", type=float, default=0.3, help="seconds between changes")
    ap.add_argument("--json")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    # worker modes (run inside the namespaces)
    ap.add_argument("--load", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--toggle", nargs=4, help=argparse.SUPPRESS)
    ap.add_argument("--udp-flood", nargs=5, help=argparse.SUPPRESS)
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
    # the second pair (side by side, on node 1): the same cluster with this pair local
    weps_b = local_endpoints(PAIR_B)
    base_b, loaded_b = engine_script(weps_b, []), engine_script(weps_b + weps[2:], pols)
    gen_s = time.perf_counter() - t0
    with PodNet(nodes=2) as net:
        client, server = (net.add_pod("bench", name, ip, {"app": app})
                          for name, ip, app in PAIR_A)
        pair_b = tuple(net.add_pod("bench", name, ip, {"app": app}, node=1)
                       for name, ip, app in PAIR_B)
        load_before = os.getloadavg()
        base_name = "table, no policies"
        loaded_name = f"{a.policies} policies / {a.endpoints} endpoints"
        # A/A first (the method's own noise, node asymmetry included), then A/B
        base, loaded = (variants[base_name], base_b), (variants[loaded_name], loaded_b)
        secs = max(1, round(a.seconds))
        aa = measure_side_by_side(net.node_names, [(client, server), pair_b], base, base,
                                  max(a.pair_rounds // 4, 1), secs, a.conns, workdir) \
            if a.pair_rounds else [1.0]
        ab = measure_side_by_side(net.node_names, [(client, server), pair_b], base, loaded,
                                  a.pair_rounds, secs, a.conns, workdir) \
            if a.pair_rounds else [1.0]
        load_mid = os.getloadavg()
        cost = measure_cost(net, variants, a.seconds, a.rounds, client, server, workdir,
                            a.conns) \
            if a.rounds else {v: {"crr": [1.0], "gbps": [1.0], "load_s": []} for v in variants}
        load_after = os.getloadavg()
        lat = measure_latency(net, workdir, weps, pols, a.changes, a.gap, client, server)
    if a.keep:
        print(f"work directory kept: {workdir}")
    else:
        subprocess.run(["rm", "-rf", str(workdir)])

    med = {v: {k: statistics.median(xs) for k, xs in r.items() if xs} for v, r in cost.items()}

    def paired(v: str, k: str) -> dict:
        # each round's variants ran back to back: the ratio within a round cancels the
        # machine's drifting load better than a ratio of medians
        return ratio_stats(cost[v][k], cost[base_name][k])

    rows = []
    for v, m in med.items():
        c, g = paired(v, "crr"), paired(v, "gbps")
        rows.append([v, round(m["crr"]), round(c["median"], 3),
                     f"{c['ci'][0]:.3f}-{c['ci'][1]:.3f}", f"{c['min']:.3f}-{c['max']:.3f}",
                     round(m["gbps"], 2), round(g["median"], 3),
                     round(m["load_s"], 3) if "load_s" in m else "-"])
    print(f"Pod-to-pod TCP connection rate, side by side: two client -> server pairs on two "
          f"nodes measured at the same time ({secs} s of wrk each, a new connection per "
          f"request, {a.conns} in flight, against nginx), one node's table the first variant "
          "and the other's the second, swapped every round; ratio = second / first per round "
          f"(load average before {load_before[0]:.2f}, after {load_mid[0]:.2f}; "
          f"{os.cpu_count()} CPUs)")
    side_rows = []
    for name, rs in (("A/A: no policies / no policies", aa), (f"{loaded_name} / no policies", ab)):
        st = ratio_stats(rs, [1.0] * len(rs))
        side_rows.append([name, st["n"], round(st["median"], 3),
                          f"{st['ci'][0]:.3f}-{st['ci'][1]:.3f}",
                          f"{st['min']:.3f}-{st['max']:.3f}"])
    print(table(["variants (second / first)", "rounds", "median ratio", "95% CI", "min-max"],
                side_rows))
    print(f"\nPod-to-pod TCP on one node, client -> server ({a.rounds} rounds; in each, every "
          f"variant once, order rotated: {max(1, round(a.seconds))} s of wrk, a new "
          f"connection per request, {a.conns} in flight, against nginx; then 1 s of iperf3). "
          "conn/s and Gbit/s: medians; ratios: median of the per-round ratios to the table "
          "with no policies, its 95 % interval (order statistics), min-max of the ratios")
    print(f"(load average before {load_mid[0]:.2f}, after {load_after[0]:.2f})")
    print(table(["table", "conn/s", "vs no policies", "95% CI", "min-max", "Gbit/s",
                 "vs no policies", "nft load (s)"], rows))
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
    crr = ratio_stats(ab, [1.0] * len(ab))
    thr_ratio = paired(loaded_name, "gbps")["median"]
    cost_pct = (1 - crr["median"]) * 100
    lo, hi = ((1 - crr["ci"][1]) * 100, (1 - crr["ci"][0]) * 100)
    print(f"\nConnection-rate cost of {a.policies} policies / {a.endpoints} endpoints vs none "
          f"(target <= 10 %): {cost_pct:+.1f} % (95 % interval {lo:+.1f} % to {hi:+.1f} %, "
          f"{crr['n']} side-by-side rounds): {verdict(crr)}")
    headline = (f"policy: enforcement p50 {percentile(both, 50):.1f} ms p99 "
                f"{percentile(both, 99):.1f} ms over {len(both)} changes; "
                f"{a.policies} policies/{a.endpoints} endpoints vs none: connection rate "
                f"{cost_pct:+.1f}% cost (95% CI {lo:+.1f}% to {hi:+.1f}%, target <= 10%: "
                f"{verdict(crr)}), throughput ratio {thr_ratio:.2f} (data {gen_s:.1f} s)")
    if a.json:
        Path(a.json).write_text(json.dumps({"cost": cost, "side_by_side": {"aa": aa, "ab": ab},
                                            "latency": {
            k: v for k, v in lat.items() if k != "metrics"}, "headline": headline}))
    print(f"\n{headline}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    sys.exit(main())
