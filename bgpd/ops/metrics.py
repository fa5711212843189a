"""Prometheus metrics (names and meanings: docs/metrics.md).

Components keep plain counters (fib_sync.FibStats, config DatastoreStats, the
speaker's stats) and the node core keeps per-peer state; this collector reads them
at scrape time, so nothing is counted twice and config/, rib/, fib_sync/ stay
free of the metrics library. Only the FIB pass histogram is observed as it
happens (fed by FibSyncer's on_pass hook). Labels are bounded: peers and fixed
reason/kind sets, never prefixes.
"""

from __future__ import annotations

import os
import resource
import sys
import time
from collections import Counter
from typing import TYPE_CHECKING

from bgpd import __version__
from bgpd.ops.promtext import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Histogram,
    Registry,
    generate_latest,
)

if TYPE_CHECKING:
    from bgpd.daemon import Daemon

FIB_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


def datastore_families(ds, datastore: str, revision: int):
    """The datastore's metrics, shared by every podbgp process that reads one
    (bgpd, podbgp-policy): connection, revision, reconnects, rejected and
    unknown-field counts from its `DatastoreStats`."""
    c = GaugeMetricFamily("podbgp_datastore_connected", "1 when connected.",
                          labels=["datastore"])
    c.add_metric([datastore], 1 if ds is not None and ds.connected else 0)
    yield c
    yield GaugeMetricFamily("podbgp_datastore_revision", "Revision of the last snapshot.",
                            value=revision)
    yield CounterMetricFamily("podbgp_datastore_reconnects", "Datastore reconnects.",
                              value=ds.stats.reconnects_total if ds else 0)
    cr = CounterMetricFamily("podbgp_config_rejected", "Invalid resources seen.",
                             labels=["kind", "reason"])
    if ds is not None:
        for (kind, reason), n in sorted(ds.stats.rejected_total.items()):
            cr.add_metric([kind, reason], n)
    yield cr
    cu = CounterMetricFamily("podbgp_config_unknown_fields",
                             "Fields podbgp does not model in resources read from the "
                             "datastore (each resource and field once; ignored and kept).",
                             labels=["kind"])
    if ds is not None:
        for kind, n in sorted(ds.stats.unknown_fields_total.items()):
            cu.add_metric([kind], n)
    yield cu


