"""``podbgp-cni``: ADD, DEL, CHECK, STATUS, GC, VERSION (the whole plugin as a function).

Owned by cni/. `run()` is the plugin: environment and stdin in, result or
error object on stdout, exit status out. The console script (cni/shim.py)
hands it to the node's resident agent when one listens, or calls it here.

ADD, in the order that makes a failure cheap to undo:
  1. validate configuration, CNI_* variables, pod identity and labels;
     open etcd (unreachable: code 11, nothing done yet);
  2. delegate ADD to ``ipam.type`` (CNI_PATH), meanwhile read the pools and the
     host's links for the MTU; on failure delegate DEL;
  3. build the pod interface (cni/dataplane.py), or find it already built
     by an earlier attempt of the same ADD;
  4. write the WorkloadEndpoint;
  any failure after 2 undoes 4, 3 and 2 (in that order) before the error is
  returned.
DEL removes the pod side of the veth (the host side, its routes and the
addresses go with it), the WorkloadEndpoint if it is this container's, and
delegates DEL to IPAM; each step tolerates what is already gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections.abc import Mapping
from typing import Any, TextIO

import structlog

from cni import dataplane, delegate, logs, rtnl, warm
from cni.mtu import MTU_IFACE_PATTERN, auto_mtu
from cni.netconf import NetConf, parse_netconf, pod_identity
from cni.spec import (
    E_BAD_CONFIG,
    E_BAD_ENV,
    E_CHECK_MISMATCH,
    E_DECODE,
    E_NOT_AVAILABLE,
    E_TRY_AGAIN,
    CNIError,
    container_id,
    from_any_version,
    interface_name,
    netns_path,
    parse_cni_args,
    run_command,
    to_version,
    valid_attachments,
)
from config import keys
from config.endpoints import (
    check_labels,
    endpoint_to_json,
    host_interface_name,
    parse_endpoint_json,
    pod_endpoint,
    workload_endpoint_name,
)
from config.errors import ConfigError

log = structlog.get_logger("podbgp.cni")

COMMANDS = ("ADD", "DEL", "CHECK", "STATUS", "GC")


# ------------------------------------------------------------------ etcd


async def _connect(conf: NetConf, env: Mapping[str, str]) -> Any:
    from ipam.etcd import EtcdSettings

    settings = EtcdSettings(conf.etcd_endpoints, conf.etcd_ca, conf.etcd_cert, conf.etcd_key,
                            env)
    try:
        return await warm.connect(settings, timeout=5.0)
    except ValueError as exc:
        raise CNIError(E_BAD_CONFIG, f"etcd settings: {exc}") from None
    except ConnectionError as exc:
        raise CNIError(E_TRY_AGAIN, "etcd is unreachable", str(exc)) from None


async def _etcd(what: str, coro: Any) -> Any:
    try:
        return await coro
    except CNIError:
        raise
    except Exception as exc:
        if type(exc).__module__.startswith(("aetcd", "grpc")) or isinstance(
                exc, (OSError, TimeoutError)):
            raise CNIError(E_TRY_AGAIN, f"etcd request failed ({what})", str(exc)) from None
        raise


async def _pools(client: Any) -> list[Any]:
    from config.parse import parse_json

    out = []
    for meta in await client.get_prefix(keys.resource_prefix("IPPool").encode()):
        try:
            out.append(parse_json(meta.key.decode(), meta.value))
        except Exception as exc:  # a pool config/ rejects does not count
            log.warning("cni_pool_rejected", key=meta.key.decode(errors="replace"),
                        error=str(exc))
    return out


async def _put_endpoint(client: Any, wep: Any) -> None:
    await client.put(wep.key.encode(), endpoint_to_json(wep))


async def _delete_endpoint(client: Any, key: str, cid: str, attempts: int = 20) -> bool:
    """Delete the endpoint at ``key`` if it is container ``cid``'s (Calico's rule:
    a newer sandbox of the same pod owns it otherwise). True if deleted."""
    for _ in range(attempts):
        got = await client.get(key.encode())
        if got is None:
            return False
        try:
            wep = parse_endpoint_json(key, got.value)
            owner = wep.spec.container_id or ""
        except ConfigError as exc:
            log.warning("cni_endpoint_unreadable", key=key, error=str(exc))
            owner = ""  # unreadable: the pod is going away, remove it
        if owner and owner != cid:
            log.info("cni_endpoint_kept", key=key, owner=owner, container=cid)
            return False
        ok, _ = await client.transaction(
            compare=[client.transactions.mod(key.encode()) == got.mod_revision],
            success=[client.transactions.delete(key.encode())], failure=[])
        if ok:
            return True
    raise CNIError(E_TRY_AGAIN, f"WorkloadEndpoint {key} kept changing while deleting it")


# ------------------------------------------------------------------ pieces


def _addresses(result: Mapping[str, Any]) -> tuple[dataplane.Iface, ...]:
    out = []
    for ip in result.get("ips", []):
        try:
            out.append(dataplane.host_prefix(ipaddress.ip_interface(ip["address"])))
        except (ValueError, KeyError, TypeError):
            raise CNIError(E_DECODE, f"IPAM result: {ip!r} has no valid address") from None
    if not out:
        raise CNIError(E_BAD_CONFIG, "the IPAM plugin returned no address")
    return tuple(out)


def _pod_routes(conf: NetConf, ipam_result: Mapping[str, Any]) -> tuple[dataplane.Net, ...]:
    """The IPAM result's routes (as CNI's ptp/bridge use them), else Calico's /0 defaults;
    ``include_default_routes`` adds the defaults to given routes (Calico's option)."""
    given = []
    for r in ipam_result.get("routes", []):
        try:
            given.append(ipaddress.ip_network(r["dst"], strict=False))
        except (ValueError, KeyError, TypeError):
            raise CNIError(E_DECODE, f"IPAM result: route {r!r} has no valid dst") from None
    if not given:
        return dataplane.DEFAULT_ROUTES
    if conf.include_default_routes:
        given = [*dataplane.DEFAULT_ROUTES, *(g for g in given
                                              if g not in dataplane.DEFAULT_ROUTES)]
    return tuple(dict.fromkeys(given))


def _result(conf: NetConf, plan: dataplane.Plan, built: dataplane.Built,
            ipam_result: Mapping[str, Any]) -> dict[str, Any]:
    pod_if: dict[str, Any] = {"name": plan.ifname, "mac": built.pod_mac, "sandbox": plan.netns}
    host_if: dict[str, Any] = {"name": built.host_name, "mac": built.host_mac}
    if conf.cni_version == "1.1.0":
        pod_if["mtu"] = host_if["mtu"] = built.mtu
    routes = []
    for dst in plan.pod_routes:
        if dst.version in plan.families:
            gw = dataplane.GATEWAY_V4 if dst.version == 4 else dataplane.GATEWAY_V6
            routes.append({"dst": str(dst), "gw": str(gw)})
    result = {
        "cniVersion": conf.cni_version,
        "interfaces": [host_if, pod_if],
        "ips": [{"address": str(a), "interface": 1} for a in plan.addresses],
        "routes": routes,
        "dns": ipam_result.get("dns") or {},
    }
    return to_version(result, conf.cni_version)


def _plan(conf: NetConf, env: Mapping[str, str], addresses: tuple[dataplane.Iface, ...],
          routes: tuple[dataplane.Net, ...], mtu: int, host_name: str) -> dataplane.Plan:
    return dataplane.Plan(netns=netns_path(env), ifname=interface_name(env),
                          host_name=host_name, addresses=addresses, mtu=mtu,
                          pod_routes=routes, route_protocol=conf.route_protocol,
                          allow_ip_forwarding=conf.allow_ip_forwarding)


def _check_netns(path: str) -> None:
    try:
        with rtnl.in_netns(path):
            pass
    except rtnl.NamespaceError as exc:
        raise CNIError(E_BAD_ENV, f"CNI_NETNS: {exc.strerror}") from None


def _labels_ok(conf: NetConf) -> None:
    try:
        check_labels(conf.labels)
    except ConfigError as exc:
        raise CNIError(E_BAD_CONFIG, f"args.cni.labels: {exc.reason}") from None


def _pod_mtu(conf: NetConf, pools: list[Any]) -> int:
    if conf.mtu:
        return conf.mtu
    with rtnl.open_rtnl() as host:
        return auto_mtu(pools, host.links(MTU_IFACE_PATTERN.match))


# ------------------------------------------------------------------ commands


async def cmd_add(conf: NetConf, env: Mapping[str, str], stdin: str,
                  stderr: TextIO | None) -> dict[str, Any]:
    cid, ifname, netns = container_id(env), interface_name(env), netns_path(env)
    namespace, pod, _infra = pod_identity(parse_cni_args(env.get("CNI_ARGS", "")), cid)
    _labels_ok(conf)
    try:
        workload_endpoint_name(conf.nodename, pod, ifname)
    except ValueError as exc:
        raise CNIError(E_BAD_ENV, f"cannot name the WorkloadEndpoint: {exc}") from None
    host_name = host_interface_name(namespace, pod, conf.interface_prefix)
    _check_netns(netns)
    client = await _connect(conf, env)
    ipam_done = built_here = wep_written = False
    wep_key = ""
    try:
        # The IPAM call (a process, mostly waiting for etcd) runs while this reads the
        # pools and the host's links for the MTU; both are over before anything else.
        ipam_call = asyncio.ensure_future(asyncio.to_thread(
            delegate.run_ipam, conf.ipam_type, "ADD", stdin, env, stderr=stderr))
        try:
            pools = await _etcd("read IP pools", _pools(client)) if not conf.mtu else []
            mtu = _pod_mtu(conf, pools)
        except BaseException:
            with contextlib.suppress(BaseException):
                await ipam_call  # finished before the rollback delegates DEL
            raise
        raw = await ipam_call
        ipam_done = True
        ipam_result = from_any_version(raw or {})
        plan = _plan(conf, env, _addresses(ipam_result), _pod_routes(conf, ipam_result),
                     mtu, host_name)
        built = dataplane.existing(plan)
        if built is None:
            built = dataplane.setup(plan)
            built_here = True
        try:
            wep = pod_endpoint(node=conf.nodename, namespace=namespace, pod=pod, endpoint=ifname,
                               container_id=cid, interface_name=built.host_name,
                               mac=built.pod_mac,
                               ip_networks=[str(a) for a in plan.addresses], labels=conf.labels)
        except ConfigError as exc:
            raise CNIError(E_BAD_CONFIG, f"WorkloadEndpoint: {exc}") from None
        wep_key = wep.key
        await _etcd("write WorkloadEndpoint", _put_endpoint(client, wep))
        wep_written = True
        log.info("cni_add", container=cid, pod=f"{namespace}/{pod}", iface=built.host_name,
                 ips=[str(a) for a in plan.addresses], mtu=built.mtu, endpoint=wep.name)
        return _result(conf, plan, built, ipam_result)
    except BaseException as exc:
        log.warning("cni_add_rollback", container=cid, error=str(exc),
                    undo=[s for s, d in (("endpoint", wep_written), ("interface", built_here),
                                         ("ipam", ipam_done)) if d])
        if wep_written:
            with contextlib.suppress(Exception):
                await _delete_endpoint(client, wep_key, cid)
        if built_here or ipam_done:
            with contextlib.suppress(Exception):
                dataplane.teardown(netns, ifname)
        with contextlib.suppress(Exception):
            # SPEC section 4: a failed ADD delegates DEL (also when IPAM itself failed).
            delegate.run_ipam(conf.ipam_type, "DEL", stdin, env, stderr=stderr)
        raise
    finally:
        with contextlib.suppress(Exception):
            await warm.release(client)


async def cmd_del(conf: NetConf, env: Mapping[str, str], stdin: str,
                  stderr: TextIO | None) -> None:
    cid, ifname = container_id(env), interface_name(env)
    netns = netns_path(env, required=False)
    removed = dataplane.teardown(netns, ifname)
    errors: list[CNIError] = []
    try:
        namespace, pod, _ = pod_identity(parse_cni_args(env.get("CNI_ARGS", "")), cid)
        key = keys.workload_endpoint_key(namespace, workload_endpoint_name(conf.nodename, pod,
                                                                           ifname))
    except (CNIError, ValueError) as exc:
        log.warning("cni_del_no_endpoint_name", container=cid, error=str(exc))
        key = ""
    deleted = False
    if key:
        try:
            client = await _connect(conf, env)
            try:
                deleted = await _etcd("delete WorkloadEndpoint", _delete_endpoint(client, key,
                                                                                  cid))
            finally:
                with contextlib.suppress(Exception):
                    await warm.release(client)
        except CNIError as exc:
            errors.append(exc)
    try:
        delegate.run_ipam(conf.ipam_type, "DEL", stdin, env, stderr=stderr)
    except CNIError as exc:
        errors.append(exc)
    log.info("cni_del", container=cid, interface_removed=removed, endpoint_deleted=deleted,
             errors=[e.msg for e in errors])
    if errors:
        raise errors[0]


async def cmd_check(conf: NetConf, env: Mapping[str, str], stdin: str,
                    stderr: TextIO | None) -> None:
    cid, ifname, netns = container_id(env), interface_name(env), netns_path(env)
    namespace, pod, _ = pod_identity(parse_cni_args(env.get("CNI_ARGS", "")), cid)
    if conf.prev_result is None:
        raise CNIError(E_BAD_CONFIG, "prevResult: missing (CHECK needs the result of the ADD)")
    prev = from_any_version(conf.prev_result)
    _check_netns(netns)
    delegate.run_ipam(conf.ipam_type, "CHECK", stdin, env, stderr=stderr)
    host_name = host_interface_name(namespace, pod, conf.interface_prefix)
    addresses = _addresses(prev)
    routes = tuple(ipaddress.ip_network(r["dst"], strict=False) for r in prev.get("routes", [])
                   ) or dataplane.DEFAULT_ROUTES
    plan = dataplane.Plan(netns=netns, ifname=ifname, host_name=host_name,
                          addresses=addresses, mtu=0, pod_routes=routes,
                          route_protocol=conf.route_protocol)
    dataplane.check(plan)
    key = keys.workload_endpoint_key(namespace, workload_endpoint_name(conf.nodename, pod,
                                                                       ifname))
    client = await _connect(conf, env)
    try:
        got = await _etcd("read WorkloadEndpoint", client.get(key.encode()))
    finally:
        with contextlib.suppress(Exception):
            await warm.release(client)
    if got is None:
        raise CNIError(E_CHECK_MISMATCH, f"WorkloadEndpoint {key} is missing")
    try:
        wep = parse_endpoint_json(key, got.value)
    except ConfigError as exc:
        raise CNIError(E_CHECK_MISMATCH, f"WorkloadEndpoint {key} is unreadable: {exc}") from None
    want = sorted(str(a) for a in addresses)
    have = sorted(str(ipaddress.ip_interface(n)) for n in wep.spec.ip_networks)
    problems = []
    if wep.spec.container_id and wep.spec.container_id != cid:
        problems.append(f"belongs to container {wep.spec.container_id}")
    if have != want:
        problems.append(f"ipNetworks {have} != {want}")
    if wep.spec.interface_name != host_name:
        problems.append(f"interfaceName {wep.spec.interface_name} != {host_name}")
    if problems:
        raise CNIError(E_CHECK_MISMATCH, f"WorkloadEndpoint {wep.name}: {problems[0]}",
                       "; ".join(problems))


async def cmd_status(conf: NetConf, env: Mapping[str, str], stdin: str,
                     stderr: TextIO | None) -> None:
    try:
        client = await _connect(conf, env)
    except CNIError as exc:
        raise CNIError(E_NOT_AVAILABLE, f"not available: {exc.msg}", exc.details) from None
    with contextlib.suppress(Exception):
        await warm.release(client)
    try:
        delegate.run_ipam(conf.ipam_type, "STATUS", stdin, env, stderr=stderr)
    except CNIError as exc:
        code = exc.code if exc.code in (E_NOT_AVAILABLE, 51) else E_NOT_AVAILABLE
        raise CNIError(code, exc.msg, exc.details) from None


async def cmd_gc(conf: NetConf, env: Mapping[str, str], stdin: str,
                 stderr: TextIO | None) -> None:
    """CNI 1.1.0 GC: remove this node's WorkloadEndpoints of attachments that are no longer
    valid (their namespaces, and so their interfaces, are gone), then GC the IPAM plugin
    (SPEC.md: GC is forwarded to delegated plugins)."""
    valid = valid_attachments(conf.raw)
    client = await _connect(conf, env)
    removed = []
    try:
        for meta in await _etcd("list WorkloadEndpoints",
                                client.get_prefix(keys.workload_endpoint_prefix().encode())):
            key = meta.key.decode(errors="replace")
            try:
                wep = parse_endpoint_json(key, meta.value)
            except ConfigError:
                continue  # not one we can judge
            s = wep.spec
            if (s.node != conf.nodename or s.orchestrator != "k8s" or not s.container_id
                    or (s.container_id, s.endpoint or "") in valid):
                continue
            if await _etcd("delete WorkloadEndpoint",
                           _delete_endpoint(client, key, s.container_id)):
                removed.append(wep.name)
    finally:
        with contextlib.suppress(Exception):
            await warm.release(client)
    log.info("cni_gc", node=conf.nodename, endpoints_removed=removed)
    delegate.run_ipam(conf.ipam_type, "GC", stdin, env, stderr=stderr)


_HANDLERS = {"ADD": cmd_add, "DEL": cmd_del, "CHECK": cmd_check, "STATUS": cmd_status,
             "GC": cmd_gc}


def run(env: Mapping[str, str], stdin: str, stdout: TextIO, stderr: TextIO) -> int:
    """The plugin: CNI_COMMAND from ``env``, configuration on ``stdin``."""

    def handle(command: str) -> dict[str, Any] | None:
        conf = parse_netconf(stdin, env, command)
        logs.configure(conf.log_level)
        return warm.run(_HANDLERS[command](conf, env, stdin, stderr))

    return run_command("podbgp-cni", COMMANDS, env, stdin, stdout, stderr, handle,
                       lambda command: log.exception("cni_internal_error", command=command))
