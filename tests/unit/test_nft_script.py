"""fib_sync.nft's ownership guard: which tables a script names, without nft.

The statement grammar follows nft(8) ("COMMAND OBJECT [FAMILY] TABLE ...",
the family defaulting to ip) and the shapes kube-proxy's nftables mode
sends through knftables (kubernetes/kubernetes pkg/proxy/nftables).
"""

from __future__ import annotations

import pytest

from fib_sync import nft
from fib_sync.nft import NotOwnedError, TableRef


@pytest.mark.parametrize(
    ("name", "owned"),
    [
        ("podbgp", True),
        ("podbgp-policy", True),
        ("podbgp_nat", True),
        ("podbgpx", False),  # a prefix match alone is not ownership
        ("calico-filter", False),
        ("kube-proxy", False),
        ("filter", False),
        ("", False),
    ],
)
def test_is_owned(name, owned):
    assert nft.is_owned(name) is owned


def test_tables_of_a_block_and_commands():
    script = """
    # a comment naming table inet filter must not count
    table inet podbgp-policy {
        set s { type ipv4_addr; elements = { 10.0.0.1 } }
        chain c { type filter hook forward priority 0; policy accept; }
    }
    flush chain inet podbgp-policy c
    add rule inet podbgp-policy c ip saddr @s counter accept comment "table ip filter {"
    add element inet podbgp-policy s { 10.0.0.2, 10.0.0.3 }
    delete set inet podbgp-policy old; add table ip6 podbgp-nat
    table podbgp-default { }
    add ct helper inet podbgp-policy ftp { type "ftp" protocol tcp; }
    """
    assert nft.tables_in_script(script) == [
        TableRef("inet", "podbgp-policy"),
        TableRef("inet", "podbgp-policy"),
        TableRef("inet", "podbgp-policy"),
        TableRef("inet", "podbgp-policy"),
        TableRef("inet", "podbgp-policy"),
        TableRef("ip6", "podbgp-nat"),
        TableRef("ip", "podbgp-default"),
        TableRef("inet", "podbgp-policy"),
    ]


@pytest.mark.parametrize(
    "script",
    [
        "flush ruleset",
        "list tables",
        "include \"/etc/nftables.conf\"",
        "define x = 1",
        "add table inet filter",
        "table ip nat { }",
        "table inet podbgp-policy { }\ndelete table inet calico-filter",
        "add rule ip kube-proxy chain accept",
        "add ct helper inet kube ftp { type \"ftp\" protocol tcp; }",
        "add table inet",
        "}",
    ],
)
def test_refused_before_nft_runs(script):
    with pytest.raises(NotOwnedError):
        nft.check_owned(script)


def test_refusal_names_the_table():
    with pytest.raises(NotOwnedError, match="table inet filter is not podbgp's"):
        nft.check_owned("add table inet podbgp-x\nadd table inet filter\n")


def test_refused_by_the_driver_without_running(tmp_path):
    # A binary that would record being run: it must never be called.
    marker = tmp_path / "ran"
    fake = tmp_path / "nft"
    fake.write_text(f"#!/bin/sh\ntouch {marker}\n")
    fake.chmod(0o755)
    d = nft.Nft(binary=str(fake))
    with pytest.raises(NotOwnedError):
        d.apply("flush ruleset")
    with pytest.raises(NotOwnedError):
        d.list_table("inet", "filter")
    with pytest.raises(NotOwnedError):
        d.delete_table("ip", "nat")
    assert not marker.exists()


def test_missing_binary_is_named():
    d = nft.Nft(binary="/nonexistent/nft")
    with pytest.raises(nft.NftError, match=r"cannot run '/nonexistent/nft'.*nftables"):
        d.apply("add table inet podbgp-x")


def _listing(handle: int, packets: int, comment: str = "r") -> dict:
    return {"nftables": [
        {"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
        {"table": {"family": "inet", "name": "podbgp-x", "handle": handle}},
        {"rule": {"family": "inet", "table": "podbgp-x", "chain": "c", "handle": handle + 3,
                  "comment": comment,
                  "expr": [{"counter": {"packets": packets, "bytes": packets * 60}},
                           {"accept": None}]}},
        {"set": {"family": "inet", "name": "s", "table": "podbgp-x", "handle": 9,
                 "elem": [{"elem": {"val": "10.0.0.1", "expires": 1000 - packets}}]}},
    ]}


def test_fingerprint_ignores_what_the_kernel_changes():
    a = nft.fingerprint(_listing(1, 0))
    assert a == nft.fingerprint(_listing(7, 12345))
    assert a != nft.fingerprint(_listing(1, 0, comment="other"))
    assert nft.fingerprint(None) is None
