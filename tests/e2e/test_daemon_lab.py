"""The daemon as a whole, in a two-node network-namespace lab with a real etcd.

Both ``bgpd`` processes are started as a user would (lab.start_daemon runs the
real console script with the README's options). The tests share one lab and
run in file order: routes and observability first, then a ``kill -9`` restart,
then bad resources + a 30 s etcd outage (+ SIGHUP meanwhile), then SIGTERM.
Each test first waits for the steady state it needs, so a failure names the
step that broke.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.harness import Lab
from tests.conftest import require_binary, require_root

POOL = """apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: default-ipv4}
spec: {cidr: 10.244.0.0/16, blockSize: 26, ipipMode: Never, vxlanMode: Never}
"""
PEERS_KEY = "/calico/resources/v3/projectcalico.org/bgppeers/"
BOGUS = "10.244.250.0/26"  # a proto-201 route nobody wants any more
NEW_BLOCK = "10.244.251.0/26"  # an affinity written for node2 after the etcd outage


def log_events(lab: Lab, node: str, offset: int = 0) -> list[dict]:
    """The node's JSON log lines from byte ``offset`` (non-JSON lines skipped)."""
    path = lab.nodes[node].log_path
    assert path is not None
    out = []
    with open(path, "rb") as f:
        f.seek(offset)
        for line in f.read().decode(errors="replace").splitlines():
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if isinstance(ev, dict):
                out.append(ev)
    return out


def events_named(lab: Lab, node: str, name: str, offset: int = 0) -> list[dict]:
    return [e for e in log_events(lab, node, offset) if e.get("event") == name]


def log_size(lab: Lab, node: str) -> int:
    path = lab.nodes[node].log_path
    return path.stat().st_size if path and path.exists() else 0


def metric(text: str, name: str, **labels: str) -> float | None:
    """One sample's value from Prometheus text, matching every given label."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, _, value = line.rpartition(" ")
        if head.split("{", 1)[0] != name:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', head))
        if all(got.get(k) == v for k, v in labels.items()):
            return float(value)
    return None


def metric_sum(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rpartition(" ")[2])
    return total


def kernel(lab: Lab, node: str) -> dict[str, dict]:
    """The node's proto-201 routes by destination."""
    return {r["dst"]: r for r in lab.routes(node, "201")}


def etcdctl(lab: Lab, *args: str) -> str:
    r = subprocess.run(["ip", "netns", "exec", lab.etcd_ns, require_binary("etcdctl"),
                        "--endpoints=http://127.0.0.1:2379", *args],
                       capture_output=True, text=True, timeout=20,
                       env={**os.environ, "ETCDCTL_API": "3"})
    assert r.returncode == 0, f"etcdctl {args[:2]}: {r.stderr}"
    return r.stdout


class KernelWatch:
    """Polls both nodes' kernels every ~50 ms in a thread; records every tick on
    which a wanted route (prefix -> gateway, or None for a blackhole) was missing."""

    def __init__(self, lab: Lab, wanted: dict[str, dict[str, str | None]],
                 interval: float = 0.05) -> None:
        self.lab, self.wanted, self.interval = lab, wanted, interval
        self.missing: list[tuple[float, str, str, str]] = []
        self.ticks = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _check(self, node: str, routes: dict[str, dict]) -> None:
        for prefix, gw in self.wanted[node].items():
            r = routes.get(prefix)
            if r is None:
                self.missing.append((time.monotonic(), node, prefix, "absent"))
            elif gw is None and r.get("type") != "blackhole":
                self.missing.append((time.monotonic(), node, prefix, f"not blackhole: {r}"))
            elif gw is not None and r.get("gateway") != gw:
                self.missing.append((time.monotonic(), node, prefix, f"wrong: {r}"))

    def _run(self) -> None:
        while not self._stop.is_set():
            for node in self.wanted:
                self._check(node, kernel(self.lab, node))
            self.ticks += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> KernelWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    require_root()
    require_binary("etcd")
    require_binary("etcdctl")
    with Lab(nodes=2) as lab:
        lab.apply(POOL)
        for n in lab.nodes.values():
            lab.register_node(n)
        for n in lab.nodes:
            lab.start_daemon(n)
        lab.pods = {n: lab.add_pod(n) for n in lab.nodes}  # type: ignore[attr-defined]
        try:
            lab.wait_for(lambda: wanted_present(lab), 60, "both blocks in both kernels")
        except TimeoutError:
            pytest.fail("lab did not converge:\n" + lab.daemon_log("node1") + "\n"
                        + lab.daemon_log("node2"))
        yield lab


