"""``bgpctl ipam show`` / ``release`` against a real etcd, through bgpctl's main()."""

from __future__ import annotations

import asyncio
import json

import pytest

from bgpd.ctl import main as bgpctl
from ipam.allocator import Allocator
from ipam.etcd import EtcdSettings, connect

pytestmark = pytest.mark.etcd


def _seed(endpoint: str, n: int) -> list[str]:
    async def run():
        c = await connect(EtcdSettings(endpoint))
        try:
            pool = {"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
                    "metadata": {"name": "p1"},
                    "spec": {"cidr": "10.50.0.0/24", "blockSize": 26}}
            await c.put(b"/calico/resources/v3/projectcalico.org/ippools/p1",
                        json.dumps(pool).encode())
            alloc = Allocator(c, release_grace=0)
            out = []
            for i in range(n):
                node = "node1" if i < n - 1 else "node2"
                v4, _ = await alloc.auto_assign(f"net.{i}", node)
                out.append(str(v4[0].address))
            return out
        finally:
            await c.close()

    return asyncio.run(run())


def test_ipam_show_and_release(etcd, capsys):
    ips = _seed(etcd.endpoint, 4)
    ep = ["--etcd-endpoints", etcd.endpoint]

    assert bgpctl([*ep, "ipam", "show"]) == 0
    out = capsys.readouterr().out
    pool_row = next(line for line in out.splitlines() if "IP Pool" in line)
    cells = [c.strip() for c in pool_row.strip("|").split("|")]
    assert cells == ["IP Pool", "10.50.0.0/24", "256", "4 (2%)", "252 (98%)"]

    assert bgpctl([*ep, "ipam", "show", "--show-blocks"]) == 0
    out = capsys.readouterr().out
    assert "NODE" in out.splitlines()[1]
    blocks = [[c.strip() for c in line.strip("|").split("|")]
              for line in out.splitlines() if line.startswith("| Block")]
    by_node = {b[2]: b for b in blocks}
    assert set(by_node) == {"node1", "node2"}
    assert by_node["node1"][3:5] == ["64", "3 (5%)"] and by_node["node2"][4] == "1 (2%)"

    assert bgpctl([*ep, "ipam", "release", "--ip", ips[0]]) == 0
    assert f"released IP address {ips[0]}" in capsys.readouterr().out
    # Second release: not assigned -> exit 1 with a readable line.
    assert bgpctl([*ep, "ipam", "release", "--ip", ips[0]]) == 1
    assert "not assigned" in capsys.readouterr().err
    assert bgpctl([*ep, "ipam", "show"]) == 0
    assert "3 (1%)" in capsys.readouterr().out

    assert bgpctl([*ep, "ipam", "release", "--ip", "10.99.0.1"]) == 1
    assert "not in any allocation block" in capsys.readouterr().err
    assert bgpctl([*ep, "ipam", "release", "--ip", "nope"]) == 2
    assert "'nope'" in capsys.readouterr().err
