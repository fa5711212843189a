"""The node's CNI agent: runs podbgp's CNI plugins warm, behind a unix socket.

Owned by cni/. A CNI plugin is a fresh process per pod event; podbgp's
plugins are Python, and importing what they use (aetcd/gRPC, the config
models, structlog) costs ~1 s of CPU per run here, far more than the work.
With ``podbgp-cni agent`` running on the node, the ``podbgp-cni`` and
``podbgp-ipam`` executables only forward their environment and stdin to it
and print its answer; the agent runs the very same plugin functions
(`cni.plugin.run`, `ipam.cni.run`) in a thread per request. Without an
agent they do the work themselves (slower, same result). This is the shape
of Antrea's antrea-cni/antrea-agent and Multus' thick plugin.

Nothing about the CNI contract changes: the runtime still executes
``podbgp-cni``, which still delegates IPAM by executing ``ipam.type`` from
``CNI_PATH`` (that process forwards to the agent too when it is
``podbgp-ipam``); exit codes, stdout and stderr are the plugin's.

Wire format, both ways: a 4-byte big-endian length, then JSON. Request
``{"plugin": "cni"|"ipam", "env": {...}, "stdin": "..."}``, answer
``{"rc": N, "stdout": "...", "stderr": "..."}``. The socket is created
mode 0600 and a peer that is neither root nor the agent's user is refused
(SO_PEERCRED): the agent configures interfaces and writes etcd as root.
"""

from __future__ import annotations

import contextlib
import gc
import io
import json
import os
import queue
import signal
import socket
import struct
import sys
import threading
import time
from typing import Any

from cni import warm
from cni.fast import DEFAULT_AGENT_SOCKET, MAX_MESSAGE, call, recv_exact, socket_from
from cni.metrics import AgentStats

__all__ = ["DEFAULT_AGENT_SOCKET", "Agent", "call", "serve", "socket_from"]

DEFAULT_HTTP = "127.0.0.1:9181"  # bgpd 9179, podbgp-policy 9180
_LEN = struct.Struct(">I")
_CRED = struct.Struct("=iII")
SO_PEERCRED = 17


def send_message(sock: socket.socket, obj: Any) -> None:
    data = json.dumps(obj).encode()
    sock.sendall(_LEN.pack(len(data)) + data)


def recv_message(sock: socket.socket) -> Any:
    (n,) = _LEN.unpack(recv_exact(sock, _LEN.size))
    if n > MAX_MESSAGE:
        raise ValueError(f"message of {n} bytes is larger than {MAX_MESSAGE}")
    return json.loads(recv_exact(sock, n))


def _runner(plugin: str):
    if plugin == "cni":
        from cni.plugin import run
    elif plugin == "ipam":
        from ipam.cni import run
    else:
        raise ValueError(f"unknown plugin {plugin!r}")
    return run


class Workers:
    """Threads that run plugin calls, each with its own long-lived event loop and etcd
    clients (cni.warm). The most recently idle worker takes the next call (LIFO), so a
    stream of pods keeps hitting the same warm workers (a pod ADD needs two: podbgp-cni
    and, while it waits for its nested IPAM call, podbgp-ipam); beyond ``keep_idle``
    idle workers a worker that finishes ends and closes its clients."""

    def __init__(self, keep_idle: int = 8) -> None:
        self.keep_idle = keep_idle
        self._idle: list[queue.SimpleQueue] = []
        self._lock = threading.Lock()
        self.started = 0

    def submit(self, job) -> None:
        """Run ``job(ready)`` on a worker; ``ready()`` (called by the job before its
        reply goes out, else after it returns) makes the worker idle again, so a call
        made right after the reply finds it."""
        with self._lock:
            q = self._idle.pop() if self._idle else None
            if q is None:
                self.started += 1
        if q is None:
            q = queue.SimpleQueue()
            threading.Thread(target=self._work, args=(q,), name="cni-agent-worker",
                             daemon=True).start()
        q.put(job)

    def _work(self, q: queue.SimpleQueue) -> None:
        warm.enable()
        try:
            while True:
                job = q.get()
                if job is None:
                    return
                state = {"idle": False, "end": False}

                def ready(state=state) -> None:
                    if state["idle"] or state["end"]:
                        return
                    with self._lock:
                        if len(self._idle) >= self.keep_idle:
                            state["end"] = True
                        else:
                            self._idle.append(q)  # the next job waits in q until we loop
                            state["idle"] = True

                try:
                    job(ready)
                finally:
                    ready()
                if state["end"]:
                    return
        finally:
            warm.close()

    def stop(self) -> None:
        """End the idle workers (closing their clients); busy ones end after their call."""
        with self._lock:
            idle, self._idle, self.keep_idle = self._idle, [], 0
        for q in idle:
            q.put(None)


