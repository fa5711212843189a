"""The compiled forwarder (cni/forward.c): where it is, how it is built, how it is laid out.

Owned by cni/. ``podbgp-cni`` and ``podbgp-ipam`` can both be this one small
C program: it hands a plugin call to the node's agent without starting an
interpreter, and execs the Python launcher beside it (``<name>-python``) for
everything else. `make deps` builds it when a C compiler is present:

    python -m cni.forward --build [--out PATH] [--static]
    python -m cni.forward --install /opt/cni/bin   # the forwarder + this venv's launchers

`built()` is the binary next to the source when it was built from this very
source (the source's SHA-256 is kept beside it: a stale one is never used,
and a checkout that only touched the file's time does not make it stale); `install(bin_dir, python_launcher)`
writes the layout a CNI bin directory needs.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

SOURCE = Path(__file__).resolve().with_name("forward.c")
BINARY = Path(__file__).resolve().with_name("podbgp-cni-forward")
STAMP = Path(__file__).resolve().with_name("podbgp-cni-forward.source-sha256")
CFLAGS = ("-Wall", "-Wextra", "-O2")
PLUGINS = ("podbgp-cni", "podbgp-ipam")
PYTHON_SUFFIX = "-python"  # the launcher the forwarder execs: <dir>/<name>-python
ENTRIES = {"podbgp-cni": "cni_main", "podbgp-ipam": "ipam_main"}  # cni.shim's entry points


class BuildError(Exception):
    pass


def compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def build(out: Path = BINARY, static: bool = False) -> Path:
    """Compile the forwarder to ``out`` (written under a temporary name, then renamed)."""
    cc = compiler()
    if cc is None:
        raise BuildError("no C compiler (cc): install gcc (scripts/install-deps.sh does)")
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    cmd = [cc, *CFLAGS, *(["-static"] if static else []), "-o", str(tmp), str(SOURCE)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise BuildError(f"{' '.join(cmd)} failed:\n{r.stderr.strip()}")
    tmp.replace(out)
    if out == BINARY:
        STAMP.write_text(source_digest() + "\n")
    return out


def source_digest() -> str:
    return hashlib.sha256(SOURCE.read_bytes()).hexdigest()


def built() -> Path | None:
    """The built forwarder, if it was built from the source as it is now."""
    try:
        if STAMP.read_text().strip() == source_digest() and os.access(BINARY, os.X_OK):
            return BINARY
    except OSError:
        pass
    return None


def install(bin_dir: Path, python_launcher: Callable[[str], str],
            binary: Path | None = None) -> None:
    """``bin_dir``/podbgp-cni and podbgp-ipam as the forwarder (one file, two links),
    each with its Python launcher ``<name>-python`` (``python_launcher(plugin)``: its
    text). Launchers first: a forwarder never exists without its fallback."""
    binary = binary or built()
    if binary is None:
        raise BuildError(f"{BINARY} is not built (python -m cni.forward --build)")
    for plugin in PLUGINS:
        launcher = bin_dir / (plugin + PYTHON_SUFFIX)
        launcher.write_text(python_launcher(plugin))
        launcher.chmod(0o755)
    first = bin_dir / PLUGINS[0]
    shutil.copyfile(binary, first)
    first.chmod(0o755)
    for plugin in PLUGINS[1:]:
        os.link(first, bin_dir / plugin)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cni.forward", description=__doc__.splitlines()[0])
    ap.add_argument("--build", action="store_true", help="compile cni/forward.c")
    ap.add_argument("--out", type=Path, default=BINARY, help=f"where to (default {BINARY})")
    ap.add_argument("--static", action="store_true", help="link statically")
    ap.add_argument("--install", type=Path, metavar="DIR",
                    help="put podbgp-cni and podbgp-ipam (the forwarder, with this Python's "
                    "launchers beside it) into DIR, e.g. /opt/cni/bin")
    ap.add_argument("--if-stale", action="store_true",
                    help="only when not built from the source as it is now")
    ap.add_argument("--if-cc", action="store_true",
                    help="only say so, exit 0, when there is no C compiler")
    a = ap.parse_args(argv)
    if a.install:
        from cni.shim import launcher_text

        if not a.install.is_dir():
            ap.error(f"--install: {a.install} is not a directory")
        for plugin in PLUGINS:
            for name in (plugin, plugin + PYTHON_SUFFIX):
                (a.install / name).unlink(missing_ok=True)
        try:
            install(a.install, lambda plugin: launcher_text(ENTRIES[plugin]))
        except BuildError as exc:
            print(f"cni.forward: {exc}", file=sys.stderr)
            return 1
        print(" ".join(str(a.install / p) for p in PLUGINS))
        return 0
    if not a.build:
        print(built() or "not built")
        return 0
    if a.if_stale and a.out == BINARY and built():
        return 0
    if a.if_cc and compiler() is None:
        print("cni.forward: no C compiler: podbgp-cni/podbgp-ipam stay Python launchers",
              file=sys.stderr)
        return 0
    try:
        print(build(a.out, a.static))
    except BuildError as exc:
        print(f"cni.forward: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