class DaemonCollector:
    def __init__(self, daemon: Daemon) -> None:
        self.d = daemon
        # The BGP backend names its own build labels (e.g. its version).
        self._build = sorted(daemon.backend.build_info().items())

    def collect(self):
        d = self.d
        now = time.time()
        g = GaugeMetricFamily("podbgp_build_info", "Build information (always 1).",
                              labels=["version", *(k for k, _ in self._build)])
        g.add_metric([__version__, *(v for _, v in self._build)], 1)
        yield g

        up = GaugeMetricFamily("podbgp_bgp_session_up", "1 when the session is Established.",
                               labels=["peer", "peer_type"])
        uptime = GaugeMetricFamily("podbgp_bgp_session_uptime_seconds",
                                   "Seconds since Established (0 when down).",
                                   labels=["peer", "peer_type"])
        flaps = CounterMetricFamily("podbgp_bgp_session_flaps",
                                    "Established to down transitions.", labels=["peer"])
        rx = GaugeMetricFamily("podbgp_bgp_prefixes_received",
                               "Prefixes in Adj-RIB-In (before import policy).", labels=["peer"])
        acc = GaugeMetricFamily("podbgp_bgp_prefixes_accepted",
                                "Prefixes accepted by import policy.", labels=["peer"])
        adv = GaugeMetricFamily("podbgp_bgp_prefixes_advertised",
                                "Prefixes in Adj-RIB-Out.", labels=["peer"])
        not_configured = 0
        for st in d.peer_states():
            if st["state"] == "not configured":
                not_configured += 1
                continue
            peer, ptype = st["address"], st["type"]
            is_up = st["state"] == "up"
            up.add_metric([peer, ptype], 1 if is_up else 0)
            uptime.add_metric([peer, ptype], max(0.0, now - st["since_epoch"]) if is_up else 0)
            flaps.add_metric([peer], st["flaps"])
            rx.add_metric([peer], st["prefixes_received"])
            acc.add_metric([peer], st["prefixes_accepted"])
            adv.add_metric([peer], st["prefixes_advertised"])
        yield from (up, uptime, flaps, rx, acc, adv)
        yield GaugeMetricFamily("podbgp_bgp_peers_not_configured",
                                "Planned sessions podbgp does not run (one bad peer is one bad "
                                "peer; /status says why).", value=not_configured)
        yield CounterMetricFamily("podbgp_bgp_peers_rejected",
                                  "Sessions found not configurable (each peer and reason once).",
                                  value=getattr(d, "peers_not_configured_total", 0))

        rej = CounterMetricFamily("podbgp_bgp_prefixes_rejected",
                                  "Import rejections by reason.", labels=["peer", "reason"])
        for (peer, reason), n in sorted(d.rejections.items()):
            rej.add_metric([peer, reason], n)
        yield rej

        sp = d.speaker.stats if d.speaker else None
        yield CounterMetricFamily("podbgp_bgp_updates_received",
                                  "UPDATE events from the speaker.",
                                  value=sp.updates_received if sp else 0)
        yield CounterMetricFamily("podbgp_speaker_restarts", "BGP speaker process restarts.",
                                  value=sp.restarts if sp else 0)
        yield CounterMetricFamily(
            "podbgp_speaker_channel_connections",
            "Command channels the BGP speaker opened: one per start; more means a running "
            "speaker reconnected its API channel (events in flight then may be lost).",
            value=getattr(sp, "connections", 0) if sp else 0)
        yield CounterMetricFamily("podbgp_speaker_garbage_events",
                                  "Unparseable lines from the BGP speaker.",
                                  value=sp.garbage_lines if sp else 0)
        pending = getattr(d.speaker, "events_pending", None) if d.speaker else None
        yield GaugeMetricFamily(
            "podbgp_speaker_events_pending", "Events from the BGP speaker not yet taken by "
            "the node: how far it is behind its sessions.",
            value=pending() if callable(pending) else 0)
        sent = CounterMetricFamily(
            "podbgp_bgp_prefixes_sent", "Route announcements and withdrawals the speaker "
            "took, once per peer (a route reflected to 200 clients counts 200).",
            labels=["action"])
        sent.add_metric(["announce"], getattr(sp, "prefixes_announced", 0))
        sent.add_metric(["withdraw"], getattr(sp, "prefixes_withdrawn", 0))
        yield sent
        yield CounterMetricFamily(
            "podbgp_speaker_command_failures", "Commands the speaker refused or never "
            "answered (what they carried is sent again).",
            value=getattr(sp, "commands_failed", 0))
        yield from _session_outcomes(sp)

        yield GaugeMetricFamily("podbgp_rib_prefixes", "Loc-RIB size.",
                                value=d.rib_prefix_count())
        yield GaugeMetricFamily("podbgp_rib_paths", "Paths in all Adj-RIBs-In.",
                                value=d.rib_path_count())
        kr = GaugeMetricFamily("podbgp_kernel_routes", "podbgp routes in the kernel by kind.",
                               labels=["kind"])
        for kind, n in sorted(d.kernel_route_counts().items()):
            kr.add_metric([kind], n)
        yield kr

        fs = d.fib.stats if d.fib else None
        yield CounterMetricFamily("podbgp_fib_routes_installed", "Routes added or replaced.",
                                  value=(fs.installed + fs.replaced) if fs else 0)
        yield CounterMetricFamily("podbgp_fib_routes_deleted", "Routes deleted.",
                                  value=(fs.deleted + fs.swept) if fs else 0)
        yield CounterMetricFamily("podbgp_fib_route_failures", "Routes the kernel refused.",
                                  value=fs.failed if fs else 0)
        yield GaugeMetricFamily("podbgp_fib_conflicts",
                                "Prefixes held by another protocol (left alone).",
                                value=len(d.fib.conflicting_prefixes) if d.fib else 0)
        yield CounterMetricFamily("podbgp_fib_repairs",
                                  "Routes re-installed after an external change.",
                                  value=fs.repairs if fs else 0)

        yield from datastore_families(d.store, d.opts.datastore,
                                      d.snapshot.revision if d.snapshot else 0)
        yield GaugeMetricFamily("podbgp_config_stale",
                                "1 when a resource is invalid and its last good version is used.",
                                value=1 if d.snapshot is not None and d.snapshot.rejected else 0)
        yield GaugeMetricFamily("podbgp_convergence_seconds",
                                "Start to initial convergence (0 until then).",
                                value=d.convergence_seconds or 0)
        yield GaugeMetricFamily("podbgp_ready", "1 when /readyz is 200.",
                                value=1 if d.is_ready() else 0)
        hk = getattr(d, "housekeeper", None)
        yield CounterMetricFamily("podbgp_memory_compactions",
                                  "Table compactions after a large withdrawal.",
                                  value=hk.compactions if hk else 0)
        yield GaugeMetricFamily("podbgp_python_allocated_blocks",
                                "Memory blocks CPython has allocated (a leak shows here "
                                "before it shows in RSS).", value=sys.getallocatedblocks())
        yield from self._dataplane(getattr(d, "dataplane", None))

    @staticmethod
    def _dataplane(dp):
        """Tunnel devices, VTEP entries, natOutgoing (bgpd.dataplane_io; None: not ours)."""
        yield GaugeMetricFamily("podbgp_dataplane_managed",
                                "1 when podbgp keeps the data plane (--dataplane on).",
                                value=1 if dp is not None else 0)
        up = GaugeMetricFamily("podbgp_dataplane_device_up",
                               "1 when a wanted tunnel device is made and configured.",
                               labels=["device", "kind"])
        errs = CounterMetricFamily("podbgp_dataplane_device_errors",
                                   "A tunnel device that could not be made or configured, or "
                                   "is someone else's (once per new reason).",
                                   labels=["device"])
        entries = GaugeMetricFamily("podbgp_dataplane_entries",
                                    "Wanted neighbour/FDB entries of podbgp's devices.",
                                    labels=["kind"])
        nat = CounterMetricFamily("podbgp_nat_table_writes",
                                  "nft transactions on the natOutgoing table, by kind.",
                                  labels=["kind"])
        ov = dp.overlay if dp is not None else None
        if ov is not None:
            for name, st in sorted(ov.devices.items()):
                up.add_metric([name, st.kind], 1 if st.state == "ok" else 0)
            for name, n in sorted(ov.device_error_counts.items()):
                errs.add_metric([name], n)
            want = ov.desired_entries
            n_fdb = sum(1 for e in want.values() if type(e).__name__ == "FdbEntry")
            entries.add_metric(["neighbour"], len(want) - n_fdb)
            entries.add_metric(["fdb"], n_fdb)
            ns = dp.nat.stats
            nat.add_metric(["table"], ns.table_writes)
            nat.add_metric(["sets"], ns.set_updates)
        yield from (up, errs, entries, nat)
        s = ov.stats if ov is not None else None
        yield CounterMetricFamily("podbgp_dataplane_entry_failures",
                                  "Neighbour/FDB entries the kernel refused (once per reason).",
                                  value=s.entries_failed if s else 0)
        yield CounterMetricFamily("podbgp_dataplane_repairs",
                                  "Entries and devices put back after someone else changed "
                                  "or removed them.",
                                  value=(s.repairs + s.devices_repaired + s.devices_recreated)
                                  if s else 0)
        yield CounterMetricFamily("podbgp_nat_table_repairs",
                                  "natOutgoing table rewritten because it was deleted or "
                                  "changed by someone else.",
                                  value=dp.nat.stats.repairs if dp is not None else 0)
        yield CounterMetricFamily("podbgp_nat_errors", "Failed nft transactions or reads.",
                                  value=dp.nat.stats.errors if dp is not None else 0)
        yield CounterMetricFamily("podbgp_dataplane_tunnel_address_errors",
                                  "Failures allocating or publishing this node's tunnel "
                                  "addresses.", value=dp.tunnel_errors if dp is not None else 0)
        yield GaugeMetricFamily("podbgp_dataplane_pools_not_programmable",
                                "IPPools whose remote blocks cannot be programmed here "
                                "(e.g. IPIP on a kernel without the module).",
                                value=len(dp.plan.pool_problems)
                                if dp is not None and dp.plan is not None else 0)


