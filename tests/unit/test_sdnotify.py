"""bgpd.ops.sdnotify: the sd_notify datagram protocol without libsystemd."""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

import pytest

from bgpd.ops.sdnotify import Notifier


@pytest.fixture
def listener(tmp_path: Path):
    path = str(tmp_path / "notify.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(2)
    try:
        yield path, s
    finally:
        s.close()


def recv(s: socket.socket) -> list[str]:
    return s.recv(4096).decode().split("\n")


def test_messages(listener) -> None:
    path, s = listener
    n = Notifier({"NOTIFY_SOCKET": path})
    assert n.enabled and n.watchdog_interval is None
    assert n.ready("running")
    assert recv(s) == ["READY=1", "STATUS=running"]
    assert n.ready()
    assert recv(s) == ["READY=1"]
    assert n.status("waiting for configuration")
    assert recv(s) == ["STATUS=waiting for configuration"]
    assert n.watchdog()
    assert recv(s) == ["WATCHDOG=1"]
    assert n.stopping()
    assert recv(s) == ["STOPPING=1"]


def test_a_full_queue_never_blocks_and_ready_is_sent_again(listener) -> None:
    """A receiver that does not read fills its queue (net.unix.max_dgram_qlen): sendto
    on a blocking socket would then stop the daemon's event loop (seen: bgpd stuck
    after start under a test's notify socket). It must return at once, and READY=1
    must still arrive once the receiver reads again."""
    import time

    path, s = listener
    n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"})
    sent = 0
    t0 = time.monotonic()
    while n.watchdog():
        sent += 1
        assert sent < 100_000
    assert time.monotonic() - t0 < 5
    assert not n.ready("running")  # queue full: not delivered, not blocked
    for _ in range(sent):
        assert recv(s) == ["WATCHDOG=1"]
    assert n.watchdog()
    assert recv(s) == ["READY=1", "WATCHDOG=1"]
    assert n.watchdog()
    assert recv(s) == ["WATCHDOG=1"]  # sent once only


def test_abstract_socket() -> None:
    name = f"podbgp-test-{uuid.uuid4().hex}"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind("\0" + name)
    s.settimeout(2)
    try:
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).ready()
        assert recv(s) == ["READY=1"]
    finally:
        s.close()


def test_disabled_without_socket() -> None:
    n = Notifier({})
    assert not n.enabled
    assert n.ready() is False and n.stopping() is False and n.watchdog() is False
    assert n.watchdog_interval is None
    assert not Notifier({"NOTIFY_SOCKET": ""}).enabled


def test_unreachable_socket_is_not_an_error(tmp_path: Path) -> None:
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert n.enabled
    assert n.ready() is False  # systemd went away: the daemon keeps running


@pytest.mark.parametrize(("env", "interval"), [
    ({"WATCHDOG_USEC": "30000000"}, 15.0),  # every half of WatchdogSec
    ({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid())}, 0.5),
    ({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}, None),  # meant for another process
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "-5"}, None),
    ({"WATCHDOG_USEC": "soon"}, None),
    ({}, None),
])
def test_watchdog_interval(env: dict[str, str], interval: float | None) -> None:
    assert Notifier({"NOTIFY_SOCKET": "/x", **env}).watchdog_interval == interval


def test_reads_process_environment(monkeypatch, listener) -> None:
    path, s = listener
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "4000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    n = Notifier()
    assert n.watchdog_interval == 2.0
    assert n.stopping() and recv(s) == ["STOPPING=1"]
