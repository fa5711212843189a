"""Kubernetes documents podbgp accepts, stored the way Calico stores them in etcd mode.

Owned by config/. In an etcd-mode Calico cluster, calico-kube-controllers
watches the Kubernetes API and writes what it sees into Calico's datastore;
podbgp has no API server, so `bgpctl` takes the same documents and does that
conversion itself:

- ``networking.k8s.io/v1`` NetworkPolicy -> Calico ``NetworkPolicy`` named
  ``knp.default.<name>`` in the same namespace, tier default, order 1000,
  selectors prefixed with ``projectcalico.org/orchestrator == 'k8s'``, one
  Allow rule per protocol and peer, ports merged into ranges
  (``libcalico-go/lib/backend/k8s/conversion/conversion.go``
  K8sNetworkPolicyToCalico, ``kube-controllers/pkg/converter/
  networkpolicy_converter.go``).
- ``v1`` Namespace -> Calico ``Profile`` ``kns.<name>``: the namespace's
  labels with the ``pcns.`` prefix, ``pcns.projectcalico.org/name``, and
  Allow-all ingress/egress rules (NamespaceToProfile). The API server's
  automatic ``kubernetes.io/metadata.name`` label is added as the API server
  would.

Validation is the API server's (``pkg/apis/networking/validation``): label
selectors, ports (1-65535 or an IANA port name; ``endPort`` only after a
numeric ``port`` and not below it), protocols TCP/UDP/SCTP, peers (``ipBlock``
alone; ``except`` strictly inside ``cidr``), ``policyTypes``. Errors are the
same `ConfigError` every other resource gets, naming the field.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from config.errors import ConfigError, FieldProblem
from config.lite import BeforeValidator, Field, ValidationError, model_validator
from config.model import (
    API_VERSION,
    Int,
    Metadata,
    Str,
    _check_label_key,
    _Model,
    check_labels,
    field_error,
)
from config.policy import NetworkPolicy, Profile, _port

K8S_NETPOL_API = "networking.k8s.io/v1"
K8S_CORE_API = "v1"
KNP_PREFIX = "knp.default."
NAMESPACE_PROFILE_PREFIX = "kns."
NAMESPACE_LABEL_PREFIX = "pcns."
NAME_LABEL = "projectcalico.org/name"
K8S_NAME_LABEL = "kubernetes.io/metadata.name"
ORCHESTRATOR_LABEL = "projectcalico.org/orchestrator"
NAMESPACE_LABEL = "projectcalico.org/namespace"
KNP_ORDER = 1000.0


class _K8sModel(_Model):
    pass


def _label_values(value: Any) -> Any:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ValueError("values must be a list of strings")
    out = []
    for v in value:
        if not isinstance(v, str):
            raise ValueError(f"value {v!r} must be a string")
        check_labels({"k": v})  # value syntax
        out.append(v)
    return tuple(out)


class LabelSelectorRequirement(_K8sModel):
    key: Str
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: Annotated[tuple[str, ...], BeforeValidator(_label_values)] = ()

    @model_validator(mode="after")
    def _checks(self) -> LabelSelectorRequirement:
        try:
            _check_label_key(self.key)
        except ValueError as e:
            raise field_error("key", self.key, str(e)) from None
        if self.operator in ("In", "NotIn") and not self.values:
            raise field_error("values", [], "must be specified when `operator` is 'In' or "
                              "'NotIn'")
        if self.operator in ("Exists", "DoesNotExist") and self.values:
            raise field_error("values", list(self.values), "may not be specified when "
                              "`operator` is 'Exists' or 'DoesNotExist'")
        return self


class LabelSelector(_K8sModel):
    match_labels: Annotated[dict[str, str], BeforeValidator(check_labels)] | None = None
    match_expressions: tuple[LabelSelectorRequirement, ...] | None = None

    @property
    def empty(self) -> bool:
        return not self.match_labels and not self.match_expressions


def _check_cidr(value: Any) -> str:
    if not isinstance(value, str) or "/" not in value:
        raise ValueError("must be a CIDR like 10.0.0.0/16")
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(f"{value!r} is not a valid CIDR") from None
    return value


K8sCIDR = Annotated[str, BeforeValidator(_check_cidr)]


class IPBlock(_K8sModel):
    cidr: K8sCIDR
    except_: tuple[K8sCIDR, ...] | None = Field(None, alias="except")

    @model_validator(mode="after")
    def _subsets(self) -> IPBlock:
        outer = ipaddress.ip_network(self.cidr, strict=False)
        for i, text in enumerate(self.except_ or ()):
            inner = ipaddress.ip_network(text, strict=False)
            if inner.version != outer.version or not inner.subnet_of(outer) \
                    or inner.prefixlen <= outer.prefixlen:
                raise field_error(f"except[{i}]", text,
                                  f"must be a strict subset of `cidr` {self.cidr}")
        return self


class NetworkPolicyPeer(_K8sModel):
    pod_selector: LabelSelector | None = None
    namespace_selector: LabelSelector | None = None
    ip_block: IPBlock | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> NetworkPolicyPeer:
        if self.ip_block is None and self.pod_selector is None and self.namespace_selector is None:
            raise field_error("", {}, "must specify a peer (podSelector, namespaceSelector or "
                              "ipBlock)")
        if self.ip_block is not None and (self.pod_selector is not None
                                          or self.namespace_selector is not None):
            raise field_error("ipBlock", self.ip_block.cidr,
                              "may not specify both ipBlock and another peer")
        return self


def _k8s_port(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, str) and ":" in value:
        raise ValueError(f"{value!r}: a range is written port + endPort")
    return _port(value)


class NetworkPolicyPort(_K8sModel):
    protocol: Literal["TCP", "UDP", "SCTP"] | None = None
    port: Annotated[int | str, BeforeValidator(_k8s_port)] | None = None
    end_port: Int | None = None

    @model_validator(mode="after")
    def _end_port(self) -> NetworkPolicyPort:
        if self.end_port is None:
            return self
        if self.port is None:
            raise field_error("endPort", self.end_port, "may not be specified when `port` "
                              "is not specified")
        if not isinstance(self.port, int):
            raise field_error("endPort", self.end_port, "may not be specified when `port` "
                              "is non-numeric")
        if not 1 <= self.end_port <= 65535:
            raise field_error("endPort", self.end_port, "must be between 1 and 65535")
        if self.end_port < self.port:
            raise field_error("endPort", self.end_port, "must be greater than or equal to "
                              "`port`")
        return self


class IngressRule(_K8sModel):
    ports: tuple[NetworkPolicyPort, ...] | None = None
    from_: tuple[NetworkPolicyPeer, ...] | None = Field(None, alias="from")


class EgressRule(_K8sModel):
    ports: tuple[NetworkPolicyPort, ...] | None = None
    to: tuple[NetworkPolicyPeer, ...] | None = None


class K8sNetworkPolicySpec(_K8sModel):
    pod_selector: LabelSelector
    ingress: tuple[IngressRule, ...] | None = None
    egress: tuple[EgressRule, ...] | None = None
    policy_types: tuple[Literal["Ingress", "Egress"], ...] | None = None

    @model_validator(mode="after")
    def _types(self) -> K8sNetworkPolicySpec:
        types = self.policy_types or ()
        if len(set(types)) != len(types):
            raise field_error("policyTypes", list(types), "Duplicate value")
        return self

    @property
    def effective_types(self) -> tuple[str, ...]:
        """The API server's defaulting: Ingress always, Egress when egress rules exist."""
        if self.policy_types:
            return self.policy_types
        return ("Ingress", "Egress") if self.egress else ("Ingress",)