def _code_label(value: int, known: int) -> str:
    """A NOTIFICATION code or subcode as a label: RFC 4271 §4.5's values (and the
    ones RFCs added since) by number, anything else "other" (bounded labels)."""
    return str(value) if 0 <= value <= known else "other"


def _session_outcomes(sp) -> list:
    """What peers' UPDATEs and sessions came to (RFC 7606 actions, session ends)."""
    errs = CounterMetricFamily(
        "podbgp_bgp_update_errors", "UPDATEs with a malformed part, by the RFC 7606 action "
        "taken (the rest of the UPDATE was used).", labels=["peer", "action"])
    downs = CounterMetricFamily("podbgp_bgp_session_down",
                                "Sessions that ended, by cause.", labels=["peer", "cause"])
    notes = CounterMetricFamily(
        "podbgp_bgp_notifications", "Sessions ended by a NOTIFICATION, by direction, code "
        "and subcode.", labels=["peer", "direction", "code", "subcode"])
    by_cause: Counter[tuple[str, str]] = Counter()
    by_note: Counter[tuple[str, str, str, str]] = Counter()
    for (peer, cause, code, subcode), n in getattr(sp, "session_downs", {}).items():
        by_cause[(peer, cause)] += n
        if cause.startswith("notification-"):
            direction = "sent" if cause.endswith("sent") else "received"
            by_note[(peer, direction, _code_label(code, 7), _code_label(subcode, 12))] += n
    for (peer, action), n in sorted(getattr(sp, "update_errors", {}).items()):
        errs.add_metric([peer, action], n)
    for labels, n in sorted(by_cause.items()):
        downs.add_metric(list(labels), n)
    for labels, n in sorted(by_note.items()):
        notes.add_metric(list(labels), n)
    return [errs, downs, notes]


