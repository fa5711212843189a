"""bgpctl: the calicoctl-style CLI (README.md, "bgpctl").

Owned by bgpd/. This module builds the argument parser, owns the resource
verbs (create/apply/replace/delete/get) and the top-level error handling;
other command groups plug in as modules exposing ``register(subparsers)``
(``bgpd.ctl.status`` -> ``node``, ``bgpd.ctl.ipam`` -> ``ipam``). A plugin's
sub-parser sets ``func=handler`` with ``handler(args) -> int`` (a coroutine
result is run to completion); `make_datastore(args)` gives it the datastore
the global options select.

Exit codes: 0 success, 1 the request failed (one line on stderr says why),
2 usage error. Nothing escapes as a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import inspect
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import yaml

from bgpd import __version__

PLUGINS = (("node", "bgpd.ctl.status", "this node's podbgp daemon (node status)"),
           ("ipam", "bgpd.ctl.ipam", "IP address management (ipam show, ipam release)"),
           ("policy", "bgpd.ctl.policy", "network policy (policy show)"))
OUTPUTS = ("ps", "wide", "yaml", "json")
API_VERSION = "projectcalico.org/v3"


class UsageError(Exception):
    """Bad command line beyond what argparse checks (exit 2)."""


class RequestFailed(Exception):
    """The request failed (exit 1); ``str()`` is the line printed."""


def _env(name: str, default: str | None = None) -> str | None:
    v = os.environ.get(name)
    return v if v not in (None, "") else default


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (exit 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


# ----------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="bgpctl", description="Manage podbgp's projectcalico.org/v3 resources "
                "(like calicoctl) in etcd or in a YAML file.")
    p.add_argument("--version", action="version", version=f"bgpctl (podbgp) {__version__}")
    p.add_argument("--datastore", choices=("etcdv3", "file"),
                   default=_env("DATASTORE_TYPE", "etcdv3"),
                   help="etcdv3 or file (DATASTORE_TYPE; default etcdv3)")
    p.add_argument("--etcd-endpoints", default=_env("ETCD_ENDPOINTS", "http://127.0.0.1:2379"),
                   help="comma-separated etcd URLs, tried in turn (ETCD_ENDPOINTS)")
    p.add_argument("--etcd-ca", default=_env("ETCD_CA_CERT_FILE"), metavar="FILE",
                   help="CA certificate for TLS (ETCD_CA_CERT_FILE)")
    p.add_argument("--etcd-cert", default=_env("ETCD_CERT_FILE"), metavar="FILE",
                   help="client certificate (ETCD_CERT_FILE)")
    p.add_argument("--etcd-key", default=_env("ETCD_KEY_FILE"), metavar="FILE",
                   help="client key (ETCD_KEY_FILE)")
    p.add_argument("--config-file", default=_env("PODBGP_CONFIG_FILE"), metavar="PATH",
                   help="the YAML file of --datastore file (PODBGP_CONFIG_FILE)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    ns_help = ("namespace of namespaced kinds (NetworkPolicy, WorkloadEndpoint, Kubernetes "
               "NetworkPolicy); default 'default'")
    for verb, text in (("create", "create resources; fails if one exists"),
                       ("apply", "create or update resources"),
                       ("replace", "update resources; fails if one does not exist")):
        v = sub.add_parser(verb, help=text)
        v.add_argument("-f", "--filename", required=True, metavar="FILE",
                       help="YAML or JSON file of resources, '-' for stdin")
        v.add_argument("-n", "--namespace", metavar="NS", help=ns_help)
        v.set_defaults(func=_cmd_write, verb=verb)

    d = sub.add_parser("delete", help="delete resources: -f FILE, or KIND NAME")
    d.add_argument("-f", "--filename", metavar="FILE")
    d.add_argument("kind", nargs="?", metavar="KIND")
    d.add_argument("name", nargs="?", metavar="NAME")
    d.add_argument("-n", "--namespace", metavar="NS", help=ns_help)
    d.set_defaults(func=_cmd_delete)

    g = sub.add_parser("get", help="show resources of one kind")
    g.add_argument("kind", metavar="KIND", help="ippool, bgppeer, bgpconfig, node, bgpfilter, "
                   "networkpolicy, globalnetworkpolicy, profile...")
    g.add_argument("name", nargs="?", metavar="NAME")
    g.add_argument("-o", "--output", choices=OUTPUTS, default="ps")
    g.add_argument("-n", "--namespace", metavar="NS", help=ns_help)
    g.add_argument("-A", "--all-namespaces", action="store_true",
                   help="namespaced kinds: every namespace")
    g.set_defaults(func=_cmd_get)

    for name, module, text in PLUGINS:
        _register_plugin(sub, name, module, text)
    return p


def _register_plugin(sub: Any, name: str, module: str, text: str) -> None:
    try:
        mod = importlib.import_module(module)
        mod.register(sub)
        return
    except ModuleNotFoundError as e:
        why = f"{module} cannot be imported: {e}" if e.name != module else "not available yet"
    except Exception as e:  # a broken plugin must not break the other commands
        why = f"{module} failed to load: {e}"
    ph = sub.add_parser(name, help=f"{text} [{why}]")
    ph.add_argument("rest", nargs=argparse.REMAINDER)
    ph.set_defaults(func=_not_available(name, why))


def _not_available(name: str, why: str) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        raise RequestFailed(f"bgpctl {name}: {why}")
    return handler


# -------------------------------------------------------------- datastore


def make_datastore(args: argparse.Namespace) -> Any:
    """The datastore the global options select (raises UsageError)."""
    if args.datastore == "file":
        if not args.config_file:
            raise UsageError("--datastore file needs --config-file PATH (or PODBGP_CONFIG_FILE)")
        from config.file_store import FileDatastore

        return FileDatastore(args.config_file)
    from config.etcd_store import EtcdDatastore, parse_endpoints

    try:
        parse_endpoints(args.etcd_endpoints)
    except ValueError as e:
        raise UsageError(f"--etcd-endpoints: {e}") from None
    try:
        return EtcdDatastore(args.etcd_endpoints, ca=args.etcd_ca, cert=args.etcd_cert,
                             key=args.etcd_key)
    except ValueError as e:
        raise UsageError(str(e)) from None


async def _with_store(args: argparse.Namespace, fn: Callable[[Any], Any]) -> int:
    store = make_datastore(args)
    try:
        return await fn(store)
    finally:
        await store.close()


# ------------------------------------------------------------------ input


def read_input(filename: str) -> str:
    if filename == "-":
        return sys.stdin.read()
    try:
        with open(filename, encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        raise RequestFailed(f"cannot read {filename}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise RequestFailed(f"cannot read {filename}: not UTF-8 text ({e.reason})") from None


def load_resources(text: str, source: str = "input") -> list[Any]:
    """Every resource in a YAML/JSON text (``List`` wrappers expanded), all validated.

    Raises RequestFailed naming the first problem; nothing is written before
    the whole input has passed. Strict, as calicoctl is: a field that is not
    part of Calico's API is an error naming it (the datastore's own reader
    is lenient; config.model.CalicoModel).
    """
    from config.errors import ConfigError
    from config.parse import parse_yaml_documents

    try:
        resources = parse_yaml_documents(text, strict=True)
    except ConfigError as e:
        raise RequestFailed(f"{source}: {e}") from None
    if not resources:
        raise RequestFailed(f"{source}: no resources found")
    return resources


# --------------------------------------------------------------- commands

_PAST = {"create": "created", "apply": "applied", "replace": "replaced", "delete": "deleted"}


def _kinds_text(resources: Sequence[Any]) -> str:
    kinds = sorted({r.kind for r in resources})
    return "'" + "', '".join(kinds) + "'"


DEFAULT_NAMESPACE = "default"


def in_namespace(resources: list[Any], namespace: str | None) -> list[Any]:
    """Namespaced resources without a namespace get ``-n`` (or "default"); one whose own
    namespace differs from an explicit ``-n`` is an error, as in kubectl."""
    from config.keys import is_namespaced

    out = []
    for res in resources:
        if not is_namespaced(res.kind):
            out.append(res)
            continue
        own = res.metadata.namespace
        if own and namespace and own != namespace:
            raise RequestFailed(
                f"the namespace from the provided object {own!r} does not match the "
                f"namespace {namespace!r} ({res.kind} {res.metadata.name}); "
                f"pass -n {own} or remove the object's namespace")
        if not own:
            md = res.metadata.model_copy(update={"namespace": namespace or DEFAULT_NAMESPACE})
            res = res.model_copy(update={"metadata": md})
        out.append(res)
    return out


def _scope(kind: str, namespace: str | None) -> tuple[Any, ...]:
    """Extra arguments of get/list/delete for a namespaced kind (none for the others)."""
    from config.keys import is_namespaced

    return (namespace,) if is_namespaced(kind) else ()


async def _run_each(store: Any, verb: str, resources: list[Any]) -> int:
    from config.datastore import DatastoreError
    from config.errors import ConfigError

    done = 0
    for res in resources:
        try:
            if verb == "delete":
                await store.delete(res.kind, res.metadata.name,
                                   *_scope(res.kind, res.metadata.namespace))
            else:
                await getattr(store, verb)(res)
        except (DatastoreError, ConfigError) as e:
            partial = (f"Partial success: {_PAST[verb]} the first {done} out of "
                       f"{len(resources)} resources; " if done else "")
            raise RequestFailed(f"{partial}Failed to {verb} '{res.kind}' resource: {e}") from None
        done += 1
    print(f"Successfully {_PAST[verb]} {done} {_kinds_text(resources)} resource(s)")
    return 0


def _cmd_write(args: argparse.Namespace) -> Any:
    resources = in_namespace(load_resources(read_input(args.filename), _source(args.filename)),
                             args.namespace)
    return _with_store(args, lambda store: _run_each(store, args.verb, resources))


def _source(filename: str) -> str:
    return "stdin" if filename == "-" else filename


def _normalize_kind(kind: str) -> str:
    from config.keys import normalize_kind

    try:
        return normalize_kind(kind)
    except (ValueError, KeyError) as e:
        raise RequestFailed(f"resource type '{kind}' is not supported ({e})") from None


def _cmd_delete(args: argparse.Namespace) -> Any:
    if args.filename:
        if args.kind:
            raise UsageError("delete takes either -f FILE or KIND NAME, not both")
        resources = in_namespace(
            load_resources(read_input(args.filename), _source(args.filename)), args.namespace)
        return _with_store(args, lambda store: _run_each(store, "delete", resources))
    if not (args.kind and args.name):
        raise UsageError("delete needs -f FILE or KIND NAME")
    kind = _normalize_kind(args.kind)

    async def run(store: Any) -> int:
        from config.datastore import DatastoreError

        try:
            await store.delete(kind, args.name,
                               *_scope(kind, args.namespace or DEFAULT_NAMESPACE))
        except DatastoreError as e:
            raise RequestFailed(f"Failed to delete '{kind}' resource: {e}") from None
        print(f"Successfully deleted 1 '{kind}' resource(s)")
        return 0

    return _with_store(args, run)


def _cmd_get(args: argparse.Namespace) -> Any:
    kind = _normalize_kind(args.kind)
    if args.all_namespaces and args.name:
        raise UsageError("a resource cannot be retrieved by name across all namespaces (-A)")
    namespace = None if args.all_namespaces else (args.namespace or DEFAULT_NAMESPACE)

    async def run(store: Any) -> int:
        from config.datastore import DatastoreError
        from config.errors import ConfigError

        try:
            if args.name:
                resources = [await store.get(kind, args.name, *_scope(kind, namespace))]
            else:
                resources = await store.list(kind, *_scope(kind, namespace))
        except (DatastoreError, ConfigError) as e:
            raise RequestFailed(f"Failed to get resources: {e}") from None
        from config.model import DEFAULT_AS_NUMBER

        default_asn = None
        if kind == "Node" and args.output == "wide":
            # Like calicoctl: a node without its own AS shows the inherited one in ().
            default_asn = DEFAULT_AS_NUMBER
            with contextlib.suppress(DatastoreError, ConfigError):
                conf = await store.get("BGPConfiguration", "default")
                default_asn = conf.spec.as_number or DEFAULT_AS_NUMBER
        sys.stdout.write(render(kind, resources, args.output, single=bool(args.name),
                                default_asn=default_asn,
                                namespace_column=args.all_namespaces and bool(
                                    _scope(kind, None))))
        return 0

    return _with_store(args, run)


# ----------------------------------------------------------------- output


def _calico_doc(res: Any) -> dict:
    from config.parse import to_calico_dict

    return to_calico_dict(res)


def render(kind: str, resources: list[Any], output: str, single: bool = False,
           default_asn: int | None = None, namespace_column: bool = False) -> str:
    """calicoctl's output for ``get``: a table, or Calico's YAML/JSON shape."""
    if output in ("yaml", "json"):
        if single and len(resources) == 1:
            doc: Any = _calico_doc(resources[0])
        else:
            doc = {"apiVersion": API_VERSION, "items": [_calico_doc(r) for r in resources],
                   "kind": f"{kind}List", "metadata": {}}
        if output == "json":
            return json.dumps(doc, indent=2) + "\n"
        return yaml.safe_dump(doc, default_flow_style=False, sort_keys=False)
    columns = table_columns(kind, wide=output == "wide", default_asn=default_asn)
    if namespace_column:  # calicoctl prepends NAMESPACE for namespaced kinds with -A
        columns = [("NAMESPACE", lambda r: r.metadata.namespace), *columns]
    rows = [[h for h, _ in columns]]
    rows += [[_cell(get(r)) for _, get in columns] for r in resources]
    return format_table(rows)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def format_table(rows: list[list[str]]) -> str:
    """Columns like calicoctl's tabwriter (min width 5, padding 3)."""
    widths = [max(5, *(len(r[i]) for r in rows)) for i in range(len(rows[0]))]
    lines = ["".join(c.ljust(w + 3) for c, w in zip(r, widths, strict=True)).rstrip()
             for r in rows]
    return "\n".join(lines) + "\n"