class K8sNetworkPolicy(_K8sModel):
    api_version: Literal["networking.k8s.io/v1"] = K8S_NETPOL_API
    kind: Literal["NetworkPolicy"] = "NetworkPolicy"
    metadata: Metadata
    spec: K8sNetworkPolicySpec
    status: dict[str, Any] | None = None


class K8sNamespace(_K8sModel):
    api_version: Literal["v1"] = K8S_CORE_API
    kind: Literal["Namespace"] = "Namespace"
    metadata: Metadata
    spec: dict[str, Any] | None = None
    status: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _name(self) -> K8sNamespace:
        from config.policy import _NAMESPACE

        if len(self.metadata.name) > 63 or not _NAMESPACE.fullmatch(self.metadata.name):
            raise field_error("metadata.name", self.metadata.name,
                              "a namespace name must be a DNS label (lowercase letters, digits "
                              "and '-', at most 63)")
        return self


# ------------------------------------------------------------------ conversion


def selector_to_calico(sel: LabelSelector | None, *, pod: bool) -> str:
    """Calico's k8sSelectorToCalico: a pod selector is restricted to k8s pods;
    a present-but-empty namespace selector is all(); an absent one is ""."""
    terms = [f"{ORCHESTRATOR_LABEL} == 'k8s'"] if pod else []
    if sel is None:
        return " && ".join(terms)
    if not pod and sel.empty:
        return "all()"
    for key in sorted(sel.match_labels or {}):
        terms.append(f"{key} == '{sel.match_labels[key]}'")  # type: ignore[index]
    for expr in sel.match_expressions or ():
        values = "', '".join(expr.values)
        if expr.operator == "In":
            terms.append(f"{expr.key} in {{ '{values}' }}")
        elif expr.operator == "NotIn":
            terms.append(f"{expr.key} not in {{ '{values}' }}")
        elif expr.operator == "Exists":
            terms.append(f"has({expr.key})")
        else:
            terms.append(f"! has({expr.key})")
    return " && ".join(terms)


