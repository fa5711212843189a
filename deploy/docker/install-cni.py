#!/usr/bin/env python3
"""podbgp-install-cni: put podbgp's CNI plugins and network config on the node.

The DaemonSet's init container (deploy/kubernetes/podbgp.yaml) runs this, as
Calico's ``install-cni`` init container runs ``calico component cni install``
(projectcalico/calico cni-plugin/pkg/install/install.go): the node's
/opt/cni/bin and /etc/cni/net.d are mounted at /host/opt/cni/bin and
/host/etc/cni/net.d, the etcd TLS files at TLS_ASSETS_DIR, and the network
config template comes from the ConfigMap (CNI_NETWORK_CONFIG).

podbgp's plugins are Python console scripts, and the node need not have
Python at all. So, unlike Calico's static Go binaries, each plugin is
installed as a small /bin/sh launcher plus one shared, self-contained
runtime: this image's CPython, its standard library, the installed packages
and every shared library they load, with the image's own dynamic loader
(started as ``ld.so --library-path``, so the node's libc version does not
matter). The runtime lives in /opt/cni/bin/podbgp-runtime/<version>-<digest>/,
is written under a temporary name and renamed into place, is reused when
already there, and the two newest are kept (a plugin call that started
before an upgrade finishes on its old runtime).

podbgp-cni and podbgp-ipam are, where the image has it
(/usr/local/lib/podbgp/podbgp-cni-forward, PODBGP_CNI_FORWARDER), the compiled
forwarder (cni/forward.c, linked statically in the image's build: it runs on
whatever libc the node has): it hands the call to the node's agent without
starting Python, and execs the /bin/sh launcher installed beside it as
``<plugin>-python`` for everything else (no agent, VERSION, ...).

Which plugins: every ``type`` and ``ipam.type`` of the rendered network
config that is a console script of the podbgp distribution (so
``podbgp-cni`` is installed as soon as the config names it). A type that is
not podbgp's must already be on the node (e.g. the standard ``portmap``),
else this fails naming it. Each launcher is run once with
CNI_COMMAND=VERSION before the config is written: a node never gets a
config whose plugins do not start.

Environment (Calico's names where Calico has one):
  CNI_NETWORK_CONFIG / CNI_NETWORK_CONFIG_FILE   the template (one is required)
  CNI_CONF_NAME          file name in the net dir (default 10-podbgp.conflist)
  CNI_NET_DIR            the net dir as the NODE sees it (default /etc/cni/net.d):
                         the TLS paths written into the config are under it
  TLS_ASSETS_DIR         etcd-ca / etcd-cert / etcd-key (default /etc/podbgp/tls)
  UPDATE_CNI_BINARIES    "false": keep launchers already on the node
  SKIP_CNI_BINARIES      comma-separated plugin names not to install
  HOST_CNI_BIN_DIR       the mount of the node's /opt/cni/bin (default /host/opt/cni/bin)
  HOST_CNI_NET_DIR       the mount of the node's /etc/cni/net.d (default /host/etc/cni/net.d)
  PODBGP_CNI_FORWARDER   the compiled forwarder (default /usr/local/lib/podbgp/podbgp-cni-forward;
                         absent: the plugins are the /bin/sh launchers themselves)
Template placeholders: __ETCD_ENDPOINTS__ __ETCD_CA_CERT_FILE__
__ETCD_CERT_FILE__ __ETCD_KEY_FILE__ __DATASTORE_TYPE__ __KUBERNETES_NODE_NAME__
__CNI_MTU__ __LOG_LEVEL__ (values from the variables of the same name, NODENAME
for the node name; CNI_MTU defaults to 0, which podbgp-cni reads as "auto").
Any other __NAME__ left in the template is an error, not silently kept.

Logs are JSON lines on stderr; exit status 0 when installed, 1 with the
reason otherwise. Standard library only.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata as md
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

DIST = "podbgp"
RUNTIME_DIR = "podbgp-runtime"
KEEP_RUNTIMES = 2
FORWARDER = "/usr/local/lib/podbgp/podbgp-cni-forward"  # the Dockerfile's forwarder stage
FORWARDED = ("podbgp-cni", "podbgp-ipam")  # what cni/forward.c can be (cni.forward.PLUGINS)
TLS_FILES = ("etcd-ca", "etcd-cert", "etcd-key")
# Standard-library parts no CNI plugin imports: tests, GUIs, 2to3, pip's bootstrap.
STDLIB_SKIP = {"test", "idlelib", "tkinter", "turtledemo", "lib2to3", "ensurepip",
               "pydoc_data", "site-packages", "dist-packages"}
SITE_SKIP = {"pip", "setuptools", "wheel", "_distutils_hack", "distutils-precedence.pth"}
LAUNCHER = """#!/bin/sh
# {name}: installed by podbgp-install-cni from podbgp {version}. Do not edit.
# Runs the plugin on podbgp's own Python runtime, whatever the node has; -S: the
# call is handed to the node's agent before anything else is imported (cni.fast).
R="$(dirname "$0")/{runtime}"
exec "$R/lib/{loader}" --library-path "$R/lib" "$R/bin/{python}" -I -S -c \\
  'import sys; sys.argv.pop(0); p = sys.argv.pop(1); sys.path.insert(0, p)
