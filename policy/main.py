"""`podbgp-policy`: the policy agent's command line (docs/policy.md; README.md).

Shares bgpd's node, datastore, HTTP and logging options and environment
variables (bgpd.options.add_common_arguments); its own are the table name, the
workload interface prefixes and the resync interval. Exit codes: 0, 1 (a
failure, one line says why), 2 (usage).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from dataclasses import dataclass

from bgpd import __version__
from bgpd.ops import log as logsetup
from bgpd.options import (
    CommonOptions,
    UsageError,
    _env,
    _Parser,
    add_common_arguments,
    check_common,
)

DEFAULT_HTTP = "127.0.0.1:9180"


@dataclass(frozen=True)
class PolicyOptions:
    common: CommonOptions
    table: str
    iface_prefixes: tuple[str, ...]
    resync_interval: float
    remove_table: bool


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="podbgp-policy",
                description="podbgp's network-policy agent: enforces Kubernetes NetworkPolicy "
                "and Calico NetworkPolicy/GlobalNetworkPolicy on this node's pod interfaces "
                "with nftables.")
    p.add_argument("--version", action="version", version=f"podbgp-policy {__version__}")
    add_common_arguments(p, http_default=DEFAULT_HTTP, http_env="PODBGP_POLICY_HTTP_LISTEN")
    p.add_argument("--table", default=_env("PODBGP_POLICY_TABLE", "podbgp-policy"),
                   help="name of the inet table the agent owns (PODBGP_POLICY_TABLE; default "
                   "podbgp-policy; must start with 'podbgp')")
    p.add_argument("--workload-interface-prefix",
                   default=_env("FELIX_INTERFACEPREFIX", "cali"),
                   help="comma-separated prefixes of pods' host interfaces (FELIX_INTERFACEPREFIX, "
                   "Calico's name; default cali, as podbgp-cni names them). Forwarded traffic "
                   "on such an interface the agent has not programmed yet is dropped")
    p.add_argument("--resync-interval", default=_env("PODBGP_POLICY_RESYNC_INTERVAL", "10"),
                   help="seconds between read-backs of the table, repairing any change made by "
                   "someone else (PODBGP_POLICY_RESYNC_INTERVAL; default 10)")
    p.add_argument("--remove-table", action="store_true",
                   help="delete the agent's table and exit (uninstall: pods are no longer "
                   "policed, and new pods are no longer held until programmed)")
    return p


def parse_options(argv: list[str] | None = None) -> PolicyOptions:
    a = build_parser().parse_args(argv)
    common = check_common(a)
    if common.datastore != "etcdv3":
        raise UsageError("--datastore: podbgp-policy needs etcdv3 (the pods' WorkloadEndpoints "
                         "are written there by podbgp-cni)")
    from fib_sync.nft import is_owned

    if not is_owned(a.table) or not a.table.replace("-", "").replace("_", "").isalnum():
        raise UsageError(f"--table: {a.table!r} must be podbgp, podbgp-NAME or podbgp_NAME "
                         "(letters, digits, - and _)")
    prefixes = tuple(p.strip() for p in a.workload_interface_prefix.split(",") if p.strip())
    if not prefixes or any(not p.replace("-", "").replace("_", "").replace(".", "").isalnum()
                           or len(p) > 14 for p in prefixes):
        raise UsageError(f"--workload-interface-prefix: {a.workload_interface_prefix!r} must be "
                         "interface-name prefixes (letters, digits, - _ .; at most 14)")
    try:
        resync = float(a.resync_interval)
    except ValueError:
        raise UsageError(f"--resync-interval: {a.resync_interval!r} is not a number") from None
    if resync < 1:
        raise UsageError(f"--resync-interval: {resync} must be at least 1")
    return PolicyOptions(common=common, table=a.table, iface_prefixes=prefixes,
                         resync_interval=resync, remove_table=a.remove_table)


async def _serve(opts: PolicyOptions) -> int:
    import structlog

    from bgpd.ops.http import HttpServer
    from fib_sync.nft import Nft
    from policy.agent import PolicyAgent, install_signal_handlers
    from policy.datastore import PolicyDatastore
    from policy.metrics import PolicyMetrics

    log = structlog.get_logger("policy.main")
    c = opts.common
    store = PolicyDatastore(list(c.etcd_endpoints), ca=c.etcd_ca, cert=c.etcd_cert,
                            key=c.etcd_key)
    agent = PolicyAgent(c.node, store, Nft(), table=opts.table,
                        iface_prefixes=opts.iface_prefixes,
                        resync_interval=opts.resync_interval)
    metrics = PolicyMetrics(agent)
    agent.on_programmed = metrics.programming_seconds.observe

    def ready():
        ok, why = agent.ready()
        return (200 if ok else 503), "text/plain", f"{why}\n".encode()

    http = HttpServer(c.http_listen[0], c.http_listen[1], {
        "/metrics": lambda: (200, "text/plain; version=0.0.4; charset=utf-8", metrics.render()),
        "/healthz": lambda: (200, "text/plain", b"ok\n"),
        "/readyz": ready,
        "/status": lambda: (200, "application/json", agent.status_json()),
    })
    try:
        await http.start()
    except OSError as e:
        log.error("http_listen_failed", address=c.http_listen[0], port=c.http_listen[1],
                  error=e.strerror)
        return 1
    install_signal_handlers(agent)
    notifier = asyncio.create_task(_sd_notify(agent), name="sd-notify")
    log.info("policy_agent_starting", node=c.node, table=f"inet {opts.table}",
             etcd=",".join(c.etcd_endpoints), interface_prefixes=",".join(opts.iface_prefixes))
    try:
        await agent.run()
    finally:
        notifier.cancel()
        await http.stop()
    return 0


async def _sd_notify(agent) -> None:
    """READY=1 once the table holds the datastore's policy, STOPPING=1 at the end,
    WATCHDOG=1 from the event loop (systemd Type=notify; a no-op elsewhere)."""
    from bgpd.ops.sdnotify import Notifier

    n = Notifier()
    if not n.enabled:
        return
    ready = False
    try:
        while True:
            if not ready and agent.programmed_once:
                ready = n.ready("enforcing")
            if n.watchdog_interval:
                n.watchdog()
            await asyncio.sleep(min(n.watchdog_interval or 1.0, 1.0))
    finally:
        n.stopping()


def main(argv: list[str] | None = None) -> int:
    try:
        opts = parse_options(argv)
    except UsageError as e:
        print(f"podbgp-policy: {e}", file=sys.stderr)
        return 2
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    logsetup.configure(opts.common.log_format, opts.common.log_level)
    if opts.remove_table:
        from fib_sync.nft import Nft, NftError

        try:
            Nft().delete_table("inet", opts.table)
        except NftError as e:
            print(f"podbgp-policy: {e}", file=sys.stderr)
            return 1
        print(f"podbgp-policy: removed table inet {opts.table}")
        return 0
    from bgpd.ops.lock import AlreadyRunning, policy_table_lock

    try:
        # Before anything is read or written: a second agent touches nothing.
        lock = policy_table_lock(opts.table)
    except AlreadyRunning as e:
        print(f"podbgp-policy: {e}", file=sys.stderr)
        return 1
    try:
        return asyncio.run(_serve(opts))
    except KeyboardInterrupt:
        return 0
    finally:
        lock.close()


if __name__ == "__main__":
    sys.exit(main())
