"""From policies, profiles and endpoints to the node's nftables `Ruleset` (pure).

Owned by policy/. One `Engine` per agent; the agent feeds it changes
(`update_policy`/`update_profile`/`update_endpoint`) and asks for the
`ruleset()`; nothing here does I/O, so the whole enforcement design is
tested without a kernel (and its output checked with ``nft -c``).

The table (``inet podbgp-policy``) evaluates forwarded packets of this node's
workloads the way Felix does (Calico's rule semantics):

    forward (hook)   iifname vmap @from-wl  -> fw-<iface>   egress of the sender
                     oifname vmap @to-wl    -> tw-<iface>   ingress of the receiver
                     "cali*" not in @programmed             dropped: no chains yet
    fw-/tw-<iface>   ct established,related accept; ct invalid drop;
                     jump to each applying policy's chain, by order then name;
                     if any applied and none decided: drop (default deny);
                     else goto the profile chain fp-/tp-<iface>
    po-/pi-<policy>  the policy's rules: Allow ends the direction (egress:
                     goto to-wl-stage, which runs the receiver's ingress;
                     ingress: accept), Deny drops, Pass skips the remaining
                     policies (goto pass-out/pass-in -> the endpoint's
                     profile chain), Log logs and goes on
    fp-/tp-<iface>   jump to each profile's chain; none allowed: drop
    ro-/ri-<profile> the profile's rules (Pass there: next profile)

Selector matches are named sets of addresses (``s-<hash>-4``/``-6``), so a
pod appearing or leaving changes set elements, not rules. Named ports are
sets of address . protocol . port. Traffic from the node to its own pods
(OUTPUT) and from them to the node (INPUT) is not in the forward path and is
never blocked, as Kubernetes requires (kubelet probes).

The agent's promise that a new pod gets its chains before its first packet
passes rests on the "not programmed" drop: the CNI plugin names host
interfaces with a prefix the agent knows (``cali`` by default, as Calico),
and any such interface not yet in @programmed drops forwarded traffic both
ways, until the agent has written the pod's chains (ms after its
WorkloadEndpoint appears).
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from config import selector as sel
from policy.rules import (
    EGRESS,
    INGRESS,
    Endpoint,
    NPolicy,
    NProfile,
    NRule,
    Ports,
    Side,
    effective_labels,
    implicit_profile,
)
from policy.ruleset import ChainDef, MapDef, Ruleset, SetDef

DEFAULT_TABLE = "podbgp-policy"
DEFAULT_IFACE_PREFIXES = ("cali",)
LOG_PREFIX = "podbgp-policy: "

FORWARD = "forward"
TO_WL_STAGE = "to-wl-stage"
PASS_IN = "pass-in"
PASS_OUT = "pass-out"
FROM_MAP = "from-wl"
TO_MAP = "to-wl"
FROM_PROF_MAP = "from-wl-prof"
TO_PROF_MAP = "to-wl-prof"
PROGRAMMED = "programmed"

_SAFE_IFACE = re.compile(r"[A-Za-z0-9_.-]{1,15}")
_ALL = sel.All()


def _h(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _comment(text: str) -> str:
    text = text.replace('"', "'")
    return f'comment "{text[:120]}"'


def chain_suffix(iface: str) -> str:
    """Endpoint chains are named after the interface when it is a plain name."""
    return iface if _SAFE_IFACE.fullmatch(iface) else _h(iface)


@dataclass(frozen=True, slots=True)
class _Verdicts:
    allow: str
    pass_: str


# Verdicts per chain kind (see the module docstring).
_POLICY_IN = _Verdicts(allow="accept", pass_=f"goto {PASS_IN}")
_POLICY_OUT = _Verdicts(allow=f"goto {TO_WL_STAGE}", pass_=f"goto {PASS_OUT}")
_PROFILE_IN = _Verdicts(allow="accept", pass_="return")
_PROFILE_OUT = _Verdicts(allow=f"goto {TO_WL_STAGE}", pass_="return")


class Engine:
    """Incremental state -> `Ruleset`. See the module docstring for the design."""

    def __init__(self, node: str, table: str = DEFAULT_TABLE,
                 iface_prefixes: Iterable[str] = DEFAULT_IFACE_PREFIXES) -> None:
        self.node = node
        self.table = table
        self.iface_prefixes = tuple(iface_prefixes)
        self.policies: dict[str, NPolicy] = {}
        self.profiles: dict[str, NProfile] = {}
        self.endpoints: dict[str, Endpoint] = {}
        self._labels: dict[str, Mapping[str, str]] = {}
        # local endpoint key -> direction -> ids of the policies that apply
        self._applied: dict[str, dict[str, set[str]]] = {}
        # selector -> endpoint keys it matches (tracked selectors only)
        self._members: dict[sel.Selector, set[str]] = {}
        self._dirty_eps: set[str] = set()
        self._dirty_pols: set[str] = set()
        self._dirty_profiles: set[str] = set()
        self._chain_cache: dict[tuple[int, str], tuple[object, tuple[str, ...], set]] = {}
        # selector (or (selector, port name)) -> (v4, v6) elements of its sets; dropped
        # when a member joins, leaves or changes, so unchanged sets keep their objects
        self._elements: dict[object, tuple[frozenset[str], frozenset[str]]] = {}

    # ------------------------------------------------------------- inputs

    def update_policy(self, pid: str, policy: NPolicy | None) -> None:
        if policy is None:
            self.policies.pop(pid, None)
        else:
            self.policies[pid] = policy
        self._dirty_pols.add(pid)

    def update_profile(self, name: str, profile: NProfile | None) -> None:
        if profile is None:
            self.profiles.pop(name, None)
        else:
            self.profiles[name] = profile
        self._dirty_profiles.add(name)

    def update_endpoint(self, key: str, ep: Endpoint | None) -> None:
        if ep is None:
            self.endpoints.pop(key, None)
        else:
            self.endpoints[key] = ep
        self._dirty_eps.add(key)

    # ------------------------------------------------------------ queries

    def local_endpoints(self) -> list[Endpoint]:
        # an endpoint without a host interface has nothing to hook chains on
        return sorted((e for e in self.endpoints.values() if e.node == self.node and e.iface),
                      key=lambda e: e.key)

    def labels_of(self, key: str) -> Mapping[str, str]:
        self._refresh()
        return self._labels.get(key, {})

    def applied(self, key: str, direction: str) -> list[NPolicy]:
        """Policies applying to endpoint `key` (any node) in evaluation order."""
        self._refresh()
        labels = self._labels.get(key)
        if labels is None:
            return []
        return sorted((p for p in self.policies.values() if p.applies(direction, labels)),
                      key=lambda p: p.sort_key)

    # ------------------------------------------------------------ updating

    def _refresh(self) -> None:
        """Bring labels, applied-policy sets and selector members up to date."""
        if self._dirty_profiles:
            for key, ep in self.endpoints.items():
                if self._dirty_profiles.intersection(ep.profiles):
                    self._dirty_eps.add(key)
            self._dirty_profiles.clear()
        dirty_eps, self._dirty_eps = self._dirty_eps, set()
        for key in dirty_eps:
            ep = self.endpoints.get(key)
            if ep is None:
                self._labels.pop(key, None)
                self._applied.pop(key, None)
            else:
                self._labels[key] = effective_labels(ep, self.profiles)
                if ep.node == self.node:
                    labels = self._labels[key]
                    self._applied[key] = {
                        d: {pid for pid, p in self.policies.items() if p.applies(d, labels)}
                        for d in (INGRESS, EGRESS)}
                else:
                    self._applied.pop(key, None)
            for s, members in self._members.items():
                was = key in members
                if ep is not None and s.matches(self._labels[key]):
                    members.add(key)
                else:
                    members.discard(key)
                if was or key in members:  # joined, left, or a member changed
                    self._elements.pop(s, None)
                    for k in [k for k in self._elements
                              if isinstance(k, tuple) and k[0] == s]:
                        del self._elements[k]
        dirty_pols, self._dirty_pols = self._dirty_pols, set()
        for pid in dirty_pols:
            p = self.policies.get(pid)
            for key, by_dir in self._applied.items():
                for d in (INGRESS, EGRESS):
                    if p is not None and p.applies(d, self._labels[key]):
                        by_dir[d].add(pid)
                    else:
                        by_dir[d].discard(pid)

    def _track(self, s: sel.Selector) -> set[str]:
        members = self._members.get(s)
        if members is None:
            members = {k for k, lab in self._labels.items() if s.matches(lab)}
            self._members[s] = members
        return members

    # ------------------------------------------------------------ ruleset

    def ruleset(self) -> Ruleset:
        self._refresh()
        rs = Ruleset(self.table)
        used_selectors: set[sel.Selector] = set()
        used_named: set[tuple[sel.Selector, str]] = set()
        local = [e for e in self.local_endpoints()]

        def rules_chain(name: str, owner: object, rules: tuple[NRule, ...], verdicts: _Verdicts,
                        label: str) -> None:
            cache_key = (id(owner), name)
            hit = self._chain_cache.get(cache_key)
            if hit is not None and hit[0] is owner:
                lines, refs = hit[1], hit[2]
            else:
                refs = set()
                out: list[str] = []
                for i, r in enumerate(rules):
                    out.extend(compile_rule(r, verdicts, f"{label}[{i}]", refs))
                lines = tuple(out)
                self._chain_cache[cache_key] = (owner, lines, refs)
            for kind, item in refs:
                (used_selectors if kind == "s" else used_named).add(item)
            rs.chains[name] = ChainDef(name, lines)

        active_pols: set[tuple[str, str]] = set()
        active_profiles: set[str] = set()
        fw_map: dict[str, str] = {}
        tw_map: dict[str, str] = {}
        fp_map: dict[str, str] = {}
        tp_map: dict[str, str] = {}
        programmed: set[str] = set()
        for ep in local:
            sfx = chain_suffix(ep.iface)
            applied = self._applied.get(ep.key, {INGRESS: set(), EGRESS: set()})
            for direction, ep_chain, prof_chain, pol_prefix, prof_prefix in (
                    (EGRESS, f"fw-{sfx}", f"fp-{sfx}", "po-", "ro-"),
                    (INGRESS, f"tw-{sfx}", f"tp-{sfx}", "pi-", "ri-")):
                pols = sorted((self.policies[p] for p in applied[direction]),
                              key=lambda p: p.sort_key)
                lines = [f"ct state established,related counter accept {_comment('established')}",
                         f"ct state invalid counter drop {_comment('invalid')}"]
                for p in pols:
                    active_pols.add((p.id, direction))
                    lines.append(f"jump {pol_prefix}{_h(p.id)} {_comment(f'policy {p.id}')}")
                if pols:
                    lines.append(f"counter drop {_comment('default deny: no policy allowed')}")
                else:
                    lines.append(f"goto {prof_chain} {_comment('no policy applies: profiles')}")
                rs.chains[ep_chain] = ChainDef(ep_chain, tuple(lines))
                plines = []
                for name in ep.profiles:
                    active_profiles.add(name)
                    plines.append(f"jump {prof_prefix}{_h(name)} {_comment(f'profile {name}')}")
                plines.append(f"counter drop {_comment('default deny: no profile allowed')}")
                rs.chains[prof_chain] = ChainDef(prof_chain, tuple(plines))
            fw_map[ep.iface] = f"jump fw-{sfx}"
            tw_map[ep.iface] = f"jump tw-{sfx}"
            fp_map[ep.iface] = f"jump fp-{sfx}"
            tp_map[ep.iface] = f"jump tp-{sfx}"
            programmed.add(f'"{ep.iface}"')

        for pid, direction in sorted(active_pols):
            p = self.policies[pid]
            if direction == INGRESS:
                rules_chain(f"pi-{_h(pid)}", p, p.ingress, _POLICY_IN, f"{pid} ingress")
            else:
                rules_chain(f"po-{_h(pid)}", p, p.egress, _POLICY_OUT, f"{pid} egress")
        for name in sorted(active_profiles):
            prof = self.profiles.get(name) or implicit_profile(name)
            h = _h(name)
            if prof is None:  # a profile that does not exist: no rules, no match
                rs.chains[f"ri-{h}"] = ChainDef(f"ri-{h}")
                rs.chains[f"ro-{h}"] = ChainDef(f"ro-{h}")
                continue
            rules_chain(f"ri-{h}", prof, prof.ingress, _PROFILE_IN, f"profile {name} ingress")
            rules_chain(f"ro-{h}", prof, prof.egress, _PROFILE_OUT, f"profile {name} egress")

        # Sets: selector matches and named ports.
        keep = used_selectors | {s for s, _ in used_named}
        for s in list(self._members):
            if s not in keep:
                del self._members[s]
        for k in list(self._elements):
            if (k[0] if isinstance(k, tuple) else k) not in keep:
                del self._elements[k]
        for k in [k for k, v in self._chain_cache.items() if k[1] not in rs.chains
                  or rs.chains[k[1]].rules is not v[1]]:
            del self._chain_cache[k]
        for s in used_selectors:
            if s not in self._elements:
                self._elements[s] = self._addrs(self._track(s))
            v4, v6 = self._elements[s]
            base = selector_set(s)
            rs.sets[f"{base}-4"] = SetDef(f"{base}-4", "ipv4_addr", v4)
            rs.sets[f"{base}-6"] = SetDef(f"{base}-6", "ipv6_addr", v6)
        for s, port_name in used_named:
            if (s, port_name) not in self._elements:
                self._elements[(s, port_name)] = self._named(self._track(s), port_name)
            v4, v6 = self._elements[(s, port_name)]
            base = named_port_set(s, port_name)
            rs.sets[f"{base}-4"] = SetDef(f"{base}-4", "ipv4_addr . inet_proto . inet_service", v4)
            rs.sets[f"{base}-6"] = SetDef(f"{base}-6", "ipv6_addr . inet_proto . inet_service", v6)

        # Dispatch.
        rs.sets[PROGRAMMED] = SetDef(PROGRAMMED, "ifname", frozenset(programmed))
        for name, elements in ((FROM_MAP, fw_map), (TO_MAP, tw_map),
                               (FROM_PROF_MAP, fp_map), (TO_PROF_MAP, tp_map)):
            rs.maps[name] = MapDef(name, "ifname : verdict", elements)
        unprogrammed = []
        for prefix in self.iface_prefixes:
            for io in ("iifname", "oifname"):
                unprogrammed.append(
                    f'{io} "{prefix}*" {io} != @{PROGRAMMED} counter drop '
                    f"{_comment('workload interface not programmed yet')}")
        rs.chains[FORWARD] = ChainDef(FORWARD, (
            f"iifname vmap @{FROM_MAP}",
            f"oifname vmap @{TO_MAP}",
            *unprogrammed,
        ), header="type filter hook forward priority filter; policy accept;")
        rs.chains[TO_WL_STAGE] = ChainDef(TO_WL_STAGE, (
            f"oifname vmap @{TO_MAP}",
            *[u for u in unprogrammed if u.startswith("oifname")],
            f"counter accept {_comment('egress allowed, receiver not a local workload')}",
        ))
        rs.chains[PASS_OUT] = ChainDef(PASS_OUT, (
            f"iifname vmap @{FROM_PROF_MAP}", f"counter drop {_comment('pass: no endpoint')}"))
        rs.chains[PASS_IN] = ChainDef(PASS_IN, (
            f"oifname vmap @{TO_PROF_MAP}", f"counter drop {_comment('pass: no endpoint')}"))
        return rs

    def _addrs(self, members: Iterable[str]) -> tuple[frozenset[str], frozenset[str]]:
        v4: set[str] = set()
        v6: set[str] = set()
        for key in members:
            for a in self.endpoints[key].addrs:
                (v4 if a.version == 4 else v6).add(str(a))
        return frozenset(v4), frozenset(v6)

    def _named(self, members: Iterable[str], name: str) -> tuple[frozenset[str], frozenset[str]]:
        v4: set[str] = set()
        v6: set[str] = set()
        for key in members:
            ep = self.endpoints[key]
            for pname, proto, port in ep.ports:
                if pname != name:
                    continue
                for a in ep.addrs:
                    (v4 if a.version == 4 else v6).add(f"{a} . {proto} . {port}")
        return frozenset(v4), frozenset(v6)


def selector_set(s: sel.Selector) -> str:
    return f"s-{_h(str(s))}"


def named_port_set(s: sel.Selector, name: str) -> str:
    return f"n-{_h(str(s) + '|' + name)}"


# ------------------------------------------------------------- rule compiler


def _families(r: NRule) -> list[int]:
    fams = {4, 6}
    if r.ip_version:
        fams &= {r.ip_version}
    if r.protocol == 1:
        fams &= {4}
    elif r.protocol == 58:
        fams &= {6}
    # Felix's FilterRuleToIPVersion: a rule with CIDRs (negated or not) of
    # only one family is rendered only for that family.
    for side in (r.src, r.dst):
        for nets in (side.nets, side.not_nets):
            if nets:
                fams &= {n.version for n in nets}
    return sorted(fams)


def _set_text(items: Iterable[str]) -> str:
    items = list(items)
    return items[0] if len(items) == 1 else "{ " + ", ".join(items) + " }"


def _ranges(ranges: tuple[tuple[int, int], ...]) -> str:
    return _set_text(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in ranges)


def _port_alternatives(ports: Ports | None, side_sel: sel.Selector | None, fam: int, addr: str,
                       port: str, refs: set) -> list[str | None]:
    """The OR of a port list as alternative match fragments (None: no port match)."""
    if ports is None:
        return [None]
    ip = "ip" if fam == 4 else "ip6"
    alts: list[str | None] = []
    if ports.ranges:
        alts.append(f"th {port} {_ranges(ports.ranges)}")
    for name in ports.names:
        s = side_sel if side_sel is not None else _ALL
        refs.add(("n", (s, name)))
        alts.append(f"{ip} {addr} . meta l4proto . th {port} @{named_port_set(s, name)}-{fam}")
    return alts


def compile_rule(r: NRule, verdicts: _Verdicts, label: str, refs: set) -> list[str]:
    """nft rule lines for one rule (one per address family it can match, and per
    alternative of a port list with named ports). `refs` collects the sets used."""
    if r.action == "Allow":
        verdict = verdicts.allow
    elif r.action == "Deny":
        verdict = "drop"
    elif r.action == "Pass":
        verdict = verdicts.pass_
    else:
        verdict = f'log prefix "{LOG_PREFIX}"'
    out: list[str] = []
    for fam in _families(r):
        ip = "ip" if fam == 4 else "ip6"
        icmp = "icmp" if fam == 4 else "icmpv6"
        parts: list[str] = []
        if r.protocol is not None:
            parts.append(f"meta l4proto {r.protocol}")
        if r.not_protocol is not None:
            parts.append(f"meta l4proto != {r.not_protocol}")
        side_alts: list[list[str | None]] = []
        for side, addr, port in ((r.src, "saddr", "sport"), (r.dst, "daddr", "dport")):
            parts.extend(_side_matches(side, fam, ip, addr, refs))
            # notPorts: every excluded port must not match (AND of negations).
            if side.not_ports is not None:
                if side.not_ports.ranges:
                    parts.append(f"th {port} != {_ranges(side.not_ports.ranges)}")
                for name in side.not_ports.names:
                    s = side.selector if side.selector is not None else _ALL
                    refs.add(("n", (s, name)))
                    parts.append(f"{ip} {addr} . meta l4proto . th {port} != "
                                 f"@{named_port_set(s, name)}-{fam}")
            side_alts.append(_port_alternatives(side.ports, side.selector, fam, addr, port, refs))
        if r.icmp is not None:
            t, c = r.icmp
            parts.append(f"{icmp} type {t}")
            if c is not None:
                parts.append(f"{icmp} code {c}")
        if r.not_icmp is not None:
            t, c = r.not_icmp
            if c is None:
                parts.append(f"{icmp} type != {t}")
            else:
                parts.append(f"{icmp} type . {icmp} code != {{ {t} . {c} }}")
        for src_alt in side_alts[0]:
            for dst_alt in side_alts[1]:
                match = parts + [a for a in (src_alt, dst_alt) if a is not None]
                line = " ".join([*match, "counter", verdict, _comment(label)])
                if line not in out:  # a family-neutral match is emitted once
                    out.append(line)
    return out


def _side_matches(side: Side, fam: int, ip: str, addr: str, refs: set) -> list[str]:
    parts = []
    nets = [str(n) for n in side.nets if n.version == fam]
    if nets:
        parts.append(f"{ip} {addr} {_set_text(nets)}")
    not_nets = [str(n) for n in side.not_nets if n.version == fam]
    if not_nets:
        parts.append(f"{ip} {addr} != {_set_text(not_nets)}")
    if side.selector is not None:
        refs.add(("s", side.selector))
        parts.append(f"{ip} {addr} @{selector_set(side.selector)}-{fam}")
    if side.not_selector is not None:
        refs.add(("s", side.not_selector))
        parts.append(f"{ip} {addr} != @{selector_set(side.not_selector)}-{fam}")
    return parts


def endpoint_from_parts(key: str, namespace: str | None, node: str, iface: str,
                        networks: Iterable[str], labels: Mapping[str, str],
                        profiles: Iterable[str] = (),
                        ports: Iterable[tuple[str, int, int]] = ()) -> Endpoint:
    """An `Endpoint` from WorkloadEndpoint fields (ipNetworks as CIDRs)."""
    addrs = []
    for n in networks:
        net = ipaddress.ip_network(n, strict=False)
        if net.num_addresses == 1:
            addrs.append(net.network_address)
    return Endpoint(key=key, namespace=namespace, node=node, iface=iface, addrs=tuple(addrs),
                    labels=dict(labels), profiles=tuple(profiles), ports=tuple(ports))
