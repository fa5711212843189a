"""Typed, immutable models of Calico's ``projectcalico.org/v3`` resources.

Owned by config/. Instances are built only by `config.parse` (which turns
validation errors into `ConfigError`) and are never mutated: a new etcd value
or file edit produces new instances inside a new `Snapshot`. Field names are
snake_case attributes with Calico's camelCase as aliases; unknown fields are
rejected; Calico's defaults and validation rules are applied here, including
the leniencies real Calico data needs (AS numbers as strings or dotted,
``peerIP`` with a port, ``spec: null``, ``serviceClusterIPs: [{}]``, YAML
booleans as label values, BlockAffinity ``deleted: "false"``).

The models are written in pydantic v2's API and validated by `config.lite` (the
subset of pydantic they use; the daemon loads no pydantic, issue 17).

Validation errors raised from model validators carry the offending field in
the error context (``PydanticCustomError`` ctx ``field``/``value``) so that
`config.parse` can name ``spec.blockSize`` rather than just ``spec``.
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from config.lite import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PydanticCustomError,
    field_validator,
    model_serializer,
    model_validator,
    to_camel,
)
from config.selector import SelectorError, parse_selector

API_VERSION = "projectcalico.org/v3"
DEFAULT_AS_NUMBER = 64512
DEFAULT_LISTEN_PORT = 179
DEFAULT_BLOCK_SIZE_V4 = 26
DEFAULT_BLOCK_SIZE_V6 = 122


def field_error(field: str, value: Any, reason: str) -> PydanticCustomError:
    """An error about ``field`` (a camelCase path relative to the model validated)."""
    return PydanticCustomError(
        "podbgp_field", "{reason}", {"field": field, "value": value, "reason": reason}
    )


# ------------------------------------------------------------------ scalar types


def parse_as_number(value: Any) -> int:
    """AS number from an int, a decimal string, or Calico's dotted "hi.lo" (1.10 = 65546)."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError("AS number must be an integer or a string like '64512' or '1.10'")
    if isinstance(value, str):
        text = value.strip()
        m = re.fullmatch(r"(\d{1,5})\.(\d{1,5})", text)
        if m:
            hi, lo = int(m.group(1)), int(m.group(2))
            if hi > 0xFFFF or lo > 0xFFFF:
                raise ValueError("dotted AS number halves must each be 0-65535")
            number = (hi << 16) | lo
        elif re.fullmatch(r"\d{1,10}", text):
            number = int(text)
        else:
            raise ValueError("AS number must be digits or dotted 'hi.lo'")
    else:
        number = value
    if not 1 <= number <= 0xFFFFFFFF:
        raise ValueError("AS number must be between 1 and 4294967295")
    return number


ASNumber = Annotated[int, BeforeValidator(parse_as_number)]


def _cidr(value: Any) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    if not isinstance(value, str) or "/" not in value:
        raise ValueError("must be a CIDR like 10.0.0.0/16 or fd00::/64")
    try:
        return ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError("not a valid CIDR") from None


def _check_cidr(value: Any) -> str:
    _cidr(value)
    return value


CIDR = Annotated[str, BeforeValidator(_check_cidr)]


