"""``podbgp-ipam``: the CNI IPAM plugin (ADD, DEL, CHECK, VERSION).

Owned by ipam/. One process per CNI call: reads the network configuration on
stdin and the CNI_* environment, talks to etcd through ``ipam.allocator``,
prints a result (or a CNI error object) on stdout.

Network configuration, read the way Calico's plugins read it::

    {"cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "bridge",
     "etcd_endpoints": "http://127.0.0.1:2379",      # or ETCD_ENDPOINTS
     "etcd_ca_cert_file": "...", "etcd_cert_file": "...", "etcd_key_file": "...",
     "datastore_type": "etcdv3", "nodename": "node1", # or NODENAME, or host name
     "log_level": "warning",
     "ipam": {"type": "podbgp-ipam", "assign_ipv4": "true", "assign_ipv6": "false",
              "ipv4_pools": ["default-ipv4-ippool"], "ipv6_pools": [],
              "address_mode": "block", "routes": [{"dst": "0.0.0.0/0"}],
              "empty_block_release_seconds": 300,
              "lock_file": "/var/run/podbgp/ipam.lock"}}

``address_mode`` (podbgp's own field) chooses the shape of the result:

* ``block`` (default, except under ``podbgp-cni``): the address with the
  block's prefix length (``10.0.0.5/26``) and the block's gateway
  (``10.0.0.1``). This is what the ``bridge`` plugin needs: it puts the
  gateway on the bridge and the pod reaches it on-link. The block's network
  address, gateway and (IPv4) broadcast address are never given to pods.
  Default routes: one per pool used (``dst`` = pool CIDR) via that gateway,
  so pods reach pods on other nodes through the node; add
  ``{"dst": "0.0.0.0/0"}`` in ``routes`` or set the bridge's
  ``isDefaultGateway`` for more.
* ``host`` (default under ``"type": "podbgp-cni"``): Calico's shape,
  ``10.0.0.5/32`` without gateway, for plugins that route each pod
  themselves (``podbgp-cni``, ``ptp``-style); every ordinal may be used.

The ``bridge`` plugin keeps ONE IPv4 address on its bridge, and block mode
gives every block its own gateway: a node's second block (pod 62 with /26
blocks) cannot work under it. So under ``"type": "bridge"`` block mode is
refused at the first ADD (code 7, naming ``podbgp-cni`` as what to use),
unless ``"bridge_single_block": true`` says the node never needs a second
block: then the node is held to one block per family, and the ADD that
finds it full fails with code 100 saying so (not with the bridge's error).

All plugins on one node must use the same mode (a ``host``-mode plugin would
hand out a bridge's gateway address).

The handle is ``<network name>.<CNI_CONTAINERID>`` (Calico's
``k8s-pod-network.<id>``); the attributes are the node and, from CNI_ARGS,
``K8S_POD_NAMESPACE``/``K8S_POD_NAME``. ADD of a container that already
holds addresses returns them. DEL of an unknown container succeeds.

STATUS (CNI 1.1.0) succeeds when etcd answers and at least one enabled pool
may be used by this node; else code 50.

Errors: a CNI error object ``{"cniVersion", "code", "msg", "details"}`` on
stdout, one line on stderr, exit status 1 (2 when the CNI environment itself
is unusable). Codes (cni/spec.py): 1 incompatible CNI version, 3 unknown
container (CHECK), 4 invalid environment variables, 6 undecodable
configuration, 7 invalid network configuration, 11 try again later (etcd
unreachable, too many concurrent updates), 50 not available (STATUS), 100 no
free address, 101 an address in prevResult is not held by this container
(CHECK).
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import socket
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

import structlog

from cni import logs, warm
from cni.spec import (
    E_BAD_CONFIG,
    E_BAD_ENV,
    E_CHECK_MISMATCH,
    E_DECODE,
    E_NO_ADDRESS,
    E_NOT_AVAILABLE,
    E_TRY_AGAIN,
    E_UNKNOWN_CONTAINER,
    CNIError,
    check_version,
    load_config,
    opt_bool,
    opt_str,
    parse_cni_args,
    run_command,
    valid_attachments,
)
from ipam.allocator import (
    Allocator,
    Assignment,
    IPAMConflictError,
    IPAMError,
    NoFreeAddressError,
    block_gateway,
    bridge_reserved,
)
from ipam.etcd import EtcdSettings, parse_endpoints
from ipam.pools import load_pools

log = structlog.get_logger(__name__)

DEFAULT_LOCK_FILE = "/var/run/podbgp/ipam.lock"

__all__ = ["CNIError", "PluginConfig", "parse_cni_args", "parse_config", "render_result", "run"]


@dataclass
class PluginConfig:
    """The parts of the network configuration this plugin uses (validated)."""

    cni_version: str
    name: str
    nodename: str
    etcd: EtcdSettings
    assign_ipv4: bool = True
    assign_ipv6: bool = False
    ipv4_pools: list[str] = field(default_factory=list)
    ipv6_pools: list[str] = field(default_factory=list)
    address_mode: str = "block"
    max_node_blocks: int | None = None
    routes: list[dict[str, Any]] | None = None
    release_grace: float = 300.0
    lock_file: str = DEFAULT_LOCK_FILE
    log_level: str = "warning"
    prev_result: dict[str, Any] | None = None


def _str_list(obj: Mapping[str, Any], name: str) -> list[str]:
    value = obj.get(name) or []
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise CNIError(E_BAD_CONFIG, f"ipam.{name}: {value!r} is not a list of pool names/CIDRs")
    return value


def parse_config(text: str, env: Mapping[str, str]) -> PluginConfig:
    """Validate the network configuration; CNIError names the field that is wrong."""
    conf, version, name = load_config(text)
    ipam = conf.get("ipam")
    if not isinstance(ipam, dict):
        raise CNIError(E_BAD_CONFIG, "ipam: missing or not an object")
    datastore = opt_str(conf, "datastore_type") or env.get("DATASTORE_TYPE") or "etcdv3"
    if datastore != "etcdv3":
        raise CNIError(E_BAD_CONFIG, f"datastore_type: {datastore!r} is not supported "
                       "(podbgp-ipam uses etcdv3)")
    nodename = opt_str(conf, "nodename") or env.get("NODENAME") or socket.gethostname()
    cfg = PluginConfig(
        cni_version=version,
        name=name,
        nodename=nodename,
        etcd=EtcdSettings(opt_str(conf, "etcd_endpoints"), opt_str(conf, "etcd_ca_cert_file"),
                          opt_str(conf, "etcd_cert_file"), opt_str(conf, "etcd_key_file"), env),
        assign_ipv4=opt_bool(ipam, "assign_ipv4", True, "ipam."),
        assign_ipv6=opt_bool(ipam, "assign_ipv6", False, "ipam."),
        ipv4_pools=_str_list(ipam, "ipv4_pools"),
        ipv6_pools=_str_list(ipam, "ipv6_pools"),
        log_level=opt_str(conf, "log_level") or "warning",
    )
    if not (cfg.assign_ipv4 or cfg.assign_ipv6):
        raise CNIError(E_BAD_CONFIG, "ipam: assign_ipv4 and assign_ipv6 are both false")
    main_type = conf.get("type")
    mode = ipam.get("address_mode", "host" if main_type == "podbgp-cni" else "block")
    if mode not in ("block", "host"):
        raise CNIError(E_BAD_CONFIG, f"ipam.address_mode: {mode!r} is not \"block\" or \"host\"")
    cfg.address_mode = mode
    single = opt_bool(ipam, "bridge_single_block", False, "ipam.")
    if main_type == "bridge" and mode == "block":
        if not single:
            raise CNIError(
                E_BAD_CONFIG,
                "podbgp-ipam under the bridge plugin: the bridge keeps one IPv4 gateway "
                "address and every IPAM block has its own, so pods fail from a node's second "
                "block on (pod 62 with /26 blocks). Use podbgp-cni (\"type\": \"podbgp-cni\", "
                "Calico's routed pod interfaces, any number of blocks), or set "
                "ipam.bridge_single_block true to hold each node to one block")
        cfg.max_node_blocks = 1
    routes = ipam.get("routes")
    if routes is not None:
        if not isinstance(routes, list) or not all(
            isinstance(r, dict) and isinstance(r.get("dst"), str) for r in routes
        ):
            raise CNIError(E_BAD_CONFIG, f"ipam.routes: {routes!r} is not a list of {{dst, gw}}")
        for r in routes:
            try:
                ipaddress.ip_network(r["dst"], strict=False)
                if r.get("gw") is not None:
                    ipaddress.ip_address(r["gw"])
            except ValueError as exc:
                raise CNIError(E_BAD_CONFIG, f"ipam.routes: {r!r}: {exc}") from None
        cfg.routes = routes
    grace = ipam.get("empty_block_release_seconds", 300)
    if not isinstance(grace, int | float) or isinstance(grace, bool) or grace < 0:
        raise CNIError(E_BAD_CONFIG,
                       f"ipam.empty_block_release_seconds: {grace!r} is not a number >= 0")
    cfg.release_grace = float(grace)
    cfg.lock_file = ipam.get("lock_file") or DEFAULT_LOCK_FILE
    prev = conf.get("prevResult")
    cfg.prev_result = prev if isinstance(prev, dict) else None
    return cfg


# ------------------------------------------------------------------ results


def render_result(cfg: PluginConfig, v4: list[Assignment], v6: list[Assignment],
                  pools: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> dict[str, Any]:
    """The IPAM result in the requested CNI version's shape."""
    ips = []
    for a in (*v4, *v6):
        entry: dict[str, Any] = {}
        if cfg.cni_version != "1.0.0":
            entry["version"] = str(a.address.version)
        if cfg.address_mode == "block":
            entry["address"] = str(a.interface)
            entry["gateway"] = str(block_gateway(a.block))
        else:
            entry["address"] = f"{a.address}/{a.address.max_prefixlen}"
        ips.append(entry)
    if cfg.routes is not None:
        routes = cfg.routes
    elif cfg.address_mode == "block":
        routes = [{"dst": str(p)} for p in pools]
    else:
        routes = []
    return {"cniVersion": cfg.cni_version, "ips": ips, "routes": routes, "dns": {}}


