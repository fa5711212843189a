"""Calico policy semantics, pure: v3 resources -> what Felix evaluates.

Owned by policy/. This is the conversion Calico's own data path does before
enforcement (``libcalico-go/lib/backend/syncersv1/updateprocessors/
{networkpolicyprocessor,globalnetworkpolicyprocessor,rules}.go``):

- a namespaced NetworkPolicy selects ``(<selector>) && projectcalico.org/
  namespace == '<ns>'``; a GlobalNetworkPolicy's ``namespaceSelector`` is
  AND-ed in with every label key prefixed ``pcns.`` (``all()`` meaning "any
  namespaced endpoint");
- a rule's ``selector``/``namespaceSelector`` become one endpoint selector:
  in a namespaced policy with no namespaceSelector, limited to the policy's
  namespace as soon as any selector field is used; ``notSelector`` is taken
  as written;
- ``serviceAccountSelector``/``serviceAccounts`` select by the ``pcsa.``
  labels and ``projectcalico.org/serviceaccount``;
- policies are evaluated by ``order`` (none = after every ordered policy),
  then by name; Kubernetes NetworkPolicies arrive as order-1000 Calico
  policies (config.k8s).

An endpoint's labels are its own over those its profiles apply
(``labelsToApply``), as in Felix. Everything here is immutable and hashable,
so selectors can key the sets the compiler builds.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from config import selector as sel
from config.k8s import (
    K8S_NAME_LABEL,
    NAME_LABEL,
    NAMESPACE_LABEL,
    NAMESPACE_LABEL_PREFIX,
    NAMESPACE_PROFILE_PREFIX,
    ORCHESTRATOR_LABEL,
)
from config.policy import (
    GlobalNetworkPolicy,
    NetworkPolicy,
    Profile,
    Rule,
    port_range,
    protocol_number,
)

SA_LABEL = "projectcalico.org/serviceaccount"
SA_LABEL_PREFIX = "pcsa."

INGRESS = "ingress"
EGRESS = "egress"
DIRECTIONS = (INGRESS, EGRESS)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


# ----------------------------------------------------------------- selectors


def parse(text: str | None) -> sel.Selector | None:
    if text is None or not text.strip():
        return None
    return sel.parse_selector(text)


def _map(s: sel.Selector, fn) -> sel.Selector:
    """Rebuild `s` bottom-up with ``fn`` applied to every leaf."""
    if isinstance(s, sel.Not):
        return sel.Not(_map(s.operand, fn))
    if isinstance(s, sel.And):
        return sel.And(tuple(_map(o, fn) for o in s.operands))
    if isinstance(s, sel.Or):
        return sel.Or(tuple(_map(o, fn) for o in s.operands))
    return fn(s)


def prefixed(s: sel.Selector, prefix: str, any_key: str) -> sel.Selector:
    """Every label key of `s` prefixed; ``all()`` -> has(any_key), ``global()`` ->
    !has(any_key) (Calico's parseSelectorAttachPrefix + its all()/global() rewrite)."""

    def leaf(x: sel.Selector) -> sel.Selector:
        if isinstance(x, sel.All):
            return sel.Has(any_key)
        if isinstance(x, sel.Global):
            return sel.Not(sel.Has(any_key))
        if isinstance(x, sel.Has):
            return sel.Has(prefix + x.key)
        if isinstance(x, sel.Compare):
            return sel.Compare(prefix + x.key, x.op, x.value)
        if isinstance(x, sel.In):
            return sel.In(prefix + x.key, x.values, x.negated)
        return x

    return _map(s, leaf)


def conj(*parts: sel.Selector | None) -> sel.Selector | None:
    """AND of the given selectors (None = absent); flattened, all() dropped."""
    items: list[sel.Selector] = []
    for p in parts:
        if p is None or isinstance(p, sel.All):
            continue
        items.extend(p.operands if isinstance(p, sel.And) else (p,))
    if not items:
        return None
    return items[0] if len(items) == 1 else sel.And(tuple(items))


def _ns_is(ns: str) -> sel.Selector:
    return sel.Compare(NAMESPACE_LABEL, "==", ns)


def entity_selector(selector: str | None, ns_selector: str | None, sa_names: Iterable[str],
                    sa_selector: str | None, not_selector: str | None,
                    namespace: str | None) -> sel.Selector | None:
    """Calico's getEndpointSelector for one side of a rule (None: no selector match)."""
    ns_sel: sel.Selector | None = None
    if ns_selector is not None and ns_selector.strip():
        ns_sel = prefixed(sel.parse_selector(ns_selector), NAMESPACE_LABEL_PREFIX, NAMESPACE_LABEL)
    elif namespace:
        ns_sel = _ns_is(namespace)
    sa = _service_accounts(tuple(sa_names), sa_selector)
    ep = conj(sa, parse(selector))
    if ns_sel is not None and (ep is not None or parse(not_selector) is not None
                               or (ns_selector is not None and ns_selector.strip())):
        return conj(ns_sel, ep) if ep is not None else ns_sel
    return ep


def _service_accounts(names: tuple[str, ...], selector: str | None) -> sel.Selector | None:
    parts: list[sel.Selector | None] = []
    if names:
        parts.append(sel.In(SA_LABEL, frozenset(names)))
    if selector is not None and selector.strip():
        parts.append(prefixed(sel.parse_selector(selector), SA_LABEL_PREFIX, SA_LABEL))
    return conj(*parts)


# --------------------------------------------------------------------- rules


@dataclass(frozen=True, slots=True)
class Ports:
    """Numeric ranges (merged, sorted) and named ports of one port list."""

    ranges: tuple[tuple[int, int], ...] = ()
    names: tuple[str, ...] = ()

    @classmethod
    def of(cls, ports: Iterable[int | str] | None) -> Ports | None:
        if not ports:
            return None
        ranges: list[tuple[int, int]] = []
        names: list[str] = []
        for p in ports:
            r = port_range(p)
            if r is None:
                names.append(str(p))
            else:
                ranges.append(r)
        merged: list[tuple[int, int]] = []
        for lo, hi in sorted(ranges):
            if merged and lo <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(hi, merged[-1][1]))
            else:
                merged.append((lo, hi))
        return cls(tuple(merged), tuple(sorted(set(names))))


