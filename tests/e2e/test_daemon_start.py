"""bgpd started while etcd is down, under a systemd-like notify socket.

One real ``bgpd`` in a one-node lab, started as systemd would start it with
``Type=notify`` and ``WatchdogSec=1``: NOTIFY_SOCKET points to a unix datagram
socket this test listens on (the filesystem is shared across network
namespaces, so the daemon inside its namespace reaches it).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest

from lab.harness import Lab
from tests.conftest import require_binary, require_root

POOL = """apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: default-ipv4}
spec: {cidr: 10.244.0.0/16, blockSize: 26, ipipMode: Never, vxlanMode: Never}
"""


class NotifyListener:
    """The test's side of sd_notify: collects every datagram, in order."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.messages: list[tuple[float, set[str]]] = []

    def pump(self, timeout: float) -> None:
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(4096)
        except TimeoutError:
            return
        self.messages.append((time.monotonic(), set(data.decode().split("\n"))))

    def wait_for(self, field: str, timeout: float) -> float:
        """Block until a datagram carrying ``field`` arrives; returns its arrival time."""
        deadline = time.monotonic() + timeout
        while True:
            for t, fields in self.messages:
                if field in fields:
                    return t
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {field} in {timeout}s; got {self.messages}")
            self.pump(min(left, 0.5))

    def count(self, field: str) -> int:
        return sum(1 for _, f in self.messages if field in f)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def lab() -> Iterator[Lab]:
    require_root()
    require_binary("etcd")
    with Lab(nodes=1) as lab:
        lab.apply(POOL)
        lab.register_node(lab.nodes["node1"])
        yield lab


def test_start_without_etcd_then_ready_with_sd_notify(lab: Lab, monkeypatch) -> None:
    listener = NotifyListener(str(lab.workdir / "notify.sock"))
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", str(lab.workdir / "notify.sock"))
        monkeypatch.setenv("WATCHDOG_USEC", "1000000")  # pings every 0.5 s
        lab.stop_etcd()
        node = lab.start_daemon("node1")
        lab.wait_for(lambda: lab.http_get("node1", "/healthz")[0] == 200, 30, "/healthz")

        # Running on nothing: alive, not ready, saying which endpoint it waits for.
        for _ in range(2):
            code, body = lab.http_get("node1", "/readyz")
            assert code == 503, body
            assert "10.99.0.2:2379" in body and "not reachable" in body, body
            assert "podbgp_ready 0.0" in lab.http_get("node1", "/metrics")[1]
            time.sleep(1.0)
        assert node.proc.poll() is None, lab.daemon_log("node1")
        waiting = [json.loads(line) for line in lab.daemon_log("node1", 200).splitlines()
                   if '"datastore_waiting"' in line]
        assert waiting and "10.99.0.2:2379" in waiting[0]["endpoints"], lab.daemon_log("node1")

        # The watchdog pings while not ready; READY=1 is not sent yet.
        t0 = listener.wait_for("WATCHDOG=1", 10)
        while listener.count("WATCHDOG=1") < 3:
            listener.pump(5)
            assert time.monotonic() - t0 < 10, listener.messages
        assert listener.count("READY=1") == 0, listener.messages

        lab.start_etcd()
        lab.wait_for(lambda: lab.ready("node1"), 60, "node1 ready once etcd is back")
        listener.wait_for("READY=1", 10)
        assert lab.status("node1")["datastore"]["connected"] is True
        assert listener.count("STOPPING=1") == 0

        assert node.proc is not None
        proc, node.proc = node.proc, None
        os.kill(proc.pid, signal.SIGTERM)
        try:
            assert proc.wait(30) == 0, lab.daemon_log("node1")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
        listener.wait_for("STOPPING=1", 5)
        ready_at = listener.wait_for("READY=1", 0)
        stopping_at = listener.wait_for("STOPPING=1", 0)
        assert ready_at < stopping_at
    finally:
        listener.close()


def test_idle_daemon_without_natoutgoing_maps_no_libnftables(lab: Lab) -> None:
    """issue 17: a node whose pools masquerade nothing makes no NAT table and never
    maps libnftables (+libnftnl, libgmp: 1.3 MiB RSS of an idle bgpd); the first
    natOutgoing pool brings both."""
    node = lab.start_daemon("node1")
    assert node.proc is not None
    ns = lab.nodes["node1"].ns

    def nat_action() -> str | None:
        return (lab.status("node1").get("dataplane") or {}).get("nat", {}).get("last_action")

    def nat_table() -> bool:
        return subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "table", "inet",
                               "podbgp-nat"], capture_output=True).returncode == 0

    def mapped() -> bool:
        with open(f"/proc/{node.proc.pid}/maps") as f:
            return "libnftables" in f.read()

    lab.wait_for(lambda: lab.ready("node1"), 60, "node1 ready")
    lab.wait_for(lambda: nat_action() == "not needed", 30, "the NAT pass")
    assert not nat_table() and not mapped(), lab.daemon_log("node1")
    lab.apply(POOL.replace("vxlanMode: Never", "vxlanMode: Never, natOutgoing: true"))
    lab.wait_for(nat_table, 30, "the NAT table for the natOutgoing pool")
    assert nat_action() == "created" and mapped()
