"""Two bgpd for one state directory or one routing table: the second refuses, the first
never notices.

What a new user ran into (issue 18): two daemons in two namespaces with the
default state directory; the second found the first's ExaBGP through the pid
file, killed it ("stale_exabgp_killed") and rewrote its config and socket, the
mesh never came up and nothing said why. Now the second exits at once with
status 1 and one line naming the holder's PID and the directory (or the
routing table), before it touches anything.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.harness import Lab, bin_path, run
from tests.conftest import require_binary, require_root
from tests.interop.conftest import bgpconf_yaml, peer_state, pool_yaml, wait

pytestmark = [pytest.mark.root, pytest.mark.etcd]


@pytest.fixture
def lab() -> Iterator[Lab]:
    require_root()
    require_binary("etcd")
    with Lab(nodes=2) as lab:
        lab.apply(pool_yaml())
        lab.apply(bgpconf_yaml(mesh=True))
        for n in lab.nodes.values():
            lab.register_node(n)
        yield lab


def _exabgp(state: str) -> tuple[int, float, int]:
    """(ExaBGP's PID from its pid file, the config's mtime, the socket's inode)."""
    d = Path(state) / "exabgp"
    return (int((d / "exabgp.pid").read_text()), (d / "exabgp.conf").stat().st_mtime,
            (d / "exabgp.sock").stat().st_ino)


def _second(lab: Lab, node: str, *args: str) -> tuple[int, list[str], float]:
    """Run a second bgpd to completion in ``node``'s namespace: (status, stderr lines, s)."""
    t0 = time.monotonic()
    r = run(bin_path("bgpd"), "--node", node, "--etcd-endpoints", lab.etcd_endpoint,
            "--http-listen", "127.0.0.1:9279", "--log-format", "json", *args,
            ns=lab.nodes[node].ns, check=False, timeout=60, env=lab.env(lab.nodes[node]))
    return r.returncode, r.stderr.strip().splitlines(), time.monotonic() - t0


def test_second_bgpd_refuses_and_the_first_keeps_running(lab: Lab) -> None:
    shared = str(lab.workdir / "shared-state")  # as if both used the default /run/podbgp
    lab.start_daemon("node1", "--state-dir", shared)
    wait(lab, lambda: lab.ready("node1"), "node1 ready", 30, node="node1")
    # Ready is about the kernel, not the speaker: ExaBGP starts on a config without
    # peers and the speaker writes the peer set once ExaBGP's channel is up (it never
    # rewrites the file while ExaBGP may be reading it), which can be after ready.
    # Only a config that already names node2 is the first daemon's settled one.
    conf = Path(shared) / "exabgp" / "exabgp.conf"
    n2 = lab.nodes["node2"].ip
    wait(lab, lambda: f"neighbor {n2} " in conf.read_text(), "node1's ExaBGP config has its "
         "peer", 30, node="node1")
    first_pid = lab.nodes["node1"].proc.pid
    before = _exabgp(shared)

    # 1. node2's daemon, in its own namespace, pointed at the same state directory.
    code, lines, took = _second(lab, "node2", "--state-dir", shared)
    assert code == 1 and len(lines) == 1, lines
    assert f"pid {first_pid}" in lines[0] and shared in lines[0], lines
    assert took < 30, took

    # 2. A second daemon beside node1's, with a state directory of its own: the routing
    # table is taken.
    code, lines, _ = _second(lab, "node1", "--state-dir", str(lab.workdir / "other"))
    assert code == 1 and len(lines) == 1, lines
    assert "routing table 254 protocol 201" in lines[0] and f"pid {first_pid}" in lines[0]

    # The first never noticed: same ExaBGP, same config file, same socket, still ready.
    assert _exabgp(shared) == before
    assert lab.nodes["node1"].proc.poll() is None and lab.ready("node1")
    log = lab.daemon_log("node1", 400)
    assert "stale_exabgp_killed" not in log and "exabgp_exited" not in log, log

    # With its own directory, as the message says, node2 starts and the mesh comes up.
    lab.start_daemon("node2")
    n1, n2 = lab.nodes["node1"].ip, lab.nodes["node2"].ip
    wait(lab, lambda: peer_state(lab, "node1", n2) == "up" and peer_state(lab, "node2", n1)
         == "up", "mesh up", 60, node="node2")
    assert _exabgp(shared)[0] == before[0]
