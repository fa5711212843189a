"""The daemon's HTTP endpoint: /metrics, /healthz, /readyz, /status.

A deliberately small HTTP/1.1 server on asyncio (GET/HEAD only, one request per
connection). Handlers are plain callables returning (status, content type,
body); the daemon owns them.

``threaded=True`` serves from a thread of its own (its own event loop), so a
scrape or a probe is answered while the daemon's loop works through a burst: a
200,000-route flood made /metrics and /healthz wait 10-45 s on a busy machine,
past Prometheus' scrape timeout and the kubelet's liveness timeout. Handlers
then run in that thread and only read the daemon's state; the daemon tells its
loop's health by a heartbeat (``/healthz``), not by the server answering.
Without it the server runs on the caller's loop (podbgp-policy).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import threading
from collections.abc import Callable
from dataclasses import dataclass

import structlog

log = structlog.get_logger(__name__)

Handler = Callable[[], tuple[int, str, bytes]]
_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 400: "Bad Request",
            500: "Internal Server Error", 503: "Service Unavailable"}


def parse_listen(text: str) -> tuple[str, int]:
    """'127.0.0.1:9179', '[::1]:9179', ':9179' -> (host, port); ValueError naming the problem."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"invalid listen address {text!r}: want HOST:PORT, e.g. 127.0.0.1:9179")
    host = host.strip("[]") or "0.0.0.0"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"invalid listen address {text!r}: {host!r} is not an IP address") from None
    return host, int(port)


@dataclass
class HttpServer:
    host: str
    port: int
    routes: dict[str, Handler]
    threaded: bool = False
    _server: asyncio.base_events.Server | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None

    async def start(self) -> None:
        if not self.threaded:
            await self._listen()
            return
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()

        def run() -> None:
            loop = self._loop = asyncio.new_event_loop()
            try:
                loop.run_until_complete(self._listen())
                ready.set_result(None)
                loop.run_forever()
                loop.run_until_complete(loop.shutdown_asyncgens())
            except BaseException as exc:  # a bind error goes back to start()'s caller
                if not ready.done():
                    ready.set_exception(exc)
                else:
                    log.exception("http_thread_failed")
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name="http", daemon=True)
        self._thread.start()
        await asyncio.wrap_future(ready)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        sock = self._server.sockets[0]
        self.port = sock.getsockname()[1]
        log.info("http_listening", address=self.host, port=self.port,
                 thread=self.threaded)

    async def _close(self) -> None:
        if self._server:
            self._server.close()
            await self._server.wait_closed()

    async def stop(self) -> None:
        if self._loop is None or self._thread is None:
            await self._close()
            return
        loop, thread = self._loop, self._thread
        if thread.is_alive():
            done = asyncio.run_coroutine_threadsafe(self._close(), loop)
            await asyncio.wrap_future(done)
            loop.call_soon_threadsafe(loop.stop)
            await asyncio.to_thread(thread.join, 5)
        self._loop = self._thread = None

    def _call(self, handler: Handler) -> tuple[int, str, bytes]:
        """A threaded server reads state the daemon's loop is changing: a dict that
        changed size under an iteration is read again (a few times) before it is a 500."""
        for attempt in range(3 if self.threaded else 1):
            try:
                return handler()
            except RuntimeError:
                if attempt == 2 or not self.threaded:
                    raise
        raise AssertionError("unreachable")

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            while True:  # discard headers
                h = await asyncio.wait_for(reader.readline(), 5)
                if h in (b"\r\n", b"\n", b""):
                    break
            parts = line.decode("latin-1").split()
            if len(parts) < 2:
                status, ctype, body = 400, "text/plain", b"bad request\n"
                method = "GET"
            else:
                method, target = parts[0], parts[1]
                path = target.split("?", 1)[0]
                handler = self.routes.get(path)
                if method not in ("GET", "HEAD"):
                    status, ctype, body = 405, "text/plain", b"method not allowed\n"
                elif handler is None:
                    status, ctype, body = 404, "text/plain", b"not found\n"
                else:
                    try:
                        status, ctype, body = self._call(handler)
                    except Exception:
                        log.exception("http_handler_failed", path=path)
                        status, ctype, body = 500, "text/plain", b"internal error\n"
            head = (
                f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\n"
                f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n"
            ).encode()
            writer.write(head if method == "HEAD" else head + body)
            await writer.drain()
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