def simplify_ports(ports: list[int | str]) -> list[int | str]:
    """Calico's SimplifyPorts: numeric ports and ranges merged into the fewest
    ranges (named ports first, unchanged)."""
    from config.policy import port_range

    if len(ports) <= 1:
        return ports
    named = [p for p in ports if port_range(p) is None]
    numbers = sorted({n for p in ports if (r := port_range(p)) for n in range(r[0], r[1] + 1)})
    if len(numbers) <= 1:
        return ports
    out: list[int | str] = list(named)
    lo = hi = numbers[0]
    for n in [*numbers[1:], None]:
        if n is not None and n == hi + 1:
            hi = n
            continue
        out.append(lo if lo == hi else f"{lo}:{hi}")
        if n is not None:
            lo = hi = n
    return out


def _peer_fields(peer: NetworkPolicyPeer | None) -> dict[str, Any]:
    if peer is None:
        return {}
    if peer.ip_block is not None:
        out: dict[str, Any] = {"nets": [str(ipaddress.ip_network(peer.ip_block.cidr,
                                                                   strict=False))]}
        if peer.ip_block.except_:
            out["notNets"] = [str(ipaddress.ip_network(e, strict=False))
                              for e in peer.ip_block.except_]
        return out
    out = {"selector": selector_to_calico(peer.pod_selector, pod=True)}
    ns = selector_to_calico(peer.namespace_selector, pod=False)
    if ns:
        out["namespaceSelector"] = ns
    return out


def _rules(peers: tuple[NetworkPolicyPeer, ...] | None,
           ports: tuple[NetworkPolicyPort, ...] | None, ingress: bool) -> list[dict[str, Any]]:
    """Calico's k8sRuleToCalico: one Allow rule per (protocol, peer)."""
    by_proto: dict[str, list[int | str] | None] = {}
    for port in ports or (None,):
        if port is None:  # no ports at all: any protocol, any port
            by_proto = {"": None}
            break
        proto = port.protocol or "TCP"  # the API's default, also for an empty `{}`
        if port.port is None:
            by_proto[proto] = None  # every port of this protocol
            continue
        value: int | str = port.port
        if port.end_port is not None and port.end_port != port.port:
            value = f"{port.port}:{port.end_port}"
        if proto not in by_proto:
            by_proto[proto] = [value]
        elif by_proto[proto] is not None:
            by_proto[proto].append(value)  # type: ignore[union-attr]
    rules = []
    for proto in sorted(by_proto):
        calico_ports = by_proto[proto]
        if calico_ports is not None:
            calico_ports = simplify_ports(calico_ports)
        for peer in peers or (None,):
            peer_fields = _peer_fields(peer)
            rule: dict[str, Any] = {"action": "Allow"}
            if proto:
                rule["protocol"] = proto
            if ingress:
                if peer_fields:
                    rule["source"] = peer_fields
                if calico_ports:
                    rule["destination"] = {"ports": calico_ports}
            else:
                dst = dict(peer_fields)
                if calico_ports:
                    dst = {"ports": calico_ports, **dst}
                if dst:
                    rule["destination"] = dst
            rules.append(rule)
    return rules


