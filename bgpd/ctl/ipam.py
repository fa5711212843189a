"""``bgpctl ipam show [--show-blocks]`` and ``bgpctl ipam release --ip IP``.

Owned by ipam/ (plugged into bgpctl by ``bgpd.ctl`` through ``register``).
Reads and writes Calico's IPAM keys in etcd through ``ipam.allocator``; the
tables look like calicoctl's, with a NODE column for blocks.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["register", "render_table", "show_rows"]


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("ipam", help="IP address management (ipam show, ipam release)")
    sub = p.add_subparsers(dest="ipam_command", metavar="SUBCOMMAND", required=True)
    s = sub.add_parser("show", help="IP pools with total and used addresses")
    s.add_argument("--show-blocks", action="store_true",
                   help="also list every block, its node and its utilisation")
    s.set_defaults(func=cmd_show)
    r = sub.add_parser("release", help="release one address (e.g. leaked by a lost pod)")
    r.add_argument("--ip", required=True, metavar="IP", help="the address to release")
    r.set_defaults(func=cmd_release)


def _settings(args: argparse.Namespace):
    from ipam.etcd import EtcdSettings

    if getattr(args, "datastore", "etcdv3") == "file":
        raise _Failed("bgpctl ipam: IPAM lives in etcd; --datastore file has none")
    return EtcdSettings(getattr(args, "etcd_endpoints", None), getattr(args, "etcd_ca", None),
                        getattr(args, "etcd_cert", None), getattr(args, "etcd_key", None))


def _fail(msg: str, status: int = 1) -> int:
    print(msg, file=sys.stderr)
    return status


async def _with_allocator(args: argparse.Namespace, fn):
    from ipam.allocator import Allocator
    from ipam.etcd import connect

    settings = _settings(args)
    try:
        client = await connect(settings)
    except (ValueError, ConnectionError) as exc:
        raise _Failed(f"bgpctl ipam: {exc}") from None
    try:
        return await fn(Allocator(client))
    finally:
        await client.close()


class _Failed(Exception):
    pass


def _pct(n: int, total: int) -> str:
    return f"{n} ({(100.0 * n / total) if total else 0:.0f}%)"


def show_rows(pools: Sequence[Any], blocks: Sequence[Any], show_blocks: bool
              ) -> list[list[str]]:
    """Rows of ``ipam show``: one per pool (and, with show_blocks, per block)."""
    rows = []
    claimed: set[Any] = set()
    for pool in sorted(pools, key=lambda p: (p.cidr.version, int(p.cidr.network_address))):
        inside = sorted((b for b in blocks if b.cidr.subnet_of(pool.cidr)
                         if b.cidr.version == pool.cidr.version),
                        key=lambda b: int(b.cidr.network_address))
        claimed.update(b.cidr for b in inside)
        total = pool.cidr.num_addresses
        used = sum(b.in_use for b in inside)
        rows.append(["IP Pool", str(pool.cidr), "", str(total), _pct(used, total),
                     _pct(total - used, total)])
        if show_blocks:
            rows += [_block_row(b) for b in inside]
    if show_blocks:
        # Blocks of deleted pools still hold addresses: show them too.
        rows += [_block_row(b) for b in blocks if b.cidr not in claimed]
    return rows


def _block_row(b: Any) -> list[str]:
    return ["Block", str(b.cidr), b.host or "-", str(b.size), _pct(b.in_use, b.size),
            _pct(b.size - b.in_use, b.size)]


def render_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A calicoctl-style boxed table."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    sep = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def line(cells: Sequence[str], center: bool = False) -> str:
        return "|" + "|".join(
            f" {c.center(w) if center else c.ljust(w)} " for c, w in zip(cells, widths, strict=True)
        ) + "|"

    out = [sep, line(headers, center=True), sep, *(line(r) for r in rows), sep]
    return "\n".join(out)


HEADERS = ("GROUPING", "CIDR", "NODE", "IPS TOTAL", "IPS IN USE", "IPS FREE")


def cmd_show(args: argparse.Namespace) -> int:
    async def run(alloc):
        return await alloc.pools(), await alloc.blocks()

    try:
        pools, blocks = asyncio.run(_with_allocator(args, run))
    except _Failed as exc:
        return _fail(str(exc))
    headers = HEADERS if args.show_blocks else tuple(h for h in HEADERS if h != "NODE")
    rows = show_rows(pools, blocks, args.show_blocks)
    if not args.show_blocks:
        rows = [r[:2] + r[3:] for r in rows]
    print(render_table(headers, rows))
    return 0


def cmd_release(args: argparse.Namespace) -> int:
    try:
        ip = ipaddress.ip_address(args.ip)
    except ValueError:
        return _fail(f"bgpctl ipam release: --ip {args.ip!r} is not an IP address", 2)

    async def run(alloc):
        return await alloc.release_ip(ip)

    from ipam.allocator import IPAMError

    try:
        owner = asyncio.run(_with_allocator(args, run))
    except _Failed as exc:
        return _fail(str(exc))
    except IPAMError as exc:
        return _fail(f"bgpctl ipam release: {exc}")
    if owner is None:
        return _fail(f"bgpctl ipam release: IP address {ip} is not assigned")
    print(f"Successfully released IP address {ip}" + (f" (handle {owner})" if owner else ""))
    return 0
