"""WorkloadEndpoint: a pod's network interface, in Calico's model and etcd layout.

Owned by config/. Written by the CNI plugin (``cni/``) on ADD and deleted on
DEL; read by ``bgpctl get workloadendpoints`` and the policy agent, which
selects endpoints by their labels and enforces policy on ``interfaceName``.

The fields are Calico's (``libcalico-go/lib/apis/internalapi/
workloadendpoint.go``, the v3 ``WorkloadEndpoint`` that lives in etcd):
``metadata.{name, namespace, labels}`` and ``spec.{orchestrator, workload,
node, containerID, pod, endpoint, serviceAccountName, ipNetworks, ipNATs,
ipv4Gateway, ipv6Gateway, profiles, interfaceName, mac, ports,
allowSpoofedSourcePrefixes, qosControls}``. The key is namespaced:
``/calico/resources/v3/projectcalico.org/workloadendpoints/<ns>/<name>``.

Reading is lenient, writing faithful (docs/calico-compatibility.md): a field this model does not
declare is kept and written back unchanged, and the spec's identity strings
are not held to Calico's name regex (networking-calico writes upper-case
endpoint ids straight into etcd). What is checked is what a consumer relies
on: ``ipNetworks`` are single addresses, gateways are addresses of their
family, ``mac`` is a MAC, ``interfaceName`` is a Linux interface name, ports
are in range, label keys and values are Kubernetes labels.

Names follow Calico's ``libcalico-go/lib/names/workloadendpoint.go``:
``<node>-k8s-<pod>-<endpoint>`` for Kubernetes (``<node>-cni-<containerID>-
<endpoint>`` for plain CNI, ``<node>-<orch>-<workload>-<endpoint>`` for
others), each segment with every ``-`` doubled and no segment starting or
ending with ``-``.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from config import keys
from config.errors import ConfigError
from config.lite import BeforeValidator, Field, ValidationError, field_validator
from config.model import API_VERSION, CIDR, CalicoModel, CalicoResource, Metadata, Str
from config.model import check_labels as model_check_labels

__all__ = [
    "LABEL_NAMESPACE",
    "LABEL_ORCHESTRATOR",
    "LABEL_SERVICE_ACCOUNT",
    "NAMESPACE_PROFILE_PREFIX",
    "ORCHESTRATOR_K8S",
    "SERVICE_ACCOUNT_PROFILE_PREFIX",
    "EndpointIdentifiers",
    "WorkloadEndpoint",
    "WorkloadEndpointSpec",
    "check_labels",
    "endpoint_to_dict",
    "endpoint_to_json",
    "host_interface_name",
    "parse_endpoint",
    "parse_endpoint_json",
    "parse_workload_endpoint_name",
    "pod_endpoint",
    "workload_endpoint_name",
]

KIND = "WorkloadEndpoint"
# Calico's label keys and values (api/pkg/apis/projectcalico/v3: LabelNamespace,
# LabelOrchestrator, LabelServiceAccount, OrchestratorKubernetes).
LABEL_NAMESPACE = "projectcalico.org/namespace"
LABEL_ORCHESTRATOR = "projectcalico.org/orchestrator"
LABEL_SERVICE_ACCOUNT = "projectcalico.org/serviceaccount"
ORCHESTRATOR_K8S = "k8s"
# libcalico-go/lib/backend/k8s/conversion/constants.go
NAMESPACE_PROFILE_PREFIX = "kns."
SERVICE_ACCOUNT_PROFILE_PREFIX = "ksa."
DEFAULT_INTERFACE_PREFIX = "cali"

_IFNAME = re.compile(r"[A-Za-z0-9_.-]{1,15}")
_MAC = re.compile(r"[0-9A-Fa-f]{2}([:-])[0-9A-Fa-f]{2}(\1[0-9A-Fa-f]{2}){4}")


class EndpointMetadata(Metadata):
    """Object metadata of a namespaced resource; the name is checked only for shape."""

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        # Calico's own writers are not held to the DNS-1123 regex here
        # (networking-calico: "...-instance--1-DEADBEEF--1234--5678").
        if not value or "/" in value or len(value) > 253:
            raise ValueError("name must be 1-253 characters without '/'")
        return value

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, value: str | None) -> str | None:
        if value is not None and (not value or "/" in value or len(value) > 253):
            raise ValueError("namespace must be 1-253 characters without '/'")
        return value


# ------------------------------------------------------------------ fields


def _single_address(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("must be an address or a /32 (/128) network")
    try:
        net = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(f"{value!r} is not a valid CIDR") from None
    if net.num_addresses != 1:
        raise ValueError(f"{value!r}: IP network contains multiple addresses")
    return value


def _gateway(version: int):
    def check(value: Any) -> Any:
        if value in (None, ""):
            return None
        if not isinstance(value, str):
            raise ValueError(f"must be an IPv{version} address")
        try:
            addr = ipaddress.ip_address(value)
        except ValueError:
            raise ValueError(f"{value!r} is not an IP address") from None
        if addr.version != version:
            raise ValueError(f"must be an IPv{version} address")
        return value

    return BeforeValidator(check)


def _uint16(positive: bool):
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError("must be an integer")
        if not (1 if positive else 0) <= value <= 65535:
            raise ValueError(f"must be between {1 if positive else 0} and 65535")
        return value

    return BeforeValidator(check)


def _protocol(value: Any) -> Any:
    # numorstring.Protocol: a name (TCP, UDP, SCTP...) or a number 1-255.
    if isinstance(value, bool) or not isinstance(value, (int, str)) or value == "":
        raise ValueError("must be a protocol name or number")
    return value


class WorkloadEndpointPort(CalicoModel):
    name: Str = ""
    protocol: Annotated[str | int, BeforeValidator(_protocol)] = "TCP"
    port: Annotated[int, _uint16(True)]
    host_port: Annotated[int, _uint16(False)] = 0
    host_ip: Str = Field("", alias="hostIP")


class IPNAT(CalicoModel):
    internal_ip: Str = Field("", alias="internalIP")
    external_ip: Str = Field("", alias="externalIP")


class WorkloadEndpointSpec(CalicoModel):
    orchestrator: Str | None = None
    workload: Str | None = None
    node: Str | None = None
    container_id: Str | None = Field(None, alias="containerID")
    pod: Str | None = None
    endpoint: Str | None = None
    service_account_name: Str | None = None
    ip_networks: tuple[Annotated[str, BeforeValidator(_single_address)], ...] = ()
    ip_nats: tuple[IPNAT, ...] = Field((), alias="ipNATs")
    ipv4_gateway: Annotated[str | None, _gateway(4)] = Field(None, alias="ipv4Gateway")
    ipv6_gateway: Annotated[str | None, _gateway(6)] = Field(None, alias="ipv6Gateway")
    profiles: tuple[Str, ...] = ()
    interface_name: Str | None = None
    mac: Str | None = None
    ports: tuple[WorkloadEndpointPort, ...] = ()
    allow_spoofed_source_prefixes: tuple[CIDR, ...] = ()
    qos_controls: dict[str, Any] | None = None

    @field_validator("ip_networks", "ip_nats", "profiles", "ports",
                     "allow_spoofed_source_prefixes", mode="before")
    @classmethod
    def _null_list(cls, value: Any) -> Any:
        return () if value is None else value

    @field_validator("interface_name")
    @classmethod
    def _ifname(cls, value: str | None) -> str | None:
        if value and not _IFNAME.fullmatch(value):
            raise ValueError(f"{value!r} is not an interface name (1-15 of [A-Za-z0-9_.-])")
        return value or None

    @field_validator("mac")
    @classmethod
    def _mac(cls, value: str | None) -> str | None:
        if value and not _MAC.fullmatch(value):
            raise ValueError(f"{value!r} is not a MAC address")
        return value or None


class WorkloadEndpoint(CalicoResource):
    kind: Literal["WorkloadEndpoint"] = KIND
    metadata: EndpointMetadata
    spec: WorkloadEndpointSpec = WorkloadEndpointSpec()

    @property
    def namespace(self) -> str:
        return self.metadata.namespace or ""

    @property
    def labels(self) -> dict[str, str]:
        return dict(self.metadata.labels or {})

    @property
    def key(self) -> str:
        return keys.workload_endpoint_key(self.namespace, self.name)

    @property
    def addresses(self) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        """The endpoint's addresses (``ipNetworks`` without their /32 or /128)."""
        return [ipaddress.ip_network(n, strict=False).network_address
                for n in self.spec.ip_networks]

    @property
    def identifiers(self) -> EndpointIdentifiers:
        s = self.spec
        return EndpointIdentifiers(node=s.node or "", orchestrator=s.orchestrator or "",
                                   endpoint=s.endpoint or "", workload=s.workload or "",
                                   pod=s.pod or "", container_id=s.container_id or "")