try: from {module} import {attr} as m
except ImportError: import site; site.addsitedir(p); from {module} import {attr} as m
sys.exit(m())' \\
  "$0" "$R/site-packages" "$@"
"""


class InstallError(Exception):
    """A reason to fail the init container, said plainly."""


def log(event: str, level: str = "info", **fields: object) -> None:
    line = {"event": event, "level": level, "logger": "podbgp.install_cni",
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **fields}
    print(json.dumps(line), file=sys.stderr, flush=True)


# ------------------------------------------------------------------ config


def load_template(env: dict[str, str]) -> str:
    if env.get("CNI_NETWORK_CONFIG_FILE"):
        path = Path(env["CNI_NETWORK_CONFIG_FILE"])
        try:
            return path.read_text()
        except OSError as exc:
            raise InstallError(f"CNI_NETWORK_CONFIG_FILE={path}: {exc.strerror}") from None
    if env.get("CNI_NETWORK_CONFIG"):
        return env["CNI_NETWORK_CONFIG"]
    raise InstallError("no network config: set CNI_NETWORK_CONFIG (the ConfigMap's "
                       "cni_network_config) or CNI_NETWORK_CONFIG_FILE")


def render(template: str, env: dict[str, str], tls: dict[str, str]) -> dict:
    """The template with Calico's placeholders replaced, parsed and checked."""
    values = {
        "ETCD_ENDPOINTS": env.get("ETCD_ENDPOINTS", ""),
        "ETCD_CA_CERT_FILE": tls.get("etcd-ca", ""),
        "ETCD_CERT_FILE": tls.get("etcd-cert", ""),
        "ETCD_KEY_FILE": tls.get("etcd-key", ""),
        "DATASTORE_TYPE": env.get("DATASTORE_TYPE", "etcdv3"),
        "KUBERNETES_NODE_NAME": (env.get("KUBERNETES_NODE_NAME") or env.get("NODENAME")
                                 or socket.gethostname()),
        "CNI_MTU": env.get("CNI_MTU", "0"),
        "LOG_LEVEL": env.get("LOG_LEVEL", "info"),
    }
    if not re.fullmatch(r"\d+", values["CNI_MTU"]):
        raise InstallError(f"CNI_MTU={values['CNI_MTU']!r} is not a number")
    text = template
    for key, value in values.items():
        text = text.replace(f"__{key}__", value)
    left = sorted(set(re.findall(r"__[A-Z][A-Z0-9_]*__", text)))
    if left:
        raise InstallError(f"network config: unknown placeholder(s) {', '.join(left)}")
    try:
        conf = json.loads(text)
    except ValueError as exc:
        raise InstallError(f"network config is not valid JSON after substitution: {exc}") from None
    if not isinstance(conf, dict) or not isinstance(conf.get("cniVersion"), str):
        raise InstallError("network config: not a JSON object with a cniVersion")
    plugins = conf.get("plugins", [conf] if "type" in conf else None)
    if not isinstance(plugins, list) or not plugins or not all(
        isinstance(p, dict) and isinstance(p.get("type"), str) and p["type"] for p in plugins
    ):
        raise InstallError("network config: needs 'plugins', a list of objects with a 'type'")
    return conf


