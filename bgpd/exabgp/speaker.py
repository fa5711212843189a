"""The BGP speaker: ExaBGP 5.0.15 as a supervised child process.

Owned by the daemon (one ``Speaker`` per node). The speaker owns:

- the ExaBGP child (spawned as ``python -m bgpd.exabgp.launch``, the venv's
  ExaBGP without its per-route debug work; restarted with a
  capped exponential backoff when it dies; never outlives the daemon:
  ``PR_SET_PDEATHSIG``, armed by the launcher itself after exec (no Python runs
  between fork and exec: see ``launch.die_with_parent``), plus a pid file
  checked on start);
- the config file (rendered by ``bgpd.exabgp.conf``; rewritten atomically and
  ``reload``-ed when the peer set changes: unchanged sessions keep running);
- the command channel: a unix socket served here, reached by ExaBGP through
  ``bgpd.exabgp.relay``; commands are answered ``done``/``error`` in order, matched
  by a FIFO of futures;
- per peer, the desired export set (prefix -> attributes, whole sets from the
  daemon) and what ExaBGP has acknowledged; only the difference is sent,
  batched by shared attributes, and everything is re-sent after ExaBGP restarts.

Events (``bgpd.events``) come out of ``events()``. The speaker never touches
the kernel. Passwords are never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path as FsPath

import structlog

from bgpd import events as ev
from bgpd.exabgp import wire
from bgpd.exabgp.commands import HELLO_COMMAND, PARENT_ENV, RAW_COMMAND
from bgpd.exabgp.conf import check_peers, render_config, render_env
from bgpd.exabgp.parse import parse_line
from bgpd.peerspec import PeerSpec
from bgpd.speaker import default_peer_ref
from rib.path import Origin, PeerRef

log = structlog.get_logger(__name__)

BATCH_SIZE = 500  # NLRI per `announce attributes` command (docs/exabgp.md, Commands)
RAW_PART = 4000  # prefixes encoded at once for podbgp-send (~20 KiB of UPDATEs)
RAW_CHUNK = 192 << 10  # octets of UPDATEs per podbgp-send command
WINDOW = 32  # commands in flight before waiting for acks (each ack is a round trip)
READ_LIMIT = 64 << 20  # one UPDATE with many NLRI is one JSON line far beyond 64 KiB
_ORIGIN_TEXT = {Origin.IGP: "igp", Origin.EGP: "egp", Origin.INCOMPLETE: "incomplete"}

PeerKey = tuple[str, int]


class SpeakerError(RuntimeError):
    pass


class CommandFailed(SpeakerError):
    """ExaBGP answered ``error`` (or never answered) to a command."""


@dataclass
class SpeakerStats:
    """Plain counters, read by the daemon's metrics."""

    restarts: int = 0
    commands_sent: int = 0
    commands_failed: int = 0
    updates_received: int = 0
    garbage_lines: int = 0
    reloads: int = 0
    connections: int = 0
    prefixes_announced: int = 0
    prefixes_withdrawn: int = 0
    # (peer, action) -> UPDATEs with a malformed part handled that way (RFC 7606)
    update_errors: Counter[tuple[str, str]] = field(default_factory=Counter)
    # (peer, cause, code, subcode) -> sessions that ended so (bgpd.events.SessionDown)
    session_downs: Counter[tuple[str, str, int, int]] = field(default_factory=Counter)


@dataclass
class _PeerExports:
    """Per peer: what the daemon wants sent, what ExaBGP has acknowledged, and which
    prefixes may differ between the two (``all_dirty``: any of them)."""

    desired: dict[str, Hashable] = field(default_factory=dict)
    sent: dict[str, Hashable] = field(default_factory=dict)
    dirty: set[str] = field(default_factory=set)
    all_dirty: bool = True
    # End-of-RIB asked for and not yet acknowledged: sent with the peer's next flush
    # (a channel that failed, or an ``error`` answer, loses no End-of-RIB).
    eor_owed: bool = False

    def forget_sent(self) -> None:
        """ExaBGP no longer holds what it acknowledged (restarted, or re-created the peer)."""
        self.sent.clear()
        self.dirty = set()
        self.all_dirty = True

    def compact(self) -> None:
        """Rebuild the dicts at their current size (a dict never shrinks by itself)."""
        self.desired = dict(self.desired)
        self.sent = dict(self.sent)
        self.dirty = set(self.dirty)


@dataclass(slots=True)
class _Batch:
    """One command for ``peers``: the text ``head`` + " " + prefixes of its one part, or
    (``raw`` set) ``podbgp-send`` with the encoded UPDATEs of all its parts. A part is
    (attributes, or None for a withdrawal, prefixes). ``epochs``: for raw bytes, the
    session of each peer they were for (ExaBGP drops them for a session that ended)."""

    head: str
    parts: list[tuple[Hashable | None, list[str]]]
    peers: tuple[PeerKey, ...]
    raw: str = ""
    epochs: tuple[int, ...] | None = None
    eor: bool = False  # an End-of-RIB: acknowledged, it is no longer owed

    def command(self) -> str:
        if self.raw:
            return f"{RAW_COMMAND} {self.raw} {' '.join(k[0] for k in self.peers)}"
        if not self.parts:
            return self.head  # a command without routes (End-of-RIB)
        return self.head + " " + " ".join(self.parts[0][1])


# session shape -> next hop or attributes -> prefix -> the peers it goes to
_Groups = dict[tuple, dict[Hashable, dict[str, list[PeerKey]]]]


def _by_peers(targets: Mapping[str, list[PeerKey]]) -> dict[tuple[PeerKey, ...], list[str]]:
    """prefix -> peers, regrouped as peers -> prefixes (one command group each)."""
    out: dict[tuple[PeerKey, ...], list[str]] = {}
    for prefix, peers in targets.items():
        out.setdefault(tuple(peers), []).append(prefix)
    return out


def _selector(peers: Iterable[PeerKey]) -> str:
    """ExaBGP's neighbour selector for several peers: ``neighbor A , neighbor B``."""
    return " , ".join(f"neighbor {key[0]}" for key in peers)