def network_policy_to_calico(np: K8sNetworkPolicy) -> dict[str, Any]:
    """The Calico NetworkPolicy document kube-controllers would write for ``np``."""
    spec = np.spec
    ingress = [r for rule in spec.ingress or () for r in _rules(rule.from_, rule.ports, True)]
    egress = [r for rule in spec.egress or () for r in _rules(rule.to, rule.ports, False)]
    out_spec: dict[str, Any] = {
        "tier": "default",
        "order": KNP_ORDER,
        "selector": selector_to_calico(spec.pod_selector, pod=True),
        "types": list(spec.effective_types),
    }
    if ingress:
        out_spec["ingress"] = ingress
    if egress:
        out_spec["egress"] = egress
    meta: dict[str, Any] = {"name": KNP_PREFIX + np.metadata.name}
    if np.metadata.namespace:
        meta["namespace"] = np.metadata.namespace
    return {"apiVersion": API_VERSION, "kind": "NetworkPolicy", "metadata": meta,
            "spec": out_spec}


def namespace_to_profile(ns: K8sNamespace) -> dict[str, Any]:
    """The Calico Profile kube-controllers would write for namespace ``ns``."""
    name = ns.metadata.name
    labels = {K8S_NAME_LABEL: name, **(ns.metadata.labels or {})}
    to_apply = {NAMESPACE_LABEL_PREFIX + k: v for k, v in labels.items()}
    to_apply[NAMESPACE_LABEL_PREFIX + NAME_LABEL] = name
    return {
        "apiVersion": API_VERSION, "kind": "Profile",
        "metadata": {"name": NAMESPACE_PROFILE_PREFIX + name},
        "spec": {"ingress": [{"action": "Allow"}], "egress": [{"action": "Allow"}],
                 "labelsToApply": to_apply},
    }


FOREIGN_KINDS: dict[tuple[str, str], tuple[type[_K8sModel], Any, type]] = {
    (K8S_NETPOL_API, "NetworkPolicy"): (K8sNetworkPolicy, network_policy_to_calico,
                                        NetworkPolicy),
    (K8S_CORE_API, "Namespace"): (K8sNamespace, namespace_to_profile, Profile),
}


def is_foreign(obj: Mapping[str, Any]) -> bool:
    api, kind = obj.get("apiVersion"), obj.get("kind")
    return isinstance(api, str) and isinstance(kind, str) and (api, kind) in FOREIGN_KINDS


def convert(obj: Mapping[str, Any], problems_of: Any, unknown_of: Any = None) -> Any:
    """Validate a Kubernetes document and return the Calico resource it becomes.

    ``problems_of`` turns a (config.lite) ValidationError into FieldProblems
    (config.parse's, passed in to keep one error mapping); ``unknown_of``
    (config.parse.unknown_fields, given when strict) lists fields the document
    has and the model does not: refused, as the API server's strict field
    validation refuses them. Not strict, they are dropped, as kube-controllers'
    conversion drops them."""
    api, kind = obj.get("apiVersion"), obj.get("kind")
    model, conv, target = FOREIGN_KINDS[(api, kind)]
    meta = obj.get("metadata")
    name = meta.get("name", "") if isinstance(meta, Mapping) else ""
    label = f"{kind} ({api})"
    try:
        k8s = model.model_validate(dict(obj))
    except ValidationError as exc:
        problems = problems_of(exc)
        first = problems[0]
        raise ConfigError(label, name if isinstance(name, str) else "", first.field,
                          first.value, first.reason, problems=problems) from None
    except RecursionError:
        raise ConfigError(label, str(name), "", reason="document nested too deeply") from None
    if unknown_of is not None:
        unknown = unknown_of(k8s)
        if unknown:
            path, value = unknown[0]
            raise ConfigError(label, str(name), path, value, "unknown field",
                              problems=[FieldProblem(p, v, "unknown field") for p, v in unknown])
    doc = conv(k8s)
    try:
        return target.model_validate(doc)
    except ValidationError as exc:  # a conversion that Calico's own validation refuses
        problems = problems_of(exc)
        first = problems[0]
        raise ConfigError(label, str(name), first.field, first.value,
                          f"after conversion to Calico's {target.__name__}: {first.reason}",
                          problems=problems) from None
