"""TCP MD5 (RFC 2385) between podbgp and BIRD 2.

One podbgp node reads BGPPeer passwords from ``--secrets-dir DIR/<name>/<key>``
(a mounted Kubernetes secret's layout). Two BIRD 2 peers: one configured with
the same password (must establish), one with a different password (must never
establish: the kernel drops every segment whose MD5 signature is wrong). The
same daemon runs both sessions, so a failure of the second is the password's.
"""

from __future__ import annotations

import time

import pytest

from lab.harness import Lab
from tests.interop.conftest import (
    NODE_AS,
    Bird,
    peer_state,
    peer_yaml,
    require_interop_root,
    start_lab,
    wait,
)

pytestmark = [pytest.mark.root, pytest.mark.etcd, pytest.mark.slow]

NODE = "node1"
GOOD_PW = "s3cret;with }odd{ chars"
PODBGP_PW_FOR_BAD = "the-password-podbgp-has"
BIRD_PW_BAD = "a-different-password"


@pytest.fixture(scope="module")
def md5lab():
    require_interop_root()
    with Lab(nodes=1) as lab:
        secrets = lab.workdir / "secrets"
        for name, value in (("tor-good", GOOD_PW), ("tor-bad", PODBGP_PW_FOR_BAD)):
            (secrets / name).mkdir(parents=True)
            (secrets / name / "password").write_text(value + "\n")
        node_ip = lab.nodes[NODE].ip
        good = Bird(lab, lab.add_external("good", 1), 65001, [(node_ip, NODE_AS)],
                    password=GOOD_PW, originate=["10.244.101.0/26"])
        bad = Bird(lab, lab.add_external("bad", 2), 65002, [(node_ip, NODE_AS)],
                   password=BIRD_PW_BAD, originate=["10.244.102.0/26"])
        start_lab(lab, [NODE], "--secrets-dir", str(secrets), resources=[
            peer_yaml("md5-good", peerIP=good.ip, asNumber=65001,
                      password={"secretKeyRef": {"name": "tor-good", "key": "password"}}),
            peer_yaml("md5-bad", peerIP=bad.ip, asNumber=65002,
                      password={"secretKeyRef": {"name": "tor-bad", "key": "password"}}),
        ])
        yield lab, good, bad


def test_md5_match_establishes(md5lab):
    lab, good, _ = md5lab
    wait(lab, lambda: peer_state(lab, NODE, good.ip) == "up", "MD5 session up on podbgp", 40,
         node=NODE)
    wait(lab, good.established, "BIRD says Established", 20, node=NODE)
    wait(lab, lambda: "10.244.101.0/26" in lab.route_prefixes(NODE, "201"),
         "route over the MD5 session in podbgp's kernel", 20, node=NODE)
    # The password is never shown.
    assert GOOD_PW not in lab.http_get(NODE, "/status")[1]
    assert GOOD_PW not in lab.daemon_log(NODE, tail=100_000)


def test_md5_mismatch_never_establishes(md5lab):
    lab, good, bad = md5lab
    # Make sure the daemon is running its sessions (the good one is up), then watch.
    wait(lab, lambda: peer_state(lab, NODE, good.ip) == "up", "MD5 session up on podbgp", 40,
         node=NODE)
    assert peer_state(lab, NODE, bad.ip) is not None, "the mismatched peer is not planned"
    deadline = time.monotonic() + 8.0
    while time.monotonic() < deadline:
        assert peer_state(lab, NODE, bad.ip) != "up", "mismatched MD5 session came up"
        assert not bad.established(), "BIRD established despite the MD5 mismatch"
        time.sleep(0.25)
    assert "10.244.102.0/26" not in lab.route_prefixes(NODE, "201")
    assert PODBGP_PW_FOR_BAD not in lab.daemon_log(NODE, tail=100_000)
