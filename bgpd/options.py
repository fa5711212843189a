"""bgpd's command line (README.md, "Running it"): options, env fallbacks, checks.

Every option falls back to the environment variable named beside it (Calico's
names where Calico has one). A bad value is a usage error (exit 2) with one
line naming the option and the value.
"""

from __future__ import annotations

import argparse
import os
import socket
from dataclasses import asdict, dataclass

from bgpd import __version__
from bgpd.ops.http import parse_listen

# Not 12 (BIRD), 17 (kube-router), 80 (Felix), 186-192 (FRR & co), 42 (zebra
# ancient), 99 (ntk)... 201 is unassigned in /etc/iproute2/rt_protos.
DEFAULT_ROUTE_PROTOCOL = 201
RESERVED_PROTOCOLS = {0, 1, 2, 3, 4, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 42, 80,
                      186, 187, 188, 189, 190, 191, 192}


@dataclass(frozen=True)
class CommonOptions:
    """The options every podbgp node process shares (`add_common_arguments`)."""

    node: str
    datastore: str
    etcd_endpoints: tuple[str, ...]
    etcd_ca: str | None
    etcd_cert: str | None
    etcd_key: str | None
    config_file: str | None
    http_listen: tuple[str, int]
    log_format: str | None
    log_level: str


@dataclass(frozen=True)
class Options(CommonOptions):
    route_protocol: int
    route_table: int
    state_dir: str
    convergence_timeout: float
    resync_interval: float
    max_paths: int = 1
    secrets_dir: str = "/etc/podbgp/secrets"
    # The data plane (tunnels, VTEP entries, natOutgoing): podbgp's when standalone,
    # Felix's next to calico-node (the sidecar manifest sets --dataplane off).
    dataplane: bool = True
    vxlan_vni: int = 4096
    vxlan_port: int = 4789
    vxlan_mtu: int = 0  # 0: the uplink's MTU less 50
    ipip_mtu: int = 0  # 0: the uplink's MTU less 20


class UsageError(Exception):
    pass


def _env(name: str, default=None):
    v = os.environ.get(name)
    return v if v not in (None, "") else default


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line naming the problem, not the whole usage
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def add_common_arguments(p: argparse.ArgumentParser, http_default: str,
                         http_env: str = "PODBGP_HTTP_LISTEN") -> None:
    """The options every podbgp node process shares (bgpd, podbgp-policy): node name,
    datastore, HTTP endpoint, logging. Checked by `check_common`."""
    p.add_argument("--node", default=_env("NODENAME"),
                   help="this node's name (NODENAME; default: the host name)")
    p.add_argument("--datastore", default=_env("DATASTORE_TYPE", "etcdv3"),
                   help="etcdv3 or file (DATASTORE_TYPE; default etcdv3)")
    p.add_argument("--etcd-endpoints", default=_env("ETCD_ENDPOINTS", "http://127.0.0.1:2379"),
                   help="comma-separated etcd URLs (ETCD_ENDPOINTS)")
    p.add_argument("--etcd-ca", default=_env("ETCD_CA_CERT_FILE"), help="(ETCD_CA_CERT_FILE)")
    p.add_argument("--etcd-cert", default=_env("ETCD_CERT_FILE"), help="(ETCD_CERT_FILE)")
    p.add_argument("--etcd-key", default=_env("ETCD_KEY_FILE"), help="(ETCD_KEY_FILE)")
    p.add_argument("--config-file", default=_env("PODBGP_CONFIG_FILE"),
                   help="YAML file of projectcalico.org/v3 documents for --datastore file "
                   "(PODBGP_CONFIG_FILE)")
    p.add_argument("--http-listen", default=_env(http_env, http_default),
                   help=f"ADDR:PORT for /metrics /healthz /readyz /status ({http_env}; "
                   f"default {http_default})")
    p.add_argument("--log-format", default=_env("PODBGP_LOG_FORMAT"),
                   help="json or console (default: console on a TTY, else json)")
    p.add_argument("--log-level", default=_env("PODBGP_LOG_LEVEL", "info"),
                   help="debug, info, warning, error (default info)")


