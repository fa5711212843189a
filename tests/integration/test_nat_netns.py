"""natOutgoing (fib_sync.nat) with the real `nft` and real traffic in
throwaway namespaces.

Semantics under test are Felix's (felix/rules/nat.go MakeNatOutgoingRule:
``-m set --match-set cali40masq-ipam-pools src -m set ! --match-set
cali40all-ipam-pools dst -j MASQUERADE``; masq_mgr.go fills the sets): from
a natOutgoing pool to outside ALL pools (disabled ones too) is masqueraded,
pool to pool never is.

    pod ns  (10.244.1.5, default via the node)
      |  veth
    node ns  (10.244.1.1 on podside, 203.0.113.1/24 on uplink, ip_forward)
      |  veth
    outside ns (203.0.113.2/24): a TCP server that reports the source it sees
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

from fib_sync.nat import FAMILY, TABLE, NatSpec, NatSyncer, NatTable, sets_script, table_script
from fib_sync.nft import Nft
from tests.conftest import require_binary

pytestmark = pytest.mark.root


def sh(ns: str, *args: str, check: bool = True) -> str:
    r = subprocess.run(["ip", "netns", "exec", ns, *args], capture_output=True, text=True)
    if check and r.returncode:
        raise RuntimeError(f"{' '.join(args)}: {r.stderr}")
    return r.stdout


@pytest.fixture
def topo(netns_factory):
    require_binary("nft")
    pod, node, out = netns_factory("pbp"), netns_factory("pbn"), netns_factory("pbo")
    subprocess.run(["ip", "-n", node, "link", "add", "podside", "type", "veth", "peer", "name",
                    "eth0", "netns", pod], check=True)
    subprocess.run(["ip", "-n", node, "link", "add", "uplink", "type", "veth", "peer", "name",
                    "eth0", "netns", out], check=True)
    for ns, cmds in (
        (pod, [["addr", "add", "10.244.1.5/24", "dev", "eth0"], ["link", "set", "eth0", "up"],
               ["route", "add", "default", "via", "10.244.1.1"]]),
        (node, [["addr", "add", "10.244.1.1/24", "dev", "podside"],
                ["link", "set", "podside", "up"],
                ["addr", "add", "203.0.113.1/24", "dev", "uplink"],
                ["link", "set", "uplink", "up"]]),
        (out, [["addr", "add", "203.0.113.2/24", "dev", "eth0"], ["link", "set", "eth0", "up"],
               ["route", "add", "10.244.0.0/16", "via", "203.0.113.1"]]),
    ):
        for c in cmds:
            subprocess.run(["ip", "-n", ns, *c], check=True)
    sh(node, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    return pod, node, out


def source_seen(pod: str, out: str, port: int) -> str:
    """Connect from the pod to the outside server; the address the server saw."""
    server = subprocess.Popen(
        ["ip", "netns", "exec", out, sys.executable, "-c",
         "import socket\n"
         "s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
         f"s.bind(('203.0.113.2',{port}));s.listen(1);s.settimeout(5);print('ok',flush=True)\n"
         "c,a=s.accept();c.sendall(a[0].encode());c.close()\n"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        server.stdout.readline()
        return sh(pod, sys.executable, "-c",
                  "import socket\n"
                  f"c=socket.create_connection(('203.0.113.2',{port}),timeout=5)\n"
                  "print(c.recv(100).decode())\n").strip()
    finally:
        server.kill()
        server.wait()


POOLS = [("10.244.0.0/16", True), ("10.250.0.0/16", False), ("fd00:10::/64", True)]


def test_scripts_are_one_transaction_each() -> None:
    spec = NatSpec.from_pools([*POOLS, ("10.244.0.0/17", False)])  # nested: collapsed
    assert spec.pools4 == ("10.244.0.0/16", "10.250.0.0/16") and spec.masq4 == ("10.244.0.0/16",)
    assert spec.masq6 == ("fd00:10::/64",)
    script = table_script(spec)
    assert script.startswith(f"add table {FAMILY} {TABLE}\ndelete table {FAMILY} {TABLE}\n")
    assert "ip saddr @masq4 ip daddr != @pools4 counter masquerade" in script
    new = NatSpec.from_pools([("10.244.0.0/16", False), ("10.250.0.0/16", False)])
    assert sets_script(spec, new) == (
        f"flush set {FAMILY} {TABLE} masq4\n"
        f"flush set {FAMILY} {TABLE} pools6\n"
        f"flush set {FAMILY} {TABLE} masq6\n")
    with pytest.raises(ValueError, match=r"10\.244\.0\.1/16"):
        NatSpec.from_pools([("10.244.0.1/16", True)])


def test_masquerade_follows_natoutgoing_and_pod_to_pod_is_never_masqueraded(topo) -> None:
    pod, node, out = topo
    table = NatTable(Nft(netns=node))
    assert source_seen(pod, out, 7101) == "10.244.1.5"  # no table: routed as is
    assert table.sync(NatSpec.from_pools(POOLS)) == "created"
    assert source_seen(pod, out, 7102) == "203.0.113.1"  # natOutgoing: the node's address
    # The outside network becomes a pool (disabled, say): traffic to it is pod to pod.
    assert table.sync(NatSpec.from_pools([*POOLS, ("203.0.113.0/24", False)])) == "sets"
    assert source_seen(pod, out, 7103) == "10.244.1.5"
    # natOutgoing off: the pod's own address again. Only the sets changed.
    assert table.sync(NatSpec.from_pools([("10.244.0.0/16", False)])) == "sets"
    assert source_seen(pod, out, 7104) == "10.244.1.5"
    assert (table.stats.table_writes, table.stats.set_updates) == (1, 2)


def test_tampering_repaired_restart_adopts_and_foreign_tables_untouched(topo, workdir) -> None:
    pod, node, out = topo
    state = workdir / "nat.json"
    sh(node, "nft", "add", "table", "ip", "someone-else")
    sh(node, "nft", "add", "chain", "ip", "someone-else", "c", "{ type nat hook postrouting "
       "priority 50; policy accept; }")
    before_other = sh(node, "nft", "list", "table", "ip", "someone-else")
    spec = NatSpec.from_pools(POOLS)
    t1 = NatTable(Nft(netns=node), state)
    assert t1.sync(spec) == "created"
    assert t1.sync(spec) == "unchanged"
    # A restarted daemon finds the table exactly as it left it: nothing is written.
    t2 = NatTable(Nft(netns=node), state)
    t2.load_state()
    handle = json.loads(sh(node, "nft", "-j", "list", "table", FAMILY, TABLE))["nftables"][1]
    assert t2.sync(spec) == "adopted" and t2.stats.table_writes == 0
    assert json.loads(sh(node, "nft", "-j", "list", "table", FAMILY, TABLE))["nftables"][1] == handle
    # Someone flushes our chain: repaired by the check.
    sh(node, "nft", "flush", "chain", FAMILY, TABLE, "postrouting")
    assert source_seen(pod, out, 7111) == "10.244.1.5"
    assert t2.check(spec) == "repaired" and t2.stats.repairs == 1
    assert source_seen(pod, out, 7112) == "203.0.113.1"
    # Someone deletes the table: repaired.
    sh(node, "nft", "delete", "table", FAMILY, TABLE)
    assert t2.check(spec) == "repaired" and t2.stats.repairs == 2
    assert t2.check(spec) == "unchanged"
    # Counters ticking is not tampering (the fingerprint leaves them out).
    assert source_seen(pod, out, 7113) == "203.0.113.1"
    assert t2.check(spec) == "unchanged"
    assert sh(node, "nft", "list", "table", "ip", "someone-else") == before_other
    # The state file says what was last written; while the table was changed
    # behind a stopped daemon, the next start rewrites it.
    sh(node, "nft", "add", "rule", FAMILY, TABLE, "postrouting", "accept")
    t3 = NatTable(Nft(netns=node), state)
    t3.load_state()
    assert t3.sync(spec) == "repaired"


def test_syncer_checks_periodically_and_stop_leaves_the_table(topo) -> None:
    pod, node, out = topo

    async def go():
        s = NatSyncer(netns=node, check_interval=0.2)
        await s.start()
        assert await s.set_desired(NatSpec.from_pools(POOLS)) == "created"
        sh(node, "nft", "delete", "table", FAMILY, TABLE)
        for _ in range(50):
            await asyncio.sleep(0.05)
            if s.last_action == "repaired":
                break
        assert s.stats.repairs == 1 and s.last_action == "repaired"
        await s.stop()

    asyncio.run(go())
    assert source_seen(pod, out, 7121) == "203.0.113.1"  # still masquerading after stop


class CountingNft(Nft):
    """The real driver, counting the commands it ran (through libnftables or `nft`)."""

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.commands = 0

    def _nft(self, *a, **kw) -> str:
        self.commands += 1
        return super()._nft(*a, **kw)


def tables(ns: str) -> str:
    return sh(ns, "nft", "list", "tables")


NO_MASQ = NatSpec.from_pools([("10.244.0.0/16", False), ("10.250.0.0/16", False)])


def test_no_natoutgoing_pool_makes_no_table_and_runs_no_nft(topo, workdir) -> None:
    """issue 17: with no pool to masquerade and no table of ours, sync asks the kernel
    (netlink) and does nothing else; a pool turned natOutgoing makes the table; turned
    off again, the table stays with its masquerade sets emptied (never flushed)."""
    pod, node, out = topo
    nft = CountingNft(netns=node)
    table = NatTable(nft, workdir / "nat.json")
    assert table.sync(NO_MASQ) == "not needed" and table.check(NO_MASQ) == "not needed"
    assert nft.commands == 0 and TABLE not in tables(node)
    assert table.stats.table_writes == 0 and not (workdir / "nat.json").exists()
    assert table.sync(NatSpec.from_pools(POOLS)) == "created"
    assert source_seen(pod, out, 7131) == "203.0.113.1"
    assert table.sync(NO_MASQ) == "sets"  # the stale masquerade CIDRs go, the table stays
    assert source_seen(pod, out, 7132) == "10.244.1.5"
    assert TABLE in tables(node) and table.check(NO_MASQ) == "unchanged"
    # Deleted by someone while nothing is masqueraded: nothing to repair ...
    sh(node, "nft", "delete", "table", FAMILY, TABLE)
    assert table.check(NO_MASQ) == "not needed" and table.stats.repairs == 0
    # ... and natOutgoing later creates it (a creation, not a repair).
    assert table.sync(NatSpec.from_pools(POOLS)) == "created" and table.stats.repairs == 0
    assert source_seen(pod, out, 7133) == "203.0.113.1"


def test_table_left_by_a_previous_run_is_adopted_and_its_masquerade_removed(topo,
                                                                          workdir) -> None:
    pod, node, out = topo
    state = workdir / "nat.json"
    t1 = NatTable(Nft(netns=node), state)
    assert t1.sync(NatSpec.from_pools(POOLS)) == "created"
    # Restarted with no natOutgoing pool any more: the table is there, so it is ours to
    # keep right: masquerade sets emptied in place (no rewrite of the table).
    t2 = NatTable(Nft(netns=node), state)
    t2.load_state()
    assert t2.sync(NO_MASQ) == "sets" and t2.stats.table_writes == 0
    assert source_seen(pod, out, 7141) == "10.244.1.5"
    # Without a state file (it was lost): rewritten whole, masquerading nothing.
    t3 = NatTable(Nft(netns=node))
    assert t3.sync(NatSpec.from_pools(POOLS)) == "created"
    t4 = NatTable(Nft(netns=node))
    assert t4.sync(NO_MASQ) == "created" and TABLE in tables(node)
    assert source_seen(pod, out, 7142) == "10.244.1.5"


def test_idle_nat_table_maps_no_libnftables(netns_factory) -> None:
    """issue 17: in its own namespace (the daemon's case) the driver would run nft
    in-process; with nothing to masquerade libnftables is never mapped (1.3 MiB RSS of
    an idle bgpd), and the first natOutgoing pool maps it."""
    require_binary("nft")
    ns = netns_factory("pbl")
    code = (
        "from fib_sync.nat import NatSpec, NatTable\n"
        "from fib_sync.nft import Nft\n"
        "def mapped():\n"
        "    return 'libnftables' in open('/proc/self/maps').read()\n"
        "t = NatTable(Nft())\n"
        "print('=', t.sync(NatSpec.from_pools([('10.244.0.0/16', False)])), mapped())\n"
        "print('=', t.sync(NatSpec.from_pools([('10.244.0.0/16', True)])), mapped(),"
        " t.nft.in_process)\n")
    out = [ln[2:] for ln in sh(ns, sys.executable, "-c", code).splitlines()
           if ln.startswith("= ")]  # (structlog's lines are printed too)
    assert out[0] == "not needed False", out
    assert out[1] == "created True True", out