# ------------------------------------------------------------------ commands


@contextlib.contextmanager
def host_lock(path: str) -> Iterator[None]:
    """One IPAM writer per host at a time (as Calico's ipam.lock does).

    Not needed for correctness (the CAS transactions are), but concurrent pod
    starts on one node otherwise race for the same block and each claim a
    new one. Without a writable lock path this degrades to no lock.
    """
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        log.warning("ipam_lock_unavailable", path=path, error=exc.strerror)
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the flock


async def _with_allocator(cfg: PluginConfig, fn):
    """Run ``fn(allocator)``; when etcd fails under it (the member died, a leader
    change cut the connection), run it again once per other endpoint, as etcd's own
    client fails over. Safe: every operation is idempotent by handle (an ADD whose
    first try committed finds its address held and returns it)."""
    try:
        tries = len(parse_endpoints(cfg.etcd.endpoints))
    except ValueError as exc:
        raise CNIError(E_BAD_CONFIG, str(exc)) from None
    for attempt in range(1, tries + 1):
        try:
            return await _run_allocator(cfg, fn)
        except _EtcdLost as exc:
            if attempt == tries:
                raise CNIError(E_TRY_AGAIN, "etcd request failed", str(exc)) from None
            log.warning("ipam_etcd_retry", attempt=attempt, error=str(exc))
    raise AssertionError("unreachable")


