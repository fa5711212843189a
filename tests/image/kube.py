"""A Kubernetes container spec, run with podman the way a kubelet would run it.

Owned by tests/image/. The image tests start the DaemonSet's containers with
exactly what deploy/kubernetes says — command, args, env (with ``$(VAR)``
expansion and ``valueFrom``), securityContext, resources, volumeMounts — read
from the YAML, never restated. Every field is either translated or refused:
a manifest that gains a field this module does not know fails the test
instead of being silently ignored, so the test can never check less than
the manifest asks for.

The pod's "host" is a network namespace the test made (``hostNetwork: true``
becomes ``--network ns:/run/netns/NAME``); hostPath volumes live under a
throwaway directory standing in for the host's root.

Mapping (what the kubelet + a CRI runtime do; see the Kubernetes API
reference for Container, SecurityContext, Volume):

- command -> --entrypoint (JSON), args -> trailing arguments; neither given:
  the image's ENTRYPOINT/CMD.
- env value ``$(NAME)`` expands earlier entries only; ``$$`` escapes.
  fieldRef spec.nodeName / status.hostIP / metadata.name /
  metadata.namespace; configMapKeyRef and secretKeyRef from the objects given.
- securityContext: runAsUser/runAsGroup -> --user; privileged;
  allowPrivilegeEscalation: false -> no-new-privileges;
  readOnlyRootFilesystem -> --read-only with no podman tmpfs on /tmp, /run
  (Kubernetes mounts none); capabilities -> --cap-drop/--cap-add;
  seccompProfile RuntimeDefault -> podman's default profile.
- resources: limits.memory -> --memory, limits.cpu -> --cpus, requests.cpu ->
  --cpu-shares (the kubelet's milliCPU * 1024 / 1000); requests.memory only
  schedules.
- volumes: secret/configMap -> a directory of its keys (mode defaultMode,
  read-only as the kubelet mounts them); emptyDir -> a fresh directory, or a
  tmpfs with size=sizeLimit for medium Memory; hostPath -> HOST_ROOT/path;
  mountPropagation HostToContainer -> rslave, Bidirectional -> rshared.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

CONTAINER_KEYS = {
    "name", "image", "imagePullPolicy", "command", "args", "env", "ports",
    "livenessProbe", "readinessProbe", "startupProbe", "resources", "securityContext",
    "volumeMounts", "terminationMessagePolicy",
}
SECURITY_KEYS = {
    "runAsUser", "runAsGroup", "runAsNonRoot", "privileged", "allowPrivilegeEscalation",
    "readOnlyRootFilesystem", "capabilities", "seccompProfile",
}
MOUNT_KEYS = {"name", "mountPath", "readOnly", "mountPropagation"}
# mountPropagation -> the bind mount's propagation (Kubernetes API reference,
# VolumeMount: HostToContainer is rslave, Bidirectional rshared, None private).
PROPAGATION = {"None": "", "HostToContainer": "rslave", "Bidirectional": "rshared"}
UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "K": 10**3, "M": 10**6, "G": 10**9, "": 1}


class Unsupported(ValueError):
    """The manifest uses a field this translation does not model."""


def quantity(text: str | int) -> int:
    """A Kubernetes memory/storage quantity (``512Mi``) in bytes."""
    m = re.fullmatch(r"(\d+)([KMG]i?)?", str(text))
    if not m:
        raise Unsupported(f"quantity {text!r}")
    return int(m.group(1)) * UNITS[m.group(2) or ""]


def millicpu(text: str | int) -> int:
    s = str(text)
    return int(s[:-1]) if s.endswith("m") else int(float(s) * 1000)


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: defined names only, ``$$`` is a literal ``$``."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return env[name] if name in env else m.group(0)

    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)", sub, value)


@dataclass
class Node:
    """What the kubelet knows about the pod's node, and the objects it reads."""

    name: str
    host_ip: str
    netns: str
    host_root: Path
    config_maps: dict[str, dict[str, str]] = field(default_factory=dict)
    secrets: dict[str, dict[str, bytes]] = field(default_factory=dict)
    pod_name: str = "podbgp-test"
    pod_namespace: str = "kube-system"