def block_of(ip: str) -> str:
    import ipaddress

    return str(ipaddress.ip_network(f"{ip}/26", strict=False))


def wanted(lab: Lab) -> dict[str, dict[str, str | None]]:
    """What each kernel must hold: own block blackholed, the other's via its node."""
    pods = lab.pods  # type: ignore[attr-defined]
    out: dict[str, dict[str, str | None]] = {}
    for name in lab.nodes:
        other = "node2" if name == "node1" else "node1"
        out[name] = {block_of(pods[name].ip): None,
                     block_of(pods[other].ip): lab.nodes[other].ip}
    return out


def wanted_present(lab: Lab) -> bool:
    for node, want in wanted(lab).items():
        routes = kernel(lab, node)
        for prefix, gw in want.items():
            r = routes.get(prefix)
            if r is None or (gw is None and r.get("type") != "blackhole") or (
                    gw is not None and r.get("gateway") != gw):
                return False
    return True


def both_up(lab: Lab) -> bool:
    return all(p["state"] == "up" and p["end_of_rib"]
               for n in lab.nodes for p in lab.status(n)["peers"]) and all(
        len(lab.status(n)["peers"]) == 1 for n in lab.nodes)


# ----------------------------------------------------------------------- 1


def test_routes_flow_both_ways_with_metrics_and_node_status(lab: Lab) -> None:
    pods = lab.pods  # type: ignore[attr-defined]
    assert pods["node1"].ip != pods["node2"].ip
    assert block_of(pods["node1"].ip) != block_of(pods["node2"].ip)
    for a, b in (("node1", "node2"), ("node2", "node1")):
        reply = lab.tcp_exchange(pods[a], pods[b])
        assert reply == f"echo:hello-from-{pods[a].ip}-to-{pods[b].ip} peer={pods[a].ip}"

    lab.wait_for(lambda: both_up(lab), 30, "both sessions up with End-of-RIB")
    for name in lab.nodes:
        other = lab.nodes["node2" if name == "node1" else "node1"]
        code, text = lab.http_get(name, "/metrics")
        assert code == 200
        assert metric(text, "podbgp_bgp_session_up", peer=other.ip,
                      peer_type="node-to-node mesh") == 1
        for m in ("received", "accepted", "advertised"):
            assert metric(text, f"podbgp_bgp_prefixes_{m}", peer=other.ip) == 1, m
        assert metric(text, "podbgp_kernel_routes", kind="blackhole") == 1
        assert metric(text, "podbgp_kernel_routes", kind="unicast") == 1
        assert metric(text, "podbgp_ready") == 1
        assert metric(text, "podbgp_config_stale") == 0
        # Converged by End-of-RIB from its one peer, not by the 120 s timer, and the
        # gauge is the running daemon's start-to-convergence time (not a timestamp).
        conv = events_named(lab, name, "converged")[-1]
        assert conv["reason"] == "end-of-rib", conv
        seconds = metric(text, "podbgp_convergence_seconds")
        assert seconds == pytest.approx(conv["seconds"], abs=0.001)
        assert 0 < seconds <= lab.status(name)["uptime_seconds"] and seconds < 120
        assert metric(text, "podbgp_datastore_connected", datastore="etcdv3") == 1
        assert lab.http_get(name, "/healthz")[0] == 200
        assert lab.http_get(name, "/readyz")[0] == 200

        out = lab.bgpctl("node", "status", node=name).stdout
        rows = [[c.strip() for c in line.strip("|").split("|")]
                for line in out.splitlines() if line.startswith("|")]
        assert rows[0] == ["PEER ADDRESS", "PEER TYPE", "STATE", "SINCE", "INFO"], out
        peer_rows = [r for r in rows[1:] if r[0] == other.ip]
        assert len(peer_rows) == 1, out
        assert peer_rows[0][1] == "node-to-node mesh"
        assert peer_rows[0][2] == "up" and peer_rows[0][4] == "Established", out
        assert "No IPv6 peers found." in out