@dataclass(frozen=True, slots=True)
class Side:
    nets: tuple[Network, ...] = ()
    not_nets: tuple[Network, ...] = ()
    selector: sel.Selector | None = None
    not_selector: sel.Selector | None = None
    ports: Ports | None = None
    not_ports: Ports | None = None


@dataclass(frozen=True, slots=True)
class NRule:
    """One rule as Felix evaluates it (selectors already namespaced)."""

    action: str  # Allow | Deny | Pass | Log
    ip_version: int | None = None
    protocol: int | None = None
    not_protocol: int | None = None
    icmp: tuple[int | None, int | None] | None = None  # (type, code)
    not_icmp: tuple[int | None, int | None] | None = None
    src: Side = Side()
    dst: Side = Side()


def _nets(items: Iterable[str] | None) -> tuple[Network, ...]:
    if not items:
        return ()
    nets = [ipaddress.ip_network(n, strict=False) for n in items]
    out: list[Network] = []
    for version in (4, 6):
        out.extend(ipaddress.collapse_addresses([n for n in nets if n.version == version]))
    return tuple(out)


def normalize_rule(rule: Rule, namespace: str | None) -> NRule:
    def side(ent) -> Side:
        sa = ent.service_accounts
        return Side(
            nets=_nets(ent.nets), not_nets=_nets(ent.not_nets),
            selector=entity_selector(ent.selector, ent.namespace_selector,
                                     (sa.names or ()) if sa else (),
                                     sa.selector if sa else None, ent.not_selector, namespace),
            not_selector=parse(ent.not_selector),
            ports=Ports.of(ent.ports), not_ports=Ports.of(ent.not_ports),
        )

    def icmp(f) -> tuple[int | None, int | None] | None:
        return None if f is None else (f.type, f.code)

    return NRule(
        action=rule.action,
        ip_version=rule.ip_version,
        protocol=None if rule.protocol is None else protocol_number(rule.protocol),
        not_protocol=None if rule.not_protocol is None else protocol_number(rule.not_protocol),
        icmp=icmp(rule.icmp), not_icmp=icmp(rule.not_icmp),
        src=side(rule.src), dst=side(rule.dst),
    )


# ------------------------------------------------------------------ policies


@dataclass(frozen=True, slots=True)
class NPolicy:
    """A policy as Felix evaluates it."""

    kind: str  # NetworkPolicy | GlobalNetworkPolicy
    namespace: str | None
    name: str
    order: float  # math.inf when unset
    selector: sel.Selector
    types: frozenset[str]  # {"ingress", "egress"}
    ingress: tuple[NRule, ...]
    egress: tuple[NRule, ...]
    host_only: bool = False  # doNotTrack/preDNAT: host endpoints only

    @property
    def id(self) -> str:
        return f"{self.namespace}/{self.name}" if self.namespace else self.name

    @property
    def sort_key(self) -> tuple[float, str]:
        return (self.order, self.id)

    def rules(self, direction: str) -> tuple[NRule, ...]:
        return self.ingress if direction == INGRESS else self.egress

    def applies(self, direction: str, labels: Mapping[str, str]) -> bool:
        return direction in self.types and not self.host_only and self.selector.matches(labels)