def plugin_types(conf: dict) -> list[str]:
    out: list[str] = []
    for p in conf.get("plugins", [conf]):
        for t in (p["type"], (p.get("ipam") or {}).get("type")):
            if t and t not in out:
                out.append(t)
    return out


def console_scripts() -> dict[str, md.EntryPoint]:
    dist = md.distribution(DIST)
    return {e.name: e for e in dist.entry_points if e.group == "console_scripts"}


# ----------------------------------------------------------------- runtime


def elf_files(root: Path) -> list[Path]:
    found = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            with path.open("rb") as f:
                if f.read(4) == b"\x7fELF":
                    found.append(path)
    return found


def shared_libraries(files: list[Path]) -> tuple[dict[str, Path], Path]:
    """soname -> file for everything the ELF files load, and the dynamic loader."""
    libs: dict[str, Path] = {}
    loader: Path | None = None
    for path in files:
        r = subprocess.run(["ldd", str(path)], capture_output=True, text=True)
        if r.returncode != 0:
            continue  # not dynamically linked
        for line in r.stdout.splitlines():
            line = line.strip()
            if "=> not found" in line:
                raise InstallError(f"{path}: {line}")
            m = re.match(r"(\S+) => (/\S+)", line)
            if m:
                libs[m.group(1)] = Path(m.group(2))
            elif line.startswith("/"):
                loader = Path(line.split()[0])
    if loader is None:
        raise InstallError("cannot find the dynamic loader (ldd printed none)")
    return libs, loader


def runtime_id(version: str) -> str:
    """<version>-<digest> over the interpreter and every installed distribution."""
    h = hashlib.sha256(sys.version.encode())
    h.update(LAUNCHER.encode())
    for dist in sorted(md.distributions(), key=lambda d: d.metadata["Name"].lower()):
        h.update(f"{dist.metadata['Name']}=={dist.version}\n".encode())
        record = dist.read_text("RECORD") or ""
        h.update(hashlib.sha256(record.encode()).digest())
    return f"{version}-{h.hexdigest()[:12]}"


def copy_tree(src: Path, dst: Path, skip: set[str]) -> None:
    shutil.copytree(src, dst, symlinks=True,
                    ignore=lambda d, names: [n for n in names
                                             if Path(d) == src and n in skip])


def build_runtime(target: Path) -> tuple[str, str]:
    """A self-contained CPython at ``target``; returns (loader name, python name)."""
    exe = Path(os.path.realpath(sys.executable))
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    sites = {Path(sysconfig.get_paths()[k]) for k in ("purelib", "platlib")}
    (target / "bin").mkdir(parents=True)
    shutil.copy2(exe, target / "bin" / exe.name)
    copy_tree(stdlib, target / "lib" / stdlib.name, STDLIB_SKIP)
    for site_dir in sorted(sites):
        if site_dir.is_dir():
            shutil.copytree(site_dir, target / "site-packages", symlinks=True, dirs_exist_ok=True,
                            ignore=lambda d, names, s=site_dir: [
                                n for n in names if Path(d) == s and (
                                    n in SITE_SKIP or n.split("-")[0] in SITE_SKIP)])
    libs, loader = shared_libraries(elf_files(target))
    for soname, path in sorted(libs.items()):
        shutil.copy2(path, target / "lib" / soname)
    shutil.copy2(loader, target / "lib" / loader.name)
    return loader.name, exe.name