class _EtcdLost(Exception):
    """etcd failed during an operation (aetcd's ClientError family, grpc errors)."""


async def _run_allocator(cfg: PluginConfig, fn):
    try:
        client = await warm.connect(cfg.etcd)
    except ValueError as exc:
        raise CNIError(E_BAD_CONFIG, str(exc)) from None
    except ConnectionError as exc:
        raise CNIError(E_TRY_AGAIN, "etcd is unreachable", str(exc)) from None
    try:
        reserve = bridge_reserved if cfg.address_mode == "block" else None
        alloc = Allocator(client, release_grace=cfg.release_grace, reserve=reserve,
                          max_node_blocks=cfg.max_node_blocks, pool_loader=_pools_once())
        return await fn(alloc)
    except IPAMConflictError as exc:
        raise CNIError(E_TRY_AGAIN, str(exc)) from None
    except NoFreeAddressError as exc:
        hint = ("; under the bridge plugin a node keeps one block (bridge_single_block): "
                "use podbgp-cni for more pods per node" if cfg.max_node_blocks else "")
        raise CNIError(E_NO_ADDRESS, str(exc) + hint) from None
    except ValueError as exc:  # bad pools requested, bad handle id
        raise CNIError(E_BAD_CONFIG, str(exc)) from None
    except IPAMError as exc:
        raise CNIError(E_NO_ADDRESS, str(exc)) from None
    except Exception as exc:
        # aetcd raises its ClientError family (and grpc errors) for a lost etcd.
        if type(exc).__module__.startswith(("aetcd", "grpc")):
            raise _EtcdLost(str(exc)) from None
        raise
    finally:
        await warm.release(client)