# ------------------------------------------------------------------ names


@dataclass(frozen=True, slots=True)
class EndpointIdentifiers:
    """The parts a WorkloadEndpoint name is made of (Calico's WorkloadEndpointIdentifiers)."""

    node: str = ""
    orchestrator: str = ""
    endpoint: str = ""
    workload: str = ""
    pod: str = ""
    container_id: str = ""

    def _segments(self) -> list[tuple[str, str]]:
        if not self.node:
            raise ValueError("node: field should be assigned")
        node, orch = ("node", self.node), ("orchestrator", self.orchestrator)
        endp = ("endpoint", self.endpoint)
        if self.orchestrator == "k8s":
            return [node, orch, ("pod", self.pod), endp]
        if self.orchestrator == "cni":
            return [node, orch, ("containerID", self.container_id), endp]
        if self.orchestrator == "libnetwork":
            return [node, orch, orch, endp]
        return [node, orch, ("workload", self.workload), endp]

    def name(self, prefix: bool = False) -> str:
        """The endpoint's name; with ``prefix`` a list prefix ending in ``-`` when a
        segment is unset. ValueError names the segment that is missing or bad."""
        parts = []
        for field, value in self._segments():
            if not value:
                if prefix:
                    return "-".join(parts) + "-"
                raise ValueError(f"{field}: field should be assigned")
            parts.append(_escape(field, value))
        return "-".join(parts)

    def matches(self, name: str) -> bool:
        """Whether ``name`` is this endpoint's name (unset parts match anything)."""
        segments = self._segments()
        parts = _split_name(name)
        if len(parts) != len(segments):
            return False
        return all(not value or value == part for (_, value), part in zip(segments, parts, strict=True))


