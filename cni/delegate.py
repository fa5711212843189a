"""Delegating to the IPAM plugin the standard CNI way (SPEC.md section 4).

Owned by cni/. The plugin named by ``ipam.type`` is looked up in the
directories of ``CNI_PATH``, executed with the same environment (only
``CNI_COMMAND`` differs when the caller says so) and the *complete* network
configuration on stdin; its stderr goes to ours; a non-zero exit with an
error object on stdout is passed on with its code.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from typing import Any, TextIO

from cni.spec import E_DECODE, E_IPAM_PLUGIN, E_TRY_AGAIN, CNIError

DEFAULT_TIMEOUT = 120.0


def find_plugin(kind: str, env: Mapping[str, str]) -> str:
    dirs = [d for d in (env.get("CNI_PATH") or "").split(os.pathsep) if d]
    if not dirs:
        raise CNIError(4, f"CNI_PATH: missing (needed to find the IPAM plugin {kind!r})")
    for d in dirs:
        path = os.path.join(d, kind)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    raise CNIError(E_IPAM_PLUGIN, f"IPAM plugin {kind!r} not found in CNI_PATH",
                   "searched: " + ", ".join(dirs))


def run_ipam(kind: str, command: str, stdin: str, env: Mapping[str, str],
             timeout: float = DEFAULT_TIMEOUT, stderr: TextIO | None = None
             ) -> dict[str, Any] | None:
    """Run ``kind`` with ``command``; its result object (None when it printed nothing)."""
    path = find_plugin(kind, env)
    child_env = {**env, "CNI_COMMAND": command}
    try:
        proc = subprocess.run([path], input=stdin, env=child_env, capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise CNIError(E_TRY_AGAIN, f"IPAM plugin {kind!r} {command} did not finish within "
                       f"{timeout:.0f} s") from None
    except OSError as exc:
        raise CNIError(E_IPAM_PLUGIN, f"IPAM plugin {kind!r} could not be run: "
                       f"{exc.strerror}") from None
    if proc.stderr:
        (stderr or sys.stderr).write(proc.stderr)
    out = proc.stdout.strip()
    parsed: Any = None
    if out:
        try:
            parsed = json.loads(out)
        except ValueError:
            parsed = None
    if proc.returncode != 0:
        if isinstance(parsed, dict) and isinstance(parsed.get("code"), int):
            details = parsed.get("details") or ""
            raise CNIError(parsed["code"], f"IPAM plugin {kind!r}: {parsed.get('msg', '')}",
                           details if isinstance(details, str) else str(details))
        raise CNIError(E_IPAM_PLUGIN, f"IPAM plugin {kind!r} {command} failed with exit status "
                       f"{proc.returncode}", (proc.stderr or out).strip()[-500:])
    if out and not isinstance(parsed, dict):
        raise CNIError(E_DECODE, f"IPAM plugin {kind!r} printed something that is not a "
                       f"JSON object: {out[:200]!r}")
    return parsed