class ProcessCollector:
    """Prometheus' standard process metrics (the names client libraries use), read from
    /proc/self; nothing on a system without it."""

    def __init__(self, proc: str = "/proc/self") -> None:
        self.proc = proc
        self.ticks = os.sysconf("SC_CLK_TCK")
        self.page = os.sysconf("SC_PAGE_SIZE")

    def collect(self):
        try:
            with open(f"{self.proc}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open("/proc/stat") as f:
                boot = next(float(line.split()[1]) for line in f if line.startswith("btime "))
            fds = len(os.listdir(f"{self.proc}/fd"))
        except (OSError, StopIteration, IndexError, ValueError):
            return
        # fields[0] is stat's field 3 (state): utime 14, stime 15, starttime 22, vsize 23,
        # rss 24 (proc(5))
        yield GaugeMetricFamily("process_virtual_memory_bytes", "Virtual memory size in bytes.",
                                value=float(fields[20]))
        yield GaugeMetricFamily("process_resident_memory_bytes",
                                "Resident memory size in bytes.",
                                value=float(fields[21]) * self.page)
        yield GaugeMetricFamily("process_start_time_seconds",
                                "Start time of the process since unix epoch in seconds.",
                                value=float(fields[19]) / self.ticks + boot)
        yield CounterMetricFamily("process_cpu_seconds",
                                  "Total user and system CPU time spent in seconds.",
                                  value=(float(fields[11]) + float(fields[12])) / self.ticks)
        yield GaugeMetricFamily("process_open_fds", "Number of open file descriptors.",
                                value=fds)
        yield GaugeMetricFamily("process_max_fds", "Maximum number of open file descriptors.",
                                value=resource.getrlimit(resource.RLIMIT_NOFILE)[0])


class Metrics:
    """The daemon's registry: the collector plus the FIB pass histogram."""

    def __init__(self, daemon: Daemon) -> None:
        # No `_created` series (bgpd.ops.promtext writes none): an undocumented
        # podbgp_*_created gauge per histogram that rate() does not need.
        self.registry = Registry()
        self.registry.register(DaemonCollector(daemon))
        # process_resident_memory_bytes, process_cpu_seconds_total, open fds (standard names)
        self.registry.register(ProcessCollector())
        self.fib_sync_seconds = Histogram(
            "podbgp_fib_sync_duration_seconds", "One FIB reconcile pass.",
            buckets=FIB_BUCKETS, registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)
