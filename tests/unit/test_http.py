"""bgpd.ops.http: the daemon's tiny HTTP server (status codes, HEAD, errors) and parse_listen."""

from __future__ import annotations

import asyncio

import pytest

from bgpd.ops.http import HttpServer, parse_listen


@pytest.mark.parametrize(("text", "want"), [
    ("127.0.0.1:9179", ("127.0.0.1", 9179)),
    ("[::1]:9179", ("::1", 9179)),
    (":9179", ("0.0.0.0", 9179)),
    ("0.0.0.0:1", ("0.0.0.0", 1)),
    ("[fd00::5]:65535", ("fd00::5", 65535)),
])
def test_parse_listen(text: str, want: tuple[str, int]) -> None:
    assert parse_listen(text) == want


@pytest.mark.parametrize(("text", "needle"), [
    ("9179", "HOST:PORT"),
    ("127.0.0.1", "HOST:PORT"),
    ("127.0.0.1:", "HOST:PORT"),
    ("127.0.0.1:0", "HOST:PORT"),
    ("127.0.0.1:65536", "HOST:PORT"),
    ("127.0.0.1:-1", "HOST:PORT"),
    ("127.0.0.1:http", "HOST:PORT"),
    ("localhost:9179", "'localhost' is not an IP address"),
    ("300.1.1.1:9179", "'300.1.1.1' is not an IP address"),
])
def test_parse_listen_errors_name_the_input(text: str, needle: str) -> None:
    with pytest.raises(ValueError) as ei:
        parse_listen(text)
    assert repr(text) in str(ei.value) and needle in str(ei.value)


async def _raw(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return status, headers, body


@pytest.fixture
async def server():
    calls: list[str] = []

    def ok():
        calls.append("ok")
        return 200, "text/plain", b"fine\n"

    def boom():
        raise RuntimeError("handler bug")

    def unready():
        return 503, "text/plain", b"not ready: x\n"

    srv = HttpServer("127.0.0.1", 0, {"/ok": ok, "/boom": boom, "/readyz": unready})
    await srv.start()
    srv.calls = calls  # type: ignore[attr-defined]
    try:
        yield srv
    finally:
        await srv.stop()


async def test_get_ok_with_headers(server) -> None:
    assert server.port != 0  # the real port after binding port 0
    status, headers, body = await _raw(server.port, b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (status, body) == (200, b"fine\n")
    assert headers["Content-Type"] == "text/plain"
    assert headers["Content-Length"] == "5"
    assert headers["Connection"] == "close"


async def test_query_string_ignored(server) -> None:
    status, _, body = await _raw(server.port, b"GET /ok?x=1 HTTP/1.1\r\n\r\n")
    assert (status, body) == (200, b"fine\n")


async def test_head_has_length_but_no_body(server) -> None:
    status, headers, body = await _raw(server.port, b"HEAD /ok HTTP/1.1\r\n\r\n")
    assert status == 200 and headers["Content-Length"] == "5" and body == b""
    assert server.calls == ["ok"]


async def test_404_405_400_500_503(server) -> None:
    assert (await _raw(server.port, b"GET /nope HTTP/1.1\r\n\r\n"))[0] == 404
    st, _, body = await _raw(server.port, b"POST /ok HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
    assert st == 405 and server.calls == []  # the handler never ran
    assert (await _raw(server.port, b"DELETE /nope HTTP/1.1\r\n\r\n"))[0] == 405
    assert (await _raw(server.port, b"garbage\r\n\r\n"))[0] == 400
    assert (await _raw(server.port, b"GET\r\n\r\n"))[0] == 400
    st, _, body = await _raw(server.port, b"GET /boom HTTP/1.1\r\n\r\n")
    assert st == 500 and b"handler bug" not in body  # no internals leak to clients
    st, _, body = await _raw(server.port, b"GET /readyz HTTP/1.1\r\n\r\n")
    assert (st, body) == (503, b"not ready: x\n")


async def test_silent_client_does_not_block_others(server) -> None:
    # One connection that never sends a line; others are still served meanwhile.
    _, idle = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        status, _, _ = await _raw(server.port, b"GET /ok HTTP/1.1\r\n\r\n")
        assert status == 200
    finally:
        idle.close()


async def test_port_in_use_raises_oserror(server) -> None:
    other = HttpServer("127.0.0.1", server.port, {})
    with pytest.raises(OSError):
        await other.start()


async def test_threaded_server_answers_while_the_callers_loop_is_busy() -> None:
    """threaded=True: a request is served while the caller's event loop is stuck in
    synchronous work (a 200,000-route burst kept the daemon's loop busy for tens of
    seconds: Prometheus and the kubelet's probe timed out). Handlers that hit a dict
    changing size are retried."""
    import threading
    import time
    import urllib.request

    calls = {"n": 0}

    def flaky():
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("dictionary changed size during iteration")
        return 200, "text/plain", b"fine\n"

    srv = HttpServer("127.0.0.1", 0, {"/x": lambda: (200, "text/plain", b"x\n"), "/f": flaky},
                     threaded=True)
    await srv.start()
    try:
        got: dict[str, object] = {}

        def client() -> None:
            t0 = time.monotonic()
            with urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/x", timeout=5) as r:
                got["body"], got["s"] = r.read(), time.monotonic() - t0

        t = threading.Thread(target=client)
        t.start()
        time.sleep(1.5)  # the caller's loop does not run at all meanwhile
        t.join(5)
        assert got["body"] == b"x\n" and got["s"] < 1.0, got
        body = await asyncio.to_thread(
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/f", timeout=5).read())
        assert body == b"fine\n" and calls["n"] == 2
    finally:
        await srv.stop()
    with pytest.raises(OSError):  # stopped: nothing listens any more
        await asyncio.to_thread(
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/x", timeout=2))


async def test_threaded_bind_error_reaches_the_caller(server) -> None:
    srv = HttpServer("127.0.0.1", server.port, {}, threaded=True)
    with pytest.raises(OSError):
        await srv.start()
