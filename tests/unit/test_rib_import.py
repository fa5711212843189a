"""Import policy: every rejection reason, BGPFilter semantics, max-prefix, re-evaluation."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rib import (
    LOCAL_PEER,
    FilterAction,
    FilterRule,
    FilterSource,
    MatchOperator,
    MaxPrefixAction,
    PeerKind,
    PeerPolicy,
    PeerRef,
    Pool,
    RejectReason,
    Rib,
    RibConfig,
)
from rib.path import Path

IBGP = PeerRef("10.1.0.2", 64512, "10.1.0.2", PeerKind.IBGP)
EBGP = PeerRef("10.1.0.3", 65001, "10.1.0.3", PeerKind.EBGP)
CONFIG = RibConfig(
    local_asn=64512,
    router_id="10.1.0.1",
    cluster_id="1.0.0.1",
    node_addresses=frozenset({"10.1.0.1"}),
    own_blocks=("10.244.0.0/26",),
    pools=(
        Pool("10.244.0.0/16"),
        Pool("10.250.0.0/16", disabled=True),
    ),
)


def rib_with(peer=IBGP, **policy_kw) -> tuple[Rib, PeerPolicy]:
    rib = Rib(CONFIG)
    policy = PeerPolicy(key=peer.address, peer=peer, **policy_kw)
    rib.peer_up(policy)
    return rib, policy


def p(prefix="10.244.1.0/26", peer=IBGP, **kw) -> Path:
    kw.setdefault("next_hop", peer.address)
    return Path(prefix=prefix, peer=peer, **kw)


REJECTIONS = [
    (p("10.244.1.0/28x"), RejectReason.INVALID_PREFIX),
    (p("10.244.1.1/26"), RejectReason.INVALID_PREFIX),  # host bits set
    (p("0.0.0.0/0"), RejectReason.DEFAULT_ROUTE),
    (p("10.244.0.0/26"), RejectReason.OWN_BLOCK),
    (p("10.244.0.32/27"), RejectReason.OWN_BLOCK),  # more specific of an own block
    (p(next_hop="10.1.0.1"), RejectReason.OWN_NEXT_HOP),
    (p(peer=EBGP, as_path=(65001, 64512, 65009)), RejectReason.AS_LOOP),
    (p(originator_id="10.1.0.1"), RejectReason.ORIGINATOR_LOOP),
    (p(cluster_list=("2.0.0.2", "1.0.0.1")), RejectReason.CLUSTER_LOOP),
    (p("192.168.0.0/24"), RejectReason.NOT_IN_POOL),
    (p("10.0.0.0/8"), RejectReason.SHORTER_THAN_POOL),
]


@pytest.mark.parametrize(("path", "reason"), REJECTIONS, ids=[r.value + str(i) for i, (_, r) in
                                                              enumerate(REJECTIONS)])
def test_each_rejection_reason(path, reason):
    rib, policy = rib_with(path.peer)
    ch = rib.announce(policy.key, [path])
    assert [(r.prefix, r.reason) for r in ch.rejected] == [(path.prefix, reason)]
    best = rib.best(path.prefix)
    assert best is None or best.peer is LOCAL_PEER  # own blocks stay ours
    assert not ch.best and not ch.kernel_add and not ch.exports
    assert rib.rejected(policy.key) == {path.prefix: reason}
    assert path.prefix in rib.adj_rib_in(policy.key)  # pre-policy keeps it
    assert path.prefix not in rib.adj_rib_in(policy.key, post_policy=True)


def test_accepts_inside_enabled_pool_and_own_as_on_ibgp():
    rib, policy = rib_with()
    ok = p(as_path=(64512,))  # own AS only matters on eBGP
    ch = rib.announce(policy.key, [ok])
    assert not ch.rejected
    assert rib.best(ok.prefix) == ok


def test_allowas_in_tolerates_configured_count():
    rib, policy = rib_with(EBGP, num_allowed_local_as=1)
    ch = rib.announce(policy.key, [p(peer=EBGP, as_path=(65001, 64512))])
    assert not ch.rejected
    ch = rib.announce(policy.key, [p("10.244.2.0/26", peer=EBGP, as_path=(65001, 64512, 64512))])
    assert [r.reason for r in ch.rejected] == [RejectReason.AS_LOOP]


def test_rejection_replaces_earlier_accepted_path_as_withdraw():
    rib, policy = rib_with()
    rib.announce(policy.key, [p()])
    assert rib.best("10.244.1.0/26") is not None
    ch = rib.announce(policy.key, [p(originator_id="10.1.0.1")])
    assert rib.best("10.244.1.0/26") is None
    assert [k.prefix for k in ch.kernel_remove] == ["10.244.1.0/26"]
    assert ch.best[0].new is None


def rule(action, cidr=None, op=None, **kw) -> FilterRule:
    return FilterRule(action=action, cidr=cidr, match_operator=op, **kw)


FILTERS = [
    # (rules, prefix, expected reason or None=accepted); safety rules run first.
    ((rule("Accept", "192.168.0.0/16", "In"),), "192.168.3.0/24", None),
    ((rule("Accept", "192.168.0.0/16", "In"),), "172.16.0.0/24", RejectReason.NOT_IN_POOL),
    ((rule("Reject", "10.244.1.0/26", "Equal"),), "10.244.1.0/26", RejectReason.FILTER_REJECT),
    ((rule("Reject", "10.244.1.0/26", "Equal"),), "10.244.2.0/26", None),
    ((rule("Reject", "10.244.1.0/26", "NotEqual"),), "10.244.2.0/26",
     RejectReason.FILTER_REJECT),
    ((rule("Reject", "10.244.128.0/17", "NotIn"),), "10.244.1.0/26", RejectReason.FILTER_REJECT),
    ((rule("Reject", "10.244.128.0/17", "NotIn"),), "10.244.200.0/26", None),
    # prefixLength applies with In: /26 outside 27..32 does not match -> pool decides
    ((rule("Reject", "10.244.0.0/16", "In", prefix_length_min=27),), "10.244.1.0/26", None),
    ((rule("Reject", "10.244.0.0/16", "In", prefix_length_min=27),), "10.244.1.0/27",
     RejectReason.FILTER_REJECT),
    ((rule("Accept", "192.168.0.0/16", "In", prefix_length_max=20),), "192.168.0.0/24",
     RejectReason.NOT_IN_POOL),
    # first match wins
    ((rule("Accept", "192.168.0.0/16", "In"), rule("Reject")), "192.168.1.0/24", None),
    ((rule("Reject"), rule("Accept", "192.168.0.0/16", "In")), "192.168.1.0/24",
     RejectReason.FILTER_REJECT),
    # interface rules only match kernel routes: never here
    ((rule("Reject", interface="eth*"),), "10.244.1.0/26", None),
    # source RemotePeers matches every imported path
    ((rule("Reject", source=FilterSource.REMOTE_PEERS),), "10.244.1.0/26",
     RejectReason.FILTER_REJECT),
    # a V6 list's rule does not match a v4 prefix
    ((rule("Reject", ip_version=6),), "10.244.1.0/26", None),
    # Accept never overrides a safety rule
    ((rule("Accept"),), "0.0.0.0/0", RejectReason.DEFAULT_ROUTE),
    ((rule("Accept"),), "10.244.0.0/26", RejectReason.OWN_BLOCK),
]


@pytest.mark.parametrize(("rules", "prefix", "reason"), FILTERS)
def test_bgpfilter_import_semantics(rules, prefix, reason):
    rib, policy = rib_with(import_filters=rules)
    ch = rib.announce(policy.key, [p(prefix)])
    assert [r.reason for r in ch.rejected] == ([reason] if reason else [])
    best = rib.best(prefix)
    assert (best is not None and best.peer is IBGP) == (reason is None)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(action="Accept", cidr="10.0.0.0/8"), "together"),
        (dict(action="Accept", cidr="10.0.0.1/8", match_operator="In"), "host bits"),
        (dict(action="Maybe"), "Maybe"),
        (dict(action="Accept", cidr="10.0.0.0/8", match_operator="Equal", prefix_length_min=9),
         "In/NotIn"),
        (dict(action="Accept", cidr="10.0.0.0/8", match_operator="In", prefix_length_min=4),
         "min 4"),
        (dict(action="Accept", cidr="10.0.0.0/8", match_operator="In", ip_version=6), "IPv6"),
    ],
)
def test_bad_filter_rule_is_a_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FilterRule(**kwargs)


@pytest.mark.parametrize("action", list(MaxPrefixAction))
def test_max_prefix(action):
    rib, policy = rib_with(max_prefixes=2, max_prefix_action=action)
    paths = [p(f"10.244.{i}.0/26") for i in range(1, 5)]
    ch = rib.announce(policy.key, paths)
    assert [r.reason for r in ch.rejected] == [RejectReason.MAX_PREFIX] * 2
    assert len(rib.loc_rib()) == 3  # two accepted + own block
    assert ch.teardown == ([policy.key] if action is MaxPrefixAction.TEARDOWN else [])
    # Re-announcing an accepted prefix does not count twice.
    ch = rib.announce(policy.key, [paths[0]])
    assert not ch.rejected
    # A withdraw frees room; a raised limit (policy change) accepts the rest.
    rib.withdraw(policy.key, [paths[0].prefix])
    ch = rib.announce(policy.key, [paths[2]])
    assert not ch.rejected and rib.best(paths[2].prefix) == paths[2]
    rib.set_peer_policy(PeerPolicy(key=policy.key, peer=IBGP, max_prefixes=10))
    assert rib.best(paths[3].prefix) == paths[3]


def test_policy_change_reevaluates_pre_policy_adj_rib_in():
    rib, policy = rib_with()
    inside, outside = p("10.244.1.0/26"), p("192.168.1.0/24")
    rib.announce(policy.key, [inside, outside])
    assert rib.best(outside.prefix) is None
    ch = rib.set_peer_policy(PeerPolicy(
        key=policy.key, peer=IBGP,
        import_filters=(rule(FilterAction.ACCEPT, "192.168.0.0/16", MatchOperator.IN),
                        rule(FilterAction.REJECT, "10.244.0.0/16", MatchOperator.IN)),
    ))
    assert rib.best(outside.prefix) == outside
    assert rib.best(inside.prefix) is None
    assert {k.prefix for k in ch.kernel_add} == {outside.prefix}
    assert {k.prefix for k in ch.kernel_remove} == {inside.prefix}
    assert [(r.prefix, r.reason) for r in ch.rejected] == [
        (inside.prefix, RejectReason.FILTER_REJECT)
    ]


def test_a_disabled_pool_keeps_routing():
    # Calico: `disabled` stops IPAM allocating from a pool; its pods keep their addresses
    # and their routes until recreated (the documented pool migration). Issue 13: podbgp
    # used to reject them on import.
    rib, policy = rib_with()
    ch = rib.announce(policy.key, [p("10.250.1.0/26")])
    assert not ch.rejected and [k.prefix for k in ch.kernel_add] == ["10.250.1.0/26"]


def test_config_change_reevaluates_all_peers():
    rib, policy = rib_with()
    rib.announce(policy.key, [p("10.251.1.0/26")])
    assert rib.best("10.251.1.0/26") is None
    more = RibConfig(**{**{f: getattr(CONFIG, f) for f in CONFIG.__dataclass_fields__},
                        "pools": (*CONFIG.pools, Pool("10.251.0.0/16"))})
    ch = rib.set_config(more)
    assert rib.best("10.251.1.0/26") is not None
    assert [k.prefix for k in ch.kernel_add] == ["10.251.1.0/26"]
    assert rib.set_config(more).best == []  # identical config: nothing


def test_unknown_peer_is_a_clear_error():
    rib = Rib(CONFIG)
    with pytest.raises(KeyError, match="unknown peer"):
        rib.announce("nope", [p()])


def test_counts_match_the_adj_ribs_through_rejections_and_withdrawals():
    rib, policy = rib_with()
    key = policy.key
    rib.announce(key, [p(), p("10.244.2.0/26"), p("0.0.0.0/0"), p("10.244.0.0/26")])
    rib.withdraw(key, ["10.244.2.0/26", "0.0.0.0/0"])
    rib.announce(key, [p("10.244.3.0/26", originator_id="10.1.0.1")])  # rejected: loop

    def expected():
        return (len(rib.adj_rib_in(key)), len(rib.adj_rib_in(key, post_policy=True)),
                len(rib.adj_rib_out(key)))

    assert rib.counts(key) == expected() == (3, 1, len(rib.adj_rib_out(key)))
    assert rib.path_count() == 3
    assert rib.counts("10.9.9.9") == (0, 0, 0)  # unknown peer: zeros, not an error


def test_batch_import_agrees_with_per_path_rules_across_shared_attribute_runs():
    """``import_reasons`` (one call per UPDATE, attribute rules once per run of
    shared attribute objects) gives exactly ``import_reason`` per path, also when
    a run of shared attributes is followed by paths with different ones."""
    from rib.path import paths_for
    from rib.policy import ImportContext, import_reason, import_reasons

    ctx = ImportContext(CONFIG)
    prefixes = ["10.244.1.0/26", "10.244.0.0/26", "10.250.1.0/26", "0.0.0.0/0",
                "10.244.1.1/26", "fd00::/64", "10.0.0.0/8", "10.244.3.0/26", "bad"]
    templates = [p(), p(next_hop="10.1.0.1"), p(originator_id="10.1.0.1"),
                 p(cluster_list=("1.0.0.1",)), p(peer=EBGP, as_path=(65001, 64512))]
    batch = []
    for t in templates + templates[::-1]:
        batch.extend(paths_for(prefixes, t))
    batch.extend(path for path, _ in REJECTIONS)
    for peer, rules in ((IBGP, ()), (EBGP, (rule("Accept", "10.0.0.0/8", "In"),)),
                        (IBGP, (rule("Reject", "10.244.3.0/26", "Equal"),))):
        policy = PeerPolicy(key=peer.address, peer=peer, import_filters=rules)
        want = [import_reason(path, policy, ctx) for path in batch]
        assert import_reasons(batch, policy, ctx) == want
        assert len(set(want)) >= 6  # the batch really exercises several rules


@pytest.mark.parametrize("text,want", [
    ("10.244.1.0/26", 26), ("0.0.0.0/0", 0), ("10.0.0.1/32", 32),
    ("10.244.1.1/26", -1),  # host bits
    ("10.244.01.0/26", -1), ("10.244.1.0/026", -1), ("10.244.1.0/33", -1),  # not canonical
    ("10.244.1.0", -1), ("fd00::/64", -1), (" 10.0.0.0/8", -1), ("10.0.0.0/", -1),
    ("0.0.0.0/\u0663", -1), ("10.0.0.0/+8", -1), ("10.0.0.0/8/8", -1), ("1.0.0.0/0", -1),
    ("10.0.0.0/8 ", -1), ("10.0.0.0/-0", -1),
])
def test_canonical_ipv4_len(text, want):
    from rib.inputs import canonical_ipv4_len

    assert canonical_ipv4_len(text) == want


# IPv4 prefix text, canonical or nearly: lengths 0-33, exploded (leading-zero) quads, signs,
# spaces and non-ASCII digits in the length, and digit/dot soup.
IPV4_PREFIX_TEXT = st.one_of(
    st.builds(lambda a, n: f"{a}/{n}", st.ip_addresses(v=4), st.integers(0, 33)),
    st.builds(lambda a, n: f"{a}/{n}", st.ip_addresses(v=4).map(lambda a: a.exploded),
              st.text("0123456789+- \u0663", max_size=4)),
    st.text("0123456789./", max_size=20),
)


@given(IPV4_PREFIX_TEXT)
def test_canonical_ipv4_len_is_ipaddress_canonical_text(text):
    # canonical: exactly the text ipaddress prints for the network it parses strictly
    import ipaddress

    from rib.inputs import canonical_ipv4_len

    try:
        net = ipaddress.IPv4Network(text, strict=True)
        want = net.prefixlen if str(net) == text else -1
    except ValueError:
        want = -1
    assert canonical_ipv4_len(text) == want


@given(IPV4_PREFIX_TEXT)
def test_parse_prefix_ipv4_is_the_dotted_quad_and_any_digit_length(text):
    # parse_prefix's IPv4 rule (the kernel-route builder and import filters run it per
    # prefix): a dotted quad without leading zeros, a length of digits up to 32 (also
    # "026" and non-ASCII digits, as before its canonical fast path), no host bits.
    import ipaddress

    from rib.inputs import parse_prefix

    addr, sep, plen_s = text.partition("/")
    want: object = ValueError
    if sep and plen_s.isdigit() and int(plen_s) <= 32:
        try:
            net = int(ipaddress.IPv4Address(addr))
        except ValueError:
            pass
        else:
            plen = int(plen_s)
            want = ValueError if net & ((1 << (32 - plen)) - 1) else (4, net, plen)
    try:
        got: object = parse_prefix(text)
    except ValueError:
        got = ValueError
    assert got == want


@given(st.lists(st.tuples(st.sampled_from([0x0AF40000, 0x0AFA0000, 0x0A000000, 0x0AF40040]),
                          st.integers(0, 32), st.integers(0, (1 << 16) - 1)),
                min_size=1, max_size=40))
def test_batch_import_agrees_at_pool_and_block_edges(items):
    # import_reasons' unrolled IPv4 containment (own blocks, pools) against import_reason's
    # ``contains``: prefixes equal to, inside, around and beside the pools and the block.
    import ipaddress

    from rib.path import paths_for
    from rib.policy import ImportContext, import_reason, import_reasons

    prefixes = []
    for base, plen, offset in items:
        net = (base | offset) & ~((1 << (32 - plen)) - 1) & 0xFFFFFFFF
        prefixes.append(f"{ipaddress.IPv4Address(net)}/{plen}")
    ctx = ImportContext(CONFIG)
    policy = PeerPolicy(key=IBGP.address, peer=IBGP)
    batch = paths_for(prefixes, p())
    assert import_reasons(batch, policy, ctx) == [import_reason(x, policy, ctx) for x in batch]
