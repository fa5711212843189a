"""``podbgp-cni``'s network configuration, validated, with Calico's key names.

Owned by cni/. Standard library only (see cni/spec.py). Example::

    {"cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "podbgp-cni",
     "etcd_endpoints": "http://127.0.0.1:2379",       # or ETCD_ENDPOINTS
     "etcd_ca_cert_file": "", "etcd_cert_file": "", "etcd_key_file": "",
     "datastore_type": "etcdv3", "nodename": "node1",  # or NODENAME, or the host name
     "mtu": 0,                                         # 0/absent: auto
     "log_level": "warning",
     "container_settings": {"allow_ip_forwarding": false},
     "include_default_routes": false,
     "interface_prefix": "cali",                       # or FELIX_INTERFACEPREFIX
     "route_protocol": "boot",                         # of the host routes to pods
     "agent_socket": "/var/run/podbgp-cni/agent.sock",
     "args": {"cni": {"labels": [{"key": "app", "value": "web"}]}},
     "ipam": {"type": "podbgp-ipam", "address_mode": "host", ...}}

Keys podbgp-cni does not know are ignored, as Calico's plugin ignores them
(runtimes add their own: ``runtimeConfig``, ``capabilities``, ``args``...);
the value of every key it uses is checked and a bad one is an error naming
the key (code 7), and a Calico option it does not implement, set to
something other than its default, is refused (code 2) rather than silently
ignored.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cni.agent import DEFAULT_AGENT_SOCKET
from cni.spec import (
    E_BAD_CONFIG,
    E_DECODE,
    E_UNSUPPORTED_FIELD,
    CNIError,
    load_config,
    opt_bool,
    opt_str,
)

DEFAULT_INTERFACE_PREFIX = "cali"
# Named route protocols (iproute2's /etc/iproute2/rt_protos); numbers 1-255 also work.
ROUTE_PROTOCOLS = {"boot": 3, "static": 4}
# Other daemons' protocols a pod route must not pretend to be (docs/architecture.md,
# "Decisions and why": BIRD 12, Felix 80, kube-router 17, FRR 186) and podbgp's own
# default (201): fib_sync manages every route of its number.
RESERVED_PROTOCOLS = {2: "kernel", 12: "BIRD", 17: "kube-router", 80: "Felix", 186: "FRR",
                      201: "podbgp's bgpd (its FIB sync owns that number)"}
_DNS = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_PREFIX = re.compile(r"[A-Za-z0-9_.-]{1,4}")

# Calico options that change behaviour and that podbgp-cni does not implement:
# accepted at their default, refused otherwise (code 2 names key and value).
_UNIMPLEMENTED = {
    "mode": ("",),                       # "vxlan" (Windows/overlay mode)
    "device_type": ("", "veth"),         # "netkit"
    "readiness_gates": (None, []),
    "policy_setup_timeout_seconds": (0, None),
    "windows_use_single_network": (False, None),
}


@dataclass
class NetConf:
    cni_version: str
    name: str
    nodename: str
    ipam_type: str
    raw: dict[str, Any]
    etcd_endpoints: str | None = None
    etcd_ca: str | None = None
    etcd_cert: str | None = None
    etcd_key: str | None = None
    mtu: int = 0
    log_level: str = "warning"
    allow_ip_forwarding: bool = False
    include_default_routes: bool = False
    interface_prefix: str = DEFAULT_INTERFACE_PREFIX
    route_protocol: int = 3
    agent_socket: str = DEFAULT_AGENT_SOCKET
    labels: dict[str, str] = field(default_factory=dict)
    ipam_routes: list[str] = field(default_factory=list)
    prev_result: dict[str, Any] | None = None


def _mtu(conf: Mapping[str, Any]) -> int:
    value = conf.get("mtu", 0)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not (
            value == 0 or 68 <= value <= 65535):
        raise CNIError(E_BAD_CONFIG, f"mtu: {value!r} is not 0 (auto) or an MTU of 68-65535")
    return value


def _route_protocol(conf: Mapping[str, Any]) -> int:
    value = conf.get("route_protocol", "boot")
    if isinstance(value, str) and value in ROUTE_PROTOCOLS:
        number = ROUTE_PROTOCOLS[value]
    elif isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 255:
        number = value
    else:
        raise CNIError(E_BAD_CONFIG, f"route_protocol: {value!r} is not boot, static or "
                       "a number 1-255")
    if number in RESERVED_PROTOCOLS:
        raise CNIError(E_BAD_CONFIG, f"route_protocol: {value!r} is the protocol of "
                       f"{RESERVED_PROTOCOLS[number]}; pod routes need one of their own "
                       "(default boot, as Calico's CNI plugin)")
    return number


def _labels(conf: Mapping[str, Any]) -> dict[str, str]:
    """``args.cni.labels``: the CNI conventions' ``[{"key": k, "value": v}, ...]``
    (a plain mapping is accepted too). Only the shape is checked here; whether
    each is a valid Kubernetes label is the WorkloadEndpoint model's rule
    (`config.endpoints.check_labels`), applied before anything is created."""
    args = conf.get("args")
    if args is None:
        return {}
    if not isinstance(args, Mapping):
        raise CNIError(E_BAD_CONFIG, f"args: {args!r} is not an object")
    cni_args = args.get("cni")
    if cni_args is None:
        return {}
    if not isinstance(cni_args, Mapping):
        raise CNIError(E_BAD_CONFIG, f"args.cni: {cni_args!r} is not an object")
    raw = cni_args.get("labels")
    if raw is None:
        return {}
    if isinstance(raw, Mapping):
        pairs = [(f"args.cni.labels.{k}", k, v) for k, v in raw.items()]
    elif isinstance(raw, list):
        pairs = []
        for i, item in enumerate(raw):
            if not isinstance(item, Mapping) or set(item) - {"key", "value"} or "key" not in item:
                raise CNIError(E_BAD_CONFIG, f"args.cni.labels[{i}]: {item!r} is not "
                               '{"key": ..., "value": ...}')
            pairs.append((f"args.cni.labels[{i}]", item["key"], item.get("value", "")))
    else:
        raise CNIError(E_BAD_CONFIG, f"args.cni.labels: {raw!r} is not a list of "
                       '{"key": ..., "value": ...}')
    out: dict[str, str] = {}
    for where, key, value in pairs:
        if not isinstance(key, str) or not isinstance(value, str):
            raise CNIError(E_BAD_CONFIG, f"{where}: key and value must be strings "
                           f"(got {key!r}: {value!r})")
        out[key] = value
    return out


def _ipam(conf: Mapping[str, Any]) -> tuple[str, list[str]]:
    ipam = conf.get("ipam")
    if not isinstance(ipam, Mapping):
        raise CNIError(E_BAD_CONFIG, "ipam: missing or not an object (podbgp-cni delegates "
                       'addresses to an IPAM plugin, e.g. {"type": "podbgp-ipam"})')
    kind = ipam.get("type")
    if not isinstance(kind, str) or not kind or "/" in kind or kind in (".", ".."):
        raise CNIError(E_BAD_CONFIG, f"ipam.type: {kind!r} is not a plugin name")
    routes = []
    raw = ipam.get("routes")
    if raw is not None:
        if not isinstance(raw, list):
            raise CNIError(E_BAD_CONFIG, f"ipam.routes: {raw!r} is not a list of {{dst}}")
        for i, r in enumerate(raw):
            dst = r.get("dst") if isinstance(r, Mapping) else None
            try:
                routes.append(str(ipaddress.ip_network(dst, strict=False)))
            except (ValueError, TypeError):
                raise CNIError(E_BAD_CONFIG, f"ipam.routes[{i}]: {r!r} has no valid dst") from None
    return kind, routes


def parse_netconf(text: str, env: Mapping[str, str], command: str = "") -> NetConf:
    """Validate the configuration on stdin; CNIError names the key that is wrong."""
    conf, version, name = load_config(text, command)
    for key, defaults in _UNIMPLEMENTED.items():
        if key in conf and conf[key] not in defaults:
            raise CNIError(E_UNSUPPORTED_FIELD, f"{key}: {conf[key]!r} is not supported by "
                           "podbgp-cni (remove it or use the default)")
    datastore = opt_str(conf, "datastore_type") or env.get("DATASTORE_TYPE") or "etcdv3"
    if datastore != "etcdv3":
        raise CNIError(E_BAD_CONFIG, f"datastore_type: {datastore!r} is not supported "
                       "(podbgp-cni uses etcdv3)")
    ipam_type, ipam_routes = _ipam(conf)
    settings = conf.get("container_settings") or {}
    if not isinstance(settings, Mapping):
        raise CNIError(E_BAD_CONFIG, f"container_settings: {settings!r} is not an object")
    prefix = (opt_str(conf, "interface_prefix")
              or (env.get("FELIX_INTERFACEPREFIX") or "").split(",")[0]
              or DEFAULT_INTERFACE_PREFIX)
    if not _PREFIX.fullmatch(prefix):
        raise CNIError(E_BAD_CONFIG, f"interface_prefix: {prefix!r} must be 1-4 characters "
                       "of [A-Za-z0-9_.-] (the host interface is prefix + 11 hex digits)")
    level = opt_str(conf, "log_level") or "warning"
    if level.lower() not in ("debug", "info", "warning", "warn", "error", "critical", "panic",
                             "fatal"):
        raise CNIError(E_BAD_CONFIG, f"log_level: {level!r} is not debug, info, warning or "
                       "error")
    prev = conf.get("prevResult")
    if prev is not None and not isinstance(prev, dict):
        raise CNIError(E_DECODE, f"prevResult: {prev!r} is not an object")
    return NetConf(
        cni_version=version, name=name,
        nodename=opt_str(conf, "nodename") or env.get("NODENAME") or socket.gethostname(),
        ipam_type=ipam_type, raw=conf,
        etcd_endpoints=opt_str(conf, "etcd_endpoints"),
        etcd_ca=opt_str(conf, "etcd_ca_cert_file"), etcd_cert=opt_str(conf, "etcd_cert_file"),
        etcd_key=opt_str(conf, "etcd_key_file"),
        mtu=_mtu(conf), log_level=level,
        allow_ip_forwarding=opt_bool(settings, "allow_ip_forwarding",
                                     where="container_settings."),
        include_default_routes=opt_bool(conf, "include_default_routes"),
        interface_prefix=prefix, route_protocol=_route_protocol(conf),
        agent_socket=(opt_str(conf, "agent_socket") or env.get("PODBGP_CNI_SOCKET")
                      or DEFAULT_AGENT_SOCKET),
        labels=_labels(conf), ipam_routes=ipam_routes, prev_result=prev,
    )


def pod_identity(args: Mapping[str, str], container_id: str) -> tuple[str, str, str]:
    """(namespace, pod, infra container id) from CNI_ARGS (Kubernetes' K8S_POD_*)."""
    namespace = args.get("K8S_POD_NAMESPACE", "")
    pod = args.get("K8S_POD_NAME", "")
    if not namespace or not pod:
        missing = [k for k, v in (("K8S_POD_NAMESPACE", namespace), ("K8S_POD_NAME", pod))
                   if not v]
        raise CNIError(4, "CNI_ARGS: " + " and ".join(missing) + " missing (podbgp-cni "
                       "names the pod's WorkloadEndpoint after them)")
    for what, value in (("K8S_POD_NAMESPACE", namespace), ("K8S_POD_NAME", pod)):
        if len(value) > 253 or not _DNS.fullmatch(value):
            raise CNIError(4, f"CNI_ARGS: {what}={value!r} is not a Kubernetes name")
    return namespace, pod, args.get("K8S_POD_INFRA_CONTAINER_ID") or container_id