class _Turn:
    """Gives the event loop back once a loop has run for ``slice_s`` without
    suspending (an await on data that is already there does not suspend)."""

    __slots__ = ("_until", "slice_s")

    def __init__(self, slice_s: float = 0.01) -> None:
        self.slice_s = slice_s
        self._until = time.monotonic() + slice_s

    async def share(self) -> None:
        now = time.monotonic()
        if now >= self._until:
            await asyncio.sleep(0)
            self._until = time.monotonic() + self.slice_s


_SECRET = re.compile(r"(md5-password\s*)\S+", re.IGNORECASE)


def _redact(line: str) -> str:
    """ExaBGP echoes a config line it cannot parse; base64 is no protection."""
    return _SECRET.sub(r"\1<redacted>", line)


def _log_failure(task: asyncio.Task) -> None:
    """A speaker task that failed says so with its cause (issue 18: errors never
    vanish); SpeakerError is the channel going away, handled where it is raised."""
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None and not isinstance(exc, SpeakerError):
        log.error("speaker_task_failed", task=task.get_name(), exc_info=exc)


def _alive(pid: int) -> bool:
    """Running (a zombie has released its sockets and port 179 already)."""
    try:
        return FsPath(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def attributes_text(attrs: object) -> str:
    """``next-hop ... as-path [ ... ] ...`` for an ExportAttrs-like object (validated)."""
    import ipaddress

    def ip(v: object, what: str) -> str:
        try:
            return str(ipaddress.ip_address(v))  # type: ignore[arg-type]
        except ValueError:
            raise ValueError(f"{what}: {v!r} is not an address") from None

    def u(v: object, what: str, hi: int = 4294967295) -> int:
        if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= hi:
            raise ValueError(f"{what}: {v!r} out of range")
        return v

    parts = [f"next-hop {ip(attrs.next_hop, 'next_hop')}"]  # type: ignore[attr-defined]
    origin = getattr(attrs, "origin", Origin.IGP)
    parts.append(f"origin {_ORIGIN_TEXT[Origin(origin)]}")
    as_path = " ".join(str(u(a, "as_path")) for a in getattr(attrs, "as_path", ()))
    parts.append(f"as-path [ {as_path} ]" if as_path else "as-path [ ]")
    if getattr(attrs, "local_pref", None) is not None:
        parts.append(f"local-preference {u(attrs.local_pref, 'local_pref')}")  # type: ignore[attr-defined]
    if getattr(attrs, "med", None) is not None:
        parts.append(f"med {u(attrs.med, 'med')}")  # type: ignore[attr-defined]
    comms = getattr(attrs, "communities", ())
    if comms:
        parts.append("community [ " + " ".join(
            f"{u(a, 'community', 65535)}:{u(b, 'community', 65535)}" for a, b in comms) + " ]")
    large = getattr(attrs, "large_communities", ())
    if large:
        parts.append("large-community [ " + " ".join(
            f"{u(a, 'large')}:{u(b, 'large')}:{u(c, 'large')}" for a, b, c in large) + " ]")
    if getattr(attrs, "originator_id", None):
        parts.append(f"originator-id {ip(attrs.originator_id, 'originator_id')}")  # type: ignore[attr-defined]
    clusters = getattr(attrs, "cluster_list", ())
    if clusters:
        parts.append("cluster-list [ " + " ".join(ip(c, "cluster_list") for c in clusters) + " ]")
    return " ".join(parts)


def _check_prefix(prefix: object, ipv6: bool) -> str:
    import ipaddress

    net = ipaddress.ip_network(prefix)  # type: ignore[arg-type]
    if (net.version == 6) != ipv6:
        raise ValueError(f"{prefix}: wrong address family for this session")
    return str(net)


class Speaker:
    """One ExaBGP child and its sessions. See the module docstring."""

    def __init__(
        self,
        node_name: str,
        router_id: str,
        bind_addresses: Iterable[str],
        workdir: str | os.PathLike[str],
        *,
        netns: str | None = None,
        listen_port: int = 179,
        exabgp: str | None = None,
        command_timeout: float = 60.0,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        peer_ref_factory: Callable[[PeerSpec, ev.Open | None], PeerRef] | None = None,
    ) -> None:
        self.node_name = node_name
        self.router_id = router_id
        self.bind_addresses = tuple(bind_addresses)
        self.workdir = FsPath(workdir)
        self.netns = netns
        self.listen_port = listen_port
        # Default: ExaBGP through bgpd.exabgp.launch (the same ExaBGP, minus its
        # per-route debug work); an explicit executable is run as it is.
        self._exabgp_cmd = [exabgp] if exabgp else [sys.executable, "-m", "bgpd.exabgp.launch"]
        self.command_timeout = command_timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self._peer_ref_factory = peer_ref_factory or default_peer_ref
        self.stats = SpeakerStats()

        self.conf_path = self.workdir / "exabgp.conf"
        self.sock_path = self.workdir / "exabgp.sock"
        self.pid_path = self.workdir / "exabgp.pid"
        self._env = render_env(self.bind_addresses, listen_port)  # validates addresses
        # NLRI as plain strings ("10.0.0.0/26") instead of {"nlri": ...} objects: a third
        # less JSON for ExaBGP to write and the relay to copy, and no dict per prefix in
        # json.loads (bgpd.events reads both shapes).
        self._env["exabgp.api.compact"] = "true"
        self._relay = [sys.executable, "-m", "bgpd.exabgp.relay", str(self.sock_path)]

        self._peers: dict[PeerKey, PeerSpec] = {}
        self._by_address: dict[str, PeerSpec] = {}
        self._refs: dict[str, PeerRef] = {}
        self._up: set[str] = set()
        self._exports: dict[PeerKey, _PeerExports] = {}
        self._peer_generation: dict[PeerKey, int] = {}  # config generation of its spec
        # podbgp-send (bgpd.exabgp.launch group "raw"): UPDATEs encoded here once and
        # handed to ExaBGP as bytes, for sessions with 4-octet AS numbers.
        # the running ExaBGP answered podbgp-hello (None: not asked yet; nothing is sent
        # before it is known, so no session gets text it would keep across a reconnect)
        self._raw_ok: bool | None = None
        # peer -> (4-octet AS, enhanced route refresh, families it takes ADD-PATH for)
        self._wire_caps: dict[str, tuple[bool, bool, tuple[tuple[str, str], ...]]] = {}
        self._epoch: dict[str, int] = {}  # peer -> session counter (up and down bump it)
        self._text_peers: set[PeerKey] = set()  # got text commands from this ExaBGP: stay text
        self._events: asyncio.Queue[ev.Event] = asyncio.Queue()
        self._error_log: dict[tuple[str, str], tuple[float, int]] = {}

        self._proc: asyncio.subprocess.Process | None = None
        self._server: asyncio.base_events.Server | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._acks: deque[asyncio.Future[bool]] = deque()
        self._last_line = 0.0  # when the channel last gave us a line (progress)
        self._connected = asyncio.Event()
        self._flush_lock = asyncio.Lock()
        self._stopping = False
        self._config_generation = 0  # bumped on every config write
        self._loaded_generation = 0  # what the running ExaBGP has read
        # From spawn until its relay connects ExaBGP may be reading the config file at
        # any moment: it is not rewritten then (the speaker could not know which
        # version ExaBGP got); a change waits for the channel and is reloaded then.
        self._loading = False
        self._config_dirty = False
        self._tasks: set[asyncio.Task] = set()
        self._supervisor: asyncio.Task | None = None
        self.started_at: float | None = None

    # ------------------------------------------------------------ lifecycle

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc and self._proc.returncode is None else None

    @property
    def connected(self) -> bool:
        return self._writer is not None

    async def start(self) -> None:
        """Kill a stale ExaBGP from a previous run, serve the socket, spawn ExaBGP."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        await self._kill_stale()
        with contextlib.suppress(FileNotFoundError):
            self.sock_path.unlink()
        self._server = await asyncio.start_unix_server(
            self._on_connection, path=str(self.sock_path), limit=READ_LIMIT)
        os.chmod(self.sock_path, 0o600)
        self._write_config()
        await self._spawn()
        self._supervisor = asyncio.create_task(self._supervise(), name="exabgp-supervisor")
        self._supervisor.add_done_callback(_log_failure)

    async def stop(self, graceful_restart: bool = False) -> None:
        """Stop ExaBGP: SIGTERM (it sends Cease), or SIGKILL with ``graceful_restart``
        so peers keep our routes as stale while the daemon restarts. No kernel change."""
        self._stopping = True
        if self._supervisor:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        proc = self._proc
        if proc and proc.returncode is None:
            proc.send_signal(signal.SIGKILL if graceful_restart else signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        self._drop_connection(SpeakerError("speaker stopped"))
        if self._server:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(FileNotFoundError):
            self.pid_path.unlink()
        with contextlib.suppress(FileNotFoundError):
            self.sock_path.unlink()
        log.info("speaker_stopped", node=self.node_name)

    async def _kill_stale(self) -> None:
        try:
            pid = int(self.pid_path.read_text().strip())
        except (FileNotFoundError, ValueError):
            return
        try:
            cmdline = FsPath(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return  # gone already
        # Only an ExaBGP running our own config file: a recycled PID is someone else.
        if not any(b"exabgp" in part for part in cmdline) or \
                str(self.conf_path).encode() not in cmdline:
            return
        log.warning("stale_exabgp_killed", pid=pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while _alive(pid) and time.monotonic() < deadline:
            # No child relationship, so no waitpid: the PID disappears when it is reaped.
            await asyncio.sleep(0.05)

    async def _spawn(self) -> None:
        if self._config_dirty:
            self._write_config()  # a change that waited for the last ExaBGP to load
        cmd = [*self._exabgp_cmd, "server", str(self.conf_path)]
        if self.netns:
            cmd = ["ip", "netns", "exec", self.netns, *cmd]  # `ip` execs: same PID
        # ExaBGP's launcher arms PR_SET_PDEATHSIG for this PID itself. No preexec_fn:
        # Python run in a child forked from this threaded process (gRPC's fork handlers
        # with the etcd client busy) sometimes killed the child before exec (SIGSEGV,
        # an ExaBGP "restart" at start-up); without one the child only execs.
        env = {**os.environ, **self._env, PARENT_ENV: str(os.getpid())}
        self._proc = await asyncio.create_subprocess_exec(
            *cmd, env=env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            cwd=str(self.workdir),
        )
        self.started_at = time.monotonic()
        self._loaded_generation = self._config_generation  # a fresh start reads the file
        self._loading = True
        tmp = self.pid_path.with_suffix(".tmp")
        tmp.write_text(f"{self._proc.pid}\n")
        os.replace(tmp, self.pid_path)
        self._spawn_task(self._log_output(self._proc), "exabgp-log")
        log.info("exabgp_started", pid=self._proc.pid, conf=str(self.conf_path))

    async def _log_output(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            line = _redact(raw.decode("utf-8", "replace").rstrip())
            if not line:
                continue
            # ExaBGP's start-up "advice" (no env file: we pass the environment) is noise.
            if line.startswith("advice "):
                log.debug("exabgp_output", pid=proc.pid, line=line[:1000])
            else:
                log.warning("exabgp_output", pid=proc.pid, line=line[:1000])

    async def _supervise(self) -> None:
        failures = 0
        while not self._stopping:
            proc = self._proc
            if proc is not None:
                code = await proc.wait()
                if self._stopping:
                    return
                lived = time.monotonic() - (self.started_at or 0)
                # A child that ran a while restarts fast again; a crash loop backs off.
                failures = 1 if lived > 60 else failures + 1
                self.stats.restarts += 1
                log.warning("exabgp_exited", pid=proc.pid, code=code)
                self._proc = None
                self._exabgp_gone()
            else:
                failures += 1
            delay = min(self.backoff_max, self.backoff_initial * 2 ** (failures - 1))
            await asyncio.sleep(delay)
            if self._stopping:
                return
            try:
                await self._spawn()
            except OSError as exc:
                log.error("exabgp_spawn_failed", error=str(exc), retry_in=delay)

    def _exabgp_gone(self) -> None:
        """ExaBGP died: its sessions and announcements are gone with it."""
        self._drop_connection(SpeakerError("exabgp exited"))
        for exports in self._exports.values():
            exports.forget_sent()
        for neighbor in sorted(self._up):
            self._events.put_nowait(ev.SessionDown(neighbor, "exabgp exited", "speaker-exited"))
            self.stats.session_downs[(neighbor, "speaker-exited", 0, 0)] += 1
            self._epoch[neighbor] = self._epoch.get(neighbor, 0) + 1
        self._up.clear()
        self._raw_ok = None
        self._wire_caps.clear()
        self._text_peers.clear()

    def _spawn_task(self, coro, name: str) -> asyncio.Task:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_log_failure)
        return task

    # -------------------------------------------------------------- channel

    async def _on_connection(self, reader: asyncio.StreamReader,
                             writer: asyncio.StreamWriter) -> None:
        # A new relay (ExaBGP restarted, or respawned its relay) replaces the old one;
        # answers owed on the old stream will never come.
        self._drop_connection(SpeakerError("command channel replaced"))
        self._writer = writer
        self._connected.set()
        self.stats.connections += 1
        log.info("exabgp_channel_connected")
        self._spawn_task(self._resync(), "exabgp-resync")
        try:
            await self._read(reader)
        finally:
            if self._writer is writer:
                self._drop_connection(SpeakerError("command channel closed"))
            writer.close()

    async def _read(self, reader: asyncio.StreamReader) -> None:
        turn = _Turn()
        while True:
            # readline() does not suspend while whole lines are buffered: a flood of
            # UPDATEs would otherwise hold the event loop (HTTP, timers) for seconds.
            await turn.share()
            try:
                line = await reader.readline()
            except (asyncio.LimitOverrunError, ValueError) as exc:
                self.stats.garbage_lines += 1
                log.error("exabgp_line_too_long", error=str(exc))
                return  # the stream position is lost; the relay reconnects
            except ConnectionError:
                return
            if not line:
                return
            self._last_line = time.monotonic()
            self._dispatch(parse_line(line, self._lookup))

    def _dispatch(self, event: ev.Event) -> None:
        if isinstance(event, ev.CommandAck):
            if self._acks:
                fut = self._acks.popleft()
                if not fut.done():
                    fut.set_result(event.ok)
            else:
                self.stats.garbage_lines += 1
                log.warning("exabgp_unexpected_ack", ok=event.ok)
            return
        if isinstance(event, ev.Garbage):
            self.stats.garbage_lines += 1
            log.warning("exabgp_garbage", reason=event.reason, line=event.line[:200])
        elif isinstance(event, ev.Open) and event.direction == "receive":
            spec = self._by_address.get(event.neighbor)
            if spec is not None:
                self._refs[event.neighbor] = self._peer_ref_factory(spec, event)
            self._wire_caps[event.neighbor] = (event.asn4, event.enhanced_route_refresh,
                                               event.add_path_receive)
        elif isinstance(event, ev.SessionUp):
            self._up.add(event.neighbor)
            self._epoch[event.neighbor] = self._epoch.get(event.neighbor, 0) + 1
            log.info("bgp_session_up", neighbor=event.neighbor)
            spec = self._by_address.get(event.neighbor)
            if spec is not None and spec.key in self._exports and self._mode(spec) == "raw":
                # ExaBGP re-sends nothing it got as bytes: the new session gets the set now.
                self._spawn_task(self._flush((spec.key,)), "session-resend")
        elif isinstance(event, ev.SessionDown):
            self._up.discard(event.neighbor)
            self._epoch[event.neighbor] = self._epoch.get(event.neighbor, 0) + 1
            spec = self._by_address.get(event.neighbor)
            if spec is not None and self._raw_ok and spec.key not in self._text_peers:
                exports = self._exports.get(spec.key)
                if exports is not None:
                    exports.forget_sent()  # ExaBGP keeps none of what podbgp-send gave it
            self.stats.session_downs[(event.neighbor, event.cause, event.code,
                                      event.subcode)] += 1
            quiet = event.cause in ("connection-lost", "removed", "shutdown", "collision")
            (log.info if quiet else log.warning)(
                "bgp_session_down", neighbor=event.neighbor, reason=event.reason,
                cause=event.cause, code=event.code, subcode=event.subcode)
        elif isinstance(event, ev.RouteRefresh):
            spec = self._by_address.get(event.neighbor)
            if spec is not None and self._mode(spec) == "raw":
                self._spawn_task(self._answer_refresh(spec.key), "route-refresh")
        elif isinstance(event, ev.Update):
            self.stats.updates_received += 1
            if event.errors:
                self._count_update_errors(event)
        elif isinstance(event, ev.Shutdown):
            log.warning("exabgp_shutdown_notice")
        self._events.put_nowait(event)

    def _count_update_errors(self, event: ev.Update) -> None:
        """Count a partly malformed UPDATE per action; log each (peer, action) at most
        once a second, with how many were not logged meanwhile (a hostile peer can
        send thousands a second)."""
        now = time.monotonic()
        for action in {e.action for e in event.errors}:
            self.stats.update_errors[(event.neighbor, action)] += 1
        for e in event.errors:
            key = (event.neighbor, e.action)
            last, skipped = self._error_log.get(key, (0.0, 0))
            if now - last < 1.0:
                self._error_log[key] = (last, skipped + 1)
                continue
            self._error_log[key] = (now, 0)
            log.warning("bgp_update_malformed", neighbor=event.neighbor, action=e.action,
                        reason=e.reason, prefixes=e.prefixes, not_logged_before=skipped)

    def _lookup(self, address: str) -> PeerRef | None:
        ref = self._refs.get(address)
        if ref is None:
            spec = self._by_address.get(address)
            if spec is None:
                return None
            # No OPEN seen on this channel (relay respawned mid-session): router id unknown.
            ref = self._refs[address] = self._peer_ref_factory(spec, None)
        return ref

    def peer_ref(self, address: str) -> PeerRef | None:
        """The ``PeerRef`` Paths from this neighbor carry (None if not configured)."""
        return self._lookup(address)

    def _drop_connection(self, exc: Exception) -> None:
        writer, self._writer = self._writer, None
        self._connected.clear()
        if writer is not None:
            writer.close()
        while self._acks:
            fut = self._acks.popleft()
            if not fut.done():
                fut.set_exception(exc)
                # A batch abandoned by an earlier failure never awaits its future: mark
                # the exception seen, or asyncio logs it as an error when it is collected.
                fut.exception()

    def _send(self, command: str) -> asyncio.Future[bool]:
        if self._writer is None:
            raise SpeakerError("exabgp command channel is not connected")
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._acks.append(fut)
        self._writer.write(command.encode() + b"\n")
        self.stats.commands_sent += 1
        return fut

    async def _wait_ack(self, fut: asyncio.Future[bool], what: str) -> bool:
        while True:
            try:
                ok = await asyncio.wait_for(asyncio.shield(fut), self.command_timeout)
                break
            except TimeoutError:
                # Still reading what ExaBGP sent before the answer (a backlog of events
                # under churn): that is no lost answer, wait on.
                if time.monotonic() - self._last_line < self.command_timeout and \
                        self._writer is not None:
                    continue
                # A lost answer would shift every later answer: reset the channel.
                self.stats.commands_failed += 1
                log.error("exabgp_command_timeout", command=what)
                self._drop_connection(CommandFailed(f"{what}: no answer"))
                raise CommandFailed(f"{what}: no answer in {self.command_timeout}s") from None
        if not ok:
            self.stats.commands_failed += 1
            log.warning("exabgp_command_error", command=what)
        return ok

    async def command(self, command: str) -> bool:
        """Send one raw API command and wait for its answer (True: ``done``)."""
        if "\n" in command or "\r" in command:
            raise ValueError("command: must be one line")
        await self._drain()
        return await self._wait_ack(self._send(command), command.split(" nlri ")[0][:200])

    async def teardown(self, peer_key: PeerKey) -> None:
        """End one session with a Cease (ExaBGP re-dials it as configured)."""
        if not await self.command(f"neighbor {peer_key[0]} teardown 1"):
            raise CommandFailed(f"teardown of {peer_key[0]}: exabgp answered error")

    async def _drain(self) -> None:
        if self._writer is not None:
            try:
                await self._writer.drain()
            except ConnectionError as exc:
                self._drop_connection(SpeakerError(str(exc)))

    async def wait_connected(self, timeout: float | None = None) -> None:
        await asyncio.wait_for(self._connected.wait(), timeout)

    # ---------------------------------------------------------------- peers

    def _write_config(self) -> None:
        text = render_config(self.router_id, self.bind_addresses, self._peers.values(),
                             self._relay)
        tmp = self.conf_path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # holds md5 keys
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.conf_path)
        self._config_generation += 1
        self._config_dirty = False

    async def _reload_if_needed(self) -> bool:
        """``reload`` unless the running ExaBGP already has the current file."""
        generation = self._config_generation
        if self._loaded_generation >= generation:
            return True
        self.stats.reloads += 1
        try:
            ok = await self.command("reload")
        except SpeakerError as exc:
            log.warning("exabgp_reload_failed", error=str(exc))
            return False  # the next channel (or ExaBGP start) retries
        if not ok:
            log.error("exabgp_reload_error")
            return False
        self._loaded_generation = generation
        return True

    async def set_peers(self, specs: Iterable[PeerSpec]) -> list[tuple[PeerSpec, str]]:
        """Make the configured sessions ``specs``, less the ones that cannot be rendered.

        Unchanged sessions keep running. Returns the sessions left out, each with the
        reason (`conf.check_peers`): one bad session never stops the others, and a
        running session whose new settings are bad keeps running with its old ones.
        """
        good, rejected = check_peers(self.router_id, specs)
        new = {s.key: s for s in good}
        for spec, _ in rejected:
            # A running session whose new settings cannot be rendered keeps its last
            # good ones, as a rejected resource keeps its last good version.
            if spec.key in self._peers and spec.key not in new and not any(
                    k[0] == spec.address for k in new):
                new[spec.key] = self._peers[spec.key]
        render_config(self.router_id, self.bind_addresses, new.values(), self._relay)
        old = self._peers
        added = [k for k in new if k not in old]
        removed = [k for k in old if k not in new]
        changed = [k for k in new if k in old and new[k] != old[k]]
        if not (added or removed or changed):
            return rejected
        self._peers = new
        self._by_address = {s.address: s for s in new.values()}
        for key in removed:
            self._exports.pop(key, None)
            self._refs.pop(key[0], None)
            self._peer_generation.pop(key, None)
        for key in changed:
            self._refs.pop(key[0], None)
            if key in self._exports:
                # ExaBGP re-creates a changed neighbor; what it held is gone.
                self._exports[key].forget_sent()
        if self._loading:
            # ExaBGP is starting and may be reading the file right now: write and
            # reload once its channel is up (_resync), never under it.
            self._config_dirty = True
            generation = self._config_generation + 1
        else:
            self._write_config()
            generation = self._config_generation
        for key in (*added, *changed):
            self._peer_generation[key] = generation
        log.info("peers_changed", added=[k[0] for k in added], removed=[k[0] for k in removed],
                 changed=[k[0] for k in changed], deferred=self._loading)
        if self._loading:
            return rejected
        async with self._flush_lock:
            if self._writer is None or not await self._reload_if_needed():
                return rejected  # a new channel reloads and flushes everything
            try:
                await self._flush_peers([*added, *changed])
            except SpeakerError as exc:
                log.warning("exports_deferred", error=str(exc))
        return rejected

    # -------------------------------------------------------------- exports

    async def set_exports(self, peer_key: PeerKey, routes: Mapping[str, Hashable]) -> None:
        """The WHOLE set of routes to advertise to one peer: prefix -> attributes
        (``rib.policy.ExportAttrs`` or anything with the same fields). Sends only
        the difference from what ExaBGP has acknowledged, batched by attributes.

        Returns once ExaBGP has answered every command, or at once when there is no
        channel (the set is sent when ExaBGP is back). A peer not (yet) in
        ``set_peers`` keeps its set until it is; removing a peer forgets its set.
        """
        exports = self._exports.setdefault(peer_key, _PeerExports())
        exports.desired = dict(routes)
        exports.all_dirty = True
        await self._flush((peer_key,))

    async def update_exports(self, peer_key: PeerKey, announce: Mapping[Hashable, Iterable[str]],
                             withdraw: Iterable[str] = (), full: bool = False) -> None:
        """Apply a delta (``rib.changes.ExportDelta`` shape) to a peer's desired set."""
        routes: dict[str, Hashable | None] = dict.fromkeys(withdraw)
        for attrs, prefixes in announce.items():
            for prefix in prefixes:
                routes[prefix] = attrs
        await self.update_exports_many({peer_key: (full, routes)})

    async def update_exports_many(
            self, changes: Mapping[PeerKey, tuple[bool, Mapping[str, Hashable | None]]],
            end_of_rib: Iterable[PeerKey] = ()) -> None:
        """Apply deltas for many peers at once: peer -> (full, {prefix: attributes, or
        None to withdraw}); ``full`` replaces the peer's whole set. One flush for all:
        a route going to many peers with the same attributes is ONE ExaBGP command
        naming all of them (``neighbor A , neighbor B ... announce attributes ...``),
        so a reflector's burst costs commands per route, not per route and peer.
        ``end_of_rib``: peers that also get End-of-RIB, behind their routes in the same
        stream of commands (no wait for their acknowledgements)."""
        end_of_rib = list(end_of_rib)
        self._owe_eor(end_of_rib)
        all_exports = self._exports
        for key, (full, routes) in changes.items():
            exports = all_exports.get(key)
            if exports is None:
                exports = all_exports[key] = _PeerExports()
            desired = exports.desired
            if full:
                desired.clear()
                exports.all_dirty = True
            for prefix, attrs in routes.items():
                if attrs is None:
                    desired.pop(prefix, None)
                else:
                    desired[prefix] = attrs
            if not exports.all_dirty:
                exports.dirty.update(routes)
        await self._flush((*changes, *(k for k in end_of_rib if k not in changes)))

    def _owe_eor(self, keys: Iterable[PeerKey]) -> None:
        for key in keys:
            self._exports.setdefault(key, _PeerExports()).eor_owed = True

    async def end_of_rib(self, keys: Iterable[PeerKey]) -> None:
        """Send End-of-RIB (the session's unicast family) to each of ``keys``, one
        command per family and kind of session; after whatever was sent them before
        (podbgp-send sessions get it as bytes, behind their UPDATEs). It stays owed
        until acknowledged: a channel that is down, fails or answers ``error`` sends
        it with the peer's next flush. Raises ``SpeakerError`` if the channel is down."""
        keys = list(keys)
        self._owe_eor(keys)
        async with self._flush_lock:
            await self._send_batches(self._eor_batches(keys))

    def _eor_batches(self, keys: Iterable[PeerKey]) -> list[_Batch]:
        """End-of-RIB commands for those of ``keys`` owed one: one per family and kind
        of session (a session that is down or not loaded gets none yet: it stays owed)."""
        exports_get = self._exports.get
        keys = [k for k in keys if (e := exports_get(k)) is not None and e.eor_owed
                and k in self._peers and self._in_exabgp(k)]
        modes = {k: self._mode(self._peers[k]) for k in keys}
        batches = []
        for ipv6, afi in ((False, "ipv4"), (True, "ipv6")):
            peers = tuple(k for k in keys if (":" in k[0]) == ipv6 and modes[k] == "text")
            if peers:
                batches.append(_Batch(f"{_selector(peers)} announce eor {afi} unicast", [],
                                      peers, eor=True))
            raw = tuple(k for k in keys if (":" in k[0]) == ipv6 and modes[k] == "raw")
            if raw:
                batches.append(_Batch(RAW_COMMAND, [], raw,
                                      wire.encode_payload(wire.end_of_rib(ipv6)),
                                      tuple(self._epoch.get(k[0], 0) for k in raw), eor=True))
        return batches

    async def compact(self) -> None:
        """Give back the room a large withdrawal left in the export tables (between
        flushes: a flush in progress keeps references to them across its awaits)."""
        async with self._flush_lock:
            for exports in self._exports.values():
                exports.compact()

    def exports(self, peer_key: PeerKey) -> dict[str, Hashable]:
        e = self._exports.get(peer_key)
        return dict(e.desired) if e else {}

    async def _flush(self, keys: Iterable[PeerKey]) -> None:
        async with self._flush_lock:
            try:
                await self._flush_peers(keys)
            except SpeakerError as exc:
                # The channel went away mid-flush: what was not acknowledged is sent
                # again on the next channel (or to the restarted ExaBGP).
                log.warning("exports_deferred", error=str(exc))

    async def _resync(self) -> None:
        """A new channel: ExaBGP has read its config (it starts the relay after). Write
        and reload a change that waited for that, then send every peer what ExaBGP
        has not acknowledged."""
        async with self._flush_lock:
            self._loading = False
            if self._config_dirty:
                self._write_config()
            if self._writer is None or not await self._reload_if_needed():
                return
            try:
                self._raw_ok = await self._probe_raw()
                await self._flush_peers(list(self._exports))
            except SpeakerError as exc:
                log.warning("exabgp_resync_interrupted", error=str(exc))

    async def _probe_raw(self) -> bool:
        """Does this ExaBGP take podbgp-send (bgpd.exabgp.launch group "raw")?"""
        fut = self._send(HELLO_COMMAND)
        try:
            ok = await asyncio.wait_for(asyncio.shield(fut), self.command_timeout)
        except TimeoutError:
            self._drop_connection(CommandFailed(f"{HELLO_COMMAND}: no answer"))
            raise CommandFailed(f"{HELLO_COMMAND}: no answer") from None
        log.info("exabgp_raw_updates", available=ok)
        return ok

    def _add_path_send(self, spec: PeerSpec) -> bool:
        """ADD-PATH send is negotiated: we offer it (conf: ``add-path send/receive``)
        and the peer's OPEN takes it for the session's family (RFC 7911 §4)."""
        family = ("ipv6" if spec.ipv6 else "ipv4", "unicast")
        caps = self._wire_caps.get(spec.address)
        return bool(spec.add_paths) and caps is not None and family in caps[2]

    def _mode(self, spec: PeerSpec) -> str:
        """How exports reach this session: "raw" (podbgp-send bytes), "text" (ExaBGP
        commands), or "wait" (raw-capable ExaBGP, session down: nothing is sent; the
        session gets its whole set once up, as ExaBGP keeps none of it)."""
        if self._raw_ok is None:
            return "wait"  # probed when the channel comes up (_resync)
        if not self._raw_ok or spec.key in self._text_peers:
            return "text"
        if spec.address not in self._up:
            return "wait"
        caps = self._wire_caps.get(spec.address)
        if caps is None or not caps[0]:
            return "text"  # no 4-octet AS (or no OPEN seen): ExaBGP encodes for it
        return "raw"

    def _in_exabgp(self, key: PeerKey) -> bool:
        """The running ExaBGP has this peer's current definition (its config is loaded).

        A command naming several neighbours is answered ``done`` if ANY of them
        exists, so a peer ExaBGP does not have yet must not be named at all."""
        return self._peer_generation.get(key, self._loaded_generation + 1) \
            <= self._loaded_generation

    async def _flush_peers(self, keys: Iterable[PeerKey]) -> None:
        """Send what ExaBGP has not acknowledged for ``keys``: each (attributes, target
        peers) group once, as text commands of up to BATCH_SIZE prefixes or as
        podbgp-send commands of encoded UPDATEs; then the End-of-RIBs owed them."""
        if self._writer is None:
            return  # sent when the channel is up
        keys = list(keys)
        # session shape -> next hop / attributes -> prefix -> peers. The shape keeps
        # apart what one command cannot mix: the family (text: (IPv6,)); for raw bytes
        # also iBGP (LOCAL_PREF) and ADD-PATH (path identifiers): (IPv6, iBGP, ADD-PATH).
        withdraw: _Groups = {}
        announce: _Groups = {}
        raw_withdraw: _Groups = {}
        raw_announce: _Groups = {}
        peers_get, exports_get = self._peers.get, self._exports.get
        generation_get, loaded = self._peer_generation.get, self._loaded_generation
        shapes: dict[tuple, tuple[dict, dict]] = {}  # (mode, shape) -> its two groups
        for key in keys:
            spec = peers_get(key)
            exports = exports_get(key)
            # (self._in_exabgp, inline: a reflector's flush runs this for every peer)
            if spec is None or exports is None or generation_get(key, loaded + 1) > loaded:
                continue  # sent when the peer is configured and loaded
            mode = self._mode(spec)
            if mode == "wait":
                continue  # stays dirty
            desired, sent = exports.desired, exports.sent
            if exports.all_dirty:
                candidates: Iterable[str] = [*desired, *(p for p in sent if p not in desired)]
            else:
                candidates = exports.dirty
                if not candidates:
                    continue
            exports.dirty = set()
            exports.all_dirty = False
            if mode == "raw":
                shape: tuple = (mode, spec.ipv6, spec.peer_as == spec.local_as,
                                self._add_path_send(spec))
            else:
                shape = (mode, spec.ipv6)
                if self._raw_ok:
                    self._text_peers.add(key)
            groups = shapes.get(shape)
            if groups is None:
                groups = shapes[shape] = (
                    (raw_withdraw if mode == "raw" else withdraw).setdefault(shape[1:], {}),
                    (raw_announce if mode == "raw" else announce).setdefault(shape[1:], {}))
            w_shape, a_shape = groups
            # per (route, peer): a reflector does this 100k times a second under churn
            for prefix in candidates:
                want, have = desired.get(prefix), sent.get(prefix)
                if want is None:
                    if have is not None:
                        w_shape.setdefault(getattr(have, "next_hop", None), {}) \
                            .setdefault(prefix, []).append(key)
                elif have is not want and have != want:
                    targets = a_shape.get(want)
                    if targets is None:
                        targets = a_shape[want] = {}
                    peers = targets.get(prefix)
                    if peers is None:
                        targets[prefix] = [key]
                    else:
                        peers.append(key)
        batches = self._text_batches(withdraw, announce)
        batches += self._raw_batches(raw_withdraw, raw_announce)
        batches += self._eor_batches(keys)
        if batches:
            await self._send_batches(batches)

    def _text_batches(self, withdraw: _Groups, announce: _Groups) -> list[_Batch]:
        batches: list[_Batch] = []
        for nh, targets in ((nh, t) for by_nh in withdraw.values() for nh, t in by_nh.items()):
            for peers, prefixes in _by_peers(targets).items():
                who = _selector(peers)
                head = f"{who} withdraw attributes next-hop {nh} nlri" if nh else \
                    f"{who} withdraw attributes nlri"
                for i in range(0, len(prefixes), BATCH_SIZE):
                    batches.append(_Batch(head, [(None, prefixes[i:i + BATCH_SIZE])], peers))
        for (ipv6,), attrs, targets in ((shape, a, t) for shape, by_attrs in announce.items()
                                        for a, t in by_attrs.items()):
            try:
                text = attributes_text(attrs)
            except (ValueError, TypeError, KeyError, AttributeError) as exc:
                # One bad attribute set must not block the rest; it stays unsent.
                log.error("export_rejected", error=str(exc), prefixes=len(targets))
                continue
            for peers, good in self._valid_groups(targets, ipv6):
                head = f"{_selector(peers)} announce attributes {text} nlri"
                for i in range(0, len(good), BATCH_SIZE):
                    batches.append(_Batch(head, [(attrs, good[i:i + BATCH_SIZE])], peers))
        return batches

    def _raw_batches(self, withdraw: _Groups, announce: _Groups) -> list[_Batch]:
        """podbgp-send commands: per set of target peers, its withdrawals then its
        announcements, encoded once, in commands of up to RAW_CHUNK octets."""
        per_peers: dict[tuple[PeerKey, ...], list[tuple[Hashable | None, list[str], bytes]]] = {}
        for (ipv6, _ibgp, add_path), targets in (
                (shape, t) for shape, by_nh in withdraw.items() for t in by_nh.values()):
            for peers, prefixes in _by_peers(targets).items():
                for i in range(0, len(prefixes), RAW_PART):
                    part = prefixes[i:i + RAW_PART]
                    per_peers.setdefault(peers, []).append(
                        (None, part, wire.withdraw(part, ipv6=ipv6, add_path=add_path)))
        for (ipv6, ibgp, add_path), attrs, targets in (
                (shape, a, t) for shape, by_attrs in announce.items()
                for a, t in by_attrs.items()):
            try:
                packed = wire.path_attributes(attrs, ibgp=ibgp)
            except (ValueError, TypeError, KeyError, AttributeError) as exc:
                log.error("export_rejected", error=str(exc), prefixes=len(targets))
                continue
            for peers, good in self._valid_groups(targets, ipv6):
                for i in range(0, len(good), RAW_PART):
                    part = good[i:i + RAW_PART]
                    try:
                        data = wire.announce_packed(packed, part, ipv6=ipv6,
                                                    add_path=add_path)
                    except wire.WireError as exc:
                        log.error("export_rejected", error=str(exc), prefixes=len(part))
                        continue
                    per_peers.setdefault(peers, []).append((attrs, part, data))
        batches = []
        for peers, parts in per_peers.items():
            epochs = tuple(self._epoch.get(k[0], 0) for k in peers)
            chunk: list[tuple[Hashable | None, list[str], bytes]] = []
            size = 0
            for part in [*parts, None]:
                if chunk and (part is None or size + len(part[2]) > RAW_CHUNK):
                    batches.append(_Batch(RAW_COMMAND, [(a, p) for a, p, _ in chunk], peers,
                                          wire.encode_payload(b"".join(d for *_, d in chunk)),
                                          epochs))
                    chunk, size = [], 0
                if part is not None:
                    chunk.append(part)
                    size += len(part[2])
        return batches

    async def _answer_refresh(self, key: PeerKey) -> None:
        """A ROUTE-REFRESH from a podbgp-send session: send its whole set again, framed
        by Beginning/End-of-Route-Refresh when it speaks RFC 7313 (then routes it does
        not get again are dropped at the end marker, so all of them must be in it)."""
        async with self._flush_lock:
            spec, exports = self._peers.get(key), self._exports.get(key)
            if spec is None or exports is None or self._mode(spec) != "raw" \
                    or self._writer is None:
                return
            exports.forget_sent()
            exports.all_dirty = False
            shape = (spec.ipv6, spec.peer_as == spec.local_as, self._add_path_send(spec))
            by_attrs: dict[Hashable, dict[str, list[PeerKey]]] = {}
            for prefix, attrs in exports.desired.items():
                by_attrs.setdefault(attrs, {})[prefix] = [key]
            announce: _Groups = {shape: by_attrs}
            batches = self._raw_batches({}, announce)
            if self._wire_caps.get(spec.address, (False, False, ()))[1]:
                epochs = (self._epoch.get(key[0], 0),)
                batches = [
                    _Batch(RAW_COMMAND, [], (key,), wire.encode_payload(
                        wire.route_refresh_marker(spec.ipv6, 1)), epochs),
                    *batches,
                    _Batch(RAW_COMMAND, [], (key,), wire.encode_payload(
                        wire.route_refresh_marker(spec.ipv6, 2)), epochs),
                ]
            try:
                await self._send_batches(batches)
            except SpeakerError as exc:
                log.warning("route_refresh_deferred", neighbor=key[0], error=str(exc))

    def _valid_groups(self, targets: Mapping[str, list[PeerKey]],
                      ipv6: bool) -> Iterator[tuple[tuple[PeerKey, ...], list[str]]]:
        """(peers, their prefixes of the session's family) per set of target peers;
        a prefix that is not one is logged and left out."""
        for peers, prefixes in _by_peers(targets).items():
            good = self._good_prefixes(prefixes, ipv6)
            if len(good) != len(prefixes):
                log.error("export_prefixes_rejected", neighbors=[k[0] for k in peers],
                          count=len(prefixes) - len(good))
            yield peers, good

    @staticmethod
    def _good_prefixes(prefixes: list[str], ipv6: bool) -> list[str]:
        good = []
        for p in prefixes:
            with contextlib.suppress(ValueError, TypeError):
                _check_prefix(p, ipv6)
                good.append(p)
        return good

    async def _send_batches(self, batches: list[_Batch]) -> None:
        """Send with up to WINDOW commands in flight; book each acknowledged batch as
        sent for its peers. A batch that fails (or is never answered) stays unsent
        and dirty, so the next flush tries it again."""
        inflight: deque[tuple[asyncio.Future[bool], _Batch]] = deque()

        async def settle_one() -> None:
            fut, b = inflight.popleft()
            try:
                ok = await self._wait_ack(fut, b.head)
            except BaseException:
                self._redirty(b)
                raise
            if not ok:
                self._redirty(b)
                return
            for i, key in enumerate(b.peers):
                exports = self._exports.get(key)
                if exports is None:
                    continue  # removed meanwhile
                if b.epochs is not None and self._epoch.get(key[0], 0) != b.epochs[i]:
                    continue  # that session ended: ExaBGP dropped the bytes (sent forgotten)
                if b.eor:
                    exports.eor_owed = False
                sent = exports.sent
                for attrs, prefixes in b.parts:
                    if attrs is None:
                        for p in prefixes:
                            sent.pop(p, None)
                    else:
                        for p in prefixes:
                            sent[p] = attrs
            for attrs, prefixes in b.parts:
                if attrs is None:
                    self.stats.prefixes_withdrawn += len(prefixes) * len(b.peers)
                else:
                    self.stats.prefixes_announced += len(prefixes) * len(b.peers)

        try:
            for i, b in enumerate(batches):
                try:
                    inflight.append((self._send(b.command()), b))
                except SpeakerError:
                    for later in batches[i:]:
                        self._redirty(later)
                    raise
                await self._drain()
                while len(inflight) >= WINDOW:
                    await settle_one()
            while inflight:
                await settle_one()
        finally:
            for _, b in inflight:  # abandoned by an exception: not acknowledged
                self._redirty(b)

    def _redirty(self, b: _Batch) -> None:
        for key in b.peers:
            exports = self._exports.get(key)
            if exports is not None and not exports.all_dirty:
                for _, prefixes in b.parts:
                    exports.dirty.update(prefixes)

    # --------------------------------------------------------------- events

    async def events(self) -> AsyncIterator[ev.Event]:
        """Parsed events, in ExaBGP's order (command answers are consumed here). The
        consumer gets the event loop back every few milliseconds of a backlog."""
        turn = _Turn()
        while True:
            await turn.share()
            yield await self._events.get()

    async def next_event(self, timeout: float | None = None) -> ev.Event:
        return await asyncio.wait_for(self._events.get(), timeout)

    def events_pending(self) -> int:
        """Events parsed and not yet taken by the consumer: how far the node is behind
        what ExaBGP has told it (a reflector under more churn than it has CPU for)."""
        return self._events.qsize()

    @property
    def sessions_up(self) -> frozenset[str]:
        return frozenset(self._up)

