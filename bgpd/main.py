"""`bgpd` entry point: parse options, set up logging, run the daemon."""

from __future__ import annotations

import asyncio
import os
import sys

from bgpd.ops import log as logsetup
from bgpd.ops.lock import AlreadyRunning, InstanceLocks
from bgpd.options import UsageError, parse_options


def main(argv: list[str] | None = None) -> int:
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
    # speaker spawns ExaBGP; keep its own logging to errors.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    logsetup.configure(opts.log_format, opts.log_level)
    from bgpd.daemon import Daemon

    try:
        return asyncio.run(Daemon(opts).run())
    except KeyboardInterrupt:
        return 0
    finally:
        locks.release()


if __name__ == "__main__":
    sys.exit(main())