class Agent:
    """The server: each connection is one plugin call, run by a worker (`Workers`)."""

    def __init__(self, path: str, max_concurrent: int = 64) -> None:
        self.path = path
        self.sock: socket.socket | None = None
        self.slots = threading.BoundedSemaphore(max_concurrent)
        self.workers = Workers()
        self.served = 0
        self.stats = AgentStats()
        self._uid = os.getuid()
        self._stop = threading.Event()

    def bind(self) -> None:
        directory = os.path.dirname(self.path) or "."
        os.makedirs(directory, mode=0o700, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            # A socket file left by an agent that died; a live one refuses to go.
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(self.path)
                raise RuntimeError(f"another CNI agent is listening on {self.path}")
            except ConnectionRefusedError:
                os.unlink(self.path)
            finally:
                probe.close()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old = os.umask(0o177)
        try:
            sock.bind(self.path)
        finally:
            os.umask(old)
        sock.listen(128)
        self.sock = sock
        # Warm up: everything a request needs is imported now, not on the first pod.
        _runner("cni")
        _runner("ipam")
        import config.parse  # noqa: F401
        import ipam.etcd  # noqa: F401

    def serve_forever(self) -> None:
        assert self.sock is not None
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                if self._stop.is_set():
                    break
                raise
            self.slots.acquire()
            self.workers.submit(lambda ready, conn=conn: self._handle(conn, ready))

    def stop(self) -> None:
        self._stop.set()
        self.workers.stop()
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)
            self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def _peer_allowed(self, conn: socket.socket) -> bool:
        raw = conn.getsockopt(socket.SOL_SOCKET, SO_PEERCRED, _CRED.size)
        _pid, uid, _gid = _CRED.unpack(raw)
        return uid in (0, self._uid)

    def _handle(self, conn: socket.socket, ready=lambda: None) -> None:
        try:
            with conn:
                if not self._peer_allowed(conn):
                    self.stats.count_rejected_peer()
                    send_message(conn, {"rc": 1, "stdout": "", "stderr":
                                        "podbgp-cni agent: permission denied\n"})
                    return
                try:
                    req = recv_message(conn)
                    env = {str(k): str(v) for k, v in (req.get("env") or {}).items()}
                    stdin = str(req.get("stdin") or "")
                    plugin = str(req.get("plugin", ""))
                except (ValueError, AttributeError, ConnectionError):
                    self.stats.count_bad_request()
                    raise ValueError("unreadable request") from None
                out, err = io.StringIO(), io.StringIO()
                self.stats.started()
                start = time.monotonic()
                try:
                    rc = _runner(plugin)(env, stdin, out, err)
                except Exception as exc:  # the plugins catch their own; belt and braces
                    rc = 1
                    err.write(f"podbgp-cni agent: internal error: {exc!r}\n")
                self.stats.finished(plugin, env.get("CNI_COMMAND", ""), rc, out.getvalue(),
                                    time.monotonic() - start)
                self.served += 1
                ready()  # before the reply: the caller's next call may come at once
                send_message(conn, {"rc": rc, "stdout": out.getvalue(),
                                    "stderr": err.getvalue()})
        except (OSError, ValueError, ConnectionError) as exc:
            print(json.dumps({"event": "cni_agent_request_failed", "error": str(exc)}),
                  file=sys.stderr, flush=True)
        finally:
            self.slots.release()


def _serve_http(agent: Agent, listen: tuple[str, int]):
    """/metrics and /healthz on ``listen`` from a thread of their own; the loop to stop.
    OSError if the address cannot be bound (raised here, before any request is served)."""
    import asyncio

    from bgpd.ops.http import HttpServer
    from cni.metrics import AgentMetrics

    metrics = AgentMetrics(agent.stats)
    http = HttpServer(listen[0], listen[1], {
        "/metrics": lambda: (200, "text/plain; version=0.0.4; charset=utf-8", metrics.render()),
        "/healthz": lambda: (200, "text/plain", b"ok\n"),
    })
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(http.start())
    except OSError:
        loop.close()
        raise
    threading.Thread(target=loop.run_forever, name="cni-agent-http", daemon=True).start()
    return loop, http


def serve(path: str, http_listen: tuple[str, int] | None = None) -> int:
    agent = Agent(path)
    try:
        agent.bind()
    except (OSError, RuntimeError) as exc:
        print(f"podbgp-cni agent: cannot listen on {path}: {exc}", file=sys.stderr)
        return 1
    http_loop = None
    if http_listen is not None:
        try:
            http_loop, http = _serve_http(agent, http_listen)
        except OSError as exc:
            agent.stop()
            print(f"podbgp-cni agent: cannot listen on {http_listen[0]}:{http_listen[1]} "
                  f"(--http-listen): {exc.strerror or exc}", file=sys.stderr)
            return 1
        http_listen = (http_listen[0], http.port)

    # What is loaded now (bind() imported everything a call needs) lives as long as the
    # agent: out of the collector's way, so a full collection during a pod's ADD scans
    # the calls' objects only (measured: one took ~140 ms over the warm heap, a p99 ADD on
    # its own). Python docs, gc.freeze. Here, not in bind(): only the agent's process.
    gc.collect()
    gc.freeze()

    def _term(_sig: int, _frame: Any) -> None:
        threading.Thread(target=agent.stop, daemon=True).start()

    signal.signal(signal.SIGTERM, _term)
    signal.signal(signal.SIGINT, _term)
    print(json.dumps({"event": "cni_agent_listening", "socket": path, "pid": os.getpid(),
                      "http": f"{http_listen[0]}:{http_listen[1]}" if http_listen else None}),
          file=sys.stderr, flush=True)
    try:
        agent.serve_forever()
    finally:
        agent.stop()
        if http_loop is not None:
            http_loop.call_soon_threadsafe(http_loop.stop)
    print(json.dumps({"event": "cni_agent_stopped", "served": agent.served}), file=sys.stderr,
          flush=True)
    return 0
