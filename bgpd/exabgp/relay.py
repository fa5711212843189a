"""Relay between ExaBGP's API pipes and the daemon's unix socket.

ExaBGP 5.0.15 starts the programs of its ``process`` blocks with
``subprocess.Popen`` (inherited descriptors closed), so the daemon cannot hand
it a socket. This tiny program is that process: it copies its stdin (ExaBGP's
events) to the unix socket the speaker serves, and the socket (commands) to
its stdout. Stdlib only and no exabgp import, so it starts in milliseconds.
It exits as soon as either side closes; ExaBGP respawns it
(``exabgp.api.respawn``), and the speaker treats a new connection as a new
channel.

Usage: ``python -m bgpd.exabgp.relay SOCKET``
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


def relay(path: str, stdin_fd: int = 0, stdout_fd: int = 1) -> int:
    """Copy stdin -> socket and socket -> stdout until either side closes.

    Both directions are buffered and non-blocking: ExaBGP may be blocked writing
    an event to us while we hold a command for it, so neither copy may wait on
    the other (a blocking write here could deadlock the two processes).
    """
    sock = _connect(path)
    sock.setblocking(False)
    sock_fd = sock.fileno()
    os.set_blocking(stdin_fd, False)
    os.set_blocking(stdout_fd, False)
    to_sock = bytearray()  # events from ExaBGP, for the speaker
    to_out = bytearray()  # commands from the speaker, for ExaBGP
    try:
        while True:
            rlist = [stdin_fd, sock_fd]
            wlist = ([sock_fd] if to_sock else []) + ([stdout_fd] if to_out else [])
            readable, writable, _ = select.select(rlist, wlist, [])
            if stdin_fd in readable:
                data = _read(os.read, stdin_fd, CHUNK)
                if data == b"":
                    return 0
                to_sock += data or b""
            if sock_fd in readable:
                data = _read(sock.recv, CHUNK)
                if data == b"":
                    return 0
                to_out += data or b""
            if sock_fd in writable and to_sock:
                del to_sock[: _write(sock.send, to_sock)]
            if stdout_fd in writable and to_out:
                del to_out[: _write(os.write, stdout_fd, to_out)]
    except (BrokenPipeError, ConnectionError):
        return 0
    finally:
        sock.close()


def _read(op, *args) -> bytes | None:
    try:
        return op(*args)
    except BlockingIOError:
        return None


def _write(op, *args) -> int:
    try:
        return op(*args)
    except BlockingIOError:
        return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.stderr.write("usage: python -m bgpd.exabgp.relay SOCKET\n")
        return 2
    try:
        return relay(args[0])
    except OSError as exc:
        sys.stderr.write(f"bgpd.exabgp.relay: cannot connect to {args[0]}: {exc}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
