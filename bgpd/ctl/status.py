"""`bgpctl node status`: calicoctl's BGP status table, from the daemon's /status."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

DEFAULT_URL = "http://127.0.0.1:9179"
COLUMNS = ("PEER ADDRESS", "PEER TYPE", "STATE", "SINCE", "INFO")


class StatusError(Exception):
    pass


def fetch_status(url: str, timeout: float = 3.0) -> dict:
    target = url.rstrip("/") + "/status"
    try:
        with urllib.request.urlopen(target, timeout=timeout) as r:
            return json.loads(r.read().decode())
    except urllib.error.HTTPError as e:
        raise StatusError(f"podbgp at {url} answered {e.code} for /status") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise StatusError(
            f"podbgp is not running (or not on {url}): cannot reach {target}: {reason}"
        ) from None
    except ValueError:
        raise StatusError(f"podbgp at {url} returned a /status that is not JSON") from None


def render_table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(str(r[i])) for r in [COLUMNS, *rows]) for i in range(len(COLUMNS))]
    sep = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def line(cells) -> str:
        return "|" + "|".join(f" {str(c).center(w)} " for c, w in zip(cells, widths, strict=True)) + "|"

    return "\n".join([sep, line(COLUMNS), sep, *(line(r) for r in rows), sep])


def _address(peer: dict) -> str:
    """The peer's address, with the port when it is not BGP's 179 (Calico's ``peerIP`` form)."""
    port = peer.get("port") or 179
    if port == 179:
        return peer["address"]
    return f"[{peer['address']}]:{port}" if ":" in peer["address"] else f"{peer['address']}:{port}"


def render_status(status: dict) -> str:
    out = ["podbgp process is running."]
    node = status.get("node", "?")
    out.append(f"Node {node}, AS {status.get('as', '?')}, router id {status.get('router_id', '?')}"
               + ("" if status.get("ready") else " (not ready yet)"))
    peers = status.get("peers", [])
    for fam, v6 in (("IPv4", False), ("IPv6", True)):
        rows = [
            (_address(p), p.get("type", ""), p.get("state", ""), p.get("since", ""),
             p.get("info", ""))
            for p in sorted(peers, key=lambda p: (p["address"], p.get("port") or 179))
            if (":" in p["address"]) == v6
        ]
        out.append("")
        out.append(f"{fam} BGP status")
        out.append(render_table(rows) if rows else f"No {fam} peers found.")
    return "\n".join(out) + "\n"


def _cmd_node_status(args) -> int:
    import sys

    try:
        status = fetch_status(args.url)
    except StatusError as e:
        print(str(e), file=sys.stderr)
        return 1
    sys.stdout.write(render_status(status))
    return 0


def register(subparsers) -> None:
    node = subparsers.add_parser("node", help="this node's podbgp daemon")
    sub = node.add_subparsers(dest="node_cmd", metavar="status", required=True)
    st = sub.add_parser("status", help="BGP sessions of the local daemon (like calicoctl)")
    st.add_argument("--url", default=DEFAULT_URL,
                    help=f"the daemon's HTTP endpoint (default {DEFAULT_URL})")
    st.set_defaults(func=_cmd_node_status)