def _peer_node(peer: Any) -> str:
    s = peer.spec
    if s.node:
        return s.node
    if s.node_selector:
        return s.node_selector
    return "(global)"


def _node_bgp(node: Any, attr: str) -> Any:
    bgp = getattr(node.spec, "bgp", None)
    return getattr(bgp, attr, None) if bgp is not None else None


Column = tuple[str, Callable[[Any], Any]]


def table_columns(kind: str, wide: bool, default_asn: int | None = None) -> list[Column]:
    name: Column = ("NAME", lambda r: r.metadata.name)
    if kind == "IPPool":
        if wide:
            return [name, ("CIDR", lambda r: r.spec.cidr),
                    ("NAT", lambda r: r.spec.nat_outgoing),
                    ("IPIPMODE", lambda r: r.spec.ipip_mode),
                    ("VXLANMODE", lambda r: r.spec.vxlan_mode),
                    ("DISABLED", lambda r: r.spec.disabled),
                    ("DISABLEBGPEXPORT", lambda r: r.spec.disable_bgp_export),
                    ("SELECTOR", lambda r: r.spec.node_selector)]
        return [name, ("CIDR", lambda r: r.spec.cidr),
                ("SELECTOR", lambda r: r.spec.node_selector)]
    if kind == "BGPPeer":
        cols = [name, ("PEERIP", lambda r: r.spec.peer_ip), ("NODE", _peer_node),
                ("ASN", lambda r: r.spec.as_number)]
        if wide:
            cols += [("PEERSELECTOR", lambda r: r.spec.peer_selector),
                     ("FILTERS", lambda r: r.spec.filters)]
        return cols
    if kind == "Node":
        if wide:
            def asn(r: Any) -> Any:
                own = _node_bgp(r, "as_number")
                return own if own is not None or default_asn is None else f"({default_asn})"

            return [name, ("ASN", asn),
                    ("IPV4", lambda r: _node_bgp(r, "ipv4_address")),
                    ("IPV6", lambda r: _node_bgp(r, "ipv6_address"))]
        return [name]
    if kind == "BGPConfiguration":
        return [name, ("LOGSEVERITY", lambda r: r.spec.log_severity_screen),
                ("MESHENABLED", lambda r: r.spec.node_to_node_mesh_enabled),
                ("ASNUMBER", lambda r: r.spec.as_number)]
    if kind == "BlockAffinity":
        return [name, ("NODE", lambda r: r.spec.node), ("CIDR", lambda r: r.spec.cidr),
                ("STATE", lambda r: r.spec.state)]
    if kind in ("NetworkPolicy", "GlobalNetworkPolicy"):
        cols = [name, ("TIER", lambda r: r.spec.tier or "default")]
        if wide:
            cols += [("ORDER", lambda r: _order(r.spec.order)),
                     ("SELECTOR", lambda r: r.spec.selector)]
        return cols
    if kind == "Profile":
        if wide:
            return [name, ("LABELS", lambda r: ",".join(
                f"{k}={v}" for k, v in sorted((r.spec.labels_to_apply or {}).items())))]
        return [name]
    if kind == "WorkloadEndpoint":
        cols = [("WORKLOAD", lambda r: r.spec.workload or r.spec.pod),
                ("NODE", lambda r: r.spec.node), ("NETWORKS", lambda r: r.spec.ip_networks),
                ("INTERFACE", lambda r: r.spec.interface_name)]
        if wide:
            cols = [name, *cols, ("PROFILES", lambda r: r.spec.profiles),
                    ("NATS", lambda r: [f"{n.internal_ip}:{n.external_ip}"
                                        for n in r.spec.ip_nats])]
        return cols
    return [name]