def _escape(field: str, value: str) -> str:
    if value.startswith("-"):
        raise ValueError(f"{field}: field must not begin with a '-'")
    if value.endswith("-"):
        raise ValueError(f"{field}: field must not end with a '-'")
    return value.replace("-", "--")


def _split_name(name: str) -> list[str]:
    """Split at single dashes (a doubled dash is an escaped one), unescaping each part."""
    parts, start, i = [], 0, 1
    while i < len(name):
        if name[i] == "-":
            if i + 1 < len(name) and name[i + 1] == "-":
                i += 2
                continue
            parts.append(name[start:i].replace("--", "-"))
            start = i + 1
        i += 1
    parts.append(name[start:].replace("--", "-"))
    return parts


_FIELDS_AFTER_ORCH = {
    "k8s": ("pod", "endpoint"),
    "cni": ("container_id", "endpoint"),
    "libnetwork": ("orchestrator", "endpoint"),
}


def parse_workload_endpoint_name(name: str) -> EndpointIdentifiers:
    """Calico's ParseWorkloadEndpointName: the identifiers a (prefix) name holds."""
    if not name:
        raise ValueError("cannot parse an empty WorkloadEndpoint name")
    parts = _split_name(name)
    values: dict[str, str] = {"node": parts[0]}
    if len(parts) > 1:
        fields = _FIELDS_AFTER_ORCH.get(parts[1], ("workload", "endpoint"))
        rest = parts[2:]
        if len(rest) > len(fields):
            raise ValueError(f"{name!r} is not a WorkloadEndpoint name (too many segments)")
        for fld, part in zip(fields, rest, strict=False):
            values[fld] = part
        values["orchestrator"] = parts[1]
    return EndpointIdentifiers(**values)