def _pools_once():
    """A pool loader that reads etcd's pools once per plugin call (per Allocator): an
    ADD chooses its block from them and renders the routes of the same pools, instead
    of reading and validating every pool twice. The next call reads them afresh."""
    read: list = []

    async def load(client):
        if not read:
            read.append(await load_pools(client))
        return read[0]

    return load


def _handle_id(cfg: PluginConfig, env: Mapping[str, str]) -> str:
    cid = env.get("CNI_CONTAINERID", "")
    if not cid or "/" in cid:
        raise CNIError(E_BAD_ENV, f"CNI_CONTAINERID: {cid!r} is missing or invalid",
                       exit_status=2)
    return f"{cfg.name}.{cid}"


async def cmd_add(cfg: PluginConfig, env: Mapping[str, str]) -> dict[str, Any]:
    handle = _handle_id(cfg, env)
    args = parse_cni_args(env.get("CNI_ARGS", ""))
    attrs = {}
    if args.get("K8S_POD_NAMESPACE"):
        attrs["namespace"] = args["K8S_POD_NAMESPACE"]
    if args.get("K8S_POD_NAME"):
        attrs["pod"] = args["K8S_POD_NAME"]

    async def run(alloc: Allocator):
        # The node's lock covers the assignment only (connecting, reading pools and the
        # opportunistic sweep need no lock): concurrent ADDs wait for each other less.
        with host_lock(cfg.lock_file):
            v4, v6 = await alloc.auto_assign(
                handle, cfg.nodename,
                num_v4=1 if cfg.assign_ipv4 else 0, num_v6=1 if cfg.assign_ipv6 else 0,
                attrs=attrs, v4_pools=cfg.ipv4_pools or None, v6_pools=cfg.ipv6_pools or None)
        pools = await alloc.pools()
        used = [p.cidr for p in pools
                if any(a.block.subnet_of(p.cidr) for a in (*v4, *v6)
                       if a.block.version == p.cidr.version)]
        if cfg.release_grace > 0:
            # Opportunistic: give back blocks that have been empty long enough.
            await alloc.release_empty_blocks()
        return v4, v6, used

    v4, v6, used = await _with_allocator(cfg, run)
    log.info("cni_add", handle=handle, node=cfg.nodename,
             ips=[str(a.address) for a in (*v4, *v6)])
    return render_result(cfg, v4, v6, used)


async def cmd_del(cfg: PluginConfig, env: Mapping[str, str]) -> None:
    handle = _handle_id(cfg, env)

    async def run(alloc: Allocator):
        with host_lock(cfg.lock_file):
            ips = await alloc.release_by_handle(handle)
        if cfg.release_grace > 0:
            await alloc.release_empty_blocks()
        return ips

    ips = await _with_allocator(cfg, run)
    log.info("cni_del", handle=handle, ips=[str(i) for i in ips])


