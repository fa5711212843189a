"""Truth tables for network-policy tests, probed with lab.prober.

The approach of Kubernetes' network-policy e2e suite (kubernetes/kubernetes
test/e2e/network/netpol: model.go, reachability.go, truthtable.go): a model
of namespaces x pods, an expected table of which ordered pod pair may
connect on which port/protocol, every pair probed, and a failure that prints
the expected and observed tables side by side. Written from that description
for podbgp's labs (the pods are network namespaces, probed by one
`lab.prober` process each).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

PORTS = (("tcp", 80), ("tcp", 81), ("udp", 80))


@dataclass(frozen=True)
class Peer:
    """A pod in the model: ``ns/name`` on `node`, with its netns and address."""

    ns: str
    name: str
    netns: str
    ip: str
    node: str = ""
    labels: tuple[tuple[str, str], ...] = ()

    @property
    def id(self) -> str:
        return f"{self.ns}/{self.name}"


class Prober:
    """One `lab.prober` process inside a pod's network namespace."""

    def __init__(self, netns: str, tcp: str = "80,81", udp: str = "80", sctp: str = "") -> None:
        self.netns = netns
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, sys.executable, "-m", "lab.prober",
             "--tcp", tcp, "--udp", udp, "--sctp", sctp],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True, bufsize=1)
        first = self.proc.stdout.readline()  # type: ignore[union-attr]
        if '"ready"' not in first:
            self.close()
            raise RuntimeError(f"prober in {netns} did not start")
        self._lock = threading.Lock()
        self._seq = itertools.count()
        self._waiters: dict[int, list] = {}
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            slot = self._waiters.pop(msg.get("id"), None)
            if slot is not None:
                slot.append(msg)
                slot[0].set()

    def start(self, proto: str, addr: str, port: int, timeout: float) -> list:
        """Send one probe; returns a slot whose event is set when answered."""
        rid = next(self._seq)
        slot: list = [threading.Event()]
        self._waiters[rid] = slot
        with self._lock:
            self.proc.stdin.write(json.dumps(  # type: ignore[union-attr]
                {"id": rid, "proto": proto, "addr": addr, "port": port,
                 "timeout": timeout}) + "\n")
            self.proc.stdin.flush()  # type: ignore[union-attr]
        return slot

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.proc.stdin.close()  # type: ignore[union-attr]
        self.proc.kill()
        self.proc.wait(5)


Key = tuple[str, str, str, int]  # (from pod id, to pod id, proto, port)


def probe_all(probers: dict[str, Prober], peers: Iterable[Peer],
              ports: Iterable[tuple[str, int]] = PORTS, timeout: float = 1.0) -> dict[Key, bool]:
    """Probe every ordered pair of distinct pods on every (proto, port), concurrently."""
    peers = list(peers)
    slots: dict[Key, list] = {}
    for src, dst in itertools.permutations(peers, 2):
        for proto, port in ports:
            slots[(src.id, dst.id, proto, port)] = probers[src.id].start(
                proto, dst.ip, port, timeout)
    out: dict[Key, bool] = {}
    for key, slot in slots.items():
        if not slot[0].wait(timeout + 10):
            raise RuntimeError(f"prober gave no answer for {key}")
        out[key] = bool(slot[1]["ok"])
    return out


def expect(peers: Iterable[Peer], allowed: Callable[[Peer, Peer, str, int], bool],
           ports: Iterable[tuple[str, int]] = PORTS) -> dict[Key, bool]:
    """The expected table: ``allowed(src, dst, proto, port)`` for every ordered pair."""
    peers = list(peers)
    return {(s.id, d.id, proto, port): bool(allowed(s, d, proto, port))
            for s, d in itertools.permutations(peers, 2) for proto, port in ports}


def render(table: dict[Key, bool], peers: Iterable[Peer], proto: str, port: int,
           other: dict[Key, bool] | None = None) -> str:
    """A table for one (proto, port): rows from, columns to; '.' allowed, 'X' blocked,
    and with `other` (observed) a '!' where the two disagree."""
    ids = [p.id for p in peers]
    width = max(len(i) for i in ids)
    head = " " * width + " | " + " ".join(f"{i:>{width}}" for i in ids)
    lines = [f"{proto}/{port}", head, "-" * len(head)]
    for s in ids:
        cells = []
        for d in ids:
            if s == d:
                cells.append(f"{'-':>{width}}")
                continue
            want = table[(s, d, proto, port)]
            mark = "." if want else "X"
            if other is not None and other[(s, d, proto, port)] != want:
                mark = "!"
            cells.append(f"{mark:>{width}}")
        lines.append(f"{s:>{width}} | " + " ".join(cells))
    return "\n".join(lines)


def compare(expected: dict[Key, bool], observed: dict[Key, bool], peers: Iterable[Peer],
            ports: Iterable[tuple[str, int]] = PORTS) -> str | None:
    """None when the tables agree; else a report naming every wrong pair."""
    wrong = sorted(k for k in expected if expected[k] != observed.get(k))
    if not wrong:
        return None
    peers = list(peers)
    parts = [f"{len(wrong)} of {len(expected)} probes disagree with the expected table:"]
    for s, d, proto, port in wrong[:40]:
        parts.append(f"  {s} -> {d} {proto}/{port}: expected "
                     f"{'allowed' if expected[(s, d, proto, port)] else 'blocked'}, was "
                     f"{'allowed' if observed.get((s, d, proto, port)) else 'blocked'}")
    for proto, port in ports:
        parts.append("expected (with ! where observed differs):")
        parts.append(render(expected, peers, proto, port, observed))
    return "\n".join(parts)


def eventually(probers: dict[str, Prober], peers: Iterable[Peer], allowed,
               ports: Iterable[tuple[str, int]] = PORTS, timeout: float = 10.0,
               probe_timeout: float = 0.5, confirm: bool = True) -> str | None:
    """Probe until the table is the expected one (policy takes a moment to arrive) and,
    with `confirm`, stays so for one more round; None, or the last report on timeout."""
    peers, ports = list(peers), list(ports)
    want = expect(peers, allowed, ports)
    deadline = time.monotonic() + timeout
    report: str | None = "never probed"
    while time.monotonic() < deadline:
        report = compare(want, probe_all(probers, peers, ports, probe_timeout), peers, ports)
        if report is None and confirm:
            report = compare(want, probe_all(probers, peers, ports, probe_timeout), peers,
                             ports)
        if report is None:
            return None
        time.sleep(0.2)
    return report


class Continuous:
    """Probes some pairs every `interval` s in the background (TCP 80), recording every
    result in order: for faults, where what matters is that a denied pair never once
    got through and an allowed one was never blocked for long.

    `pairs` maps a name to (prober id, destination address)."""

    def __init__(self, probers: dict[str, Prober], pairs: dict[str, tuple[str, str]],
                 interval: float = 0.1) -> None:
        self.probers, self.pairs, self.interval = probers, pairs, interval
        self.results: dict[str, list[bool]] = {k: [] for k in pairs}
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            slots = {k: self.probers[s].start("tcp", addr, 80, self.interval * 2)
                     for k, (s, addr) in self.pairs.items()}
            for k, slot in slots.items():
                if slot[0].wait(5):
                    self.results[k].append(bool(slot[1]["ok"]))
            time.sleep(self.interval)

    def __enter__(self) -> Continuous:
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join(10)


def longest_run(values: list[bool], of: bool) -> int:
    """The longest run of `of` in `values` (e.g. consecutive blocked probes)."""
    best = cur = 0
    for v in values:
        cur = cur + 1 if v == of else 0
        best = max(best, cur)
    return best
