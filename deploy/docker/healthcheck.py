#!/usr/bin/env python3
"""Container HEALTHCHECK: exit 0 when bgpd's /healthz answers 200, else 1.

Stdlib only (it runs every interval; no podbgp import, starts in ~20 ms).
Reads the address from PODBGP_HTTP_LISTEN like bgpd does (default
127.0.0.1:9179); a wildcard listen address is probed on loopback.
Kubernetes ignores Docker HEALTHCHECK: the DaemonSet has its own probes.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

DEFAULT_LISTEN = "127.0.0.1:9179"
WILDCARDS = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "[::]": "[::1]", "::": "[::1]"}


def healthz_url(listen: str) -> str:
    """http://HOST:PORT/healthz for a bgpd --http-listen value.

    Raises ValueError naming the value when it has no numeric port.
    """
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"PODBGP_HTTP_LISTEN={listen!r}: expected ADDR:PORT")
    host = WILDCARDS.get(host, host)
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # a bare IPv6 address needs brackets in a URL
    return f"http://{host}:{port}/healthz"


def main() -> int:
    try:
        url = healthz_url(os.environ.get("PODBGP_HTTP_LISTEN") or DEFAULT_LISTEN)
        with urllib.request.urlopen(url, timeout=3) as resp:
            ok = resp.status == 200
    except ValueError as exc:
        print(f"healthcheck: {exc}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"healthcheck: {url}: {exc}", file=sys.stderr)
        return 1
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
