"""systemd notification protocol (sd_notify) without libsystemd.

READY=1 once the daemon is ready, STOPPING=1 on shutdown, WATCHDOG=1 every
half of WatchdogSec. A no-op when NOTIFY_SOCKET is not set (not under systemd).
"""

from __future__ import annotations

import os
import socket


class Notifier:
    def __init__(self, env: dict[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        addr = env.get("NOTIFY_SOCKET", "")
        if addr.startswith("@"):  # abstract namespace socket
            addr = "\0" + addr[1:]
        self._addr = addr or None
        # READY=1 / STOPPING=1 that found the receiver's queue full: sent again,
        # ahead of the next message (a WATCHDOG=1 ping), until one gets through.
        self._pending: list[str] = []
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        ok_pid = not pid or pid == str(os.getpid())
        self.watchdog_interval: float | None = (
            int(usec) / 2e6 if usec.isdigit() and int(usec) > 0 and ok_pid else None
        )

    @property
    def enabled(self) -> bool:
        return self._addr is not None

    def notify(self, *fields: str) -> bool:
        if not self._addr:
            return False
        fields = (*[f for f in self._pending if f not in fields], *fields)
        msg = "\n".join(fields).encode()
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            # Never block the event loop: a receiver that does not read (its queue
            # holds net.unix.max_dgram_qlen datagrams) would otherwise stop the
            # daemon inside sendto, HTTP and routing included. A dropped WATCHDOG=1
            # costs nothing; the next one follows.
            s.setblocking(False)
            try:
                s.sendto(msg, self._addr)
            except OSError:  # BlockingIOError included
                self._pending = [f for f in fields if f in ("READY=1", "STOPPING=1")]
                return False
        self._pending = []
        return True

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")