def install_runtime(bin_dir: Path, version: str) -> tuple[str, str, str]:
    """Ensure the runtime is in ``bin_dir``; returns (dir name, loader, python)."""
    rid = runtime_id(version)
    base = bin_dir / RUNTIME_DIR
    final = base / rid
    stamp = final / ".podbgp-runtime"
    if stamp.exists():
        loader, python = stamp.read_text().split()
        log("runtime_up_to_date", path=str(final))
        return f"{RUNTIME_DIR}/{rid}", loader, python
    base.mkdir(exist_ok=True)
    tmp = base / f".{rid}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    start = time.monotonic()
    loader, python = build_runtime(tmp)
    (tmp / ".podbgp-runtime").write_text(f"{loader} {python}\n")
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    size = sum(p.stat().st_size for p in final.rglob("*") if p.is_file() and not p.is_symlink())
    log("runtime_installed", path=str(final), mb=round(size / 1e6, 1),
        seconds=round(time.monotonic() - start, 2))
    return f"{RUNTIME_DIR}/{rid}", loader, python


def prune_runtimes(bin_dir: Path, current: str) -> None:
    base = bin_dir / RUNTIME_DIR
    dirs = sorted((d for d in base.iterdir() if d.is_dir()),
                  key=lambda d: d.stat().st_mtime, reverse=True)
    keep = {current.rpartition("/")[2]}
    for d in dirs:
        if d.name.startswith("."):
            if time.time() - d.stat().st_mtime > 3600:  # an interrupted install
                shutil.rmtree(d, ignore_errors=True)
            continue
        if len(keep) < KEEP_RUNTIMES:
            keep.add(d.name)
        elif d.name not in keep:
            shutil.rmtree(d, ignore_errors=True)
            log("runtime_removed", path=str(d))


# ----------------------------------------------------------------- install


def write_atomic(path: Path, data: bytes, mode: int) -> bool:
    """Write unless identical; returns whether the file changed."""
    if path.exists() and path.read_bytes() == data:
        path.chmod(mode)
        return False
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.chmod(mode)
    tmp.rename(path)
    return True


def install_tls(env: dict[str, str], host_net: Path, net_dir: str) -> dict[str, str]:
    """Copy the etcd TLS files next to the config; {name: path as the node sees it}."""
    src = Path(env.get("TLS_ASSETS_DIR", "/etc/podbgp/tls"))
    present = [n for n in TLS_FILES if (src / n).is_file()]
    dst = host_net / "podbgp-tls"
    if not present:
        log("tls_assets_none", dir=str(src))
        return {}
    dst.mkdir(mode=0o700, exist_ok=True)
    for name in present:
        write_atomic(dst / name, (src / name).read_bytes(), 0o600)
    log("tls_assets_installed", files=present)
    return {n: f"{net_dir.rstrip('/')}/podbgp-tls/{n}" for n in present}


def check_plugin(path: Path, cni_version: str) -> None:
    """The launcher answers CNI VERSION and supports the config's cniVersion."""
    r = subprocess.run([str(path)], env={"CNI_COMMAND": "VERSION", "PATH": "/usr/bin:/bin"},
                       input="{}", capture_output=True, text=True, timeout=60)
    try:
        versions = json.loads(r.stdout)["supportedVersions"]
    except (ValueError, KeyError, TypeError):
        raise InstallError(f"{path.name} does not start: exit {r.returncode}: "
                           f"{(r.stderr or r.stdout).strip()[-500:]}") from None
    if cni_version not in versions:
        raise InstallError(f"{path.name} does not support cniVersion {cni_version} "
                           f"(it supports {', '.join(versions)})")


