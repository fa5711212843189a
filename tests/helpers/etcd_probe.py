"""podbgp's etcd watcher, instrumented, in its own process: ``python -m tests.helpers.etcd_probe``.

Owned by the etcd-cluster tests (tests/integration/test_etcd_cluster.py). The
tests run this inside a lab namespace (a test process cannot put gRPC's
sockets into another network namespace), with every endpoint of the cluster,
exactly as ``bgpd`` runs ``config.etcd_store.EtcdDatastore``. It prints one
JSON object per line on stdout:

    {"t": "apply", "key": K, "via": ..., "rev": R, "size": N}   a BlockAffinity seen
                                         (via "watch" or "load"; size: of the value)
    {"t": "delete", "key": K, "rev": R}                          one deleted (watch)
    {"t": "load", "rev": R, "reload": bool, "keys": N}           a full (re)load
    {"t": "conn", "connected": bool, "endpoint": URL, "rev": R}  connectivity changes
    {"t": "snap", "rev": R, "affinities": N}                     each published snapshot

so a test can check that every write arrived, none twice, across faults.
    {"t": "load_start"}                                          before the keys of a load
Ends on SIGTERM or when stdin closes. ``Probe`` is the test's side: it runs
this in a namespace and keeps what it printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from bgpd.ops import log as logsetup
from config import keys as ckeys
from config.etcd_store import EtcdDatastore


def emit(**kw: object) -> None:
    sys.stdout.write(json.dumps(kw) + "\n")
    sys.stdout.flush()


class ProbeStore(EtcdDatastore):
    """EtcdDatastore that reports what its watcher applies (behaviour unchanged)."""

    _loading = False

    async def _load(self, client):  # type: ignore[override]
        emit(t="load_start")
        self._loading = True
        try:
            await super()._load(client)
        finally:
            self._loading = False
        emit(t="load", rev=self.revision, reload=self.stats.reloads_total > 0,
             keys=len(self._affinities))

    def _apply_put(self, key, raw, *args):  # type: ignore[override]
        hit = super()._apply_put(key, raw, *args)
        if key.startswith(ckeys.IPAM_HOST_PREFIX):
            emit(t="apply", key=key, via="load" if self._loading else "watch", rev=self.revision,
                 size=len(raw))
        return hit

    def _apply_delete(self, key):  # type: ignore[override]
        hit = super()._apply_delete(key)
        if key.startswith(ckeys.IPAM_HOST_PREFIX):
            emit(t="delete", key=key, rev=self.revision)
        return hit

    def _publish(self) -> None:
        super()._publish()
        emit(t="snap", rev=self.revision, affinities=len(self._affinities))


async def main(endpoints: str) -> None:
    store = ProbeStore(endpoints, backoff_max=1.0)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_reader(sys.stdin.fileno(), lambda: stop.set() if not sys.stdin.read(1) else None)
    await store.start()
    was: tuple | None = None
    while not stop.is_set():
        now = (store.connected, store.endpoint)
        if now != was:
            emit(t="conn", connected=store.connected, endpoint=store.endpoint, rev=store.revision)
            was = now
        try:
            await asyncio.wait_for(stop.wait(), 0.05)
        except TimeoutError:
            pass
    await store.close()


class Probe:
    """The test's side: runs this module in network namespace ``ns`` and keeps its lines."""

    def __init__(self, ns: str, endpoints: str, log: Path) -> None:
        repo = Path(__file__).resolve().parents[2]
        self._log = open(log, "ab")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "tests.helpers.etcd_probe",
             "--endpoints", endpoints], cwd=repo, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=self._log, text=True)
        self.lines: list[dict] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._lock:
                self.lines.append({**json.loads(line), "at": time.monotonic()})

    def snapshot_lines(self) -> list[dict]:
        with self._lock:
            return list(self.lines)

    def connection(self) -> dict | None:
        """The last {"connected", "endpoint"} line."""
        conns = [x for x in self.snapshot_lines() if x["t"] == "conn"]
        return conns[-1] if conns else None

    def view(self) -> set[str]:
        """The BlockAffinity keys the watcher holds now (replayed from its lines)."""
        keys: set[str] = set()
        for x in self.snapshot_lines():
            if x["t"] == "load_start":
                keys = set()
            elif x["t"] == "apply":
                keys.add(x["key"])
            elif x["t"] == "delete":
                keys.discard(x["key"])
        return keys

    def watch_applied(self) -> list[tuple[str, int]]:
        """(key, value size) in the order the watch applied them: a writer that makes
        every value distinct sees each write once if nothing is replayed."""
        return [(x["key"], x["size"]) for x in self.snapshot_lines()
                if x["t"] == "apply" and x["via"] == "watch"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._thread.join(5)
        self._log.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--endpoints", required=True)
    logsetup.configure("json", "info", sys.stderr)  # stdout carries the probe's lines
    asyncio.run(main(p.parse_args().endpoints))
