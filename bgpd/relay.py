"""Relay between ExaBGP's API pipes and the daemon's unix socket.

ExaBGP 5.0.15 starts the programs of its ``process`` blocks with
``subprocess.Popen`` (inherited descriptors closed), so the daemon cannot hand
it a socket. This tiny program is that process: it copies its stdin (ExaBGP's
events) to the unix socket the speaker serves, and the socket (commands) to
its stdout. Stdlib only and no exabgp import, so it starts in milliseconds.
It exits as soon as either side closes; ExaBGP respawns it
(``exabgp.api.respawn``), and the speaker treats a new connection as a new
channel.

Usage: ``python -m bgpd.relay SOCKET``
"""

from __future__ import annotations

import os
import select
import socket
import sys
import time

CHUNK = 1 << 16
CONNECT_TIMEOUT = 10.0


def _connect(path: str) -> socket.socket:
    # The speaker's server normally exists before ExaBGP starts; a short retry
    # covers a respawn racing the speaker re-creating its socket.
    deadline = time.monotonic() + CONNECT_TIMEOUT
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
            return sock
        except OSError:
            sock.close()
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def relay(path: str, stdin_fd: int = 0, stdout_fd: int = 1) -> int:
    """Copy stdin -> socket and socket -> stdout until either side closes."""
    sock = _connect(path)
    sock_fd = sock.fileno()
    try:
        while True:
            readable, _, _ = select.select([stdin_fd, sock_fd], [], [])
            if stdin_fd in readable:
                data = os.read(stdin_fd, CHUNK)
                if not data:
                    return 0
                sock.sendall(data)
            if sock_fd in readable:
                data = sock.recv(CHUNK)
                if not data:
                    return 0
                _write_all(stdout_fd, data)
    except (BrokenPipeError, ConnectionError):
        return 0
    finally:
        sock.close()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.stderr.write("usage: python -m bgpd.relay SOCKET\n")
        return 2
    try:
        return relay(args[0])
    except OSError as exc:
        sys.stderr.write(f"bgpd.relay: cannot connect to {args[0]}: {exc}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
