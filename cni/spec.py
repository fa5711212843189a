"""The CNI protocol itself: versions, error codes, environment, results.

Owned by cni/; used by both podbgp plugins (``podbgp-cni`` and
``podbgp-ipam``). Standard library only: this module is on the path of every
pod start, before anything heavier is imported.

Spec: containernetworking/cni SPEC.md (1.1.0, which also defines 1.0.0 and,
through the tags, 0.3.x and 0.4.0). Results are kept internally in the 1.0.0
shape and converted on output: 0.3.x/0.4.0 add ``"version"`` to each IP
(and use ``interface`` the same way); 1.0.0 and 1.1.0 are identical.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any, TextIO

SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
LATEST = "1.1.0"

# Well-known error codes (SPEC.md "Error").
E_INCOMPATIBLE = 1
E_UNSUPPORTED_FIELD = 2
E_UNKNOWN_CONTAINER = 3
E_BAD_ENV = 4
E_IO = 5
E_DECODE = 6
E_BAD_CONFIG = 7
E_TRY_AGAIN = 11
E_NOT_AVAILABLE = 50
E_LIMITED_CONNECTIVITY = 51
# Plugin-specific (100+), shared by podbgp's plugins.
E_NO_ADDRESS = 100
E_CHECK_MISMATCH = 101
E_DATAPLANE = 102
E_IPAM_PLUGIN = 103
E_INTERNAL = 999

_CONTAINER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
_IFNAME = re.compile(r"[^/\s:]{1,15}")


class CNIError(Exception):
    """A failure reported to the runtime as a CNI error object.

    ``exit_status`` is the process exit code (1: the request failed; 2: the
    plugin was invoked wrongly: docs/interfaces.md, "cni/", exit status).
    """

    def __init__(self, code: int, msg: str, details: str = "", exit_status: int = 1) -> None:
        super().__init__(msg)
        self.code, self.msg, self.details, self.exit_status = code, msg, details, exit_status

    def to_object(self, version: str) -> dict[str, Any]:
        out: dict[str, Any] = {"cniVersion": version if version in SUPPORTED_VERSIONS
                               else LATEST, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out


def config_version(stdin: str) -> str:
    """The ``cniVersion`` of a configuration text, or LATEST if it has none readable."""
    try:
        version = json.loads(stdin).get("cniVersion")
    except (ValueError, AttributeError):
        return LATEST
    return version if isinstance(version, str) and version else LATEST


def version_result(version: str) -> dict[str, Any]:
    return {"cniVersion": version if version in SUPPORTED_VERSIONS else LATEST,
            "supportedVersions": list(SUPPORTED_VERSIONS)}


def check_version(version: Any, command: str = "") -> str:
    if not isinstance(version, str) or not version:
        raise CNIError(E_BAD_CONFIG, "cniVersion: missing")
    if version not in SUPPORTED_VERSIONS:
        raise CNIError(E_INCOMPATIBLE, f"cniVersion: {version!r} is not supported",
                       "supported: " + ", ".join(SUPPORTED_VERSIONS))
    if command == "CHECK" and version.startswith("0.3."):
        raise CNIError(E_INCOMPATIBLE, f"CHECK is not defined for cniVersion {version}")
    return version


def parse_cni_args(text: str) -> dict[str, str]:
    """``IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p`` -> dict (CNI_ARGS)."""
    out = {}
    for part in (text or "").split(";"):
        if not part:
            continue
        k, sep, v = part.partition("=")
        if not sep or not k:
            raise CNIError(E_BAD_ENV, f"CNI_ARGS: {part!r} is not KEY=VALUE")
        out[k] = v
    return out


def container_id(env: Mapping[str, str]) -> str:
    cid = env.get("CNI_CONTAINERID", "")
    if not cid or not _CONTAINER_ID.fullmatch(cid):
        raise CNIError(E_BAD_ENV, f"CNI_CONTAINERID: {cid!r} is missing or not a container id "
                       "(alphanumeric first, then alphanumerics, '_', '.', '-')")
    return cid


def interface_name(env: Mapping[str, str]) -> str:
    name = env.get("CNI_IFNAME", "")
    if not _IFNAME.fullmatch(name) or name in (".", ".."):
        raise CNIError(E_BAD_ENV, f"CNI_IFNAME: {name!r} is missing or not an interface name "
                       "(1-15 bytes, no '/', ':' or spaces)")
    return name


def netns_path(env: Mapping[str, str], required: bool = True) -> str:
    path = env.get("CNI_NETNS", "")
    if required and not path:
        raise CNIError(E_BAD_ENV, "CNI_NETNS: missing")
    return path


# ------------------------------------------------------------------ results


def to_version(result: Mapping[str, Any], version: str) -> dict[str, Any]:
    """A result (1.0.0 shape) in ``version``'s shape, ``cniVersion`` set."""
    out = dict(result)
    out["cniVersion"] = version
    ips = []
    for ip in result.get("ips", []):
        entry = {k: v for k, v in ip.items() if k != "version"}
        if version.startswith("0."):
            addr = str(entry.get("address", ""))
            entry = {"version": "6" if ":" in addr.split("/")[0] else "4", **entry}
        ips.append(entry)
    out["ips"] = ips
    return out