async def cmd_check(cfg: PluginConfig, env: Mapping[str, str]) -> None:
    check_version(cfg.cni_version, "CHECK")
    handle = _handle_id(cfg, env)

    async def run(alloc: Allocator):
        h, _ = await alloc.read_handle(handle)
        if h is None or h.empty:
            raise CNIError(E_UNKNOWN_CONTAINER, f"container {handle!r} holds no addresses")
        held = set()
        for cidr in h.block:
            block, _ = await alloc.read_block(ipaddress.ip_network(cidr))
            if block is not None:
                held.update(block.ips_of(handle))
        return held

    held = await _with_allocator(cfg, run)
    for ip in (cfg.prev_result or {}).get("ips", []):
        try:
            addr = ipaddress.ip_interface(ip.get("address", "")).ip
        except (ValueError, AttributeError):
            raise CNIError(E_DECODE, f"prevResult.ips: {ip!r} has no valid address") from None
        if addr not in held:
            raise CNIError(E_CHECK_MISMATCH,
                           f"prevResult address {addr} is not held by container {handle!r}")


async def cmd_gc(cfg: PluginConfig, env: Mapping[str, str], conf: Mapping[str, Any]) -> None:
    """CNI 1.1.0 GC: release this network's handles held on this node by containers
    that are not among the valid attachments."""
    valid = {cid for cid, _ in valid_attachments(conf)}
    prefix = f"{cfg.name}."

    async def run(alloc: Allocator):
        stale = set()
        for block in await alloc.blocks():
            for attr in block.attributes:
                h = attr.handle_id or ""
                if (h.startswith(prefix) and (attr.secondary or {}).get("node") == cfg.nodename
                        and h[len(prefix):] not in valid):
                    stale.add(h)
        released = {h: await alloc.release_by_handle(h) for h in sorted(stale)}
        if cfg.release_grace > 0:
            await alloc.release_empty_blocks()
        return released

    released = await _with_allocator(cfg, run)
    log.info("cni_gc", node=cfg.nodename, released={h: [str(i) for i in ips]
                                                    for h, ips in released.items()})


async def cmd_status(cfg: PluginConfig, env: Mapping[str, str]) -> None:
    """Ready when etcd answers and some enabled pool may be used by this node."""
    from ipam.pools import select_pools

    async def run(alloc: Allocator):
        pools = await alloc.pools()
        labels = await alloc._labels_loader(alloc.client, cfg.nodename)
        return [v for v, on in ((4, cfg.assign_ipv4), (6, cfg.assign_ipv6))
                if on and not select_pools(pools, v, labels)]

    try:
        missing = await _with_allocator(cfg, run)
    except CNIError as exc:
        raise CNIError(E_NOT_AVAILABLE, f"not available: {exc.msg}", exc.details) from None
    if missing:
        raise CNIError(E_NOT_AVAILABLE, "not available: no enabled IPv"
                       + "/IPv".join(map(str, missing))
                       + f" pool may be used by node {cfg.nodename!r}")


def run(env: Mapping[str, str], stdin: str, stdout: TextIO, stderr: TextIO) -> int:
    """The whole plugin as a function (main() wires the real process to it)."""

    def handle(command: str) -> dict[str, Any] | None:
        cfg = parse_config(stdin, env)
        logs.configure(cfg.log_level)
        if command == "ADD":
            return warm.run(cmd_add(cfg, env))
        if command == "DEL":
            warm.run(cmd_del(cfg, env))
        elif command == "CHECK":
            warm.run(cmd_check(cfg, env))
        elif command == "GC":
            with host_lock(cfg.lock_file):
                warm.run(cmd_gc(cfg, env, json.loads(stdin)))
        else:
            warm.run(cmd_status(cfg, env))
        return None

    return run_command("podbgp-ipam", ("ADD", "DEL", "CHECK", "STATUS", "GC"), env, stdin,
                       stdout, stderr, handle)


def main() -> int:
    stdin = sys.stdin.read() if not sys.stdin.isatty() else ""
    rc = run(os.environ, stdin, sys.stdout, sys.stderr)
    sys.stdout.flush()
    return rc


if __name__ == "__main__":
    sys.exit(main())