def _check_ip(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("must be an IP address string")
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ValueError("not a valid IP address") from None
    return value


IPAddress = Annotated[str, BeforeValidator(_check_ip)]


def _check_ipv4(value: Any) -> str:
    _check_ip(value)
    if ipaddress.ip_address(value).version != 4:
        raise ValueError("must be an IPv4 address (dotted quad)")
    return value


IPv4Address = Annotated[str, BeforeValidator(_check_ipv4)]


def _interface_address(version: int):
    """Node BGP address: ``ip/len`` (Calico's form) or a bare IP (taken as the host)."""

    def check(value: Any) -> str:
        if not isinstance(value, str):
            raise ValueError("must be an address string like 10.0.0.1/24")
        try:
            iface = ipaddress.ip_interface(value)
        except ValueError:
            raise ValueError("not a valid address/prefix-length") from None
        if iface.version != version:
            raise ValueError(f"must be an IPv{version} address")
        return value

    return BeforeValidator(check)


_DURATION = re.compile(r"(?:\d+(?:\.\d*)?|\.\d+)(?:ns|us|µs|μs|ms|s|m|h)")
_DURATION_UNITS = {
    "ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0,
}


def duration_seconds(text: str) -> float:
    """Seconds in a Go/Kubernetes duration string ("120s", "2m", "1h30m", "0")."""
    if text == "0":
        return 0.0
    total = 0.0
    pos = 0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            break
        part = m.group()
        unit = part.lstrip("0123456789.")
        total += float(part[: len(part) - len(unit)]) * _DURATION_UNITS[unit]
        pos = m.end()
    if pos != len(text) or not text:
        raise ValueError(f"not a duration: {text!r} (use e.g. 120s, 2m, 1h30m)")
    return total


def _check_duration(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a duration string like 120s or 2m")
    duration_seconds(value)
    return value


Duration = Annotated[str, BeforeValidator(_check_duration)]


def _check_selector(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("a selector must be a string")
    try:
        parse_selector(value)
    except SelectorError as exc:
        raise ValueError(str(exc)) from None
    return value


SelectorText = Annotated[str, BeforeValidator(_check_selector)]


def _loose_bool(value: Any) -> Any:
    """Calico stores some booleans as strings (BlockAffinity ``deleted: "false"``)."""
    if isinstance(value, str):
        low = value.strip().lower()
        if low == "true":
            return True
        if low in ("false", ""):
            return False
        raise ValueError("must be true or false")
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


LooseBool = Annotated[bool, BeforeValidator(_loose_bool)]


def _strict_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


Bool = Annotated[bool, BeforeValidator(_strict_bool)]


def _strict_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("must be an integer")
    return value


Int = Annotated[int, BeforeValidator(_strict_int)]


def _strict_str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a string")
    return value


Str = Annotated[str, BeforeValidator(_strict_str)]


# ------------------------------------------------------------------ base classes


_FIELD_KEYS: dict[type, tuple[str, ...]] = {}


class CalicoModel(BaseModel):
    """Base of every model of a Calico resource and of each part of one.

    **Read leniently, write faithfully** (docs/calico-compatibility.md, "Reading leniently,
    writing faithfully"). A field the model does not declare is *kept*, not refused: it
    lands in ``model_extra`` and `model_dump` writes it back where it was, so
    a resource read from the datastore and written again loses nothing (also
    a ``None`` value, which ``exclude_none`` would otherwise drop). Whether
    an unknown field is an error is the caller's choice, made once in
    `config.parse`: ``parse_resource(obj, strict=False)`` (datastore reads:
    the field is ignored, and the datastores log it once per resource and
    field and count it) or ``strict=True`` (what a user hands to ``bgpctl
    apply/create/replace``: refused naming the field, as ``calicoctl`` does).
    `config.parse.unknown_fields` lists them.

    New models (WorkloadEndpoint, policies, ...) subclass this (or
    `CalicoResource` for a whole ``kind``) and get both behaviours; a
    ``mode="before"`` validator that rewrites the input dict must keep keys
    it does not know (see `_drop_empty`).
    """

    model_config = ConfigDict(
        frozen=True,
        extra="allow",
        populate_by_name=True,
        alias_generator=to_camel,
        str_strip_whitespace=False,
        defer_build=True,
    )

    @classmethod
    def field_keys(cls) -> tuple[str, ...]:
        """The JSON keys (camelCase aliases) this model declares."""
        keys = _FIELD_KEYS.get(cls)
        if keys is None:
            keys = _FIELD_KEYS[cls] = tuple(f.alias or n for n, f in cls.model_fields.items())
        return keys

    @model_serializer(mode="wrap")
    def _keep_unknown(self, handler: Any) -> Any:
        data = handler(self)
        extra = self.__pydantic_extra__
        if extra and isinstance(data, dict):
            for key, value in extra.items():
                data.setdefault(key, value)  # exclude_none dropped a null one: put it back
        return data


_Model = CalicoModel


def _drop_empty(data: Any, keys: tuple[str, ...], empty: tuple[Any, ...] = ("",)) -> Any:
    """``data`` without the known ``keys`` whose value is "unset" in Calico's Go structs
    (``""``, or what ``empty`` says); unknown keys are kept whatever their value."""
    if not isinstance(data, dict):
        return data
    return {k: v for k, v in data.items() if not (k in keys and any(v == e for e in empty))}


# Kubernetes/Calico object names: DNS-1123 subdomain (lowercase, digits, '-', '.').
_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_LABEL_NAME = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?")
_DNS_PREFIX = _NAME


def _label_text(value: Any) -> str:
    # YAML 1.1 turns `routeReflector: true` into a bool; Calico's data has it.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if not isinstance(value, str):
        raise ValueError("label values must be strings")
    return value


def _check_label_key(key: str) -> None:
    prefix, _, name = key.rpartition("/")
    if "/" in key and (not prefix or len(prefix) > 253 or not _DNS_PREFIX.fullmatch(prefix)):
        raise ValueError(f"label key {key!r}: prefix must be a DNS subdomain")
    if not name or len(name) > 63 or not _LABEL_NAME.fullmatch(name):
        raise ValueError(
            f"label key {key!r}: name must be 1-63 characters of [A-Za-z0-9-_.], "
            "starting and ending with an alphanumeric"
        )


def _rfc3339(value: Any) -> Any:
    # A YAML loader with timestamps turns an unquoted RFC 3339 time into a datetime.
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=_dt.UTC)
        return value.astimezone(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return value


def check_labels(value: Any) -> Any:
    """Kubernetes labels: a mapping of valid keys to valid values (YAML booleans and
    numbers as their text); ValueError naming the bad one. None stays None."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError("labels must be a mapping of strings")
    out = {}
    for key, val in value.items():
        if not isinstance(key, str):
            raise ValueError(f"label key {key!r} must be a string")
        _check_label_key(key)
        text = _label_text(val)
        if len(text) > 63 or not _LABEL_NAME.fullmatch(text):
            raise ValueError(
                f"label {key!r} value {text!r} must be at most 63 characters of "
                "[A-Za-z0-9-_.], starting and ending with an alphanumeric"
            )
        out[key] = text
    return out


class Metadata(_Model):
    """Kubernetes-style object metadata; ``name`` is required."""

    name: Str
    namespace: Str | None = None
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None
    resource_version: Str | None = None
    uid: Str | None = None
    creation_timestamp: Str | None = None
    deletion_timestamp: Str | None = None
    deletion_grace_period_seconds: Int | None = None
    generation: Int | None = None
    generate_name: Str | None = None
    self_link: Str | None = None
    owner_references: list[dict[str, Any]] | None = None
    finalizers: list[Str] | None = None
    managed_fields: list[dict[str, Any]] | None = None

    @field_validator("resource_version", "uid", mode="before")
    @classmethod
    def _numbers_as_text(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return value

    @field_validator("creation_timestamp", "deletion_timestamp", mode="before")
    @classmethod
    def _timestamp_text(cls, value: Any) -> Any:
        return _rfc3339(value)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not value:
            raise ValueError("name must not be empty")
        if len(value) > 253 or not _NAME.fullmatch(value):
            raise ValueError(
                "name must be lowercase letters, digits, '-' and '.', "
                "starting and ending with a letter or digit (max 253)"
            )
        return value

    @field_validator("labels", mode="before")
    @classmethod
    def _labels(cls, value: Any) -> Any:
        return check_labels(value)

    @field_validator("annotations", mode="before")
    @classmethod
    def _annotations(cls, value: Any) -> Any:
        if value is None:
            return None
        if not isinstance(value, dict):
            raise ValueError("annotations must be a mapping of strings")
        return {k: _label_text(v) if not isinstance(v, str) else v for k, v in value.items()}


def _null_spec_to_empty(data: Any) -> Any:
    # Calico accepts `spec:` with nothing under it (YAML null).
    if isinstance(data, dict) and "spec" in data and data["spec"] is None:
        data = {**data, "spec": {}}
    return data


class CalicoResource(CalicoModel):
    """A whole ``projectcalico.org/v3`` object: ``apiVersion``, ``kind``, ``metadata``, ``spec``."""

    api_version: Literal["projectcalico.org/v3"] = API_VERSION
    metadata: Metadata

    @model_validator(mode="before")
    @classmethod
    def _null_spec(cls, data: Any) -> Any:
        return _null_spec_to_empty(data)

    @property
    def name(self) -> str:
        return self.metadata.name


_Resource = CalicoResource


# ------------------------------------------------------------------ IPPool

EncapMode = Literal["Never", "Always", "CrossSubnet"]


def _encap_mode(value: Any) -> Any:
    # Calico treats an empty mode as Never (and lower-case "always" from v1 data).
    if value is None or value == "":
        return "Never"
    if isinstance(value, str):
        for mode in ("Never", "Always", "CrossSubnet"):
            if value.lower() == mode.lower():
                return mode
    return value


class IPIPConfiguration(_Model):
    """Deprecated v1-era ``spec.ipip`` block, still present in old etcd data."""

    enabled: Bool | None = None
    mode: Literal["always", "cross-subnet", ""] | None = None


class IPPoolSpec(_Model):
    cidr: Str
    ipip_mode: Annotated[EncapMode, BeforeValidator(_encap_mode)] = "Never"
    vxlan_mode: Annotated[EncapMode, BeforeValidator(_encap_mode)] = "Never"
    nat_outgoing: Bool = False
    disabled: Bool = False
    disable_bgp_export: Bool = Field(False, alias="disableBGPExport")
    block_size: Int = 0  # 0 only transiently: filled from the CIDR's family below
    node_selector: SelectorText = "all()"
    namespace_selector: SelectorText | None = None
    allowed_uses: tuple[Literal["Workload", "Tunnel", "LoadBalancer"], ...] = (
        "Workload",
        "Tunnel",
    )
    assignment_mode: Literal["Automatic", "Manual"] | None = None
    ipip: IPIPConfiguration | None = None
    nat_outgoing_v1: Bool | None = Field(None, alias="nat-outgoing")

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if data.get("nodeSelector") in (None, ""):
            data.pop("nodeSelector", None)
        if data.get("namespaceSelector") == "":
            data.pop("namespaceSelector")
        if data.get("allowedUses") in (None, []):
            data.pop("allowedUses", None)
        cidr = data.get("cidr")
        if data.get("blockSize") in (None, 0) and isinstance(cidr, str):
            try:
                net = ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                return data  # the cidr check below reports it
            data["blockSize"] = (
                DEFAULT_BLOCK_SIZE_V4 if net.version == 4 else DEFAULT_BLOCK_SIZE_V6
            )
        return data

    @field_validator("cidr")
    @classmethod
    def _cidr_strict(cls, value: str) -> str:
        net = _cidr(value)
        if net.network_address != ipaddress.ip_interface(value).ip:
            raise PydanticCustomError(
                "podbgp_cidr",
                "IPPool CIDR must be strictly masked (host bits set; did you mean {net}?)",
                {"net": str(net)},
            )
        if net.version == 4 and net.overlaps(ipaddress.ip_network("127.0.0.0/8")):
            raise ValueError("IP pool overlaps the IPv4 loopback range 127.0.0.0/8")
        if net.version == 4 and net.overlaps(ipaddress.ip_network("169.254.0.0/16")):
            raise ValueError("IP pool overlaps the IPv4 link-local range 169.254.0.0/16")
        if net.version == 6 and net.overlaps(ipaddress.ip_network("fe80::/10")):
            raise ValueError("IP pool overlaps the IPv6 link-local range fe80::/10")
        if net.is_multicast:
            raise ValueError("IP pool must not be a multicast range")
        return str(net)  # canonical text, as Calico's IPNet marshals it

    @field_validator("allowed_uses")
    @classmethod
    def _uses(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(value)) != len(value):
            raise ValueError("allowedUses must not repeat a value")
        if "LoadBalancer" in value and len(value) > 1:
            raise ValueError("LoadBalancer cannot be combined with other allowedUses")
        return value

    @model_validator(mode="after")
    def _cross_checks(self) -> IPPoolSpec:
        net = ipaddress.ip_network(self.cidr)
        lo, hi = (20, 32) if net.version == 4 else (116, 128)
        if not lo <= self.block_size <= hi:
            raise field_error(
                "blockSize",
                self.block_size,
                "blockSize must be between 20 and 32 for IPv4 pools, "
                "and between 116 and 128 for IPv6 pools",
            )
        if self.block_size < net.prefixlen:
            raise field_error(
                "blockSize",
                self.block_size,
                f"blockSize must not be smaller than the pool's prefix length /{net.prefixlen}",
            )
        if net.version == 6 and self.ipip_mode != "Never":
            raise field_error("ipipMode", self.ipip_mode, "IPIP is not supported on IPv6 pools")
        if self.ipip_mode != "Never" and self.vxlan_mode != "Never":
            raise field_error(
                "vxlanMode",
                self.vxlan_mode,
                "ipipMode and vxlanMode cannot both be enabled on one pool",
            )
        return self

    @property
    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        return ipaddress.ip_network(self.cidr)

    @property
    def selector(self):
        return parse_selector(self.node_selector)


class Condition(_Model):
    """A Kubernetes ``metav1.Condition`` (IPPool status); kept, not acted on."""

    type: Str
    status: Str
    reason: Str | None = None
    message: Str | None = None
    last_transition_time: Str | None = None
    observed_generation: Int | None = None

    @field_validator("last_transition_time", mode="before")
    @classmethod
    def _timestamp_text(cls, value: Any) -> Any:
        return _rfc3339(value)


class IPPoolStatus(_Model):
    conditions: tuple[Condition, ...] | None = None


class IPPool(_Resource):
    kind: Literal["IPPool"] = "IPPool"
    spec: IPPoolSpec
    status: IPPoolStatus | None = None


# ------------------------------------------------------------------ BGPConfiguration

_COMMUNITY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def community_value(text: str) -> tuple[int, ...] | None:
    """(a, b) for a standard ``aa:nn`` community, (a, b, c) for a large one, else None."""
    parts = text.split(":")
    if len(parts) not in (2, 3) or not all(p.isdigit() and len(p) <= 10 for p in parts):
        return None
    nums = tuple(int(p) for p in parts)
    limit = 0xFFFF if len(nums) == 2 else 0xFFFFFFFF
    if any(n > limit for n in nums):
        return None
    return nums


def _check_community_value(value: Any) -> str:
    if not isinstance(value, str) or community_value(value) is None:
        raise ValueError(
            "community must be 'aa:nn' (two 16-bit numbers) or 'aa:nn:mm' "
            "(three 32-bit numbers, a large community)"
        )
    return value


class Community(_Model):
    name: Str
    value: Annotated[str, BeforeValidator(_check_community_value)]

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _COMMUNITY_NAME.fullmatch(value):
            raise ValueError("community name must be letters, digits, '.', '_' or '-'")
        return value


class PrefixAdvertisement(_Model):
    cidr: CIDR
    communities: tuple[Str, ...] = ()


class ServiceCIDR(_Model):
    """One entry of serviceClusterIPs/ExternalIPs/LoadBalancerIPs; ``{}`` is legal."""

    cidr: CIDR | None = None


class SecretKeyRef(_Model):
    name: Str
    key: Str
    optional: Bool | None = None

    @field_validator("name", "key")
    @classmethod
    def _nonempty(cls, value: str) -> str:
        if not value:
            raise ValueError("must not be empty")
        return value


class BGPPassword(_Model):
    """Calico's shape: the password is a Kubernetes secret reference, resolved by the daemon."""

    secret_key_ref: SecretKeyRef | None = None


LogSeverity = Literal["Trace", "Debug", "Info", "Warning", "Error", "Fatal"]


def _severity(value: Any) -> Any:
    if isinstance(value, str):
        for level in ("Trace", "Debug", "Info", "Warning", "Error", "Fatal"):
            if value.lower() == level.lower():
                return level
        if value.lower() == "warn":
            return "Warning"
    return value


def _port(value: Any) -> int:
    value = _strict_int(value)
    if not 1 <= value <= 65535:
        raise ValueError("port must be between 1 and 65535")
    return value


Port = Annotated[int, BeforeValidator(_port)]

# Calico's route priorities (BGPConfiguration ipvXNormalRoutePriority, BGPFilter
# priority/setPriority): 1 .. 2^31-2, mapped to LOCAL_PREF as 2^31-1 - priority
# (confd template_funcs.go BirdIntMaxValue).
PRIORITY_MAX = 2147483646
LOCAL_PREF_OF_PRIORITY = 2147483647


def _priority(value: Any) -> int:
    value = _strict_int(value)
    if not 1 <= value <= PRIORITY_MAX:
        raise ValueError(f"priority must be between 1 and {PRIORITY_MAX}")
    return value


class BGPConfigurationSpec(_Model):
    """Unset fields stay None (as Calico stores them); see `Snapshot.effective_bgp_config`."""

    log_severity_screen: Annotated[LogSeverity, BeforeValidator(_severity)] | None = None
    node_to_node_mesh_enabled: Bool | None = None
    as_number: ASNumber | None = None
    service_cluster_ips: tuple[ServiceCIDR, ...] | None = Field(None, alias="serviceClusterIPs")
    service_external_ips: tuple[ServiceCIDR, ...] | None = Field(
        None, alias="serviceExternalIPs"
    )
    service_load_balancer_ips: tuple[ServiceCIDR, ...] | None = Field(
        None, alias="serviceLoadBalancerIPs"
    )
    listen_port: Port | None = None
    communities: tuple[Community, ...] | None = None
    prefix_advertisements: tuple[PrefixAdvertisement, ...] | None = None
    node_mesh_password: BGPPassword | None = None
    node_mesh_max_restart_time: Duration | None = None
    bind_mode: Literal["None", "NodeIP"] | None = None
    ignored_interfaces: tuple[Str, ...] | None = None
    local_workload_peering_ipv4: IPAddress | None = Field(None, alias="localWorkloadPeeringIPV4")
    local_workload_peering_ipv6: IPAddress | None = Field(None, alias="localWorkloadPeeringIPV6")
    service_load_balancer_aggregation: Literal["Enabled", "Disabled"] | None = None
    program_cluster_routes: Literal[
        "Enabled", "Disabled", "EnabledIPIPOnly", "EnabledNoEncapOnly"
    ] | None = None
    ipv4_normal_route_priority: Annotated[int, BeforeValidator(_priority)] | None = Field(
        None, alias="ipv4NormalRoutePriority"
    )
    ipv6_normal_route_priority: Annotated[int, BeforeValidator(_priority)] | None = Field(
        None, alias="ipv6NormalRoutePriority"
    )

    @model_validator(mode="after")
    def _cross_checks(self) -> BGPConfigurationSpec:
        if self.node_to_node_mesh_enabled is False and self.node_mesh_max_restart_time is not None:
            raise field_error(
                "nodeMeshMaxRestartTime",
                self.node_mesh_max_restart_time,
                "nodeMeshMaxRestartTime cannot be set when nodeToNodeMeshEnabled is false",
            )
        if self.node_to_node_mesh_enabled is False and self.node_mesh_password is not None:
            raise field_error(
                "nodeMeshPassword",
                "<secret ref>",
                "nodeMeshPassword cannot be set when nodeToNodeMeshEnabled is false",
            )
        names = [c.name for c in self.communities or ()]
        seen: set[str] = set()
        for i, name in enumerate(names):
            if name in seen:
                raise field_error(f"communities[{i}].name", name, "community name is repeated")
            seen.add(name)
        for i, adv in enumerate(self.prefix_advertisements or ()):
            for j, comm in enumerate(adv.communities):
                if comm not in seen and community_value(comm) is None:
                    raise field_error(
                        f"prefixAdvertisements[{i}].communities[{j}]",
                        comm,
                        "neither a community defined in spec.communities nor a community "
                        "value like 100:200 or 100:200:300",
                    )
        if self.local_workload_peering_ipv4 and ":" in self.local_workload_peering_ipv4:
            raise field_error(
                "localWorkloadPeeringIPV4",
                self.local_workload_peering_ipv4,
                "must be an IPv4 address",
            )
        if self.local_workload_peering_ipv6 and ":" not in self.local_workload_peering_ipv6:
            raise field_error(
                "localWorkloadPeeringIPV6",
                self.local_workload_peering_ipv6,
                "must be an IPv6 address",
            )
        return self

    def community_values(self, refs: tuple[str, ...]) -> tuple[str, ...]:
        """Resolve community names (from ``communities``) or literal values to values."""
        by_name = {c.name: c.value for c in self.communities or ()}
        return tuple(by_name.get(r, r) for r in refs)


class BGPConfiguration(_Resource):
    kind: Literal["BGPConfiguration"] = "BGPConfiguration"
    spec: BGPConfigurationSpec = Field(default_factory=BGPConfigurationSpec)

    @property
    def node(self) -> str | None:
        """The node a ``node.<name>`` configuration applies to (None for global ones)."""
        name = self.metadata.name
        return name[len("node."):] if name.startswith("node.") else None


# ------------------------------------------------------------------ BGPPeer


def split_peer_ip(text: str) -> tuple[str, int | None]:
    """``10.0.0.1``, ``10.0.0.1:179``, ``fd00::1``, ``[fd00::1]:179`` -> (ip, port|None)."""
    if not isinstance(text, str) or not text:
        raise ValueError("peerIP must be an IP address, optionally with :port")
    host, port = text, None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError("peerIP '[' without ']'")
        host, rest = text[1:end], text[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ValueError("peerIP: expected ':port' after ']'")
            port = rest[1:]
        if ":" not in host:
            raise ValueError("peerIP: brackets are only for IPv6 addresses")
    elif text.count(":") == 1:
        host, port = text.split(":")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError("peerIP must be an IP address, optionally with :port") from None
    if port is None:
        return host, None
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError("peerIP port must be between 1 and 65535")
    return host, int(port)


def _check_peer_ip(value: Any) -> str:
    split_peer_ip(value)
    return value


def _ttl(value: Any) -> int:
    value = _strict_int(value)
    if not 0 <= value <= 255:
        raise ValueError("ttlSecurity must be between 0 and 255 hops")
    return value


def _allowed_local_as(value: Any) -> int:
    value = _strict_int(value)
    if not 0 <= value <= 0x7FFFFFFF:
        raise ValueError("numAllowedLocalASNumbers must not be negative")
    return value


_FILTER_NAME = _NAME


class BGPPeerSpec(_Model):
    node: Str | None = None
    peer_ip: Annotated[str, BeforeValidator(_check_peer_ip)] | None = Field(None, alias="peerIP")
    as_number: ASNumber | None = None
    node_selector: SelectorText | None = None
    peer_selector: SelectorText | None = None
    keep_original_next_hop: Bool | None = None
    password: BGPPassword | None = None
    source_address: Literal["UseNodeIP", "None"] | None = None
    failure_detection_mode: Literal["None", "BFDIfDirectlyConnected"] | None = None
    restart_mode: Literal["GracefulRestart", "LongLivedGracefulRestart"] | None = None
    max_restart_time: Duration | None = None
    bird_gateway_mode: Literal["Recursive", "DirectIfDirectlyReachable"] | None = None
    keepalive_time: Duration | None = None
    num_allowed_local_as_numbers: Annotated[int, BeforeValidator(_allowed_local_as)] | None = (
        Field(None, alias="numAllowedLocalASNumbers")
    )
    ttl_security: Annotated[int, BeforeValidator(_ttl)] | None = None
    filters: tuple[Str, ...] | None = None
    local_as_number: ASNumber | None = Field(None, alias="localASNumber")
    reachable_by: IPAddress | None = None
    next_hop_mode: Literal["Auto", "Self", "Keep"] | None = None
    local_workload_selector: SelectorText | None = None
    reverse_peering: Literal["Auto", "Manual"] | None = None

    @model_validator(mode="before")
    @classmethod
    def _empty_is_unset(cls, data: Any) -> Any:
        # Calico's Go structs use "" for "not set" on these string fields.
        if isinstance(data, dict):
            data = {
                k: v
                for k, v in data.items()
                if not (
                    v == ""
                    and k in ("node", "peerIP", "nodeSelector", "peerSelector", "sourceAddress",
                              "failureDetectionMode", "restartMode", "birdGatewayMode",
                              "nextHopMode", "reachableBy", "localWorkloadSelector",
                              "reversePeering")
                )
            }
        return data

    @field_validator("filters")
    @classmethod
    def _filters(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        for name in value or ():
            if not _FILTER_NAME.fullmatch(name):
                raise ValueError(f"filter name {name!r} is not a valid resource name")
        return value

    @field_validator("node")
    @classmethod
    def _node(cls, value: str | None) -> str | None:
        if value is not None and not _NAME.fullmatch(value):
            raise ValueError("node must be a valid node name")
        return value

    @model_validator(mode="after")
    def _cross_checks(self) -> BGPPeerSpec:
        if self.node is not None and self.node_selector is not None:
            raise field_error(
                "nodeSelector", self.node_selector, "node and nodeSelector cannot both be set"
            )
        if self.peer_ip is not None and self.peer_selector is not None:
            raise field_error(
                "peerSelector", self.peer_selector, "peerIP and peerSelector cannot both be set"
            )
        if self.peer_selector is not None and self.as_number is not None:
            raise field_error(
                "asNumber",
                self.as_number,
                "asNumber cannot be set with peerSelector (the peers' own AS is used)",
            )
        if self.local_workload_selector is not None:
            for other, alias in ((self.peer_ip, "peerIP"), (self.peer_selector, "peerSelector")):
                if other is not None:
                    raise field_error(alias, other,
                                      f"{alias} must be empty when localWorkloadSelector is set")
            if self.as_number is None:
                raise field_error("asNumber", None,
                                  "asNumber is required when localWorkloadSelector is set")
        if self.reachable_by is not None and self.peer_ip is None:
            raise field_error("reachableBy", self.reachable_by,
                              "reachableBy must be empty when peerIP is empty")
        if self.reachable_by is not None and self.peer_ip is not None:
            peer = ipaddress.ip_address(split_peer_ip(self.peer_ip)[0])
            if ipaddress.ip_address(self.reachable_by).version != peer.version:
                raise field_error(
                    "reachableBy", self.reachable_by, "reachableBy must be the peerIP's family"
                )
        if self.keep_original_next_hop and self.next_hop_mode not in (None, "Auto", "Keep"):
            raise field_error(
                "nextHopMode",
                self.next_hop_mode,
                "nextHopMode Self contradicts keepOriginalNextHop: true",
            )
        return self

    @property
    def peer_address(self) -> str | None:
        """The peer's IP without the port."""
        return None if self.peer_ip is None else split_peer_ip(self.peer_ip)[0]

    @property
    def peer_port(self) -> int | None:
        """The port given with ``peerIP`` (None: the standard 179 / listenPort)."""
        return None if self.peer_ip is None else split_peer_ip(self.peer_ip)[1]

    @property
    def is_global(self) -> bool:
        """Applies to every node (neither ``node`` nor ``nodeSelector`` set)."""
        return self.node is None and self.node_selector is None


class BGPPeer(_Resource):
    kind: Literal["BGPPeer"] = "BGPPeer"
    spec: BGPPeerSpec = Field(default_factory=BGPPeerSpec)


# ------------------------------------------------------------------ BGPFilter


def _interface_glob(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9_.*+\-]{1,15}", value):
        raise ValueError(
            "interface must be an interface name or glob of at most 15 characters "
            "([A-Za-z0-9_.+-] and '*')"
        )
    return value


class PrefixLength(_Model):
    min: Int | None = None
    max: Int | None = None


CommunityValue = Annotated[str, BeforeValidator(_check_community_value)]


class BGPFilterCommunityMatch(_Model):
    """``communities: {values: [aa:nn]}``: exactly one value (Calico v3.32 MinItems=MaxItems=1)."""

    values: tuple[CommunityValue, ...]

    @field_validator("values")
    @classmethod
    def _one(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(value) != 1:
            raise ValueError("exactly one community value must be given")
        return value


class BGPFilterAddCommunity(_Model):
    value: CommunityValue


class BGPFilterPrependASPath(_Model):
    prefix: tuple[ASNumber, ...]

    @field_validator("prefix")
    @classmethod
    def _size(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not 1 <= len(value) <= 10:
            raise ValueError("prefix must list 1 to 10 AS numbers")
        return value


class BGPFilterSetPriority(_Model):
    value: Annotated[int, BeforeValidator(_priority)]


class BGPFilterOperation(_Model):
    """Exactly one of ``addCommunity``, ``prependASPath``, ``setPriority``."""

    add_community: BGPFilterAddCommunity | None = None
    prepend_as_path: BGPFilterPrependASPath | None = Field(None, alias="prependASPath")
    set_priority: BGPFilterSetPriority | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> BGPFilterOperation:
        n = sum(x is not None for x in (self.add_community, self.prepend_as_path,
                                        self.set_priority))
        if n != 1:
            raise field_error("", None, "an operation sets exactly one of addCommunity, "
                              "prependASPath, setPriority")
        return self


class BGPFilterRule(_Model):
    """One rule; the family (v4/v6) is that of the list it sits in."""

    action: Literal["Accept", "Reject"]
    cidr: CIDR | None = None
    prefix_length: PrefixLength | None = None
    match_operator: Literal["Equal", "NotEqual", "In", "NotIn"] | None = None
    source: Literal["RemotePeers"] | None = None
    interface: Annotated[str, BeforeValidator(_interface_glob)] | None = None
    peer_type: Literal["eBGP", "iBGP"] | None = None
    communities: BGPFilterCommunityMatch | None = None
    as_path_prefix: tuple[ASNumber, ...] | None = Field(None, alias="asPathPrefix")
    priority: Annotated[int, BeforeValidator(_priority)] | None = None
    operations: tuple[BGPFilterOperation, ...] | None = None

    @model_validator(mode="before")
    @classmethod
    def _empty_is_unset(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = {
                k: v
                for k, v in data.items()
                if not (v == "" and k in ("cidr", "matchOperator", "source", "interface",
                                          "peerType"))
            }
        return data

    @model_validator(mode="after")
    def _pairs(self) -> BGPFilterRule:
        if (self.cidr is None) != (self.match_operator is None):
            missing = "matchOperator" if self.match_operator is None else "cidr"
            raise field_error(missing, None, "cidr and matchOperator must be set together")
        if self.prefix_length is not None and self.cidr is None:
            raise field_error("prefixLength", None, "prefixLength needs cidr")
        if self.operations and self.action != "Accept":
            raise field_error("operations", None, "operations may only be used with action Accept")
        if self.operations is not None and not 1 <= len(self.operations) <= 10:
            raise field_error("operations", None, "operations must list 1 to 10 operations")
        return self

    def check_family(self, version: int) -> None:
        """Raise a field error if this rule's CIDR or prefix lengths do not fit ``version``."""
        width = 32 if version == 4 else 128
        if self.cidr is not None and _cidr(self.cidr).version != version:
            raise field_error("cidr", self.cidr, f"must be an IPv{version} CIDR in this list")
        pl = self.prefix_length
        if pl is not None and self.cidr is not None:
            base = _cidr(self.cidr).prefixlen
            for attr in ("min", "max"):
                val = getattr(pl, attr)
                if val is not None and not 0 <= val <= width:
                    raise field_error(f"prefixLength.{attr}", val, f"must be 0-{width}")
            # A min shorter than the CIDR is clamped to it, as confd does
            # (template_funcs.go filterMatchPrefixLength: max(cidr len, min)).
            if pl.max is not None and pl.max < base:
                raise field_error("prefixLength.max", pl.max,
                                  f"must not be shorter than the cidr's /{base}")
            if pl.min is not None and pl.max is not None and pl.min > pl.max:
                raise field_error("prefixLength.min", pl.min, "min must not exceed max")

    @property
    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
        return None if self.cidr is None else _cidr(self.cidr)


class BGPFilterSpec(_Model):
    export_v4: tuple[BGPFilterRule, ...] = ()
    import_v4: tuple[BGPFilterRule, ...] = ()
    export_v6: tuple[BGPFilterRule, ...] = ()
    import_v6: tuple[BGPFilterRule, ...] = ()

    @model_validator(mode="before")
    @classmethod
    def _null_lists(cls, data: Any) -> Any:
        return _drop_empty(data, ("exportV4", "importV4", "exportV6", "importV6"), (None,))

    @model_validator(mode="after")
    def _families(self) -> BGPFilterSpec:
        for attr, alias, version in (
            ("export_v4", "exportV4", 4),
            ("import_v4", "importV4", 4),
            ("export_v6", "exportV6", 6),
            ("import_v6", "importV6", 6),
        ):
            for i, rule in enumerate(getattr(self, attr)):
                try:
                    rule.check_family(version)
                except PydanticCustomError as exc:
                    ctx = exc.context or {}
                    raise field_error(
                        f"{alias}[{i}].{ctx.get('field')}", ctx.get("value"), ctx.get("reason")
                    ) from None
        return self


class BGPFilter(_Resource):
    kind: Literal["BGPFilter"] = "BGPFilter"
    spec: BGPFilterSpec = Field(default_factory=BGPFilterSpec)


# ------------------------------------------------------------------ Node


class NodeBGPSpec(_Model):
    ipv4_address: Annotated[str, _interface_address(4)] | None = None
    ipv6_address: Annotated[str, _interface_address(6)] | None = None
    as_number: ASNumber | None = None
    route_reflector_cluster_id: IPv4Address | None = Field(
        None, alias="routeReflectorClusterID"
    )
    ipv4_ipip_tunnel_addr: IPAddress | None = Field(None, alias="ipv4IPIPTunnelAddr")

    @model_validator(mode="before")
    @classmethod
    def _empty_is_unset(cls, data: Any) -> Any:
        return _drop_empty(data, cls.field_keys())

    @property
    def ipv4(self) -> str | None:
        """The IPv4 address without the prefix length."""
        return None if not self.ipv4_address else str(ipaddress.ip_interface(self.ipv4_address).ip)

    @property
    def ipv6(self) -> str | None:
        return None if not self.ipv6_address else str(ipaddress.ip_interface(self.ipv6_address).ip)


class OrchRef(_Model):
    orchestrator: Str | None = None
    node_name: Str | None = None


class NodeAddress(_Model):
    address: Str
    type: Literal["CalicoNodeIP", "InternalIP", "ExternalIP", ""] | None = None

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        try:
            ipaddress.ip_interface(value)
        except ValueError:
            raise ValueError("not an IP address (optionally with /len)") from None
        return value


class NodeInterface(_Model):
    """``spec.interfaces[]`` (calico-node v3.31+ writes it at start): kept, not acted on."""

    name: Str | None = None
    addresses: tuple[Str, ...] | None = None


class NodeWireguardSpec(_Model):
    interface_ipv4_address: IPAddress | None = Field(None, alias="interfaceIPv4Address")
    interface_ipv6_address: IPAddress | None = Field(None, alias="interfaceIPv6Address")


class NodeSpec(_Model):
    bgp: NodeBGPSpec | None = None
    ipv4_vxlan_tunnel_addr: IPAddress | None = Field(None, alias="ipv4VXLANTunnelAddr")
    vxlan_tunnel_mac_addr: Str | None = Field(None, alias="vxlanTunnelMACAddr")
    ipv6_vxlan_tunnel_addr: IPAddress | None = Field(None, alias="ipv6VXLANTunnelAddr")
    vxlan_tunnel_mac_addr_v6: Str | None = Field(None, alias="vxlanTunnelMACAddrV6")
    orch_refs: tuple[OrchRef, ...] | None = None
    wireguard: NodeWireguardSpec | None = None
    addresses: tuple[NodeAddress, ...] | None = None
    interfaces: tuple[NodeInterface, ...] | None = None

    @model_validator(mode="before")
    @classmethod
    def _empty_is_unset(cls, data: Any) -> Any:
        return _drop_empty(data, cls.field_keys())


class NodeStatus(_Model):
    wireguard_public_key: Str | None = None
    wireguard_public_key_v6: Str | None = Field(None, alias="wireguardPublicKeyV6")
    pod_cidrs: tuple[Str, ...] | None = Field(None, alias="podCIDRs")


class Node(_Resource):
    kind: Literal["Node"] = "Node"
    spec: NodeSpec = Field(default_factory=NodeSpec)
    status: NodeStatus | None = None

    @model_validator(mode="before")
    @classmethod
    def _null_status(cls, data: Any) -> Any:
        if isinstance(data, dict) and "status" in data and data["status"] is None:
            data = {k: v for k, v in data.items() if k != "status"}
        return data


# ------------------------------------------------------------------ BlockAffinity

AffinityState = Literal["confirmed", "pending", "pendingDeletion", ""]


class BlockAffinitySpec(_Model):
    node: Str
    cidr: CIDR
    state: AffinityState = ""
    deleted: LooseBool = False
    type: Literal["host", "virtual", ""] | None = None

    @field_validator("cidr")
    @classmethod
    def _canonical(cls, value: str) -> str:
        net = _cidr(value)
        if net.network_address != ipaddress.ip_interface(value).ip:
            raise ValueError(f"block CIDR has host bits set (did you mean {net}?)")
        return str(net)

    @field_validator("node")
    @classmethod
    def _node(cls, value: str) -> str:
        if not value or not _NAME.fullmatch(value):
            raise ValueError("node must be a valid node name")
        return value


class BlockAffinity(_Resource):
    kind: Literal["BlockAffinity"] = "BlockAffinity"
    spec: BlockAffinitySpec

    def to_affinity(self) -> Affinity:
        return Affinity(self.spec.node, self.spec.cidr, self.spec.state, self.spec.deleted)


@dataclass(frozen=True, slots=True)
class Affinity:
    """A normalized block affinity: node ``node`` owns block ``cidr``.

    Built by `config.parse.parse_affinity` from an etcd host-affinity key, or
    from a v3 `BlockAffinity`. Only ``confirmed`` or state-less (``""``) and
    not-deleted affinities are advertised (`advertised`).
    """

    node: str
    cidr: str
    state: str = ""
    deleted: bool = False

    @property
    def advertised(self) -> bool:
        return not self.deleted and self.state in ("confirmed", "")

    @property
    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        return ipaddress.ip_network(self.cidr)


@dataclass(frozen=True, slots=True)
class Lent:
    """An address of ``owner``'s IPAM block that IPAM allocated to a pod on ``holder``
    (a borrowed address: the allocation's ``secondary`` attribute ``node``).

    Calico routes it as a /32 (/128) from the holder, which overrides the owner's
    block route; built by `config.parse.parse_block_lending` from IPAM blocks.
    """

    ip: str
    holder: str
    owner: str

    @property
    def prefix(self) -> str:
        return f"{self.ip}/{128 if ':' in self.ip else 32}"


Resource = IPPool | BGPConfiguration | BGPPeer | BGPFilter | Node | BlockAffinity

MODELS: dict[str, type[_Resource]] = {
    "IPPool": IPPool,
    "BGPConfiguration": BGPConfiguration,
    "BGPPeer": BGPPeer,
    "BGPFilter": BGPFilter,
    "Node": Node,
    "BlockAffinity": BlockAffinity,
}
