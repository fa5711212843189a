"""The container image tests: the image built for real and run in namespaces.

Owned by tests/image/. ``image`` (session scope) runs scripts/build-image.sh
(base from Debian's archive, cached under .cache/image; the image itself is
rebuilt only when its build context changed) and exports it; ``podman``
talks to that same private store. Nothing here touches podman's default
network: every container gets ``--network ns:/run/netns/NAME`` of a namespace
the test made, or ``none``. The session checks at the end that the host's
state (ip_forward, podman/CNI links and firewall chains, /var/lib/containers,
/etc/cni/net.d, podman's cgroups) is what it was before.

Under CI=true a missing podman/root fails (``tests.conftest.require``). The
measurements (image size, build times, idle memory) are printed at the end
of the run and written to .cache/image/report.json.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO, require_binary, require_root

BUILD = REPO / "scripts" / "build-image.sh"
# podbgp's image plus systemd as PID 1, for deploy/systemd/podbgp.service.
SYSTEMD_CONTAINERFILE = REPO / "tests" / "image" / "systemd.Containerfile"
SYSTEMD_IMAGE = "localhost/podbgp-systemd:test"
REPORT: dict[str, object] = {}


def podman_env() -> dict[str, str]:
    """The environment that points podman at build-image.sh's private store."""
    out = subprocess.run([str(BUILD), "--env"], capture_output=True, text=True, check=True,
                         timeout=60).stdout
    env = dict(os.environ)
    for line in out.splitlines():
        for token in shlex.split(line)[1:]:  # "export A=1 B=2"
            key, _, value = token.partition("=")
            env[key] = value
    return env


class Podman:
    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.bin = require_binary("podman")

    def __call__(self, *args: str, check: bool = True, timeout: float = 180,
                 input: str | None = None) -> subprocess.CompletedProcess:
        r = subprocess.run([self.bin, *args], env=self.env, capture_output=True, text=True,
                           timeout=timeout, input=input)
        if check and r.returncode != 0:
            raise AssertionError(f"podman {' '.join(args[:3])}...: exit {r.returncode}: "
                                 f"{r.stderr.strip()[-3000:]}")
        return r

    def inspect(self, name: str, template: str) -> str:
        return self("inspect", "--format", template, name).stdout.strip()

    def remove(self, name: str) -> None:
        self("rm", "-f", "-t", "0", name, check=False, timeout=60)


# ------------------------------------------------------------- host state


def remove_podman_cgroups(wait: float = 10.0) -> None:
    """podman (cgroupfs) leaves an empty libpod_parent per controller: remove empty ones.

    A conmon that is still exiting keeps its cgroup for a moment: retry for ``wait`` s.
    """
    deadline = time.monotonic() + wait
    while True:
        _remove_empty_cgroups()
        if not list(Path("/sys/fs/cgroup").glob("*/libpod_parent")) or (
                time.monotonic() > deadline):
            return
        time.sleep(0.2)


def _remove_empty_cgroups() -> None:
    for parent in Path("/sys/fs/cgroup").glob("*/libpod_parent"):
        for d in sorted((p for p in parent.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            try:
                d.rmdir()
            except OSError:
                pass  # a cgroup with processes in it: still in use
        try:
            parent.rmdir()
        except OSError:
            pass


def host_state() -> dict[str, object]:
    """What podman's default network, a stray runtime, or a leak would change."""
    def out(*cmd: str) -> str:
        if not shutil.which(cmd[0]):
            return ""
        return subprocess.run(cmd, capture_output=True, text=True).stdout

    podmanish = re.compile(r"podman|netavark|cni", re.I)
    links = [line.split(": ")[1].split("@")[0] for line in out("ip", "-o", "link").splitlines()]
    return {
        "ip_forward": Path("/proc/sys/net/ipv4/ip_forward").read_text().strip(),
        "links": sorted(n for n in links if re.match(r"(cni-podman|podman)", n)),
        "iptables": sorted(line.split()[0] for line in out("iptables-save").splitlines()
                           if line.startswith(":") and podmanish.search(line)),
        "nft": sorted(line for line in out("nft", "list", "tables").splitlines()
                      if podmanish.search(line)),
        "paths": sorted(p for p in ("/var/lib/containers", "/run/containers", "/run/libpod",
                                    "/var/lib/cni", "/run/cni") if os.path.exists(p)),
        "cni_conf": sorted(os.listdir("/etc/cni/net.d")) if os.path.isdir("/etc/cni/net.d")
        else [],
        "cgroups": sorted(str(p) for p in Path("/sys/fs/cgroup").glob("*/libpod_parent")),
    }


# ------------------------------------------------------------------ image


@dataclass
class BuiltImage:
    tag: str
    size: int
    export: Path
    seconds: float
    log: str


@pytest.fixture(scope="session")
def podman() -> Podman:
    require_root()
    for tool in ("podman", "buildah", "mmdebstrap", "runc", "openssl"):
        require_binary(tool)
    return Podman(podman_env())


@pytest.fixture(scope="session")
def image(podman: Podman, tmp_path_factory) -> Iterator[BuiltImage]:
    remove_podman_cgroups()
    before = host_state()
    export = tmp_path_factory.mktemp("image") / "podbgp.tar"
    start = time.monotonic()
    r = subprocess.run([str(BUILD), "--export", str(export), "--extra",
                        f"{SYSTEMD_CONTAINERFILE}={SYSTEMD_IMAGE}"],
                       capture_output=True, text=True, timeout=1800)
    seconds = time.monotonic() - start
    assert r.returncode == 0, f"build-image.sh failed:\n{r.stderr[-4000:]}"
    tag = r.stdout.strip().splitlines()[-1]
    size = int(podman.inspect(tag, "{{.Size}}"))
    base = re.search(r"base: \S+ (cached|built in \d+ s)", r.stderr)
    built = re.search(r"image build (\d+) s", r.stderr)
    REPORT.update({
        "image": tag, "image_mb": round(size / 1e6, 1),
        "export_mb": round(export.stat().st_size / 1e6, 1),
        "build_script_s": round(seconds, 1), "base": base.group(1) if base else "?",
        "image_build_s": int(built.group(1)) if built else None,
    })
    yield BuiltImage(tag=tag, size=size, export=export, seconds=seconds, log=r.stderr)
    remove_podman_cgroups()
    after = host_state()
    assert after == before, f"the image tests changed the host: {before} -> {after}"


def pytest_terminal_summary(terminalreporter) -> None:
    if not REPORT:
        return
    (REPO / ".cache" / "image").mkdir(parents=True, exist_ok=True)
    (REPO / ".cache" / "image" / "report.json").write_text(json.dumps(REPORT, indent=2) + "\n")
    terminalreporter.section("podbgp container image")
    for key, value in REPORT.items():
        terminalreporter.write_line(f"{key}: {value}")