def from_any_version(result: Mapping[str, Any]) -> dict[str, Any]:
    """A result of any supported version in the 1.0.0 shape (``version`` dropped)."""
    if not isinstance(result, Mapping):
        raise CNIError(E_DECODE, f"result is not a JSON object: {result!r}")
    out = dict(result)
    ips = result.get("ips") or []
    if not isinstance(ips, list) or not all(isinstance(i, Mapping) and "address" in i
                                            for i in ips):
        raise CNIError(E_DECODE, f"result.ips: {ips!r} is not a list of {{address, ...}}")
    out["ips"] = [{k: v for k, v in ip.items() if k != "version"} for ip in ips]
    routes = result.get("routes") or []
    if not isinstance(routes, list) or not all(isinstance(r, Mapping) and "dst" in r
                                               for r in routes):
        raise CNIError(E_DECODE, f"result.routes: {routes!r} is not a list of {{dst, gw}}")
    out["routes"] = [dict(r) for r in routes]
    out.setdefault("interfaces", [])
    out.setdefault("dns", {})
    return out


def valid_attachments(conf: Mapping[str, Any]) -> set[tuple[str, str]]:
    """GC's ``cni.dev/valid-attachments``: {(containerID, ifname)} (SPEC.md "GC")."""
    raw = conf.get("cni.dev/valid-attachments")
    if raw is None:
        raw = []
    if not isinstance(raw, list) or not all(
            isinstance(a, Mapping) and isinstance(a.get("containerID"), str) for a in raw):
        raise CNIError(E_BAD_CONFIG, "cni.dev/valid-attachments: not a list of "
                       '{"containerID": ..., "ifname": ...}')
    return {(a["containerID"], str(a.get("ifname") or "")) for a in raw}


def load_config(text: str, command: str = "") -> tuple[dict[str, Any], str, str]:
    """The network configuration on stdin: (the object, its cniVersion, its name), each
    checked (codes 6, 1 and 7 name what is wrong)."""
    try:
        conf = json.loads(text)
    except ValueError as exc:
        raise CNIError(E_DECODE, f"network configuration is not JSON: {exc}") from None
    if not isinstance(conf, dict):
        raise CNIError(E_DECODE, "network configuration is not a JSON object")
    version = check_version(conf.get("cniVersion"), command)
    name = conf.get("name")
    if not isinstance(name, str) or not name or "/" in name:
        raise CNIError(E_BAD_CONFIG, f"name: {name!r} is not a network name")
    return conf, version, name


def opt_str(conf: Mapping[str, Any], key: str, where: str = "") -> str | None:
    """An optional string key of a configuration ("" and null are unset); code 7 otherwise."""
    value = conf.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise CNIError(E_BAD_CONFIG, f"{where}{key}: {value!r} is not a string")
    return value


def opt_bool(conf: Mapping[str, Any], key: str, default: bool = False, where: str = "") -> bool:
    """An optional boolean key: JSON true/false or Calico's strings "true"/"false"
    (its plugins take flags as strings); absent or null is ``default``; code 7 otherwise."""
    value = conf.get(key)
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise CNIError(E_BAD_CONFIG, f'{where}{key}: {value!r} is not true or false ("true"/"false")')


def run_command(plugin: str, commands: tuple[str, ...], env: Mapping[str, str], stdin: str,
                stdout: TextIO, stderr: TextIO,
                handle: Callable[[str], dict[str, Any] | None],
                on_internal: Callable[[str], None] | None = None) -> int:
    """One plugin call: VERSION answered here, ``handle(command)`` for the ``commands``;
    its result (if any) on stdout. A CNIError becomes the spec's error object on stdout
    and one line on stderr; anything else an internal error, never a traceback."""
    command = env.get("CNI_COMMAND", "")
    version = config_version(stdin)
    try:
        if command == "VERSION":
            json.dump(version_result(version), stdout)
            return 0
        if command not in commands:
            raise CNIError(E_BAD_ENV, f"CNI_COMMAND: {command!r} is not one of "
                           + ", ".join((*commands, "VERSION")), exit_status=2)
        result = handle(command)
        if result is not None:
            json.dump(result, stdout)
        return 0
    except CNIError as err:
        json.dump(err.to_object(version), stdout)
        extra = f" ({err.details})" if err.details else ""
        print(f"{plugin}: {command or '?'}: {err.msg}{extra}", file=stderr)
        return err.exit_status
    except Exception as exc:  # never a traceback to the runtime
        if on_internal is not None:
            on_internal(command)
        json.dump(CNIError(E_INTERNAL, f"internal error: {exc!r}").to_object(version), stdout)
        print(f"{plugin}: {command or '?'}: internal error: {exc!r}", file=stderr)
        return 1
