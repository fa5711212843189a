"""`bgpd` entry point: parse options, set up logging, run the daemon."""

from __future__ import annotations

import asyncio
import os
import sys

from bgpd.ops import log as logsetup
from bgpd.options import UsageError, parse_options


def main(argv: list[str] | None = None) -> int:
    try:
        opts = parse_options(argv)
    except UsageError as e:
        print(f"bgpd: {e}", file=sys.stderr)
        return 2
    # gRPC (aetcd) prints fork warnings on stderr, outside structlog, whenever the
    # speaker spawns ExaBGP; keep its own logging to errors.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    logsetup.configure(opts.log_format, opts.log_level)
    from bgpd.daemon import Daemon

    try:
        return asyncio.run(Daemon(opts).run())
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
