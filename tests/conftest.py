"""Shared fixtures: a real etcd, throwaway network namespaces, root checks.

Tests that need root or namespaces call ``require_root()`` (or use the
``netns``/``etcd`` fixtures, which do): outside CI they skip with a reason on a
machine that cannot run them; under ``CI=true`` they FAIL, so a CI run can
never pass by silently skipping the privileged half of the suite.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import structlog

from tests.helpers.wait import until_sync

REPO = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(condition: bool, why: str) -> None:
    """Skip (locally) or fail (CI) when a test's environment is missing."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI=true and this test cannot run: {why}", pytrace=False)
    pytest.skip(why)


def require_root() -> None:
    require(os.geteuid() == 0, "needs root (network namespaces, netlink)")
    require(shutil.which("ip") is not None, "needs iproute2 (`ip`)")


def require_binary(name: str) -> str:
    path = shutil.which(name)
    require(path is not None, f"needs `{name}` (run `make deps`)")
    return path  # type: ignore[return-value]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports(n: int) -> list[int]:
    """n distinct free ports, all held open until chosen, so none repeats."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


# --------------------------------------------------------------------- etcd


@dataclass
class EtcdServer:
    """A real etcd on loopback in a temp dir; ``stop``/``start`` keep its data."""

    data_dir: Path
    client_port: int
    peer_port: int
    netns: str | None = None
    host: str = "127.0.0.1"
    proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.client_port}"

    def _cmd(self) -> list[str]:
        cmd = [
            require_binary("etcd"),
            "--name", "t",
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.endpoint,
            "--advertise-client-urls", self.endpoint,
            "--listen-peer-urls", f"http://{self.host}:{self.peer_port}",
            "--initial-advertise-peer-urls", f"http://{self.host}:{self.peer_port}",
            "--initial-cluster", f"t=http://{self.host}:{self.peer_port}",
            "--initial-cluster-state", "new",
            "--heartbeat-interval", "10",
            "--election-timeout", "100",
            "--log-level", "error",
        ]
        if self.netns:
            cmd = ["ip", "netns", "exec", self.netns, *cmd]
        return cmd

    def start(self, timeout: float = 15.0) -> None:
        assert self.proc is None, "etcd already running"
        log = open(self.data_dir.parent / "etcd.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(self._cmd(), stdout=log, stderr=log)
        log.close()

        def healthy() -> bool:
            if self.proc.poll() is not None:  # never healthy now: fail at once
                raise RuntimeError(
                    f"etcd exited with {self.proc.returncode}: "
                    + (self.data_dir.parent / "etcd.log").read_text()[-2000:]
                )
            return self._healthy()

        until_sync(healthy, timeout, "etcd to become healthy", interval=0.02)

    def _healthy(self) -> bool:
        cmd = ["curl", "-s", "-m", "1", f"{self.endpoint}/health"]
        if self.netns:
            cmd = ["ip", "netns", "exec", self.netns, *cmd]
        r = subprocess.run(cmd, capture_output=True, text=True)
        return '"health":"true"' in r.stdout

    def stop(self, sig_kill: bool = False) -> None:
        if self.proc is None:
            return
        if sig_kill:
            self.proc.kill()
        else:
            self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def etcdctl(self, *args: str) -> str:
        cmd = [require_binary("etcdctl"), f"--endpoints={self.endpoint}", *args]
        if self.netns:
            cmd = ["ip", "netns", "exec", self.netns, *cmd]
        env = {**os.environ, "ETCDCTL_API": "3"}
        return subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout


@pytest.fixture(autouse=True)
def _structlog_config_restored() -> Iterator[None]:
    """Whatever a test configures in-process (a CNI plugin's main() sets a
    WARNING-level filtering logger; the daemon's logging caches loggers) is put
    back after it, so a later test's capture_logs() sees every event."""
    saved = structlog.get_config()
    yield
    structlog.reset_defaults()
    structlog.configure(**saved)


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    """A fresh etcd per test (ready in ~0.1 s)."""
    require_binary("etcd")
    client, peer = free_ports(2)
    server = EtcdServer(tmp_path / "etcd-data", client, peer)
    server.start()
    try:
        yield server
    finally:
        server.stop(sig_kill=True)


# -------------------------------------------------------------- namespaces


def netns_add(name: str) -> None:
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)


def netns_del(name: str) -> None:
    # Kill whatever still runs inside (by PID), then remove the namespace.
    pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout
    for pid in pids.split():
        try:
            os.kill(int(pid), 9)
        except (ProcessLookupError, ValueError):
            pass
    subprocess.run(["ip", "netns", "del", name], capture_output=True)


def unique_name(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


@pytest.fixture
def netns() -> Iterator[str]:
    """A throwaway network namespace with loopback up; removed afterwards."""
    require_root()
    name = unique_name("pbt")
    netns_add(name)
    try:
        yield name
    finally:
        netns_del(name)


@pytest.fixture
def netns_factory() -> Iterator:
    """Make any number of namespaces; all removed afterwards, even on failure."""
    require_root()
    made: list[str] = []

    def make(prefix: str = "pbt") -> str:
        name = unique_name(prefix)
        netns_add(name)
        made.append(name)
        return name

    try:
        yield make
    finally:
        for name in reversed(made):
            netns_del(name)


@pytest.fixture
def workdir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="podbgp-test-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


# --------------------------------------------------------------- timeouts

UNIT_TIMEOUT = 120  # seconds; pyproject.toml's `timeout` is the ceiling for the rest


def pytest_collection_modifyitems(config, items) -> None:
    """Unit and fuzz tests need no component and no root: a tighter ceiling than the
    suite's, so a hang there fails in two minutes, not fifteen."""
    for item in items:
        parts = item.path.relative_to(REPO).parts
        if parts[:2] in (("tests", "unit"), ("tests", "fuzz")) and \
                item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(UNIT_TIMEOUT))