def workload_endpoint_name(node: str, pod: str, endpoint: str = "eth0",
                           orchestrator: str = ORCHESTRATOR_K8S) -> str:
    """``<node>-k8s-<pod>-<endpoint>`` with Calico's escaping (ValueError if impossible)."""
    return EndpointIdentifiers(node=node, orchestrator=orchestrator, pod=pod,
                               endpoint=endpoint).name()


def host_interface_name(namespace: str, pod: str, prefix: str = DEFAULT_INTERFACE_PREFIX) -> str:
    """The host side of a pod's veth, as Calico names it: prefix + sha1("ns.pod")[:11].

    Deterministic (a retried ADD finds the same interface) and, with a prefix
    of at most 4 bytes, within Linux's 15. Calico:
    ``libcalico-go/lib/backend/k8s/conversion/workload_endpoint_default.go``
    VethNameForWorkload.
    """
    digest = hashlib.sha1(f"{namespace}.{pod}".encode()).hexdigest()  # a name, not security
    name = prefix + digest[:11]
    if len(name.encode()) > 15:
        raise ValueError(f"interface prefix {prefix!r} makes {name!r} longer than 15 bytes")
    return name


# ------------------------------------------------------------------ building


def check_labels(labels: Mapping[str, Any]) -> None:
    """ConfigError (field ``metadata.labels``) unless every pair is a Kubernetes label."""
    try:
        model_check_labels(dict(labels))
    except ValueError as exc:
        raise ConfigError(KIND, "", "metadata.labels", dict(labels), str(exc)) from None


def pod_endpoint(*, node: str, namespace: str, pod: str, endpoint: str, container_id: str,
                 interface_name: str, mac: str | None, ip_networks: list[str],
                 labels: Mapping[str, Any] | None = None, profiles: list[str] | None = None,
                 service_account: str | None = None, ipv4_gateway: str | None = None,
                 ipv6_gateway: str | None = None,
                 annotations: Mapping[str, str] | None = None) -> WorkloadEndpoint:
    """The WorkloadEndpoint Calico's CNI plugin writes for a Kubernetes pod.

    Labels are the pod's plus ``projectcalico.org/namespace`` and
    ``projectcalico.org/orchestrator`` (and ``projectcalico.org/serviceaccount``
    when known); profiles default to ``kns.<namespace>`` (+ ``ksa.<ns>.<sa>``),
    as Calico's pod conversion makes them. Raises ConfigError naming the field.
    """
    all_labels = dict(labels or {})
    all_labels[LABEL_NAMESPACE] = namespace
    all_labels[LABEL_ORCHESTRATOR] = ORCHESTRATOR_K8S
    if service_account and len(service_account) < 63:
        all_labels[LABEL_SERVICE_ACCOUNT] = service_account
    if profiles is None:
        profiles = [NAMESPACE_PROFILE_PREFIX + namespace]
        if service_account:
            profiles.append(f"{SERVICE_ACCOUNT_PROFILE_PREFIX}{namespace}.{service_account}")
    try:
        name = workload_endpoint_name(node, pod, endpoint)
    except ValueError as exc:
        raise ConfigError(KIND, "", "metadata.name", reason=str(exc)) from None
    metadata: dict[str, Any] = {"name": name, "namespace": namespace, "labels": all_labels}
    if annotations:
        metadata["annotations"] = dict(annotations)
    spec: dict[str, Any] = {
        "orchestrator": ORCHESTRATOR_K8S, "node": node, "pod": pod, "endpoint": endpoint,
        "containerID": container_id, "interfaceName": interface_name, "mac": mac,
        "ipNetworks": list(ip_networks), "profiles": profiles,
        "serviceAccountName": service_account or None,
        "ipv4Gateway": ipv4_gateway, "ipv6Gateway": ipv6_gateway,
    }
    return parse_endpoint({"apiVersion": API_VERSION, "kind": KIND, "metadata": metadata,
                           "spec": {k: v for k, v in spec.items() if v is not None}})


# ------------------------------------------------------------------ parse / write


