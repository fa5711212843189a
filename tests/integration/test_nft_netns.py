"""fib_sync.nft against the real `nft` (Debian nftables 1.0.6) in throwaway
namespaces: atomic transactions, reading, tamper detection, ownership.

nft's all-or-nothing batch semantics are nft(8)'s ("nft -f" loads the file
as one transaction); the ``add``+``delete`` idiom for delete-if-present is
knftables' (kubernetes-sigs/knftables).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fib_sync.nft import Nft, NftError, NotOwnedError, TableState
from tests.conftest import REPO, require_binary

BASE = """
table inet podbgp-t {
    set s4 { type ipv4_addr; flags interval; elements = { 10.0.0.0/24 } }
    chain fw {
        type filter hook forward priority 0; policy accept;
        ct state established,related accept
        ct state invalid counter drop
        ip saddr @s4 tcp dport { 80, 8000-8080 } counter accept comment "r1"
    }
}
"""


@pytest.fixture
def drv(netns):
    require_binary("nft")
    return Nft(netns=netns)


def raw(ns: str, *args: str) -> str:
    return subprocess.run(["ip", "netns", "exec", ns, "nft", *args],
                          check=True, capture_output=True, text=True).stdout


def test_apply_and_read_back(drv):
    drv.apply(BASE)
    doc = drv.list_table("inet", "podbgp-t")
    kinds = [next(iter(o)) for o in doc["nftables"]]
    assert kinds.count("rule") == 3 and "set" in kinds and "chain" in kinds
    s4 = next(o["set"] for o in doc["nftables"] if "set" in o)
    assert s4["elem"] == [{"prefix": {"addr": "10.0.0.0", "len": 24}}]
    assert drv.exists("inet", "podbgp-t")


def test_failed_transaction_changes_nothing(drv, netns):
    drv.apply(BASE)
    before = drv.fingerprint("inet", "podbgp-t")
    bad = (
        "add element inet podbgp-t s4 { 10.9.9.9 }\n"
        "flush chain inet podbgp-t fw\n"
        "add rule inet podbgp-t fw ip saddr 10.0.0.1 jump nowhere\n"
    )
    with pytest.raises(NftError) as e:
        drv.apply(bad)
    # The error names the failing line and nft's reason.
    assert "jump nowhere" in (e.value.line or "")
    assert "nowhere" in str(e.value) or "No such file" in str(e.value)
    assert netns in str(e.value)
    # Nothing of the batch was applied: element not added, chain not flushed.
    assert drv.fingerprint("inet", "podbgp-t") == before
    assert "10.9.9.9" not in raw(netns, "list", "table", "inet", "podbgp-t")


def test_missing_table_reads_none_and_state(drv):
    assert drv.list_table("inet", "podbgp-t") is None
    assert drv.state("inet", "podbgp-t", None) is TableState.MISSING


def test_tamper_detected_handles_are_not_tampering(drv, netns):
    drv.apply(BASE)
    fp = drv.fingerprint("inet", "podbgp-t")
    assert drv.state("inet", "podbgp-t", fp) is TableState.OK
    # The same contents written again get new handles: still OK.
    drv.apply("delete table inet podbgp-t\n" + BASE)
    assert drv.state("inet", "podbgp-t", fp) is TableState.OK
    # Someone else inserts a rule into our chain: detected.
    raw(netns, "insert", "rule", "inet", "podbgp-t", "fw", "accept")
    assert drv.state("inet", "podbgp-t", fp) is TableState.TAMPERED
    # Or removes an element from our set.
    drv.apply("delete table inet podbgp-t\n" + BASE)
    raw(netns, "delete", "element", "inet", "podbgp-t", "s4", "{ 10.0.0.0/24 }")
    assert drv.state("inet", "podbgp-t", fp) is TableState.TAMPERED
    # Or deletes the table.
    raw(netns, "delete", "table", "inet", "podbgp-t")
    assert drv.state("inet", "podbgp-t", fp) is TableState.MISSING


def test_counters_moving_keep_the_fingerprint(drv, netns):
    drv.apply("table inet podbgp-t {\n chain out {\n type filter hook output priority 0;"
              " policy accept;\n counter accept\n }\n}\n")
    fp = drv.fingerprint("inet", "podbgp-t")
    # Traffic on the namespace's loopback moves the counter.
    subprocess.run(["ip", "netns", "exec", netns, "python3", "-c",
                    "import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM);"
                    "[s.sendto(b'x', ('127.0.0.1', 9)) for _ in range(5)]"], check=True)
    assert '"packets": 0' not in raw(netns, "-j", "list", "table", "inet", "podbgp-t")
    assert drv.fingerprint("inet", "podbgp-t") == fp


def test_other_tables_are_never_touched(drv, netns):
    raw(netns, "add", "table", "inet", "filter")
    raw(netns, "add", "chain", "inet", "filter", "keep")
    before = raw(netns, "list", "table", "inet", "filter")
    with pytest.raises(NotOwnedError):
        drv.apply("delete table inet filter")
    with pytest.raises(NotOwnedError):
        drv.apply("table inet podbgp-t { }\nflush ruleset")
    assert raw(netns, "list", "table", "inet", "filter") == before
    # The refused mixed script did not create our table either.
    assert not drv.exists("inet", "podbgp-t")
    drv.apply(BASE)
    drv.delete_table("inet", "podbgp-t")
    drv.delete_table("inet", "podbgp-t")  # idempotent
    assert not drv.exists("inet", "podbgp-t")
    assert raw(netns, "list", "table", "inet", "filter") == before


def test_check_does_not_apply(drv):
    drv.check(BASE)
    assert not drv.exists("inet", "podbgp-t")
    with pytest.raises(NftError, match="check"):
        drv.check("table inet podbgp-t { chain c { ip saddr 10.0.0.300 accept } }")


def test_table_exists_asks_netlink_and_agrees_with_the_listing(drv, netns):
    """`table_exists` (nf_tables' GETTABLE over netlink, no library, no process) gives
    `exists`' answer, family and name both counted."""
    raw(netns, "add", "table", "ip", "podbgp-t")
    raw(netns, "add", "table", "inet", "podbgp-u")
    for family, name in (("ip", "podbgp-t"), ("inet", "podbgp-t"), ("ip6", "podbgp-t"),
                         ("inet", "podbgp-u"), ("ip", "podbgp-u"), ("inet", "podbgp-tt"),
                         ("netdev", "podbgp-t")):
        assert drv.table_exists(family, name) == drv.exists(family, name) == (
            (family, name) in (("ip", "podbgp-t"), ("inet", "podbgp-u"))), (family, name)
    with pytest.raises(NotOwnedError):
        drv.table_exists("ip", "filter")
    with pytest.raises(NftError, match="podbgp-no-such-ns"):
        Nft(netns="podbgp-no-such-ns").table_exists("inet", "podbgp-t")


def test_missing_namespace_is_named():
    require_binary("nft")
    drv = Nft(netns="podbgp-no-such-ns")
    with pytest.raises(NftError, match="podbgp-no-such-ns"):
        drv.apply("add table inet podbgp-t")


IN_PROCESS = """
import json, sys
from fib_sync.nft import Nft, NftError
d = Nft()
assert d.in_process, "libnftables did not load"
base = sys.stdin.read()
d.apply(base)
doc = d.list_table("inet", "podbgp-t")
out = {"rules": sum(1 for o in doc["nftables"] if "rule" in o)}
try:
    d.apply("add element inet podbgp-t s4 { 10.9.9.9 }\\n"
            "add rule inet podbgp-t fw ip saddr 10.0.0.1 jump nowhere\\n")
except NftError as e:
    out["error_line"] = e.line
out["after"] = "10.9.9.9" in json.dumps(d.list_table("inet", "podbgp-t"))
d.check("add rule inet podbgp-t fw accept")
out["checked_only"] = sum(1 for o in d.list_table("inet", "podbgp-t")["nftables"] if "rule" in o)
out["missing"] = d.list_table("inet", "podbgp-none")
print(json.dumps(out))
"""


def test_in_process_library_behaves_like_the_binary(netns):
    # Inside the namespace (as the agent runs on a node) the driver uses
    # libnftables: same transactions, same errors naming the failing line.
    require_binary("nft")
    r = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", IN_PROCESS],
                       input=BASE, capture_output=True, text=True, cwd=str(REPO))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out == {"rules": 3, "error_line": "add rule inet podbgp-t fw ip saddr 10.0.0.1 "
                   "jump nowhere", "after": False, "checked_only": 3, "missing": None}