def normalize_policy(res: NetworkPolicy | GlobalNetworkPolicy) -> NPolicy:
    spec = res.spec
    ns = res.metadata.namespace if isinstance(res, NetworkPolicy) else None
    s = parse(spec.selector)
    host_only = False
    if isinstance(res, NetworkPolicy):
        s = conj(s, _ns_is(ns)) if ns else s
    else:
        if spec.namespace_selector and spec.namespace_selector.strip():
            s = conj(s, prefixed(sel.parse_selector(spec.namespace_selector),
                                 NAMESPACE_LABEL_PREFIX, NAMESPACE_LABEL))
        host_only = bool(spec.do_not_track or spec.pre_dnat)
    if spec.service_account_selector and spec.service_account_selector.strip():
        s = conj(s, prefixed(sel.parse_selector(spec.service_account_selector),
                             SA_LABEL_PREFIX, SA_LABEL))
    return NPolicy(
        kind=res.kind, namespace=ns, name=res.metadata.name,
        order=math.inf if spec.order is None else spec.order,
        selector=s if s is not None else sel.All(),
        types=frozenset(t.lower() for t in spec.types),
        ingress=tuple(normalize_rule(r, ns) for r in spec.ingress or ()),
        egress=tuple(normalize_rule(r, ns) for r in spec.egress or ()),
        host_only=host_only,
    )


@dataclass(frozen=True, slots=True)
class NProfile:
    name: str
    ingress: tuple[NRule, ...]
    egress: tuple[NRule, ...]
    labels: Mapping[str, str] = field(default_factory=dict)

    def rules(self, direction: str) -> tuple[NRule, ...]:
        return self.ingress if direction == INGRESS else self.egress


def normalize_profile(res: Profile) -> NProfile:
    spec = res.spec
    return NProfile(
        name=res.metadata.name,
        ingress=tuple(normalize_rule(r, None) for r in spec.ingress or ()),
        egress=tuple(normalize_rule(r, None) for r in spec.egress or ()),
        labels=MappingProxyType(dict(spec.labels_to_apply or {})),
    )


_ALLOW = NRule(action="Allow")


def implicit_profile(name: str) -> NProfile | None:
    """What a missing ``kns.<ns>`` profile stands for until the Namespace is applied.

    In a Calico cluster kube-controllers writes one for every namespace
    (allow-all rules, the namespace's name labels); podbgp has no API server
    to learn namespaces from, so a pod in a namespace nobody registered gets
    the same default. Other missing profiles have no rules (Felix: no match,
    drop).
    """
    if not name.startswith(NAMESPACE_PROFILE_PREFIX):
        return None
    ns = name[len(NAMESPACE_PROFILE_PREFIX):]
    return NProfile(name=name, ingress=(_ALLOW,), egress=(_ALLOW,),
                    labels=MappingProxyType({NAMESPACE_LABEL_PREFIX + NAME_LABEL: ns,
                                             NAMESPACE_LABEL_PREFIX + K8S_NAME_LABEL: ns}))


# ----------------------------------------------------------------- endpoints


@dataclass(frozen=True, slots=True)
class Endpoint:
    """The policy engine's view of one WorkloadEndpoint."""

    key: str  # "<namespace>/<name>"
    namespace: str | None
    node: str
    iface: str
    addrs: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]
    labels: Mapping[str, str]  # its own labels
    profiles: tuple[str, ...] = ()
    # named ports: (name, protocol number, port)
    ports: tuple[tuple[str, int, int], ...] = ()

    def own_labels(self) -> dict[str, str]:
        out = dict(self.labels)
        if self.namespace:
            out.setdefault(NAMESPACE_LABEL, self.namespace)
            out.setdefault(ORCHESTRATOR_LABEL, "k8s")
        return out


def effective_labels(ep: Endpoint, profiles: Mapping[str, NProfile]) -> Mapping[str, str]:
    """Labels the selectors see: profile labels, overridden by the endpoint's own."""
    out: dict[str, str] = {}
    for name in ep.profiles:
        prof = profiles.get(name) or implicit_profile(name)
        if prof is not None:
            out.update(prof.labels)
    out.update(ep.own_labels())
    return MappingProxyType(out)


def policies_for(policies: Iterable[NPolicy], labels: Mapping[str, str],
                 direction: str) -> list[NPolicy]:
    """The policies that apply to an endpoint with `labels`, in evaluation order."""
    return sorted((p for p in policies if p.applies(direction, labels)),
                  key=lambda p: p.sort_key)