def container_env(container: dict, node: Node) -> dict[str, str]:
    fields = {"spec.nodeName": node.name, "status.hostIP": node.host_ip,
              "status.podIP": node.host_ip, "metadata.name": node.pod_name,
              "metadata.namespace": node.pod_namespace}
    env: dict[str, str] = {}
    if "envFrom" in container:
        raise Unsupported("envFrom")
    for entry in container.get("env", []):
        name = entry["name"]
        if "value" in entry:
            env[name] = expand(str(entry["value"]), env)
            continue
        source = entry["valueFrom"]
        if "fieldRef" in source:
            env[name] = fields[source["fieldRef"]["fieldPath"]]
        elif "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            env[name] = node.config_maps[ref["name"]][ref["key"]]
        elif "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            env[name] = node.secrets[ref["name"]][ref["key"]].decode()
        else:
            raise Unsupported(f"env {name}: valueFrom {sorted(source)}")
    return env


def _materialize(items: dict[str, bytes | str], directory: Path, mode: int) -> Path:
    directory.mkdir(parents=True)
    for key, value in items.items():
        path = directory / key
        path.write_bytes(value.encode() if isinstance(value, str) else value)
        path.chmod(mode)
    return directory


def volume_args(pod: dict, container: dict, node: Node, scratch: Path) -> list[str]:
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    args: list[str] = []
    for mount in container.get("volumeMounts", []):
        extra = set(mount) - MOUNT_KEYS
        if extra:
            raise Unsupported(f"volumeMount {mount['name']}: {sorted(extra)}")
        vol = volumes[mount["name"]]
        target = mount["mountPath"]
        if mount.get("mountPropagation", "None") not in PROPAGATION:
            raise Unsupported(f"volumeMount {mount['name']}: mountPropagation "
                              f"{mount['mountPropagation']!r}")
        options = [o for o in ("ro" if mount.get("readOnly") else "",
                               PROPAGATION[mount.get("mountPropagation", "None")]) if o]
        ro = ":" + ",".join(options) if options else ""
        where = scratch / f"vol-{mount['name']}"
        if "secret" in vol:
            src = vol["secret"]
            data = node.secrets[src["secretName"]]
            path = _materialize(data, where, src.get("defaultMode", 0o644))
            args += ["-v", f"{path}:{target}:ro"]  # the kubelet mounts secrets read-only
        elif "configMap" in vol:
            src = vol["configMap"]
            data = node.config_maps[src["name"]]
            path = _materialize(data, where, src.get("defaultMode", 0o644))
            args += ["-v", f"{path}:{target}:ro"]
        elif "emptyDir" in vol:
            spec = vol["emptyDir"] or {}
            if spec.get("medium") == "Memory":
                size = f",size={quantity(spec['sizeLimit'])}" if "sizeLimit" in spec else ""
                args += ["--tmpfs", f"{target}:rw,mode=0777{size}"]
            else:
                where.mkdir(parents=True)
                where.chmod(0o777)
                args += ["-v", f"{where}:{target}{ro}"]
        elif "hostPath" in vol:
            spec = vol["hostPath"]
            path = node.host_root / spec["path"].lstrip("/")
            kind = spec.get("type", "")
            if kind == "DirectoryOrCreate":
                path.mkdir(parents=True, exist_ok=True)
            elif kind not in ("", "Directory") or not path.is_dir():
                raise Unsupported(f"hostPath {spec}")
            args += ["-v", f"{path}:{target}{ro}"]
        else:
            raise Unsupported(f"volume {mount['name']}: {sorted(vol)}")
    return args


