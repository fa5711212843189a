"""`OverlaySyncer`: podbgp's tunnel devices and their neighbour/FDB entries,
kept like routes are (`fib_sync.syncer.FibSyncer`).

Owned by fib_sync/. The daemon owns one and is the only caller. It is handed
whole desired sets: device specs (`fib_sync.link.VxlanSpec`, `IpipSpec`) and
L2 entries (`fib_sync.neigh.Neighbour`, `FdbEntry`), and knows nothing of
pools, nodes or BGP.

Discipline (the same as routes):
- own objects only: a device is podbgp's when its alias is "podbgp" (set on
  the devices it creates; `tunl0` is the kernel's fallback device, configured
  and marked the way Felix configures it); entries only on such devices
  (`fib_sync.neigh` says which are podbgp's). A device of the wanted name
  that is not podbgp's is reported (`devices[name].state == "foreign"`) and
  never touched, nor are entries on it;
- pure diff (`fib_sync.neigh.diff_l2`), batched apply (`NeighKernel.apply`);
- monitor (link, address and neighbour notifications of podbgp's devices and
  their parents) + periodic full resync;
- adoption on start: podbgp's devices and entries found in the kernel are
  kept as they are (stale) until the owner says it has converged; then
  entries nobody wants any more are deleted, and devices nobody wants are
  removed (`tunl0` only loses podbgp's address);
- never a flush: `stop()` leaves every device and entry in place, so
  traffic keeps flowing across a restart.

A device that cannot be made (the kernel has no `ipip` module: EOPNOTSUPP)
is `devices[name].state == "error"` with the reason; the daemon reports it,
counts it and keeps everything else running.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import socket
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import structlog

from .link import (
    IPIP_OVERHEAD,
    OWNER_ALIAS,
    VXLAN6_OVERHEAD,
    VXLAN_OVERHEAD,
    DeviceSpec,
    IpipSpec,
    LinkInfo,
    LinkKernel,
    NetlinkError,
    VxlanSpec,
    addr_request,
    ipip_create,
    link_delete,
    link_set,
    vxlan_create,
    vxlan_incompatible,
)
from .neigh import L2, RTMGRP_NEIGH, Dumped, L2Error, NeighKernel, diff_l2
from .netlink import (
    RTM_DELADDR,
    RTM_DELLINK,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTMGRP_IPV4_IFADDR,
    RTMGRP_IPV6_IFADDR,
    RTMGRP_LINK,
    StateUnknown,
    iter_messages,
    open_netlink,
)
from .passloop import PassLoop

log = structlog.get_logger(__name__)

RTM_NEWNEIGH = 28
RTM_DELNEIGH = 29

OK, ERROR, FOREIGN, PENDING = "ok", "error", "foreign", "pending"


@dataclass(frozen=True, slots=True)
class DeviceState:
    """How one wanted device stands: ok, error (it could not be made or
    configured: `reason`), foreign (the name is someone else's device), pending
    (no pass has looked at it yet)."""

    name: str
    kind: str
    state: str = PENDING
    reason: str = ""
    errno: int = 0
    ifindex: int = 0
    mtu: int = 0


@dataclass
class OverlayStats:
    """Plain counters for metrics; written by the syncer only."""

    devices_created: int = 0
    devices_recreated: int = 0  # found with attributes fixed at creation that differ
    devices_repaired: int = 0  # MTU, admin state or address put back
    devices_removed: int = 0
    device_errors: int = 0  # a device that started failing (once per reason)
    entries_installed: int = 0
    entries_replaced: int = 0
    entries_deleted: int = 0
    entries_failed: int = 0  # an entry that started failing (once per reason)
    entries_failing: int = 0
    repairs: int = 0  # entries put back after someone else removed or changed them
    adopted: int = 0
    swept: int = 0
    conflicts: int = 0  # wanted keys held by an entry that is not podbgp's (once each)
    passes: int = 0
    full_resyncs: int = 0
    state_unknown: int = 0
    last_sync_seconds: float = 0.0


@dataclass
class OverlayReport:
    applied: int = 0
    failures: int = 0
    dumped: bool = False
    state_unknown: bool = False
    seconds: float = 0.0
    devices_changed: bool = False
    swept: list[L2] = field(default_factory=list)


def _link_local(addr: str) -> bool:
    return addr.lower().startswith("fe80:")


class OverlayReconciler:
    """One pass at a time (the syncer's executor thread; tests call it
    directly with fake kernels). Holds the view of podbgp's entries, the
    device states, the failure and conflict books."""

    def __init__(self, links: LinkKernel, neigh: NeighKernel,
                 stats: OverlayStats | None = None) -> None:
        self.links = links
        self.neigh = neigh
        self.stats = stats or OverlayStats()
        self.devices: dict[str, DeviceState] = {}
        self.view: dict[tuple, L2] | None = None  # None: read the kernel next pass
        self.foreign: dict[tuple, str] = {}
        self.failing: dict[tuple, tuple[int, str]] = {}
        self.conflicts: dict[tuple, str] = {}
        self.own_devices: dict[str, LinkInfo] = {}  # podbgp's devices seen in the kernel
        self._device_errors: dict[str, str] = {}
        self.device_error_counts: dict[str, int] = {}  # per device, once per new reason

    # ------------------------------------------------------------ adoption

    def adopt(self) -> dict[tuple, L2]:
        """Read podbgp's devices and their entries; change nothing."""
        self._read_own_devices()
        dumped = self._dump()
        self.stats.adopted += len(self.view or {})
        log.debug("overlay_adopted", devices=sorted(self.own_devices), entries=len(dumped))
        return dict(self.view or {})

    def _read_own_devices(self) -> None:
        self.own_devices = {i.name: i for i in self.links.links() if i.alias == OWNER_ALIAS}

    def _dump(self) -> dict[tuple, L2]:
        devs = {name: info.index for name, info in self.own_devices.items()}
        d: Dumped = self.neigh.dump(devs)
        view: dict[tuple, L2] = {}
        view.update(d.neighbours)
        view.update(d.fdb)
        self.view = view
        self.foreign = d.foreign
        return view

    # ------------------------------------------------------------ devices

    def _device_error(self, spec: DeviceSpec, kind: str, err: int, reason: str) -> DeviceState:
        if self._device_errors.get(spec.name) != reason:
            self._device_errors[spec.name] = reason
            self.stats.device_errors += 1
            self.device_error_counts[spec.name] = self.device_error_counts.get(spec.name, 0) + 1
            log.error("overlay_device_failed", device=spec.name, kind=kind,
                      errno=errno.errorcode.get(err, err), reason=reason)
        return DeviceState(spec.name, kind, ERROR, reason, err)

    def _parent(self, local: str) -> LinkInfo | None:
        index = self.links.index_of_address(local)
        return None if index is None else self.links.link(index)

    def ensure_device(self, spec: DeviceSpec) -> DeviceState:
        kind = "vxlan" if isinstance(spec, VxlanSpec) else "ipip"
        try:
            parent = self._parent(spec.local)
            if parent is None:
                return self._device_error(
                    spec, kind, errno.EADDRNOTAVAIL,
                    f"no interface holds the node address {spec.local}: cannot place {spec.name}")
            if isinstance(spec, VxlanSpec):
                overhead = VXLAN6_OVERHEAD if ":" in spec.local else VXLAN_OVERHEAD
                mtu = spec.mtu or parent.mtu - overhead
                info = self._ensure_vxlan(spec, parent, mtu)
            else:
                mtu = spec.mtu or parent.mtu - IPIP_OVERHEAD
                info = self._ensure_ipip(spec)
            if isinstance(info, DeviceState):
                return info
            if info.mtu != mtu or not info.up or info.alias != OWNER_ALIAS:
                self.links.request(link_set(info.index, mtu=mtu, up=True, alias=OWNER_ALIAS),
                                   f"configure {spec.name}")
                if info.alias == OWNER_ALIAS:
                    self.stats.devices_repaired += 1
                    log.info("overlay_device_repaired", device=spec.name, mtu=mtu,
                             was_mtu=info.mtu, was_up=info.up)
            self._ensure_address(spec, info.index)
        except NetlinkError as e:
            return self._device_error(spec, kind, e.errno or 0, str(e))
        if self._device_errors.pop(spec.name, None) is not None:
            log.info("overlay_device_recovered", device=spec.name)
        self.own_devices[spec.name] = self.links.link(spec.name) or info
        return DeviceState(spec.name, kind, OK, "", 0, info.index, mtu)

    def _ensure_vxlan(self, spec: VxlanSpec, parent: LinkInfo, mtu: int
                      ) -> LinkInfo | DeviceState:
        info = self.links.link(spec.name)
        if info is not None and info.alias != OWNER_ALIAS:
            # Ours only if it is exactly what we create (a start interrupted
            # between create and set-alias); anything else is someone else's.
            why = vxlan_incompatible(spec, info, parent.index)
            if why or info.alias:
                return self._foreign(spec, "vxlan", info, why)
        if info is not None:
            why = vxlan_incompatible(spec, info, parent.index)
            if why:
                log.warning("overlay_device_recreate", device=spec.name, reason=why)
                self.links.request(link_delete(info.index), f"delete {spec.name}")
                self.stats.devices_recreated += 1
                self.view = None  # its entries went with it
                info = None
        if info is None:
            self.links.request(vxlan_create(spec, parent.index, mtu), f"create {spec.name}")
            self.stats.devices_created += 1
            log.info("overlay_device_created", device=spec.name, kind="vxlan", vni=spec.vni,
                     port=spec.port, parent=parent.name, local=spec.local, mac=spec.mac)
            info = self.links.link(spec.name)
            if info is None:
                raise NetlinkError(errno.ENODEV, f"create {spec.name}", "created, then gone")
            self.view = None
        return info

    def _ensure_ipip(self, spec: IpipSpec) -> LinkInfo | DeviceState:
        info = self.links.link(spec.name)
        if info is None:
            try:
                self.links.request(ipip_create(spec.name), f"create {spec.name}")
            except NetlinkError as e:
                if e.errno == errno.EOPNOTSUPP:
                    return self._device_error(
                        spec, "ipip", e.errno,
                        f"this kernel has no IP-in-IP support (no 'ipip' module; the kernel "
                        f"says: {e.kernel_text or 'operation not supported'}): cannot create "
                        f"{spec.name}")
                if e.errno != errno.EEXIST:
                    raise
            else:
                self.stats.devices_created += 1
                log.info("overlay_device_created", device=spec.name, kind="ipip")
            info = self.links.link(spec.name)
            if info is None:
                raise NetlinkError(errno.ENODEV, f"create {spec.name}", "created, then gone")
        if info.kind != "ipip":
            return self._foreign(spec, "ipip", info, f"kind {info.kind} is not ipip")
        return info

    def _foreign(self, spec: DeviceSpec, kind: str, info: LinkInfo, why: str) -> DeviceState:
        reason = (f"{spec.name} exists and is not podbgp's (alias {info.alias!r}"
                  + (f", {why}" if why else "") + "): left alone")
        if self._device_errors.get(spec.name) != reason:
            self._device_errors[spec.name] = reason
            self.stats.device_errors += 1
            self.device_error_counts[spec.name] = self.device_error_counts.get(spec.name, 0) + 1
            log.error("overlay_device_foreign", device=spec.name, kind=kind, reason=reason)
        self.own_devices.pop(spec.name, None)
        return DeviceState(spec.name, kind, FOREIGN, reason, errno.EEXIST, info.index, info.mtu)

    def _ensure_address(self, spec: DeviceSpec, index: int) -> None:
        want = spec.address
        have = self.links.addresses(index)
        plen = 32 if ":" not in want else 128
        if (want, plen) not in have:
            self.links.request(addr_request(True, index, want), f"address {want} on {spec.name}")
            log.info("overlay_device_address", device=spec.name, address=want)
        for addr, alen in have:
            if (addr, alen) != (want, plen) and not _link_local(addr):
                # The device is podbgp's: any other address on it is a stale tunnel address.
                self.links.request(addr_request(False, index, addr, alen),
                                   f"remove {addr} from {spec.name}")
                log.info("overlay_device_address_removed", device=spec.name, address=addr)

    def remove_device(self, info: LinkInfo) -> None:
        """A podbgp device nobody wants any more: a VXLAN device is deleted
        (its entries go with it); `tunl0` (the kernel's) loses its addresses."""
        try:
            if info.kind == "ipip":
                for addr, alen in self.links.addresses(info.index):
                    if not _link_local(addr):
                        self.links.request(addr_request(False, info.index, addr, alen),
                                           f"remove {addr} from {info.name}")
            else:
                self.links.request(link_delete(info.index), f"delete {info.name}")
                self.view = None
            self.stats.devices_removed += 1
            log.info("overlay_device_removed", device=info.name, kind=info.kind)
        except NetlinkError as e:
            log.warning("overlay_device_remove_failed", device=info.name, error=str(e))

    # ------------------------------------------------------------ a pass

    def run_pass(self, devices: dict[str, DeviceSpec], entries: dict[tuple, L2],
                 stale: dict[tuple, L2], *, sweep: frozenset = frozenset(),
                 full: bool = False, check_devices: bool = True,
                 remove_unwanted: bool = False) -> OverlayReport:
        """Make the kernel hold `devices` and `entries` (plus the still-stale
        adopted `stale` entries). `sweep`: adopted keys released by the owner
        (their deletes count as sweeps). `full`: re-read the kernel first."""
        t0 = time.monotonic()
        report = OverlayReport()
        st = self.stats
        if full or check_devices or self.view is None:
            self._read_own_devices()
            states = {name: self.ensure_device(spec) for name, spec in devices.items()}
            if states != self.devices:
                report.devices_changed = True
            self.devices = states
            if remove_unwanted:
                for name, info in list(self.own_devices.items()):
                    if name not in devices:
                        self.remove_device(info)
                        del self.own_devices[name]
        ready = {n: s.ifindex for n, s in self.devices.items() if s.state == OK}
        try:
            if full or self.view is None:
                old = self.view
                self._dump()
                report.dumped = True
                st.full_resyncs += 1
                if old is not None:
                    gone = [k for k, e in old.items() if k in entries and self.view.get(k) != e]
                    st.repairs += len(gone)
                    if gone:
                        log.info("overlay_entries_repaired", entries=len(gone))
            assert self.view is not None
            target: dict[tuple, L2] = dict(stale)
            target.update(entries)
            on_ready = {k: e for k, e in target.items() if e.dev in ready}
            have = {k: e for k, e in self.view.items() if e.dev in ready}
            plan = diff_l2(on_ready.values(), have, self.foreign)
            self._note_conflicts(plan.held)
            ops = ([("delete", e) for e in plan.delete] + [("replace", e) for e in plan.replace]
                   + [("add", e) for e in plan.add])
            errors = self.neigh.apply(ops, ready) if ops else []
        except StateUnknown as e:
            st.state_unknown += 1
            report.state_unknown = True
            log.warning("overlay_state_unknown", reason=str(e))
            self.view = None
            return self._finish(report, t0)
        # Booking: the common case (nothing refused, nothing failing) is a dict
        # update per kind, not a method call per entry.
        view = self.view
        refused = {(err.op, err.entry.key) for err in errors}
        deleted = [e for e in plan.delete if not refused or ("delete", e.key) not in refused]
        written = [e for op, kind in (("replace", plan.replace), ("add", plan.add))
                   for e in kind if not refused or (op, e.key) not in refused]
        for e in deleted:
            view.pop(e.key, None)
            if sweep and e.key in sweep:
                report.swept.append(e)
        view.update((e.key, e) for e in written)
        if self.failing:
            for e in written:
                self._recovered(e.key)
        for err in errors:
            self._failed(err)
        st.swept += len(report.swept)
        st.entries_deleted += len(deleted) - len(report.swept)
        n_replaced = sum(1 for e in plan.replace if ("replace", e.key) not in refused) \
            if refused else len(plan.replace)
        st.entries_replaced += n_replaced
        st.entries_installed += len(written) - n_replaced
        report.applied = len(ops) - len(errors)
        report.failures = len(errors)
        for k in [k for k in self.failing if k not in target]:
            del self.failing[k]
        st.entries_failing = len(self.failing)
        return self._finish(report, t0)

    def _note_conflicts(self, held: Iterable[L2]) -> None:
        now = {e.key: self.foreign.get(e.key, "another owner") for e in held}
        for key, who in now.items():
            if key not in self.conflicts:
                self.stats.conflicts += 1
                log.warning("overlay_entry_conflict", device=key[0], key=key[1], holder=who,
                            note="left alone")
        for key in [k for k in self.conflicts if k not in now]:
            log.info("overlay_entry_conflict_resolved", device=key[0], key=key[1])
        self.conflicts = now

    def _failed(self, err: L2Error) -> None:
        key = err.entry.key
        if err.op == "delete" and err.errno in (errno.ENOENT, errno.ESRCH):
            assert self.view is not None
            self.view.pop(key, None)  # already gone: what we wanted
            return
        prev = self.failing.get(key)
        if prev is not None and prev[0] == err.errno:
            return
        self.failing[key] = (err.errno, err.reason)
        self.stats.entries_failed += 1
        log.warning("overlay_entry_failed", op=err.op, device=key[0], key=key[1],
                    errno=errno.errorcode.get(err.errno, err.errno), reason=err.reason)

    def _recovered(self, key: tuple) -> None:
        if self.failing.pop(key, None) is not None:
            log.info("overlay_entry_recovered", device=key[0], key=key[1])

    def _finish(self, report: OverlayReport, t0: float) -> OverlayReport:
        report.seconds = time.monotonic() - t0
        self.stats.passes += 1
        self.stats.last_sync_seconds = report.seconds
        return report


def attach_drop_portids(sock: socket.socket, portids: Iterable[int]) -> None:
    """Kernel-side filter on a monitor socket: drop notifications caused by our
    own command sockets (the kernel stamps them with the requester's port id),
    so a 20k-entry apply does not wake the event loop 20k times."""
    import ctypes

    pids = list(portids)
    n = len(pids)
    prog = [(0x20, 0, 0, 12)]  # 0: ld [12]  nlmsg_pid (a big-endian load of a host-order u32)
    for i, pid in enumerate(pids):  # 1+i: jeq pid ? drop (at n+2) : next
        prog.append((0x15, n - i, 0, int.from_bytes(struct.pack("=I", pid), "big")))
    prog.append((0x06, 0, 0, 0xFFFFFFFF))  # n+1: accept
    prog.append((0x06, 0, 0, 0))  # n+2: drop
    raw = b"".join(struct.pack("=HBBI", *ins) for ins in prog)
    buf = ctypes.create_string_buffer(raw)
    fprog = struct.pack("=HxxxxxxQ", len(prog), ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, 26, fprog)  # SO_ATTACH_FILTER (the kernel copies it)


class OverlaySyncer(PassLoop):
    """Keeps podbgp's tunnel devices and their L2 entries in one namespace.

    `set_desired` hands whole sets; one pass at a time runs in a dedicated
    executor thread; the monitor, the resync timer and a retry timer only
    mark work and wake the loop."""

    _what = "OverlaySyncer"

    def __init__(self, netns: str | None = None, protocol: int = 201,
                 resync_interval: float = 30.0, retry_interval: float = 1.0,
                 repair_delay: float = 0.02, *,
                 on_pass: Callable[[OverlayReport], None] | None = None,
                 _links=None, _neigh=None) -> None:
        if not resync_interval > 0 or not retry_interval > 0:
            raise ValueError("resync_interval and retry_interval must be > 0 seconds")
        self.netns = netns
        self.protocol = protocol
        self.resync_interval = resync_interval
        self.retry_interval = retry_interval
        self.repair_delay = repair_delay
        self.on_pass = on_pass
        self.stats = OverlayStats()
        self._links = _links
        self._neigh = _neigh
        self._rec: OverlayReconciler | None = None
        self._init_loop("overlay_sync")
        self._devices: dict[str, DeviceSpec] = {}
        self._entries: dict[tuple, L2] = {}
        self._stale: dict[tuple, L2] = {}
        self._sweep: frozenset = frozenset()  # stale keys released by converged()
        self._remove_unwanted = False
        self._check_devices = True
        self._watched: set[int] = set()  # ifindexes whose changes need a pass
        self._adopted_devices: list[str] = []

    # ------------------------------------------------------------ public API

    async def start(self) -> None:
        """Open netlink, adopt podbgp's devices and entries (stale until
        `converged()`), start the monitor, the sync loop and the timers."""
        if self._started:
            raise RuntimeError("OverlaySyncer already started")
        loop = asyncio.get_running_loop()
        if self._links is None:
            self._links = await loop.run_in_executor(self._executor, LinkKernel, self.netns)
            self._neigh = await loop.run_in_executor(self._executor, NeighKernel, self.netns,
                                                     self.protocol)
            mon = await loop.run_in_executor(
                self._executor, open_netlink, self.netns,
                RTMGRP_LINK | RTMGRP_NEIGH | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR)
            attach_drop_portids(mon, [self._links.sock.getsockname()[0],
                                      self._neigh.sock.getsockname()[0]])
            self._watch(mon)
        self._rec = OverlayReconciler(self._links, self._neigh, self.stats)
        adopted = await loop.run_in_executor(self._executor, self._rec.adopt)
        self._adopted_devices = sorted(self._rec.own_devices)
        self._stale = {k: e for k, e in adopted.items() if k not in self._entries}
        self._started = True
        log.info("overlay_sync_started", netns=self.netns,
                 devices=sorted(self._rec.own_devices), adopted=len(adopted))
        self._start_tasks("overlay_sync")
        if self._devices or self._entries:
            await self._request()

    async def set_desired(self, devices: Iterable[DeviceSpec], entries: Iterable[L2], *,
                          wait: bool = True) -> None:
        """Replace the whole desired sets. With `wait`, return once a pass that
        started after this call has finished (`devices` then says how each
        device stands)."""
        devs: dict[str, DeviceSpec] = {}
        for d in devices:
            if d.name in devs and devs[d.name] != d:
                raise ValueError(f"two different specs for device {d.name}")
            devs[d.name] = d
        want: dict[tuple, L2] = {}
        for e in entries:
            other = want.get(e.key)
            if other is not None and other != e:
                raise ValueError(f"two different entries for {e.key}: {other} and {e}")
            want[e.key] = e
        if devs != self._devices:
            self._check_devices = True
        self._devices = devs
        self._entries = want
        for k in [k for k in self._stale if k in want]:
            del self._stale[k]
        if self._started:
            await self._request(wait=wait)

    async def converged(self) -> None:
        """The owner has its whole desired state: sweep what is still stale,
        and from now on remove podbgp devices nobody wants."""
        n = len(self._stale)
        self._sweep = frozenset(self._stale)
        self._stale.clear()
        self._remove_unwanted = True
        self._check_devices = True
        log.info("overlay_converged", stale_to_sweep=n)
        if self._started:
            await self._request()

    async def stop(self) -> None:
        """Stop monitoring and syncing; every device and entry stays."""
        await self._stop_loop()
        log.info("overlay_sync_stopped", netns=self.netns)

    @property
    def devices(self) -> dict[str, DeviceState]:
        """How each wanted device stands after the last pass."""
        return dict(self._rec.devices) if self._rec else {}

    @property
    def device_error_counts(self) -> dict[str, int]:
        return dict(self._rec.device_error_counts) if self._rec else {}

    @property
    def adopted(self) -> dict[str, int]:
        """What the start found: podbgp's devices and entries."""
        rec = self._rec
        return {"devices": len(self._adopted_devices), "entries": self.stats.adopted} if rec \
            else {"devices": 0, "entries": 0}

    @property
    def failing(self) -> dict[tuple, tuple[int, str]]:
        return dict(self._rec.failing) if self._rec else {}

    @property
    def conflicts(self) -> dict[tuple, str]:
        return dict(self._rec.conflicts) if self._rec else {}

    @property
    def stale(self) -> dict[tuple, L2]:
        return dict(self._stale)

    @property
    def desired_entries(self) -> dict[tuple, L2]:
        return dict(self._entries)

    async def kernel_entries(self) -> dict[tuple, L2]:
        """A fresh read of podbgp's entries on its devices."""
        rec = self._rec
        if rec is None:
            raise RuntimeError("OverlaySyncer not started")

        def read() -> dict[tuple, L2]:
            devs = {n: i.index for n, i in rec.own_devices.items()}
            d = rec.neigh.dump(devs)
            return {**d.neighbours, **d.fdb}

        return await asyncio.get_running_loop().run_in_executor(self._executor, read)

    # ------------------------------------------------------------ internals

    def _close(self) -> None:
        for k in (self._links, self._neigh):
            close = getattr(k, "close", None)
            if close is not None:
                close()

    def _on_monitor(self) -> None:
        mon = self._monitor
        if mon is None:
            return
        wake = False
        watched = self._watched
        names = set(self._devices)
        while True:
            try:
                data = mon.recv(1 << 20)
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno == errno.ENOBUFS:
                    self._need_full = True
                    wake = True
                    continue
                raise
            for off, _ln, typ, _flags, _seq in iter_messages(data, len(data)):
                if typ in (RTM_NEWNEIGH, RTM_DELNEIGH):
                    index = struct.unpack_from("=i", data, off + 20)[0]
                elif typ in (RTM_NEWADDR, RTM_DELADDR):
                    index = struct.unpack_from("=I", data, off + 20)[0]
                elif typ in (RTM_NEWLINK, RTM_DELLINK):
                    index = struct.unpack_from("=i", data, off + 20)[0]
                    if index not in watched and names and _link_name(data, off) in names:
                        index = -1  # a device of a wanted name appeared or went
                else:
                    continue
                if index in watched or index == -1:
                    self._need_full = True
                    if typ in (RTM_NEWLINK, RTM_DELLINK, RTM_NEWADDR, RTM_DELADDR):
                        self._check_devices = True
                    wake = True
        if wake:
            self._wake.set()

    def _update_watched(self) -> None:
        rec = self._rec
        if rec is None:
            return
        watched = {s.ifindex for s in rec.devices.values() if s.ifindex}
        watched.update(i.index for i in rec.own_devices.values())
        self._watched = watched

    async def _sync_loop(self) -> None:
        loop = asyncio.get_running_loop()
        rec = self._rec
        assert rec is not None
        try:
            while True:
                await self._wake.wait()
                if self.repair_delay and self._gen == self._done_gen:
                    await asyncio.sleep(self.repair_delay)  # let a burst of notifications land
                self._wake.clear()
                gen = self._gen
                full, self._need_full = self._need_full, False
                check, self._check_devices = self._check_devices, False
                report: OverlayReport = await loop.run_in_executor(
                    self._executor,
                    functools.partial(rec.run_pass, dict(self._devices), dict(self._entries),
                                      dict(self._stale), sweep=self._sweep, full=full,
                                      check_devices=check,
                                      remove_unwanted=self._remove_unwanted),
                )
                self._after_pass(report, gen)
        except asyncio.CancelledError:
            raise
        except BaseException as e:
            self._died(e, "overlay_sync_loop_died")
            raise

    def _after_pass(self, report: OverlayReport, gen: int) -> None:
        rec = self._rec
        assert rec is not None
        self._update_watched()
        if self._sweep and not report.state_unknown:
            self._sweep = frozenset()  # swept, or (refused) now plain unwanted entries
        if report.swept:
            log.info("overlay_stale_swept", entries=len(report.swept))
        if self.on_pass is not None:
            try:
                self.on_pass(report)
            except Exception:
                log.exception("overlay_on_pass_failed")
        if report.applied or report.failures:
            log.debug("overlay_sync_pass", applied=report.applied, failures=report.failures,
                      dumped=report.dumped, seconds=round(report.seconds, 4))
        if report.state_unknown:
            self._need_full = True
            self._wake.set()
            return
        self._passed(gen)
        # A kernel without the module will not grow one: that waits for the resync.
        retry = rec.failing or any(
            s.state in (ERROR, FOREIGN) and s.errno != errno.EOPNOTSUPP
            for s in rec.devices.values())
        if retry and self._retry_handle is None:
            self._retry_handle = asyncio.get_running_loop().call_later(
                self.retry_interval, self._retry)

    def _retry(self) -> None:
        self._retry_handle = None
        self._check_devices = True
        self._wake.set()


def _link_name(data: bytes, off: int) -> str | None:
    ln = struct.unpack_from("=I", data, off)[0]
    a, end = off + 32, off + ln
    while a + 4 <= end:
        alen, atyp = struct.unpack_from("=HH", data, a)
        if alen < 4:
            break
        if atyp & 0x3FFF == 3:  # IFLA_IFNAME
            return bytes(data[a + 4 : a + alen]).rstrip(b"\0").decode(errors="replace")
        a += (alen + 3) & ~3
    return None