def _order(order: float | None) -> Any:
    if order is None:
        return None
    return int(order) if float(order).is_integer() else order


# ------------------------------------------------------------------- main


GLOBAL_OPTIONS = ("--datastore", "--etcd-endpoints", "--etcd-ca", "--etcd-cert", "--etcd-key",
                  "--config-file")


def hoist_global_options(argv: Sequence[str]) -> list[str]:
    """Datastore options may come after the command (`bgpctl get ippools --etcd-endpoints X`,
    as calicoctl users write them): move them in front, where argparse expects them."""
    front: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        name = arg.split("=", 1)[0]
        if name in GLOBAL_OPTIONS:
            if "=" in arg or i + 1 >= len(argv):
                front.append(arg)
            else:
                front += [arg, argv[i + 1]]
                i += 1
        else:
            rest.append(arg)
        i += 1
    return front + rest


def main(argv: Sequence[str] | None = None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(hoist_global_options(list(sys.argv[1:] if argv is None
                                                            else argv)))
    except SystemExit as e:  # argparse: --help/--version (0) or a usage error (2)
        return e.code if isinstance(e.code, int) else 2
    try:
        result = args.func(args)
        if inspect.isawaitable(result):
            result = asyncio.run(_awaited(result))
        return int(result or 0)
    except UsageError as e:
        print(f"bgpctl: error: {e} (see 'bgpctl --help')", file=sys.stderr)
        return 2
    except RequestFailed as e:
        print(str(e), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bgpctl: interrupted", file=sys.stderr)
        return 130
    except SystemExit as e:  # a plugin that exits itself
        return e.code if isinstance(e.code, int) else 1
    except BaseException as e:  # never a traceback: one line naming the problem
        text = " ".join(str(e).split()) or type(e).__name__
        print(f"bgpctl: {type(e).__name__}: {text}", file=sys.stderr)
        return 1


async def _awaited(aw: Any) -> Any:
    return await aw


if __name__ == "__main__":
    sys.exit(main())