def security_args(container: dict) -> list[str]:
    sc = container.get("securityContext", {})
    extra = set(sc) - SECURITY_KEYS
    if extra:
        raise Unsupported(f"securityContext {sorted(extra)}")
    args: list[str] = []
    if "runAsUser" in sc:
        args += ["--user", f"{sc['runAsUser']}:{sc.get('runAsGroup', sc['runAsUser'])}"]
    if sc.get("privileged"):
        args.append("--privileged")
    if sc.get("allowPrivilegeEscalation") is False:
        args += ["--security-opt", "no-new-privileges"]
    if sc.get("readOnlyRootFilesystem"):
        args += ["--read-only", "--read-only-tmpfs=false"]
    caps = sc.get("capabilities", {})
    for cap in caps.get("drop", []):
        args += ["--cap-drop", cap]
    for cap in caps.get("add", []):
        args += ["--cap-add", cap]
    profile = sc.get("seccompProfile", {"type": "RuntimeDefault"})
    if profile != {"type": "RuntimeDefault"}:
        raise Unsupported(f"seccompProfile {profile}")
    return args


def resource_args(container: dict) -> list[str]:
    res = container.get("resources", {})
    args: list[str] = []
    limits, requests = res.get("limits", {}), res.get("requests", {})
    if set(limits) - {"memory", "cpu"} or set(requests) - {"memory", "cpu"}:
        raise Unsupported(f"resources {res}")
    if "memory" in limits:
        args += ["--memory", str(quantity(limits["memory"]))]
    if "cpu" in limits:
        args += ["--cpus", str(millicpu(limits["cpu"]) / 1000)]
    if "cpu" in requests:
        args += ["--cpu-shares", str(max(2, millicpu(requests["cpu"]) * 1024 // 1000))]
    return args


@dataclass
class Translated:
    argv: list[str]             # podman run arguments, image and args included
    env: dict[str, str]         # the container's resolved environment
    stop_timeout: int           # terminationGracePeriodSeconds


def podman_run(pod: dict, container: dict, node: Node, scratch: Path,
               name: str, init: bool = False) -> Translated:
    """``podman run`` arguments for ``container`` of pod spec ``pod`` on ``node``.

    A container runs detached; an init container (``init``) in the foreground
    to completion and is removed, as the kubelet runs it before the others.
    """
    extra = set(container) - CONTAINER_KEYS
    if extra:
        raise Unsupported(f"container {container['name']}: {sorted(extra)}")
    if not pod.get("hostNetwork"):
        raise Unsupported("only hostNetwork pods (the node's network is a test namespace)")
    env = container_env(container, node)
    grace = int(pod.get("terminationGracePeriodSeconds", 30))
    argv = ["run", "--rm" if init else "-d", "--name", name, "--network", f"ns:/run/netns/{node.netns}",
            "--hostname", node.name, "--stop-timeout", str(grace), "--pull", "never",
            # Kubernetes ignores the image's HEALTHCHECK (its own probes run
            # instead); podman keeps it for `podman healthcheck run`, and
            # without systemd it never schedules it on its own.
            "--health-interval", "disable"]
    argv += security_args(container) + resource_args(container)
    if scratch.exists():
        shutil.rmtree(scratch)
    argv += volume_args(pod, container, node, scratch)
    for key, value in env.items():
        argv += ["--env", f"{key}={value}"]
    if "command" in container:
        argv += ["--entrypoint", json.dumps([expand(c, env) for c in container["command"]])]
    argv.append(container["image"])
    argv += [expand(a, env) for a in container.get("args", [])]
    return Translated(argv=argv, env=env, stop_timeout=grace)


def probe_url(container: dict, kind: str, env: dict[str, str], host_ip: str) -> str:
    """The URL the kubelet GETs for an httpGet probe (pod IP = host IP with hostNetwork)."""
    get = container[kind]["httpGet"]
    extra = set(get) - {"path", "port", "scheme"}
    if extra or get.get("scheme", "HTTP") != "HTTP":
        raise Unsupported(f"{kind} httpGet {get}")
    port = get["port"]
    if isinstance(port, str):
        port = next(p["containerPort"] for p in container["ports"] if p["name"] == port)
    return f"http://{host_ip}:{port}{get['path']}"