def parse_endpoint(obj: Mapping[str, Any]) -> WorkloadEndpoint:
    """Validate one WorkloadEndpoint document (lenient: unknown fields are kept)."""
    from config.parse import _problems  # one error-path formatter for every kind

    if not isinstance(obj, Mapping):
        raise ConfigError(KIND, "", "", type(obj).__name__, "a resource must be a mapping")
    meta = obj.get("metadata")
    name = meta.get("name", "") if isinstance(meta, Mapping) else ""
    name = name if isinstance(name, str) else ""
    if obj.get("kind", KIND) != KIND:
        raise ConfigError(KIND, name, "kind", obj.get("kind"), f"must be {KIND}")
    api = obj.get("apiVersion", API_VERSION)
    if api != API_VERSION:
        raise ConfigError(KIND, name, "apiVersion", api, f"must be {API_VERSION}")
    data = dict(obj)
    if data.get("spec") is None:
        data.pop("spec", None)
    try:
        wep = WorkloadEndpoint.model_validate(data)
    except ValidationError as exc:
        problems = _problems(exc)
        first = problems[0]
        raise ConfigError(KIND, name, first.field, first.value, first.reason,
                          problems=problems) from None
    except RecursionError:
        raise ConfigError(KIND, name, "", reason="document nested too deeply") from None
    if not wep.metadata.namespace:
        raise ConfigError(KIND, name, "metadata.namespace", reason="required field is missing")
    return wep


def parse_endpoint_json(key: str, raw: bytes | str) -> WorkloadEndpoint:
    """Parse the etcd value stored under ``key``; the key's namespace and name must match."""
    where = keys.parse_namespaced_key(key)
    if where is None or where[0] != KIND:
        raise ConfigError(KIND, "", "", key, "not a WorkloadEndpoint key", key=key)
    _, namespace, name = where
    try:
        text = raw.decode("utf-8") if isinstance(raw, (bytes, bytearray, memoryview)) else raw
        if isinstance(text, memoryview):
            text = bytes(text).decode("utf-8")
        obj = json.loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ConfigError(KIND, name, "", reason=f"value is not valid JSON: {exc}",
                          key=key) from None
    if not isinstance(obj, dict):
        raise ConfigError(KIND, name, "", type(obj).__name__, "value is not a JSON object",
                          key=key)
    meta = obj.get("metadata")
    if isinstance(meta, dict) and "namespace" not in meta:
        # Calico's etcd backend may leave the namespace to the key.
        obj = {**obj, "metadata": {**meta, "namespace": namespace}}
    try:
        wep = parse_endpoint(obj)
    except ConfigError as exc:
        raise ConfigError(exc.kind, exc.name or name, exc.field,
                          exc.value if exc.has_value else None, exc.reason, key=key,
                          problems=exc.problems) from None
    if wep.name != name:
        raise ConfigError(KIND, name, "metadata.name", wep.name,
                          "does not match the name in the key", key=key)
    if wep.namespace != namespace:
        raise ConfigError(KIND, name, "metadata.namespace", wep.namespace,
                          "does not match the namespace in the key", key=key)
    return wep


def endpoint_to_dict(wep: WorkloadEndpoint) -> dict[str, Any]:
    """The JSON object Calico stores (camelCase, unset fields omitted, unknown ones kept)."""
    dumped = wep.model_dump(mode="json", by_alias=True, exclude_none=True)
    spec = dumped.get("spec", {})
    for empty_list in ("ipNetworks", "ipNATs", "profiles", "ports",
                       "allowSpoofedSourcePrefixes"):
        # omitempty in Calico's struct; an unknown field of that name is not ours to drop
        if spec.get(empty_list) == [] and empty_list not in (wep.spec.model_extra or {}):
            del spec[empty_list]
    out = {"apiVersion": API_VERSION, "kind": KIND, "metadata": dumped["metadata"],
           "spec": spec}
    for key, value in dumped.items():
        out.setdefault(key, value)
    return out


def endpoint_to_json(wep: WorkloadEndpoint) -> bytes:
    return json.dumps(endpoint_to_dict(wep), separators=(",", ":")).encode()

