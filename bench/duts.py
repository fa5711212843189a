"""Devices under test for the convergence benchmark: podbgp, BIRD 1.6, BIRD 2, FRR.

Owned by bench/. Each ``start_<dut>`` runs the daemon inside namespace `ns`
(local address DUT_IP, AS DUT_AS), with one eBGP neighbour INJ_IP (AS INJ_AS)
that it connects to, importing everything the neighbour sends into the
kernel's main table. Returns the PIDs whose resident memory is the DUT's.
"""

from __future__ import annotations

import argparse
import os
import shutil
import textwrap
import time

from bench.common import BIRD1, Netns, bin_path

DUT_IP, INJ_IP = "172.31.0.1", "172.31.0.2"
DUT_AS, INJ_AS = 64512, 65001
# podbgp's pod-pool import policy only accepts routes inside an IPPool: the
# benchmark's routes are /26 blocks of 10.0.0.0/8 (bench.common.prefixes).
POOL = "10.0.0.0/8"

def podbgp_resources(node: str, address: str, asn: int, peers: list[tuple[str, str, int]],
                     node_bgp: str = "") -> str:
    """A file datastore for one podbgp node: the pool, BGPConfiguration (no mesh), the
    Node (``address`` with its prefix length; ``node_bgp``: more of its spec.bgp, e.g.
    ", routeReflectorClusterID: ...") and a BGPPeer per (name, peerIP, asNumber)."""
    docs = [f"""\
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {{name: bench-pool}}
spec: {{cidr: {POOL}, blockSize: 26, ipipMode: Never, vxlanMode: Never, natOutgoing: false}}
---
apiVersion: projectcalico.org/v3
kind: BGPConfiguration
metadata: {{name: default}}
spec: {{nodeToNodeMeshEnabled: false, asNumber: {asn}}}
---
apiVersion: projectcalico.org/v3
kind: Node
metadata: {{name: {node}}}
spec: {{bgp: {{ipv4Address: {address}, asNumber: {asn}{node_bgp}}}}}
"""]
    docs += [f"""\
apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata: {{name: {name}}}
spec: {{peerIP: {ip}, asNumber: {peer_as}}}
""" for name, ip, peer_as in peers]
    return "---\n".join(docs)


PODBGP_CONFIG = podbgp_resources("dut", f"{DUT_IP}/24", DUT_AS, [("injector", INJ_IP, INJ_AS)])


def start_podbgp(env: Netns, ns: str, *extra: str, environ: dict | None = None) -> list[int]:
    conf = env.workdir / "podbgp.yaml"
    conf.write_text(PODBGP_CONFIG)
    proc = env.spawn(ns, [bin_path("bgpd"), "--node", "dut", "--datastore", "file",
                          "--config-file", str(conf), "--log-format", "json",
                          "--log-level", "warning", "--state-dir", str(env.workdir / "state"),
                          "--convergence-timeout", "600", *extra], "dut.log", env=environ)
    return [proc.pid]  # + its ExaBGP child: rss_tree


def start_podbgp_relay(env: Netns, ns: str) -> list[int]:
    """podbgp with ExaBGP's API process a relay again, and ssl in ExaBGP's process
    (launch groups 'channel' and 'lean' off): the same run's measure of those two
    levers (issue 17)."""
    return start_podbgp(env, ns, environ={**os.environ,
                                          "PODBGP_EXABGP_UNPATCHED": "channel,lean"})


def _bird(env: Netns, ns: str, binary: str, conf_text: str) -> list[int]:
    conf = env.workdir / "bird.conf"
    conf.write_text(textwrap.dedent(conf_text))
    proc = env.spawn(ns, [binary, "-f", "-c", str(conf), "-s", str(env.workdir / "bird.ctl"),
                          "-P", str(env.workdir / "bird.pid")], "dut.log")
    return [proc.pid]


def start_bird1(env: Netns, ns: str) -> list[int]:
    return _bird(env, ns, str(BIRD1), f"""
        router id {DUT_IP};
        protocol device {{ scan time 10; }}
        protocol kernel {{ persist; scan time 60; import none; export all; }}
        protocol bgp inj {{
            local as {DUT_AS}; neighbor {INJ_IP} as {INJ_AS};
            import all; export none; connect delay time 1;
        }}
    """)


def start_bird2(env: Netns, ns: str) -> list[int]:
    return _bird(env, ns, shutil.which("bird") or "/usr/sbin/bird", f"""
        router id {DUT_IP};
        protocol device {{ scan time 10; }}
        protocol kernel {{ persist; scan time 60; ipv4 {{ import none; export all; }}; }}
        protocol bgp inj {{
            local as {DUT_AS}; neighbor {INJ_IP} as {INJ_AS}; connect delay time 1;
            ipv4 {{ import all; export none; }};
        }}
    """)


def start_frr(env: Netns, ns: str) -> list[int]:
    run = env.workdir / "frr"
    run.mkdir()
    (run / "zebra.conf").write_text("hostname dut\n")
    (run / "bgpd.conf").write_text(textwrap.dedent(f"""\
        hostname dut
        router bgp {DUT_AS}
         bgp router-id {DUT_IP}
         no bgp ebgp-requires-policy
         no bgp network import-check
         neighbor {INJ_IP} remote-as {INJ_AS}
         address-family ipv4 unicast
          neighbor {INJ_IP} activate
         exit-address-family
        """))
    shutil.chown(run, "frr", "frr")
    for f in run.iterdir():
        shutil.chown(f, "frr", "frr")
    zserv = str(run / "zserv.api")
    common = ["--vty_socket", str(run), "-z", zserv]
    zebra = env.spawn(ns, ["/usr/lib/frr/zebra", "-f", str(run / "zebra.conf"),
                           "-i", str(run / "zebra.pid"), *common], "zebra.log")
    # bgpd needs zebra's socket; zebra creates it within milliseconds
    for _ in range(500):
        if os.path.exists(zserv):
            break
        if zebra.poll() is not None:
            raise RuntimeError(f"zebra exited: {env.log('zebra.log')}")
        time.sleep(0.01)
    else:
        raise RuntimeError("zebra did not create its zserv socket")
    bgpd = env.spawn(ns, ["/usr/lib/frr/bgpd", "-f", str(run / "bgpd.conf"),
                          "-i", str(run / "bgpd.pid"), "-p", "0", *common], "bgpd.log")
    return [zebra.pid, bgpd.pid]


DUTS = {"podbgp": start_podbgp, "bird1": start_bird1, "bird2": start_bird2, "frr": start_frr,
        "podbgp-relay": start_podbgp_relay}
LABELS = {"podbgp": "podbgp", "bird1": "BIRD 1.6", "bird2": "BIRD 2", "frr": "FRR",
          "podbgp-relay": "podbgp+relay"}


def parse_duts_and_counts(ap: argparse.ArgumentParser, duts: str,
                          counts: str) -> tuple[list[str], list[int]]:
    """``--dut`` (comma-separated names of DUTS) and ``--k`` (comma-separated route
    counts) of a benchmark; anything else is a usage error naming it."""
    names = [d.strip() for d in duts.split(",") if d.strip()]
    bad = [d for d in names if d not in DUTS]
    if bad:
        ap.error(f"--dut: unknown {', '.join(bad)} (known: {', '.join(DUTS)})")
    try:
        ks = [int(x) for x in counts.split(",")]
    except ValueError:
        ap.error(f"--k: {counts!r} is not a comma-separated list of numbers")
    return names, ks
