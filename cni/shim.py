"""The console scripts ``podbgp-cni`` and ``podbgp-ipam``: as little as possible.

Owned by cni/. A CNI plugin is a new process per pod event, so its start-up
is part of every pod's start. These entry points import only the standard
library until they know they must do the work here: when the node's agent
(``podbgp-cni agent``, cni/agent.py) listens on the configured socket
(``agent_socket`` in the network configuration, else PODBGP_CNI_SOCKET, else
/var/run/podbgp-cni/agent.sock) they hand it the call; otherwise they run the
plugin in this process.

    podbgp-cni                       the CNI plugin (CNI_COMMAND, config on stdin)
    podbgp-cni agent [--socket PATH] [--http-listen ADDR:PORT|off]  the node's agent
    podbgp-cni --version

Interpreter start-up is most of what is left. A launcher starts Python with
``-IS`` (isolated, no site processing), puts only this package's directory
(or, for podbgp-install-cni's runtime, its site-packages) on the path and
calls `cni.fast.launch`, which hands the call to the agent importing nothing
beyond sys, posix, _socket and _json. Only when no agent listens, or for
VERSION/agent/--version/--help, does it come here; then ``site.main()`` runs
first, so the installed libraries are found as usual.
"""

from __future__ import annotations

import os
import sys

USAGE = """\
podbgp-cni: a CNI plugin in Calico's routed data-plane model (README "Pod interfaces").

  podbgp-cni                        run by the container runtime: CNI_COMMAND
                                    (ADD, DEL, CHECK, STATUS, GC, VERSION) and the
                                    network configuration on stdin
  podbgp-cni agent [--socket PATH] [--http-listen ADDR:PORT|off]
                                    the node's agent that keeps the plugins warm
                                    (PODBGP_CNI_SOCKET; default /var/run/podbgp-cni/agent.sock)
                                    and serves /metrics (PODBGP_CNI_HTTP_LISTEN;
                                    default 127.0.0.1:9181)
  podbgp-cni --version | --help"""


def _stdin() -> str:
    return sys.stdin.read() if not sys.stdin.isatty() else ""


def agent_failed(plugin: str, stdin: str, exc: Exception) -> int:
    """The agent was reached but failed mid-request: try again later (code 11); the
    request is not redone here, it may have run."""
    import json

    from cni.spec import E_TRY_AGAIN, CNIError, config_version

    json.dump(CNIError(E_TRY_AGAIN, str(exc)).to_object(config_version(stdin)), sys.stdout)
    sys.stdout.flush()
    print(f"podbgp-{plugin}: {exc}", file=sys.stderr)
    return 1


def _forward(plugin: str, stdin: str) -> int | None:
    """The exit status of the agent's run of ``plugin``; None: no agent, run here."""
    from cni.fast import call, socket_from

    try:
        reply = call(socket_from(stdin, os.environ), plugin, dict(os.environ), stdin)
    except ConnectionError as exc:
        return agent_failed(plugin, stdin, exc)
    if reply is None:
        return None
    sys.stdout.write(reply.get("stdout", ""))
    sys.stderr.write(reply.get("stderr", ""))
    return reply["rc"]


def _full_path() -> None:
    """Site processing skipped by a ``-S`` launcher: do it now (in-process fallback),
    including the .pth files of a site directory the launcher put on sys.path
    (podbgp-install-cni's runtime)."""
    if sys.flags.no_site:
        import site

        site.main()
        for path in list(sys.path):
            if os.path.basename(path) == "site-packages":
                site.addsitedir(path)


ENTRIES = {"cni_main": "cni", "ipam_main": "ipam"}


def launcher_text(entry: str, python: str | None = None) -> str:
    """A fast launcher script for ``entry`` ("cni_main", "ipam_main"): ``python -IS``,
    only this package's directory on the path, straight into `cni.fast.launch`."""
    import cni

    pkg_dir = os.path.dirname(os.path.dirname(os.path.abspath(cni.__file__)))
    return (f"#!{python or sys.executable} -IS\n"
            "import sys\n"
            f"sys.path.insert(0, {pkg_dir!r})\n"
            "from cni.fast import launch\n"
            f"sys.exit(launch({ENTRIES[entry]!r}))\n")


def _plugin(plugin: str, stdin: str | None = None) -> int:
    """Run here; ``stdin`` is given when cni.fast already read it and found no agent."""
    forward = stdin is None
    if stdin is None:
        stdin = _stdin()
    if os.environ.get("CNI_COMMAND") == "VERSION":
        import json

        from cni.spec import config_version, version_result

        json.dump(version_result(config_version(stdin)), sys.stdout)
        sys.stdout.flush()
        return 0
    rc = _forward(plugin, stdin) if forward else None
    if rc is None:
        _full_path()
        if plugin == "cni":
            from cni.plugin import run
        else:
            from ipam.cni import run
        rc = run(os.environ, stdin, sys.stdout, sys.stderr)
    sys.stdout.flush()
    return rc


def _agent(argv: list[str]) -> int:
    import argparse

    _full_path()
    from cni.agent import DEFAULT_AGENT_SOCKET, DEFAULT_HTTP, serve

    ap = argparse.ArgumentParser(prog="podbgp-cni agent",
                                 description="Serve podbgp's CNI plugins from a warm process.")
    ap.add_argument("--socket", default=os.environ.get("PODBGP_CNI_SOCKET")
                    or DEFAULT_AGENT_SOCKET,
                    help="unix socket to listen on (PODBGP_CNI_SOCKET; default "
                    f"{DEFAULT_AGENT_SOCKET})")
    ap.add_argument("--http-listen", default=os.environ.get("PODBGP_CNI_HTTP_LISTEN")
                    or DEFAULT_HTTP,
                    help="ADDR:PORT for /metrics and /healthz, or 'off' (PODBGP_CNI_HTTP_LISTEN; "
                    f"default {DEFAULT_HTTP})")
    args = ap.parse_args(argv)
    listen = None
    if args.http_listen.lower() not in ("off", "none", ""):
        from bgpd.ops.http import parse_listen

        try:
            listen = parse_listen(args.http_listen)
        except ValueError as exc:
            ap.error(f"--http-listen: {exc}")
    return serve(args.socket, listen)


def main(plugin: str, stdin: str | None = None) -> int:
    """What cni.fast.launch did not do: anything but a call the agent answered."""
    if plugin == "ipam":
        return _plugin("ipam", stdin)
    argv = sys.argv[1:]
    if argv[:1] == ["agent"]:
        return _agent(argv[1:])
    if argv[:1] == ["--version"]:
        _full_path()
        from bgpd import __version__

        print(f"podbgp-cni {__version__}")
        return 0
    if argv[:1] in (["--help"], ["-h"]):
        print(USAGE)
        return 0
    if argv and not os.environ.get("CNI_COMMAND"):
        print(f"podbgp-cni: unexpected arguments {argv!r} (a CNI plugin reads CNI_COMMAND and "
              "stdin; `podbgp-cni agent` runs the node's agent; see --help)", file=sys.stderr)
        return 2
    return _plugin("cni", stdin)  # a runtime's extra arguments are ignored, as CNI plugins do


def cni_main() -> int:
    from cni.fast import launch

    return launch("cni")


def ipam_main() -> int:
    from cni.fast import launch

    return launch("ipam")
