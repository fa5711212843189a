"""Many well-behaved BGP peers in one thread (stdlib only): for speaker reload tests.

Owned by tests/integration/test_speaker_reload.py. ``Responders`` listens on
port 179 of every address it is given, inside one network namespace, and
answers whoever dials: the peer's OPEN with its own (hold time 90, IPv4
unicast), then a KEEPALIVE for each one received. It records every session
that reached Established and every one that ended afterwards, so a test can
count resets from the peers' side as well as from the speaker's events.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

from tests.helpers import hostile_speaker as hs


@dataclass
class _Conn:
    address: str  # our (the responder's) address
    sock: socket.socket
    buf: bytes = b""
    established: bool = False


@dataclass
class Responders:
    ns: str
    asns: dict[str, int]  # responder address -> its AS
    established: dict[str, int] = field(default_factory=dict)  # address -> sessions up
    ended: list[tuple[float, str, str]] = field(default_factory=list)  # (t, address, how)

    def __post_init__(self) -> None:
        self._sel = selectors.DefaultSelector()
        self._stop = threading.Event()
        self._drop = threading.Event()
        self._dropped = threading.Event()
        self._lock = threading.Lock()
        self._listeners: list[socket.socket] = []
        for address in self.asns:
            s = hs.netns_socket(self.ns)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((address, 179))
            s.listen(16)
            s.setblocking(False)
            self._listeners.append(s)
            self._sel.register(s, selectors.EVENT_READ, ("listen", address))
        self._thread = threading.Thread(target=self._run, name="bgp-responders", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._drop.is_set():
                for key in list(self._sel.get_map().values()):
                    if key.data[0] == "conn":
                        self._close(key.data[1], "dropped")
                self._drop.clear()
                self._dropped.set()
            for key, _ in self._sel.select(0.01):
                kind, data = key.data
                if kind == "listen":
                    with contextlib.suppress(OSError):
                        c, _ = key.fileobj.accept()
                        c.setblocking(False)
                        self._sel.register(c, selectors.EVENT_READ, ("conn", _Conn(data, c)))
                else:
                    self._serve(data)

    def _serve(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(conn, "closed")
            return
        conn.buf += data
        while len(conn.buf) >= hs.HEADER_LEN:
            size, kind = struct.unpack("!HB", conn.buf[16:19])
            if size < hs.HEADER_LEN or len(conn.buf) < size:
                break
            conn.buf = conn.buf[size:]
            try:
                if kind == hs.OPEN:
                    rid = conn.address
                    conn.sock.sendall(hs.open_msg(self.asns[conn.address], rid, 90,
                                                  capabilities=[hs.cap_multiprotocol(),
                                                                hs.cap_as4(self.asns[conn.address])])
                                      + hs.keepalive())
                elif kind == hs.KEEPALIVE:
                    if not conn.established:
                        conn.established = True
                        with self._lock:
                            self.established[conn.address] = \
                                self.established.get(conn.address, 0) + 1
                    conn.sock.sendall(hs.keepalive())
                elif kind == hs.NOTIFICATION:
                    self._close(conn, "notification")
                    return
            except OSError:
                self._close(conn, "closed")
                return

    def _close(self, conn: _Conn, how: str) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(conn.sock)
        conn.sock.close()
        if conn.established:
            with self._lock:
                self.ended.append((time.monotonic(), conn.address, how))

    def drop_all(self) -> None:
        """Close every connection at once (no NOTIFICATION, as a peer that restarted):
        the speaker dials them all again and they come up together."""
        self._dropped.clear()
        self._drop.set()
        if not self._dropped.wait(5):
            raise TimeoutError("responders did not drop their connections")

    def wait_all_ended(self, timeout: float = 10) -> None:
        """Until every session that reached Established has been seen to end (after the
        speaker was stopped: its closes reach this thread a moment later, and must not
        be counted against the next start)."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if len(self.ended) >= sum(self.established.values()):
                    return
            if time.monotonic() >= deadline:
                raise TimeoutError("responders: sessions of a stopped speaker still open")
            time.sleep(0.01)

    def ends_since(self, t: float) -> list[tuple[float, str, str]]:
        with self._lock:
            return [e for e in self.ended if e[0] >= t]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for key in list(self._sel.get_map().values()):
            with contextlib.suppress(OSError):
                key.fileobj.close()
        self._sel.close()
