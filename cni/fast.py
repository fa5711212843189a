"""The launchers' fast path: hand a CNI call to the node's agent, importing nothing.

Owned by cni/. A CNI plugin is a new process per pod event and, with the
node's agent (cni/agent.py) listening, all the process does is pass its
environment and stdin to the agent and print the answer. The interpreter's
own start (``python -IS``: no site, no user paths) is what that costs; this
module keeps it so: it imports only modules built into CPython or loaded as
one small C extension each (``sys``, ``posix``, ``_socket``, ``_json``) —
not ``os``, ``socket``, ``json`` (``re``, ``enum``), ``typing`` or cni.agent,
which cost more than the rest of the call on a loaded node (measured in
/work/notes/issue-14.md, "Session 2, ADD latency").

The wire format is cni.agent's (4-byte big-endian length, then JSON, both
ways); the request is the same object `cni.agent.call` sends. When no agent
listens, or for anything that is not a plugin call (VERSION, ``agent``,
``--version``, ``--help``), `launch` goes on to cni.shim, which does the work
here exactly as before (stdin already read is passed on, not read twice).

cni/forward.c is this module's path in C (no interpreter at all); it execs
the Python launcher for everything else, so the two behave the same.
"""

import _json
import _socket
import posix
import sys

DEFAULT_AGENT_SOCKET = "/var/run/podbgp-cni/agent.sock"  # cni.agent.DEFAULT_AGENT_SOCKET
MAX_MESSAGE = 16 << 20  # cni.agent.MAX_MESSAGE
# Set by the compiled forwarder (cni/forward.c) when the agent failed mid-request:
# the reason; this launcher then writes the code-11 object (cni.shim.agent_failed).
FORWARD_FAILED = "PODBGP_CNI_FORWARD_FAILED"
# BlockingIOError: the agent's listen backlog stayed full for CONNECT_WAIT.
_NOT_AN_AGENT = (FileNotFoundError, ConnectionRefusedError, NotADirectoryError,
                 PermissionError, TimeoutError, BlockingIOError)
# SO_SNDTIMEO for the connect, a struct timeval {2 s, 0}: a unix-socket connect to an agent
# whose backlog is full waits that long, then fails EAGAIN (cni/forward.c does the same).
_LONG = 8 if sys.maxsize > 2**32 else 4
CONNECT_WAIT = (2).to_bytes(_LONG, sys.byteorder) + bytes(_LONG)
_SPECIAL_ARGS = ("agent", "--version", "--help", "-h")
_encode = _json.encode_basestring_ascii


class _Decoding:
    """The attributes _json's C scanner reads (json.JSONDecoder's defaults)."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = float  # NaN, Infinity, -Infinity, as json.loads reads them


_scan = _json.make_scanner(_Decoding())
_SPACE = " \t\n\r"


def loads(text: str):
    """json.loads for one document; ValueError when ``text`` is not exactly one."""
    i = len(text) - len(text.lstrip(_SPACE))
    try:
        obj, end = _scan(text, i)
    except (StopIteration, SystemError):
        # SystemError: an error inside a value, where _json raises json.decoder's
        # JSONDecodeError only if json.decoder is already imported (here it is not:
        # "returned NULL without setting an exception", CPython 3.11).
        raise ValueError("not JSON") from None
    if text[end:].strip(_SPACE):
        raise ValueError("extra data")
    return obj


def _environ() -> dict[str, str]:
    return {k.decode("utf-8", "surrogateescape"): v.decode("utf-8", "surrogateescape")
            for k, v in posix.environ.items()}


def socket_from(stdin: str, env: dict[str, str]) -> str:
    """cni.agent.socket_from, without parsing a configuration that cannot name one."""
    value = None
    if '"agent_socket"' in stdin:
        try:
            conf = loads(stdin)
        except (ValueError, RecursionError):
            conf = None
        if isinstance(conf, dict):
            value = conf.get("agent_socket")
    if isinstance(value, str) and value:
        return value
    return env.get("PODBGP_CNI_SOCKET") or DEFAULT_AGENT_SOCKET


def _read_stdin() -> str:
    if posix.isatty(0):
        return ""
    chunks = []
    while True:
        chunk = posix.read(0, 1 << 16)
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", "surrogateescape")


def _write(fd: int, text: str) -> None:
    data = memoryview(text.encode("utf-8", "surrogateescape"))
    while data:
        data = data[posix.write(fd, data):]


def recv_exact(sock, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("peer closed the connection")
        buf += chunk
    return bytes(buf)


def request(plugin: str, env: dict[str, str], stdin: str) -> bytes:
    """The request `cni.agent.call` sends, framed."""
    body = ('{"plugin": ' + _encode(plugin) + ', "env": {'
            + ", ".join(_encode(k) + ": " + _encode(v) for k, v in env.items())
            + '}, "stdin": ' + _encode(stdin) + "}").encode()
    return len(body).to_bytes(4, "big") + body


def call(path: str, plugin: str, env: dict[str, str], stdin: str, timeout: float = 300.0):
    """cni.agent.call: the agent's answer, None when no agent listens at ``path``;
    ConnectionError when it was reached but failed mid-request."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        # Blocking, with SO_SNDTIMEO: Python's own timeout mode makes the socket
        # non-blocking, and a non-blocking unix connect fails at once (EAGAIN) when the
        # agent's backlog is full instead of waiting for it.
        sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_SNDTIMEO, CONNECT_WAIT)
        try:
            sock.connect(path)
        except _NOT_AN_AGENT:
            return None
        sock.settimeout(timeout)
        try:
            sock.sendall(request(plugin, env, stdin))
            n = int.from_bytes(recv_exact(sock, 4), "big")
            if n > MAX_MESSAGE:
                raise ValueError(f"message of {n} bytes is larger than {MAX_MESSAGE}")
            reply = loads(recv_exact(sock, n).decode("utf-8", "surrogateescape"))
        except (OSError, ValueError) as exc:
            raise ConnectionError(f"the CNI agent at {path} failed: {exc}") from None
        if (not isinstance(reply, dict) or type(reply.get("rc")) is not int
                or not isinstance(reply.get("stdout", ""), str)
                or not isinstance(reply.get("stderr", ""), str)):
            raise ConnectionError(f"the CNI agent at {path} failed: its reply is not an "
                                  "object with an integer rc and string stdout/stderr")
        return reply
    finally:
        sock.close()


def launch(plugin: str) -> int:
    """The launcher's entry point for ``plugin`` ("cni" or "ipam"): its exit status."""
    env = _environ()
    command = env.get("CNI_COMMAND")
    stdin = None
    if command and command != "VERSION" and (
            plugin != "cni" or sys.argv[1:2] == [] or sys.argv[1] not in _SPECIAL_ARGS):
        stdin = _read_stdin()
        try:
            if FORWARD_FAILED in env:  # the forwarder's request failed: say so, here
                raise ConnectionError(env[FORWARD_FAILED])
            reply = call(socket_from(stdin, env), plugin, env, stdin)
        except ConnectionError as exc:
            from cni.shim import agent_failed

            return agent_failed(plugin, stdin, exc)
        if reply is not None:
            _write(1, reply.get("stdout", ""))
            _write(2, reply.get("stderr", ""))
            return reply["rc"]
    from cni.shim import main

    return main(plugin, stdin)