def install_plugin(host_bin: Path, plugin: str, launcher: str,
                   forwarder: Path) -> tuple[bool, bool]:
    """``plugin`` in the node's bin dir: the compiled forwarder with the launcher beside it
    as ``<plugin>-python`` (written first: the forwarder execs it), or the launcher itself.
    Returns (whether anything changed, whether it is the forwarder)."""
    target = host_bin / plugin
    if plugin in FORWARDED and forwarder.is_file():
        changed = write_atomic(host_bin / f"{plugin}-python", launcher.encode(), 0o755)
        return write_atomic(target, forwarder.read_bytes(), 0o755) or changed, True
    return write_atomic(target, launcher.encode(), 0o755), False


def install(env: dict[str, str]) -> Path:
    host_bin = Path(env.get("HOST_CNI_BIN_DIR", "/host/opt/cni/bin"))
    host_net = Path(env.get("HOST_CNI_NET_DIR", "/host/etc/cni/net.d"))
    net_dir = env.get("CNI_NET_DIR", "/etc/cni/net.d")
    name = env.get("CNI_CONF_NAME", "10-podbgp.conflist")
    update = env.get("UPDATE_CNI_BINARIES", "true").lower() != "false"
    skip = {s.strip() for s in env.get("SKIP_CNI_BINARIES", "").split(",") if s.strip()}
    for d in (host_bin, host_net):
        if not d.is_dir() or not os.access(d, os.W_OK):
            raise InstallError(f"{d} is not a writable directory (is the node's directory "
                               "mounted there?)")
    if "/" in name or not name.endswith((".conf", ".conflist")):
        raise InstallError(f"CNI_CONF_NAME={name!r}: expected a .conflist or .conf file name")

    template = load_template(env)
    tls = install_tls(env, host_net, net_dir)
    conf = render(template, env, tls)
    scripts = console_scripts()
    version = md.version(DIST)
    ours = [t for t in plugin_types(conf) if t in scripts and t not in skip]
    for t in plugin_types(conf):
        if t not in ours and not (host_bin / t).exists():
            raise InstallError(f"network config uses plugin type {t!r}, which is neither a "
                               f"podbgp plugin ({', '.join(sorted(scripts))}) nor installed "
                               f"in the node's CNI bin directory")

    forwarder = Path(env.get("PODBGP_CNI_FORWARDER", FORWARDER))
    runtime = loader = python = ""
    if ours:
        runtime, loader, python = install_runtime(host_bin, version)
    for plugin in ours:
        target = host_bin / plugin
        if target.exists() and not update:
            log("plugin_kept", plugin=plugin, reason="UPDATE_CNI_BINARIES=false")
            continue
        ep = scripts[plugin]
        module, _, attr = ep.value.partition(":")
        text = LAUNCHER.format(name=plugin, version=version, runtime=runtime, loader=loader,
                               python=python, module=module.strip(), attr=attr.strip() or "main")
        changed, forwarded = install_plugin(host_bin, plugin, text, forwarder)
        check_plugin(target, conf["cniVersion"])
        log("plugin_installed" if changed else "plugin_up_to_date", plugin=plugin,
            path=str(target), forwarder=forwarded)
    if runtime:
        prune_runtimes(host_bin, runtime)

    path = host_net / name
    data = (json.dumps(conf, indent=2) + "\n").encode()
    changed = write_atomic(path, data, 0o600)
    log("network_config_written" if changed else "network_config_up_to_date",
        path=str(path), plugins=plugin_types(conf))
    return path


def main() -> int:
    try:
        install(dict(os.environ))
    except InstallError as exc:
        log("install_failed", level="error", error=str(exc))
        print(f"podbgp-install-cni: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        log("install_failed", level="error", error=f"{exc.filename or ''}: {exc.strerror}")
        print(f"podbgp-install-cni: {exc}", file=sys.stderr)
        return 1
    if os.environ.get("SLEEP", "false").lower() == "true":
        # As a long-running container (Calico's SLEEP=true): stay up, do nothing.
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)
    return 0


if __name__ == "__main__":
    sys.exit(main())