def check_common(a: argparse.Namespace) -> CommonOptions:
    """Check the `add_common_arguments` options; raises UsageError naming the bad one."""
    if a.datastore not in ("etcdv3", "file"):
        raise UsageError(f"--datastore: {a.datastore!r} is not etcdv3 or file")
    if a.datastore == "file" and not a.config_file:
        raise UsageError("--datastore file needs --config-file PATH (or PODBGP_CONFIG_FILE)")
    endpoints = tuple(e.strip() for e in a.etcd_endpoints.split(",") if e.strip())
    for e in endpoints:
        if not e.startswith(("http://", "https://")):
            raise UsageError(f"--etcd-endpoints: {e!r} is not an http(s):// URL")
    if not endpoints:
        raise UsageError("--etcd-endpoints: empty")
    for opt in ("etcd_ca", "etcd_cert", "etcd_key"):
        path = getattr(a, opt)
        if path and not os.path.isfile(path):
            raise UsageError(f"--{opt.replace('_', '-')}: {path!r} is not a readable file")
    if bool(a.etcd_cert) != bool(a.etcd_key):
        raise UsageError("--etcd-cert and --etcd-key go together")
    try:
        listen = parse_listen(a.http_listen)
    except ValueError as e:
        raise UsageError(f"--http-listen: {e}") from None
    if a.log_format not in (None, "json", "console"):
        raise UsageError(f"--log-format: {a.log_format!r} is not json or console")
    if a.log_level.lower() not in ("debug", "info", "warning", "error", "critical"):
        raise UsageError(f"--log-level: {a.log_level!r} is not debug, info, warning or error")
    return CommonOptions(
        node=a.node or socket.gethostname(), datastore=a.datastore, etcd_endpoints=endpoints,
        etcd_ca=a.etcd_ca, etcd_cert=a.etcd_cert, etcd_key=a.etcd_key,
        config_file=a.config_file, http_listen=listen, log_format=a.log_format,
        log_level=a.log_level.lower())


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="bgpd",
        description="podbgp: BGP for pod networks (advertises this node's blocks, "
        "learns the others', keeps the kernel FIB in step).",
    )
    p.add_argument("--version", action="version", version=f"podbgp {__version__}")
    add_common_arguments(p, http_default="127.0.0.1:9179")
    p.add_argument("--route-protocol", default=_env("PODBGP_ROUTE_PROTOCOL",
                                                    str(DEFAULT_ROUTE_PROTOCOL)),
                   help=f"kernel route protocol number tagging podbgp's routes "
                   f"(default {DEFAULT_ROUTE_PROTOCOL})")
    p.add_argument("--route-table", default=_env("PODBGP_ROUTE_TABLE", "254"),
                   help="kernel routing table (default 254 = main)")
    p.add_argument("--state-dir", default=_env("PODBGP_STATE_DIR", "/run/podbgp"),
                   help="runtime files: ExaBGP config, sockets, pid file (default /run/podbgp)")
    p.add_argument("--convergence-timeout", default=_env("PODBGP_CONVERGENCE_TIMEOUT", "120"),
                   help="seconds after start to declare convergence and sweep stale routes if "
                   "not every peer sent End-of-RIB (default 120)")
    p.add_argument("--resync-interval", default=_env("PODBGP_RESYNC_INTERVAL", "30"),
                   help="seconds between full FIB resyncs (default 30)")
    p.add_argument("--max-paths", default=_env("PODBGP_MAX_PATHS", "1"),
                   help="ECMP: at most this many equal paths per prefix in the kernel (default 1)")
    p.add_argument("--secrets-dir", default=_env("PODBGP_SECRETS_DIR", "/etc/podbgp/secrets"),
                   help="BGP passwords: a secretKeyRef {name, key} is read from DIR/name/key, "
                   "the layout of a mounted Kubernetes secret (default /etc/podbgp/secrets)")
    p.add_argument("--dataplane", default=_env("PODBGP_DATAPLANE", "on"),
                   help="on: podbgp keeps the node's data plane (VXLAN device, tunl0, VTEP "
                   "neighbour/FDB entries, natOutgoing, every cluster route); off: another "
                   "component does (Felix, next to calico-node), podbgp programs the cluster "
                   "routes BGPConfiguration.programClusterRoutes gives BIRD (PODBGP_DATAPLANE; "
                   "default on)")
    p.add_argument("--vxlan-vni", default=_env("FELIX_VXLANVNI", "4096"),
                   help="VNI of the VXLAN device (FELIX_VXLANVNI; default 4096)")
    p.add_argument("--vxlan-port", default=_env("FELIX_VXLANPORT", "4789"),
                   help="UDP port of the VXLAN device (FELIX_VXLANPORT; default 4789)")
    p.add_argument("--vxlan-mtu", default=_env("FELIX_VXLANMTU", "0"),
                   help="MTU of the VXLAN device (FELIX_VXLANMTU; default 0: the uplink's "
                   "less 50)")
    p.add_argument("--ipip-mtu", default=_env("FELIX_IPINIPMTU", "0"),
                   help="MTU of tunl0 (FELIX_IPINIPMTU; default 0: the uplink's less 20)")
    return p