# ----------------------------------------------------------------------- 2


def test_kill9_restart_loses_no_route_and_sweeps_unwanted(lab: Lab) -> None:
    lab.wait_for(lambda: wanted_present(lab) and both_up(lab), 30, "steady state")
    want = wanted(lab)
    offset = log_size(lab, "node1")
    with KernelWatch(lab, want) as watch:
        time.sleep(0.2)  # a few clean ticks before the kill
        lab.stop_daemon("node1", signal.SIGKILL)
        # While node1 is down: a proto-201 route nobody wants any more.
        subprocess.run(["ip", "netns", "exec", lab.nodes["node1"].ns, "ip", "route", "add",
                        BOGUS, "via", lab.nodes["node2"].ip, "proto", "201"], check=True)
        time.sleep(0.5)  # node2 notices the dead session meanwhile
        lab.start_daemon("node1")
        lab.wait_for(lambda: events_named(lab, "node1", "converged", offset), 60,
                     "node1 to converge after restart")
        lab.wait_for(lambda: BOGUS not in kernel(lab, "node1"), 10, "the bogus route swept")
        lab.wait_for(lambda: both_up(lab), 30, "sessions up again")
        time.sleep(0.3)  # and a few ticks after
    assert watch.ticks > 20, watch.ticks
    assert watch.missing == [], f"{watch.missing[:5]}\n{lab.daemon_log('node2', 60)}"

    adopted = events_named(lab, "node1", "kernel_routes_adopted", offset)
    assert len(adopted) == 1 and adopted[0]["stale"] >= 3, adopted  # 2 wanted + bogus
    conv = events_named(lab, "node1", "converged", offset)
    assert conv[0]["reason"] == "end-of-rib", conv
    assert conv[0]["swept"] >= 1, conv
    assert wanted_present(lab)
    text = lab.http_get("node1", "/metrics")[1]
    assert metric(text, "podbgp_bgp_prefixes_received", peer=lab.nodes["node2"].ip) == 1
    # node2 saw the session drop (flap) yet kept node1's block the whole time.
    text = lab.http_get("node2", "/metrics")[1]
    assert metric(text, "podbgp_bgp_session_flaps_total", peer=lab.nodes["node1"].ip) >= 1


# --------------------------------------------------------------------- 3 + 4


