"""The data plane's I/O shell: carries out `bgpd.dataplane.plan_dataplane`.

Owned by bgpd/. The daemon owns one `DataplaneShell` when ``--dataplane on``
and hands it every snapshot (`update`); decisions are the pure planner's, the
kernel work is fib_sync's (OverlaySyncer: devices and VTEP entries;
NatSyncer: natOutgoing), the tunnel addresses are ipam's (ipam.tunnel).
This class only sequences them, one plan at a time, in a task of its own:

  snapshot -> tunnel addresses (IPAM, etcd datastore only; published in the
  Node) -> devices + entries -> NAT sets -> cluster routes for rib

Whenever the cluster routes change (a VTEP appeared, a device came up or
failed), ``on_cluster_routes`` is called: the daemon re-derives its
RibConfig with them. Nothing here blocks the daemon's event loop; every
failure is logged once, counted and retried (the next snapshot, device
event or ``retry_interval``), and nothing that failed stops the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

import rib
from bgpd.dataplane import DataplanePlan, DataplaneSettings, plan_dataplane, published_fields
from fib_sync.nat import NatSyncer
from fib_sync.overlay import OverlayReport, OverlaySyncer
from ipam.tunnel import NODE_FIELD

log = structlog.get_logger(__name__)


class DataplaneShell:
    def __init__(self, node: str, settings: DataplaneSettings, *, store: Any = None,
                 etcd: Any = None, protocol: int = 201, resync_interval: float = 30.0,
                 state_dir: str | Path = "/run/podbgp", netns: str | None = None,
                 retry_interval: float = 5.0,
                 on_cluster_routes: Callable[[rib.ClusterRoutes], None] | None = None) -> None:
        """``store``: the config datastore (Node updates); ``etcd``: ipam.etcd
        settings for tunnel-address allocation (None: no IPAM, e.g. the file
        datastore: the Node resource must carry the tunnel addresses)."""
        self.node = node
        self.settings = settings
        self.store = store
        self.etcd = etcd
        self.on_cluster_routes = on_cluster_routes
        self.retry_interval = retry_interval
        self.overlay = OverlaySyncer(netns=netns, protocol=protocol,
                                     resync_interval=resync_interval,
                                     on_pass=self._on_overlay_pass)
        self.nat = NatSyncer(netns=netns, check_interval=resync_interval,
                             state_file=Path(state_dir) / "nat-table.json")
        self.plan: DataplanePlan | None = None
        self.cluster_routes: rib.ClusterRoutes | None = None
        self.tunnels: dict[str, str | None] = {}  # kind -> this node's address (IPAM)
        self.problems: tuple[str, ...] = ()
        self.ipam_error = ""
        self.tunnel_errors = 0  # IPAM or Node-publish failures (metric)
        self._logged: set[str] = set()
        self._snap = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._client = None
        self._alloc = None
        self._retry: asyncio.TimerHandle | None = None
        self._busy = False

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Adopt what a previous run left (devices, entries, the NAT table)."""
        await self.overlay.start()
        await self.nat.start()
        self._task = asyncio.create_task(self._loop(), name="dataplane")

    async def stop(self) -> None:
        """Stop; every device, entry and NAT rule stays (traffic keeps flowing)."""
        if self._retry is not None:
            self._retry.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        await self.nat.stop()
        await self.overlay.stop()
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.close()

    async def converged(self) -> None:
        """Routing converged: sweep adopted VTEP entries nobody wants any more."""
        await self.overlay.converged()

    def update(self, snap) -> None:
        """A new snapshot: re-plan soon (coalesced: the latest one wins)."""
        self._snap = snap
        self._wake.set()

    async def settle(self, timeout: float = 10.0) -> None:
        """Wait until the latest snapshot has been carried out (tests, start-up)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self._wake.is_set() or self._busy:
            if asyncio.get_running_loop().time() > deadline:
                return
            await asyncio.sleep(0.01)

    # ------------------------------------------------------------ the loop
    def _problem(self, text: str, event: str = "dataplane_problem", **kw) -> None:
        if text not in self._logged:
            if len(self._logged) > 1000:
                self._logged.clear()
            self._logged.add(text)
            log.warning(event, problem=text, **kw)

    def _on_overlay_pass(self, report: OverlayReport) -> None:
        if report.devices_changed:
            self._wake.set()  # a device came up or failed: the cluster routes may change

    def _schedule_retry(self) -> None:
        if self._retry is None:
            def fire() -> None:
                self._retry = None
                self._wake.set()
            self._retry = asyncio.get_running_loop().call_later(self.retry_interval, fire)

    async def _loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            snap = self._snap
            if snap is None:
                continue
            self._busy = True
            try:
                await self._carry_out(snap)
            except Exception:
                log.exception("dataplane_pass_failed")
                self._schedule_retry()
            finally:
                self._busy = False

    async def _carry_out(self, snap) -> None:
        s = self.settings
        plan = plan_dataplane(snap, self.node, s, tunnels=self.tunnels,
                              devices=self.overlay.devices or None)
        if self.etcd is not None:
            await self._tunnel_addresses(snap, plan)
            plan = plan_dataplane(snap, self.node, s, tunnels=self.tunnels,
                                  devices=self.overlay.devices or None)
        await self.overlay.set_desired(plan.devices, plan.entries)
        plan = plan_dataplane(snap, self.node, s, tunnels=self.tunnels,
                              devices=self.overlay.devices)
        if plan.nat is not None:
            await self.nat.set_desired(plan.nat)
        for p in plan.problems:
            self._problem(p)
        for p in plan.pool_problems.values():
            self._problem(p, "dataplane_pool_not_programmable")
        self.plan = plan
        self.problems = plan.problems
        if plan.cluster_routes != self.cluster_routes:
            self.cluster_routes = plan.cluster_routes
            log.info("dataplane_cluster_routes", vxlan=plan.cluster_routes.vxlan,
                     ipip=plan.cluster_routes.ipip, ipip_ready=plan.cluster_routes.ipip_ready,
                     vteps=len(plan.cluster_routes.vteps))
            if self.on_cluster_routes is not None:
                self.on_cluster_routes(plan.cluster_routes)

    async def _tunnel_addresses(self, snap, plan: DataplanePlan) -> None:
        """Allocate or release this node's tunnel addresses; publish them."""
        from ipam.allocator import Allocator, IPAMError, bridge_reserved
        from ipam.etcd import connect
        from ipam.tunnel import (
            ensure_tunnel_address,
            node_tunnel_fields,
            publish,
            release_tunnel_address,
        )

        me = snap.nodes.get(self.node)
        if me is None:
            return  # no Node resource yet: nothing to publish into
        try:
            if self._alloc is None:
                self._client = await connect(self.etcd, timeout=5.0)
                # The block's bridge gateway (.1) is never taken: the lab's CNI bridge uses it.
                self._alloc = Allocator(self._client, reserve=bridge_reserved)
            fields = node_tunnel_fields(me)
            current = {n.kind: fields[NODE_FIELD[n.kind]] for n in plan.tunnel_needs}
            changed: dict[str, str | None] = {}
            for need in plan.tunnel_needs:
                have = self.tunnels.get(need.kind) or current.get(need.kind)
                if need.pool_names:
                    addr = await ensure_tunnel_address(self._alloc, self.node, need.kind,
                                                       need.pool_names, need.pool_cidrs, have)
                    self.tunnels[need.kind] = addr
                    if current.get(need.kind) != addr:
                        changed[need.kind] = addr
                elif have is not None or current.get(need.kind):
                    await release_tunnel_address(self._alloc, self.node, need.kind)
                    self.tunnels[need.kind] = None
                    if current.get(need.kind):
                        changed[need.kind] = None
            if changed and self.store is not None:
                await publish(self.store, self.node, published_fields(snap, self.node, changed))
            self.ipam_error = ""
        except (IPAMError, ConnectionError, ValueError, OSError) as e:
            self.tunnel_errors += 1
            self.ipam_error = str(e)
            self._problem(f"tunnel address: {e}", "dataplane_tunnel_address_failed")
            self._alloc = None
            self._schedule_retry()
        except Exception as e:  # a datastore error publishing the Node
            self.tunnel_errors += 1
            self.ipam_error = str(e)
            self._problem(f"publishing the tunnel addresses in Node {self.node}: {e}",
                          "dataplane_publish_failed")
            self._schedule_retry()

    # ------------------------------------------------------------ views
    def status(self) -> dict:
        plan = self.plan
        devices = {
            name: {"kind": st.kind, "state": st.state, "reason": st.reason or None,
                   "mtu": st.mtu or None}
            for name, st in self.overlay.devices.items()
        }
        st = self.overlay.stats
        return {
            "managed": True,
            "devices": devices,
            "adopted": self.overlay.adopted,
            "counters": {"devices_created": st.devices_created,
                         "devices_recreated": st.devices_recreated,
                         "devices_repaired": st.devices_repaired,
                         "entries_installed": st.entries_installed,
                         "entries_replaced": st.entries_replaced,
                         "entries_deleted": st.entries_deleted,
                         "entries_repaired": st.repairs, "entries_swept": st.swept,
                         "nat_table_writes": self.nat.stats.table_writes,
                         "nat_set_updates": self.nat.stats.set_updates,
                         "nat_repairs": self.nat.stats.repairs},
            "tunnel_addresses": {k: v for k, v in self.tunnels.items() if v},
            "vteps": len(plan.cluster_routes.vteps) if plan else 0,
            "entries": {"desired": len(self.overlay.desired_entries),
                        "failing": len(self.overlay.failing),
                        "conflicts": len(self.overlay.conflicts),
                        "stale": len(self.overlay.stale)},
            "nat": {"last_action": self.nat.last_action or None,
                    "error": self.nat.error or None,
                    "masquerading": list(plan.nat.masq4 + plan.nat.masq6)
                    if plan and plan.nat else []},
            "not_programmable_pools": dict(plan.pool_problems) if plan else {},
            "problems": list(self.problems) + ([f"tunnel address: {self.ipam_error}"]
                                               if self.ipam_error else []),
        }