def _mtu(name: str, text: str) -> int:
    v = _int(name, text, 0, 65535)
    if 0 < v < 68:
        raise UsageError(f"{name}: {v} is below the minimum MTU 68 (0: automatic)")
    return v


def _on_off(name: str, text: str) -> bool:
    t = str(text).strip().lower()
    if t in ("on", "true", "yes", "1", "enabled"):
        return True
    if t in ("off", "false", "no", "0", "disabled"):
        return False
    raise UsageError(f"{name}: {text!r} is not on or off")


def _int(name: str, text: str, lo: int, hi: int) -> int:
    try:
        v = int(str(text), 0)
    except ValueError:
        raise UsageError(f"{name}: {text!r} is not a number") from None
    if not lo <= v <= hi:
        raise UsageError(f"{name}: {v} is out of range {lo}..{hi}")
    return v


def _float(name: str, text: str, lo: float) -> float:
    try:
        v = float(text)
    except ValueError:
        raise UsageError(f"{name}: {text!r} is not a number") from None
    if v < lo:
        raise UsageError(f"{name}: {v} must be at least {lo}")
    return v


def parse_options(argv: list[str] | None = None) -> Options:
    """Parse and check; raises UsageError (argparse's own errors exit 2 directly)."""
    a = build_parser().parse_args(argv)
    c = check_common(a)
    proto = _int("--route-protocol", a.route_protocol, 1, 255)
    if proto in RESERVED_PROTOCOLS:
        raise UsageError(f"--route-protocol: {proto} belongs to the kernel or another routing "
                         "daemon (BIRD 12, kube-router 17, Felix 80, FRR 186-192); pick another")
    table = _int("--route-table", a.route_table, 1, 2**32 - 1)
    return Options(
        **asdict(c), route_protocol=proto, route_table=table, state_dir=a.state_dir,
        convergence_timeout=_float("--convergence-timeout", a.convergence_timeout, 0),
        resync_interval=_float("--resync-interval", a.resync_interval, 1),
        max_paths=_int("--max-paths", a.max_paths, 1, 64),
        secrets_dir=a.secrets_dir,
        dataplane=_on_off("--dataplane", a.dataplane),
        vxlan_vni=_int("--vxlan-vni", a.vxlan_vni, 1, 2**24 - 1),
        vxlan_port=_int("--vxlan-port", a.vxlan_port, 1, 65535),
        vxlan_mtu=_mtu("--vxlan-mtu", a.vxlan_mtu),
        ipip_mtu=_mtu("--ipip-mtu", a.ipip_mtu),
    )
