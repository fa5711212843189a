"""One bgpd per state directory and per routing table: the locks taken before anything else.

Owned by ``bgpd.main``: it takes both locks before the daemon binds a port,
reads the datastore or looks at the kernel, holds them for the process's life
and lets the kernel drop them when the process ends (however it ends).

- The state directory: ``flock`` on ``<state dir>/bgpd.lock``, which holds the
  holder's PID. Everything below the directory (ExaBGP's config, socket and pid
  file, and the clean-up of an ExaBGP left by a killed predecessor) is touched
  only by the holder, so a second bgpd pointed at the same directory (a systemd
  unit and a DaemonSet on one host, an operator debugging by hand) can no longer
  kill the first one's ExaBGP and rewrite its config.
- The routing table: podbgp owns the routes of one protocol number in one table
  of one network namespace (``--route-protocol``/``--route-table``); two daemons
  there would undo each other's routes. The lock is an abstract unix socket
  (``@podbgp/fib/<table>/<protocol>``): abstract names belong to the network
  namespace, so daemons in different namespaces (a lab, nodes as containers)
  do not see each other's, and the kernel releases it when the process dies.
  The holder's PID is read from the socket itself (``SO_PEERCRED``).

A second bgpd exits at once (status 1) with one line naming the holder's PID
and the directory or table; it has touched nothing of the first's.

``podbgp-policy`` takes the same kind of lock for its nftables table
(``@podbgp/policy/inet/<table>``, ``policy_table_lock``); it keeps no state directory.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import struct
from pathlib import Path

LOCK_FILE = "bgpd.lock"


class AlreadyRunning(RuntimeError):
    """Another process holds the lock; the message names it and what it holds."""


def _pid_text(pid: int | None) -> str:
    return f"pid {pid}" if pid else "a process whose pid could not be read"


class InstanceLocks:
    """Both locks, released together (``release`` or process exit)."""

    def __init__(self) -> None:
        self._fd: int | None = None
        self._sock: socket.socket | None = None
        self.path: Path | None = None
        self.name: str | None = None

    def acquire(self, state_dir: str | os.PathLike[str], table: int, protocol: int) -> None:
        try:
            self._lock_dir(Path(state_dir))
            self._lock_table(table, protocol)
        except BaseException:
            self.release()
            raise

    def _lock_dir(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self.path = state_dir / LOCK_FILE
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_pid(fd)
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise AlreadyRunning(
                    f"state directory {state_dir} is in use by another bgpd "
                    f"({_pid_text(holder)}, lock {self.path}); give each bgpd its own "
                    "--state-dir") from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def _lock_table(self, table: int, protocol: int) -> None:
        self.name = f"podbgp/fib/{table}/{protocol}"
        self._sock = hold_name(
            self.name, f"routing table {table} protocol {protocol} in this network namespace "
            "is managed by another bgpd", "one bgpd per node (or give each its own "
            "--route-table/--route-protocol)")

    def release(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


def hold_name(name: str, what: str, advice: str) -> socket.socket:
    """Hold abstract unix socket ``name`` in this network namespace for as long as the
    returned socket is open (the kernel closes it with the process). Taken already:
    AlreadyRunning "<what> (pid N); <advice>"."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.bind("\0" + name)
        sock.listen(8)
    except OSError as exc:
        sock.close()
        if exc.errno != errno.EADDRINUSE:
            raise
        raise AlreadyRunning(f"{what} ({_pid_text(_socket_holder(name))}); {advice}") from None
    return sock


def policy_table_lock(table: str) -> socket.socket:
    """podbgp-policy's lock: one agent per nftables table per network namespace (two
    would replace each other's rules in turn)."""
    return hold_name(f"podbgp/policy/inet/{table}",
                     f"nftables table inet {table} in this network namespace is managed by "
                     "another podbgp-policy", "one podbgp-policy per node (or give each its "
                     "own --table)")


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _socket_holder(name: str) -> int | None:
    """The PID of the process listening on abstract socket ``name`` (SO_PEERCRED)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect("\0" + name)
            cred = probe.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                    struct.calcsize("3i"))
        except OSError:
            return None
    pid, _uid, _gid = struct.unpack("3i", cred)
    return pid or None
