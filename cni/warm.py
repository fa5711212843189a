"""What a warm CNI agent keeps between calls: an event loop and etcd clients per worker.

Owned by cni/. A plugin call run by the node's agent (cni/agent.py) used to
start an event loop (``asyncio.run``) and open a new etcd client (a gRPC
channel plus a check read) for every call, twice per pod ADD (podbgp-cni and
its nested podbgp-ipam). The agent's worker threads call `enable()` once;
from then on `run()` uses the thread's long-lived loop and `connect()` hands
out the client the thread's previous call gave back with `release()`.

Never a stale answer: a client taken from the cache first answers the same
check read a new client must answer (one round trip); if it does not (etcd
restarted, the member went away), it is closed and a new client is opened
the ordinary way, so a vanished etcd still fails the call with
ConnectionError (CNI code 11) exactly as without the cache. Nothing read
from etcd is cached here: pools, blocks and handles are read per call, so
IPAM's compare-and-swap semantics are those of a fresh process.

Outside the agent (a plugin run in its own process, tests, bgpctl) `run()`
is ``asyncio.run`` and `connect()` opens a new client, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Coroutine
from typing import Any

__all__ = ["close", "connect", "enable", "enabled", "release", "run", "stats"]

_local = threading.local()
_lock = threading.Lock()
_stats = {"reused": 0, "opened": 0, "dropped": 0}

# How long a cached client gets to answer its check read before it is replaced by a
# new one: short, because a new client (with its own timeout) is tried right after.
REUSE_CHECK_TIMEOUT = 2.0


def enable() -> None:
    """Give this thread a long-lived event loop and a client cache (agent workers)."""
    _local.loop = asyncio.new_event_loop()
    _local.clients = {}


def enabled() -> bool:
    return getattr(_local, "loop", None) is not None


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    """``asyncio.run(coro)``, on the thread's long-lived loop when it has one."""
    loop = getattr(_local, "loop", None)
    if loop is None:
        return asyncio.run(coro)
    return loop.run_until_complete(coro)


def _key(settings: Any) -> tuple:
    # A rotated certificate (same path, new file) must not keep an old session alive.
    stamps = []
    for path in (settings.ca, settings.cert, settings.key):
        try:
            st = os.stat(path) if path else None
            stamps.append((path, st.st_mtime_ns, st.st_size) if st else None)
        except OSError:
            stamps.append((path, None))
    return (settings.endpoints, *stamps)


def _count(what: str) -> None:
    with _lock:
        _stats[what] += 1


def stats() -> dict[str, int]:
    """Clients reused, opened (new, in an agent worker) and dropped (failed their check)."""
    with _lock:
        return dict(_stats)


async def connect(settings: Any, timeout: float = 10.0) -> Any:
    """A client that answers: the thread's cached one if it still does, else a new one
    (ipam.etcd.connect: ValueError for bad settings, ConnectionError when none answers)."""
    from ipam.etcd import CHECK_KEY
    from ipam.etcd import connect as new_client

    cache = getattr(_local, "clients", None)
    if cache is None:
        return await new_client(settings, timeout)
    key = _key(settings)
    client = cache.pop(key, None)
    if client is not None:
        try:
            await asyncio.wait_for(client.get(CHECK_KEY), min(timeout, REUSE_CHECK_TIMEOUT))
        except Exception:
            _count("dropped")
            with contextlib.suppress(Exception):
                await client.close()
        else:
            _count("reused")
            client._podbgp_warm_key = key
            return client
    client = await new_client(settings, timeout)
    _count("opened")
    client._podbgp_warm_key = key
    return client


async def release(client: Any) -> None:
    """Give a client from `connect()` back: kept for the thread's next call, or closed."""
    cache = getattr(_local, "clients", None)
    key = getattr(client, "_podbgp_warm_key", None)
    if cache is None or key is None or key in cache:
        await client.close()
        return
    cache[key] = client


def close() -> None:
    """Close this thread's cached clients and its loop (a worker that ends)."""
    loop = getattr(_local, "loop", None)
    if loop is None:
        return
    clients = list(getattr(_local, "clients", {}).values())
    _local.clients = {}

    async def _close_all() -> None:
        for c in clients:
            with contextlib.suppress(Exception):
                await c.close()

    with contextlib.suppress(Exception):
        loop.run_until_complete(_close_all())
    with contextlib.suppress(Exception):
        loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()
    _local.loop = None
    _local.clients = None
