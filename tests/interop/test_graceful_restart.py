"""Graceful restart (RFC 4724) of podbgp against BIRD 2, no route ever missing.

BIRD 2 (eBGP, ``graceful restart on``, long restart time, exporting BGP routes to
its kernel) peers with one podbgp node that owns a pod block. The test kills
bgpd with SIGKILL (ExaBGP dies with it through PDEATHSIG: no NOTIFICATION, the
TCP session just drops) and starts it again. A sampler thread reads BOTH
kernels every ~50 ms through netlink for the whole restart:

- BIRD's kernel must keep podbgp's block (BIRD holds it as stale, then the
  restarted podbgp re-announces it before its End-of-RIB);
- podbgp's kernel must keep BIRD's routes (bgpd leaves them on exit, adopts
  them as stale on start, and sweeps only after BIRD's End-of-RIB).

Zero missing samples on either side are allowed.
"""

from __future__ import annotations

import ipaddress
import signal
import socket
import threading
import time

import pytest
from pyroute2 import IPRoute

from lab.harness import Lab
from tests.interop.conftest import (
    NODE_AS,
    Bird,
    kernel,
    peer_state,
    peer_yaml,
    require_interop_root,
    start_lab,
    wait,
)

pytestmark = [pytest.mark.root, pytest.mark.etcd, pytest.mark.slow]

NODE = "node1"
BIRD_ROUTES = ("10.244.101.0/26", "10.244.102.0/26")


class KernelSampler(threading.Thread):
    """Every ``interval`` s, check that ``expected`` prefixes are in a namespace's main
    table; records (time, missing) for each miss. Owned by the test that starts it."""

    def __init__(self, ns: str, expected: set[str], interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.ns, self.expected, self.interval = ns, set(expected), interval
        self.samples = 0
        self.misses: list[tuple[float, set[str]]] = []
        self.error: Exception | None = None
        self._halt = threading.Event()

    def run(self) -> None:
        try:
            with IPRoute(netns=self.ns, flags=0) as ipr:
                while not self._halt.is_set():
                    have = set()
                    for r in ipr.get_routes(family=socket.AF_INET, table=254):
                        dst = r.get_attr("RTA_DST")
                        if dst:
                            have.add(f"{dst}/{r['dst_len']}")
                    missing = self.expected - have
                    self.samples += 1
                    if missing:
                        self.misses.append((time.monotonic(), missing))
                    self._halt.wait(self.interval)
        except Exception as e:  # surfaced by stop()
            self.error = e

    def stop(self) -> None:
        self._halt.set()
        self.join(10)
        if self.error is not None:
            raise self.error


@pytest.fixture(scope="module")
def grlab():
    require_interop_root()
    with Lab(nodes=1) as lab:
        node_ip = lab.nodes[NODE].ip
        bird = Bird(lab, lab.add_external("tor", 1), 65001, [(node_ip, NODE_AS)],
                    graceful_restart=True, originate=list(BIRD_ROUTES))
        start_lab(lab, [NODE], resources=[
            peer_yaml("tor", peerIP=bird.ip, asNumber=65001, maxRestartTime="120s")])
        yield lab, bird


def test_sigkill_restart_keeps_every_route(grlab):
    lab, bird = grlab
    node = lab.nodes[NODE]
    pod = lab.add_pod(NODE)
    block = str(ipaddress.ip_network(f"{pod.ip}/26", strict=False))
    wait(lab, lambda: peer_state(lab, NODE, bird.ip) == "up" and bird.established(),
         "session up", 40, node=NODE)
    wait(lab, lambda: block in bird.kernel(), f"{block} in BIRD's kernel", 30, node=NODE)
    wait(lab, lambda: set(BIRD_ROUTES) <= kernel(lab, NODE), "BIRD's routes in podbgp's kernel",
         30, node=NODE)
    wait(lab, lambda: lab.status(NODE)["converged"], "podbgp converged", 30, node=NODE)
    # BIRD must have negotiated GR with us, else "keeps stale" would be luck.
    proto = bird.birdc("show", "protocols", "all", bird.proto_name(node.ip))
    assert "graceful restart" in proto.lower() or "GracefulRestart" in proto, proto

    on_bird = KernelSampler(bird.ext.ns, {block})
    on_node = KernelSampler(node.ns, set(BIRD_ROUTES))
    on_bird.start()
    on_node.start()
    try:
        t0 = time.monotonic()
        lab.stop_daemon(NODE, signal.SIGKILL)
        # BIRD sees the TCP session drop and goes into graceful restart (routes stale).
        wait(lab, lambda: not bird.established(), "BIRD notices the session drop", 20)
        proto_all = ("show", "protocols", "all", bird.proto_name(node.ip))
        helper = bird.birdc(*proto_all)
        assert "Neighbor graceful restart active" in helper, helper
        stale = bird.birdc("show", "route", block, "all")
        assert block in stale, stale
        time.sleep(0.5)  # a real outage: both sides run on their stale copies
        lab.start_daemon(NODE)
        wait(lab, lambda: lab.ready(NODE), "restarted bgpd ready", 30, node=NODE)
        wait(lab, lambda: peer_state(lab, NODE, bird.ip) == "up" and bird.established(),
             "session re-established", 40, node=NODE)
        wait(lab, lambda: lab.status(NODE)["converged"], "restarted podbgp converged", 40,
             node=NODE)
        # BIRD leaves helper mode at our End-of-RIB, sweeping what we did not re-send.
        wait(lab, lambda: "graceful restart active" not in bird.birdc(*proto_all),
             "BIRD got podbgp's End-of-RIB", 30, node=NODE)
        restart_s = time.monotonic() - t0
        time.sleep(1.0)  # keep sampling after both sides swept their stale routes
    finally:
        on_bird.stop()
        on_node.stop()

    assert on_bird.samples >= 20 and on_node.samples >= 20, (on_bird.samples, on_node.samples)
    assert not on_bird.misses, f"podbgp's block missing from BIRD's kernel: {on_bird.misses[:5]}"
    assert not on_node.misses, f"BIRD's routes missing from podbgp's kernel: {on_node.misses[:5]}"
    # After the restart everything is converged and fresh on both sides.
    assert block in bird.table(), bird.birdc("show", "route", "all")
    assert bird.kernel_route(block).get("gateway") == node.ip
    assert set(BIRD_ROUTES) <= kernel(lab, NODE)
    st = lab.status(NODE)
    assert st["routes"]["stale"] == 0, st["routes"]
    print(f"restart to converged: {restart_s:.2f}s, samples bird={on_bird.samples} "
          f"node={on_node.samples}")
