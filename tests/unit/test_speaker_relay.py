"""bgpd.exabgp.relay: stdin <-> unix socket copier that ExaBGP runs as its API process."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest


@pytest.fixture
def server(tmp_path: Path):
    path = tmp_path / "r.sock"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(1)
    srv.settimeout(5)
    yield path, srv
    srv.close()


def spawn(path: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bgpd.exabgp.relay", str(path)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)


def recv_until(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_copies_both_ways_and_exits_when_socket_closes(server) -> None:
    path, srv = server
    t0 = time.monotonic()
    relay = spawn(path)
    try:
        conn, _ = srv.accept()
        conn.settimeout(5)
        started = time.monotonic() - t0
        print(f"relay connected {started * 1000:.0f} ms after spawn")
        assert started < 2.0  # stdlib only: no exabgp import on the path
        big = b'{"type": "state"}\n{"type": "update", "x": "' + b"a" * 300_000 + b'"}\n'
        # Written from a thread: the pipe and socket buffers are smaller than the line.
        writer = threading.Thread(target=lambda: (relay.stdin.write(big),
                                                  relay.stdin.flush()))
        writer.start()
        assert recv_until(conn, len(big)) == big
        writer.join(5)
        conn.sendall(b"neighbor 10.0.0.2 announce route 10.1.0.0/24 next-hop self\n")
        assert relay.stdout.readline() == b"neighbor 10.0.0.2 announce route 10.1.0.0/24 next-hop self\n"
        conn.close()
        assert relay.wait(5) == 0
    finally:
        if relay.poll() is None:
            relay.kill()
            relay.wait()


def test_exits_when_stdin_closes(server) -> None:
    path, srv = server
    relay = spawn(path)
    try:
        conn, _ = srv.accept()
        conn.settimeout(5)
        relay.stdin.close()
        assert relay.wait(5) == 0
        assert conn.recv(10) == b""  # the speaker sees the channel close
        conn.close()
    finally:
        if relay.poll() is None:
            relay.kill()
            relay.wait()


def test_usage_and_missing_socket(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "bgpd.exabgp.relay"], capture_output=True, text=True)
    assert r.returncode == 2 and "usage" in r.stderr
    import bgpd.exabgp.relay as relay_mod

    # Connecting to a socket nobody serves fails with a clear message, not a traceback.
    relay_mod.CONNECT_TIMEOUT = 0.2
    assert relay_mod.main([str(tmp_path / "nobody.sock")]) == 1
