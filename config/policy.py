"""Calico's security-policy resources: NetworkPolicy, GlobalNetworkPolicy, Profile.

Owned by config/. Shapes and validation follow projectcalico/calico
``api/pkg/apis/projectcalico/v3/{networkpolicy,globalnetworkpolicy,profile,
policy_common}.go`` and the rules of ``libcalico-go/lib/validator/v3``
(validateRule, validateEntityRule, validateNetworkPolicy...) plus the CEL
rules on those types:

- a Rule's numeric ports need ``protocol`` TCP, UDP or SCTP; any port needs a
  protocol that has ports when a protocol is given;
- ``icmp``/``notICMP`` need protocol ICMP/ICMPv6, ``code`` needs ``type``;
  ICMP goes with ``ipVersion: 4`` and ICMPv6 with 6;
- ``nets``/``notNets`` of one rule are all IPv4 or all IPv6, agree with
  ``ipVersion``, and a negated catch-all (``notNets: [0.0.0.0/0]``) is refused;
- ``global()`` only as a whole EntityRule ``namespaceSelector``;
- ``types`` defaults from the rules present (Ingress; Egress if only egress
  rules; both if both) and is stored defaulted, as Calico stores it.

podbgp enforces policy on workload endpoints with nftables (policy/), so
rules that need parts of Calico it does not have are refused with a clear
reason rather than silently enforced differently: ``http`` matches
(application-layer policy), ``services`` matches (Kubernetes Services), tiers
other than ``default``. ``doNotTrack``/``preDNAT``/``applyOnForward`` of a
GlobalNetworkPolicy concern host endpoints only, which podbgp has none of;
they are kept and never select a workload.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from typing import Annotated, Any, Literal

from config.lite import BeforeValidator, Field, field_serializer, field_validator, model_validator
from config.model import (
    Int,
    Metadata,
    Str,
    _Model,
    _Resource,
    check_labels,
    field_error,
)
from config.selector import Global, SelectorError, parse_selector

__all__ = [
    "PROTOCOL_NUMBERS",
    "EntityRule",
    "GlobalNetworkPolicy",
    "ICMPFields",
    "NetworkPolicy",
    "Profile",
    "Rule",
    "port_range",
    "protocol_number",
]

# Calico's protocol names (numorstring.Protocol), matched case-insensitively.
PROTOCOL_NUMBERS: dict[str, int] = {
    "TCP": 6, "UDP": 17, "ICMP": 1, "ICMPv6": 58, "SCTP": 132, "UDPLite": 136,
}
_PORT_PROTOCOLS = {6, 17, 132}

_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_SUBDOMAIN = _LABEL + r"(\." + _LABEL + r")*"
# libcalico-go validator: networkPolicyNameRegex / globalNetworkPolicyNameRegex.
_NP_NAME = re.compile(rf"({_LABEL})(\.{_LABEL})?|(knp|ossg)\.default\.({_SUBDOMAIN})")
_GNP_NAME = re.compile(rf"({_LABEL}\.)?{_LABEL}")
_NAMESPACE = re.compile(_LABEL)
# Kubernetes IsValidPortName (IANA service name): what Calico's portName checks.
_PORT_NAME = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?")


# ------------------------------------------------------------------ scalar types


def _protocol(value: Any) -> int | str:
    if isinstance(value, bool):
        raise ValueError("protocol must be TCP, UDP, ICMP, ICMPv6, SCTP, UDPLite or 1-255")
    if isinstance(value, int):
        if not 1 <= value <= 255:
            raise ValueError("protocol number must be 1-255")
        return value
    if isinstance(value, str):
        for name in PROTOCOL_NUMBERS:
            if name.lower() == value.lower():
                return name
        if value.isdigit():
            return _protocol(int(value))
    raise ValueError("protocol must be TCP, UDP, ICMP, ICMPv6, SCTP, UDPLite or 1-255")


Protocol = Annotated[int | str, BeforeValidator(_protocol)]


def protocol_number(p: int | str) -> int:
    return p if isinstance(p, int) else PROTOCOL_NUMBERS[p]


def _port(value: Any) -> int | str:
    """A port as Calico writes it: 80, "80", "8000:8080", or a named port."""
    if isinstance(value, bool):
        raise ValueError("port must be a number, 'min:max' or a port name")
    if isinstance(value, int):
        if not 1 <= value <= 65535:
            raise ValueError("port number must be between 1 and 65535")
        return value
    if not isinstance(value, str):
        raise ValueError("port must be a number, 'min:max' or a port name")
    if value.isdigit():
        return _port(int(value))
    m = re.fullmatch(r"(\d+):(\d+)", value)
    if m:
        lo, hi = int(m.group(1)), int(m.group(2))
        if not (1 <= lo <= 65535 and 1 <= hi <= 65535):
            raise ValueError("port range numbers must be between 1 and 65535")
        if lo > hi:
            raise ValueError(f"port range {value!r}: minimum is greater than maximum")
        return value if lo != hi else lo
    if len(value) > 15 or not _PORT_NAME.fullmatch(value) or "--" in value \
            or not re.search("[a-z]", value):
        raise ValueError(f"{value!r} is not a port number, range 'min:max' or valid port name "
                         "(1-15 lowercase letters, digits and '-', with a letter)")
    return value


Port = Annotated[int | str, BeforeValidator(_port)]


def port_range(p: int | str) -> tuple[int, int] | None:
    """(min, max) of a numeric port or range; None for a named port."""
    if isinstance(p, int):
        return p, p
    m = re.fullmatch(r"(\d+):(\d+)", p)
    return (int(m.group(1)), int(m.group(2))) if m else None


def _net(value: Any) -> str:
    """A CIDR, or a bare address meaning the one host (Calico's ParseCIDROrIP)."""
    if not isinstance(value, str):
        raise ValueError("must be a CIDR string like 10.0.0.0/8")
    try:
        if "/" in value:
            return str(ipaddress.ip_network(value, strict=False))
        return str(ipaddress.ip_network(value))
    except ValueError:
        raise ValueError(f"{value!r} is not a valid CIDR") from None


Net = Annotated[str, BeforeValidator(_net)]


def _selector_text(value: Any, *, allow_global: bool = False) -> str:
    if not isinstance(value, str):
        raise ValueError("a selector must be a string")
    if len(value) > 1024:
        raise ValueError("a selector must be at most 1024 characters")
    try:
        sel = parse_selector(value)
    except SelectorError as exc:
        raise ValueError(str(exc)) from None
    if "global(" in value and not (allow_global and isinstance(sel, Global)):
        raise ValueError("global() can only be used alone, as an EntityRule namespaceSelector")
    return value


Selector = Annotated[str, BeforeValidator(_selector_text)]
NamespaceSelector = Annotated[
    str, BeforeValidator(lambda v: _selector_text(v, allow_global=True))
]


Labels = Annotated[dict[str, str], BeforeValidator(check_labels)]


def _none_lists(data: Any, *fields: str) -> Any:
    """Calico's omitempty: an explicit null or empty list is the same as unset."""
    if isinstance(data, dict):
        data = {k: v for k, v in data.items() if not (k in fields and v in (None, [], ""))}
    return data


# ------------------------------------------------------------------ rules


class ICMPFields(_Model):
    type: Int | None = None
    code: Int | None = None

    @model_validator(mode="after")
    def _ranges(self) -> ICMPFields:
        if self.type is not None and not 0 <= self.type <= 254:
            raise field_error("type", self.type, "ICMP type must be 0-254")
        if self.code is not None and not 0 <= self.code <= 255:
            raise field_error("code", self.code, "ICMP code must be 0-255")
        if self.code is not None and self.type is None:
            raise field_error("code", self.code, "ICMP code specified without an ICMP type")
        return self


class ServiceAccountMatch(_Model):
    names: tuple[Str, ...] | None = None
    selector: Selector | None = None


class ServiceMatch(_Model):
    name: Str | None = None
    namespace: Str | None = None


class HTTPPath(_Model):
    exact: Str | None = None
    prefix: Str | None = None


class HTTPMatch(_Model):
    methods: tuple[Str, ...] | None = None
    paths: tuple[HTTPPath, ...] | None = None


class RuleMetadata(_Model):
    annotations: dict[str, str] | None = None


class EntityRule(_Model):
    nets: tuple[Net, ...] | None = None
    not_nets: tuple[Net, ...] | None = None
    selector: Selector | None = None
    not_selector: Selector | None = None
    namespace_selector: NamespaceSelector | None = None
    ports: tuple[Port, ...] | None = None
    not_ports: tuple[Port, ...] | None = None
    service_accounts: ServiceAccountMatch | None = None
    services: ServiceMatch | None = None

    @model_validator(mode="before")
    @classmethod
    def _omitempty(cls, data: Any) -> Any:
        return _none_lists(data, "nets", "notNets", "selector", "notSelector",
                           "namespaceSelector", "ports", "notPorts")

    @model_validator(mode="after")
    def _checks(self) -> EntityRule:
        for alias, items in (("nets", self.nets), ("notNets", self.not_nets)):
            if items and len(items) > 256:
                raise field_error(alias, len(items), "at most 256 CIDRs")
        for alias, items in (("ports", self.ports), ("notPorts", self.not_ports)):
            if items and len(items) > 50:
                raise field_error(alias, len(items), "at most 50 ports")
        if self.services is not None:
            raise field_error("services", self.services.model_dump(exclude_none=True),
                              "matching Kubernetes Services is not supported by podbgp-policy")
        return self

    @property
    def empty(self) -> bool:
        return all(getattr(self, f) is None for f in type(self).model_fields)


Action = Literal["Allow", "Deny", "Log", "Pass"]


class Rule(_Model):
    action: Action
    ip_version: Literal[4, 6] | None = None
    protocol: Protocol | None = None
    icmp: ICMPFields | None = None
    not_protocol: Protocol | None = None
    not_icmp: ICMPFields | None = Field(None, alias="notICMP")
    source: EntityRule | None = None
    destination: EntityRule | None = None
    http: HTTPMatch | None = None
    metadata: RuleMetadata | None = None

    @field_validator("action", mode="before")
    @classmethod
    def _action(cls, value: Any) -> Any:
        # Calico's Action is case-sensitive in the API; calicoctl also accepts
        # lower case from v1 data ("allow"), normalized here.
        if isinstance(value, str):
            for a in ("Allow", "Deny", "Log", "Pass"):
                if value.lower() == a.lower():
                    return a
        return value

    @field_validator("ip_version", mode="before")
    @classmethod
    def _ip_version(cls, value: Any) -> Any:
        if isinstance(value, bool) or value not in (4, 6, None):
            raise ValueError("ipVersion must be 4 or 6")
        return value

    @property
    def src(self) -> EntityRule:
        return self.source or _empty_entity()

    @property
    def dst(self) -> EntityRule:
        return self.destination or _empty_entity()

    @model_validator(mode="after")
    def _checks(self) -> Rule:
        if self.http is not None:
            raise field_error("http", self.http.model_dump(exclude_none=True),
                              "HTTP matches need application-layer policy, which podbgp-policy "
                              "does not have")
        sides = (("source", self.src), ("destination", self.dst))
        # validateRule: ports and protocols.
        for side, ent in sides:
            for alias, ports in (("ports", ent.ports), ("notPorts", ent.not_ports)):
                if not ports:
                    continue
                if self.protocol is None:
                    if any(port_range(p) is not None for p in ports):
                        raise field_error(
                            f"{side}.{alias}", list(ports),
                            "rules with numeric port or port range must set protocol to TCP or "
                            "UDP or SCTP")
                elif protocol_number(self.protocol) not in _PORT_PROTOCOLS:
                    raise field_error(f"{side}.{alias}", list(ports),
                                      "rules that specify ports must set protocol to TCP or UDP "
                                      "or SCTP")
        # CEL rules on Rule: ICMP fields and IP version.
        for alias, icmp, proto in (("icmp", self.icmp, self.protocol),
                                   ("notICMP", self.not_icmp, self.protocol)):
            if icmp is not None and (proto is None
                                     or protocol_number(proto) not in (1, 58)):
                raise field_error(alias, icmp.model_dump(exclude_none=True),
                                  "ICMP fields require protocol to be ICMP or ICMPv6")
        for alias, proto in (("protocol", self.protocol), ("notProtocol", self.not_protocol)):
            if proto is None or self.ip_version is None:
                continue
            if protocol_number(proto) == 1 and self.ip_version != 4:
                raise field_error(alias, proto, "protocol ICMP requires ipVersion 4")
            if protocol_number(proto) == 58 and self.ip_version != 6:
                raise field_error(alias, proto, "protocol ICMPv6 requires ipVersion 6")
        # validateRule: nets of one family, matching ipVersion; no negated catch-all.
        seen: set[int] = set()
        for side, ent in sides:
            for alias, nets in (("nets", ent.nets), ("notNets", ent.not_nets)):
                versions = {ipaddress.ip_network(n).version for n in nets or ()}
                if self.ip_version is not None and versions - {self.ip_version}:
                    raise field_error(f"{side}.{alias}", list(nets or ()),
                                      "rule IP version doesn't match CIDR version")
                if len(versions) > 1 or (versions and seen and versions != seen):
                    raise field_error(f"{side}.{alias}", list(nets or ()),
                                      "rule contains both IPv4 and IPv6 CIDRs")
                seen |= versions
                if alias == "notNets":
                    for n in nets or ():
                        if ipaddress.ip_network(n).prefixlen == 0:
                            raise field_error(
                                f"{side}.{alias}", n, "catch-all CIDR in negation creates "
                                "logical contradiction (matches no traffic)")
        return self


@functools.cache
def _empty_entity() -> EntityRule:
    """The one empty EntityRule (a rule side that matches anything), made on first use:
    making a model builds its validator (CalicoModel defers that), ~1.5 MiB an idle
    daemon with no policy never needs (issue 17)."""
    return EntityRule()


def _check_rules(rules: tuple[Rule, ...] | None, alias: str) -> None:
    if rules and len(rules) > 1024:
        raise field_error(alias, len(rules), "at most 1024 rules")


def _default_types(data: Any) -> Any:
    """Calico defaults an empty ``types`` from the rules present, and stores it so."""
    if not isinstance(data, dict):
        return data
    data = _none_lists(data, "ingress", "egress", "selector", "tier", "order",
                       "serviceAccountSelector", "namespaceSelector")
    if data.get("types") in (None, []):
        has_in, has_eg = bool(data.get("ingress")), bool(data.get("egress"))
        data["types"] = (["Ingress", "Egress"] if has_in and has_eg
                         else ["Egress"] if has_eg else ["Ingress"])
    return data


def _order(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("order must be a number")
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError("order must be a finite number")
    return float(value)


class _PolicySpec(_Model):
    tier: Str | None = None
    order: Annotated[float, BeforeValidator(_order)] | None = None
    ingress: tuple[Rule, ...] | None = None
    egress: tuple[Rule, ...] | None = None
    selector: Selector | None = None
    types: tuple[Literal["Ingress", "Egress"], ...]
    service_account_selector: Selector | None = None
    performance_hints: tuple[Literal["AssumeNeededOnEveryNode"], ...] | None = None

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: Any) -> Any:
        return _default_types(data)

    @field_serializer("order")
    def _order_out(self, value: float | None) -> float | int | None:
        # Go writes a whole float64 without a fraction (1000, not 1000.0).
        if value is not None and value.is_integer():
            return int(value)
        return value

    @model_validator(mode="after")
    def _checks(self) -> _PolicySpec:
        if self.tier not in (None, "default"):
            raise field_error("tier", self.tier, "podbgp-policy enforces only the default tier")
        if len(set(self.types)) != len(self.types):
            dup = next(t for t in self.types if self.types.count(t) > 1)
            raise field_error("types", list(self.types), f"'{dup}' type specified more than once")
        if not self.types:
            raise field_error("types", [], "must name Ingress, Egress or both")
        _check_rules(self.ingress, "ingress")
        _check_rules(self.egress, "egress")
        return self


class NetworkPolicySpec(_PolicySpec):
    pass


class GlobalNetworkPolicySpec(_PolicySpec):
    namespace_selector: Selector | None = None
    do_not_track: bool | None = None
    pre_dnat: bool | None = Field(None, alias="preDNAT")
    apply_on_forward: bool | None = None

    @model_validator(mode="after")
    def _host_flags(self) -> GlobalNetworkPolicySpec:
        # CEL rules on GlobalNetworkPolicySpec.
        if self.do_not_track and self.pre_dnat:
            raise field_error("preDNAT", True, "preDNAT and doNotTrack cannot both be true")
        if self.pre_dnat and (self.egress or "Egress" in self.types):
            raise field_error("preDNAT", True, "preDNAT policy cannot have egress rules or "
                              "the Egress type")
        if (self.do_not_track or self.pre_dnat) and not self.apply_on_forward:
            raise field_error("applyOnForward", self.apply_on_forward,
                              "applyOnForward must be true if either preDNAT or doNotTrack is true")
        return self


def _check_namespace(meta: Metadata, kind: str, required: bool) -> None:
    ns = meta.namespace
    if ns is None or ns == "":
        if required:
            raise field_error("metadata.namespace", ns, f"a {kind} is namespaced: "
                              "give metadata.namespace (bgpctl -n)")
        return
    if len(ns) > 63 or not _NAMESPACE.fullmatch(ns):
        raise field_error("metadata.namespace", ns, "namespace must be a DNS label "
                          "(lowercase letters, digits and '-', at most 63)")


class _Policy(_Resource):
    @model_validator(mode="before")
    @classmethod
    def _spec_default(cls, data: Any) -> Any:
        # No spec at all is spec: {} (select every endpoint, Ingress, no rules).
        if isinstance(data, dict) and data.get("spec") is None:
            data = {**data, "spec": {}}
        return data


class NetworkPolicy(_Policy):
    """A namespaced Calico policy; Kubernetes NetworkPolicies are stored as these
    (``knp.default.<name>``, order 1000; config.k8s)."""

    kind: Literal["NetworkPolicy"] = "NetworkPolicy"
    spec: NetworkPolicySpec

    @model_validator(mode="after")
    def _name(self) -> NetworkPolicy:
        if not _NP_NAME.fullmatch(self.metadata.name):
            raise field_error("metadata.name", self.metadata.name,
                              "name must consist of lower case alphanumeric characters or '-', "
                              "with at most one '.' (or the knp.default. prefix)")
        _check_namespace(self.metadata, "NetworkPolicy", required=False)
        return self

    @property
    def namespace(self) -> str | None:
        return self.metadata.namespace


class GlobalNetworkPolicy(_Policy):
    kind: Literal["GlobalNetworkPolicy"] = "GlobalNetworkPolicy"
    spec: GlobalNetworkPolicySpec

    @model_validator(mode="after")
    def _name(self) -> GlobalNetworkPolicy:
        if not _GNP_NAME.fullmatch(self.metadata.name):
            raise field_error("metadata.name", self.metadata.name,
                              "name must consist of lower case alphanumeric characters or '-', "
                              "with at most one '.'")
        if self.metadata.namespace:
            raise field_error("metadata.namespace", self.metadata.namespace,
                              "a GlobalNetworkPolicy is not namespaced")
        return self


class ProfileSpec(_Model):
    ingress: tuple[Rule, ...] | None = None
    egress: tuple[Rule, ...] | None = None
    labels_to_apply: Labels | None = None

    @model_validator(mode="before")
    @classmethod
    def _omitempty(cls, data: Any) -> Any:
        return _none_lists(data, "ingress", "egress", "labelsToApply")


class Profile(_Resource):
    """Rules and labels shared by endpoints; Kubernetes namespaces are the
    Profiles ``kns.<namespace>`` (their labels, ``pcns.``-prefixed)."""

    kind: Literal["Profile"] = "Profile"
    spec: ProfileSpec = Field(default_factory=ProfileSpec)


POLICY_MODELS: dict[str, type[_Resource]] = {
    "NetworkPolicy": NetworkPolicy,
    "GlobalNetworkPolicy": GlobalNetworkPolicy,
    "Profile": Profile,
}