def test_malformed_peers_rejected_then_etcd_outage_changes_nothing(lab: Lab) -> None:
    lab.wait_for(lambda: wanted_present(lab) and both_up(lab), 30, "steady state")
    offsets = {n: log_size(lab, n) for n in lab.nodes}
    bad_json = PEERS_KEY + "broken-json"
    bad_ip = PEERS_KEY + "bad-peer-ip"
    etcdctl(lab, "put", bad_json, '{"kind": "BGPPeer", "spec": {')
    etcdctl(lab, "put", bad_ip, json.dumps({
        "kind": "BGPPeer", "apiVersion": "projectcalico.org/v3",
        "metadata": {"name": "bad-peer-ip"},
        "spec": {"peerIP": "not-an-ip", "asNumber": 64512}}))

    def rejected(node: str) -> set[str]:
        return {e.get("key") for e in events_named(lab, node, "config_rejected", offsets[node])}

    for n in lab.nodes:
        lab.wait_for(lambda n=n: {bad_json, bad_ip} <= rejected(n), 20,
                     f"{n} to log config_rejected for both keys")
        text = lab.http_get(n, "/metrics")[1]
        assert metric(text, "podbgp_config_stale") == 1
        assert metric_sum(text, "podbgp_config_rejected_total") >= 2
        st = lab.status(n)
        assert {bad_json, bad_ip} <= set(st["datastore"]["rejected"]), st["datastore"]
        assert len(st["peers"]) == 1 and st["peers"][0]["state"] == "up"
    assert wanted_present(lab)

    # etcd away for 30 s: nothing changes in either kernel, both stay ready, and a
    # SIGHUP reload meanwhile (no datastore to re-read) changes nothing either.
    want = wanted(lab)
    before = {n: kernel(lab, n) for n in lab.nodes}
    lab.stop_etcd()
    t_stop = time.monotonic()
    try:
        with KernelWatch(lab, want, interval=0.1) as watch:
            hup_at = log_size(lab, "node2")
            os.kill(lab.nodes["node2"].proc.pid, signal.SIGHUP)
            lab.wait_for(lambda: events_named(lab, "node2", "reload_requested", hup_at), 10,
                         "node2 to log reload_requested")
            while time.monotonic() - t_stop < 30:
                for n in lab.nodes:
                    assert lab.http_get(n, "/readyz")[0] == 200, lab.daemon_log(n)
                    assert lab.nodes[n].proc.poll() is None, f"{n} exited"
                time.sleep(2)
            for n in lab.nodes:
                text = lab.http_get(n, "/metrics")[1]
                assert metric(text, "podbgp_datastore_connected", datastore="etcdv3") == 0
                assert metric(text, "podbgp_bgp_session_up",
                              peer=lab.nodes["node1" if n == "node2" else "node2"].ip) == 1
        assert watch.ticks > 100, watch.ticks
        assert watch.missing == [], watch.missing[:5]
        for n in lab.nodes:
            assert kernel(lab, n) == before[n], n  # not a single route changed
            assert events_named(lab, n, "datastore_disconnected", offsets[n]), n
    finally:
        lab.start_etcd()

    # etcd is back: the daemons watch again, so a new block for node2 written now
    # (a valid change while the bad peers are still there) reaches node1's kernel.
    etcdctl(lab, "put", "/calico/ipam/v2/host/node2/ipv4/block/" + NEW_BLOCK.replace("/", "-"),
            '{"state": "confirmed", "deleted": false}')
    lab.wait_for(lambda: kernel(lab, "node1").get(NEW_BLOCK, {}).get("gateway")
                 == lab.nodes["node2"].ip, 45, f"{NEW_BLOCK} via node2 on node1")
    lab.wait_for(lambda: kernel(lab, "node2").get(NEW_BLOCK, {}).get("type") == "blackhole",
                 10, f"{NEW_BLOCK} blackholed on node2")
    for n in lab.nodes:
        text = lab.http_get(n, "/metrics")[1]
        assert metric(text, "podbgp_datastore_connected", datastore="etcdv3") == 1
        assert metric(text, "podbgp_config_stale") == 1  # the bad peers are still there
    assert wanted_present(lab)

    # Deleting the bad resources clears the stale flag.
    etcdctl(lab, "del", bad_json)
    etcdctl(lab, "del", bad_ip)
    for n in lab.nodes:
        lab.wait_for(lambda n=n: metric(lab.http_get(n, "/metrics")[1],
                                        "podbgp_config_stale") == 0, 20, f"{n} stale cleared")


# ----------------------------------------------------------------------- 5


def test_sigterm_exits_0_leaves_routes_and_kills_exabgp(lab: Lab) -> None:
    lab.wait_for(lambda: wanted_present(lab) and both_up(lab), 30, "steady state")
    node = lab.nodes["node2"]
    pid_file = lab.workdir / "node2-state" / "exabgp" / "exabgp.pid"
    exabgp_pid = int(pid_file.read_text().strip())
    assert Path(f"/proc/{exabgp_pid}/cmdline").read_bytes().find(b"exabgp") >= 0
    before = {n: kernel(lab, n) for n in lab.nodes}
    assert node.proc is not None
    proc, node.proc = node.proc, None
    offset = log_size(lab, "node2")
    os.kill(proc.pid, signal.SIGTERM)
    try:
        code = proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    assert code == 0, lab.daemon_log("node2")
    stopped = events_named(lab, "node2", "bgpd_stopped", offset)
    assert stopped and stopped[0]["exit_code"] == 0

    def gone(pid: int) -> bool:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        return state == "Z"

    lab.wait_for(lambda: gone(exabgp_pid), 10, f"ExaBGP pid {exabgp_pid} to be gone")
    # The stopped node's kernel is untouched; node1 keeps node2's block (graceful
    # restart: the session went away without a Cease).
    assert kernel(lab, "node2") == before["node2"], lab.daemon_log("node2", 40)
    time.sleep(1.0)  # node1 has seen the session drop by now
    assert wanted_present(lab)
    st = lab.status("node1")
    assert st["peers"][0]["state"] != "up"
