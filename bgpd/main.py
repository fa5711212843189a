"""`bgpd` entry point: parse options, set up logging, pick the BGP backend, run the daemon.

The composition root: the one place outside ``bgpd/exabgp/`` that names the
backend (docs/architecture.md, "The speaker interface").
"""

from __future__ import annotations

import sys

# This process speaks no TLS (etcd's goes through grpc's own), yet asyncio (and
# structlog through it) imports ``ssl`` whenever it can, mapping libssl and libcrypto:
# ~5 MiB resident for nothing (issue 17). Importing it raises ImportError here, which
# asyncio expects where ssl is missing. First, before anything imports asyncio.
# Likewise ``_hashlib`` (hashlib's OpenSSL half, ~3.4 MiB of libcrypto resident): what
# podbgp hashes (sha256, sha1) hashlib then serves from its builtin modules.
if "ssl" not in sys.modules:
    sys.modules["ssl"] = None  # type: ignore[assignment]
if "_hashlib" not in sys.modules:
    sys.modules["_hashlib"] = None  # type: ignore[assignment]


import asyncio
import gc
import os

from bgpd.ops import log as logsetup
from bgpd.ops.lock import AlreadyRunning, InstanceLocks
from bgpd.ops.memory import tune_malloc
from bgpd.options import UsageError, parse_options


def tune_gc() -> None:
    """The RIB holds several small container objects per route and none of them is in
    a reference cycle, yet with the default thresholds (a young collection every 700
    allocations, full ones as the heap grows) the collector kept rescanning them:
    ~30% of the daemon's time in a 100k-route burst (bench.convergence). Collect
    rarely, and keep start-up objects (modules, config) out of every scan. The
    thresholds count allocations less deallocations, which steady churn keeps level:
    the housekeeper (bgpd.ops.memory) collects the young generations every minute."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 10)


def main(argv: list[str] | None = None) -> int:
    tune_malloc()  # before any thread (bgpd.ops.memory: fewer arenas, big blocks mmap'ed)
    try:
        opts = parse_options(argv)
    except UsageError as e:
        print(f"bgpd: {e}", file=sys.stderr)
        return 2
    # Before anything else (ports, datastore, kernel, the state directory's files):
    # one bgpd per state directory and per routing table (bgpd.ops.lock).
    locks = InstanceLocks()
    try:
        locks.acquire(opts.state_dir, opts.route_table, opts.route_protocol)
    except AlreadyRunning as e:
        print(f"bgpd: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"bgpd: state directory {opts.state_dir}: {e.strerror or e}", file=sys.stderr)
        return 1
    # gRPC (aetcd) prints fork warnings on stderr, outside structlog, whenever the
    # speaker spawns its child; keep its own logging to errors.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    logsetup.configure(opts.log_format, opts.log_level)
    from bgpd import exabgp
    from bgpd.daemon import Daemon

    daemon = Daemon(opts, backend=exabgp)
    tune_gc()
    try:
        return asyncio.run(daemon.run())
    except KeyboardInterrupt:
        return 0
    finally:
        locks.release()


if __name__ == "__main__":
    sys.exit(main())
