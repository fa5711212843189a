"""The CNI agent's Prometheus metrics (names and meanings: docs/cni.md).

Owned by cni/. A CNI plugin is a process per pod event and has nowhere to
keep a counter; the node's agent (cni/agent.py) runs every call of both
plugins, so it counts them: calls by outcome, and failed calls by the CNI
error code their error object carried (a bad network configuration is code
7, a configuration that is not JSON 6, an unsupported ``cniVersion`` 1, a bad
``CNI_*`` variable 4, ...). Labels are bounded: the plugin (``cni``,
``ipam``), the CNI command (anything else is ``other``) and the spec's codes
(anything not named here is ``other``), never a pod or container.
"""

from __future__ import annotations

import json
import threading
from collections import Counter

from cni.spec import (
    E_BAD_CONFIG,
    E_BAD_ENV,
    E_CHECK_MISMATCH,
    E_DATAPLANE,
    E_DECODE,
    E_INCOMPATIBLE,
    E_INTERNAL,
    E_IO,
    E_IPAM_PLUGIN,
    E_LIMITED_CONNECTIVITY,
    E_NO_ADDRESS,
    E_NOT_AVAILABLE,
    E_TRY_AGAIN,
    E_UNKNOWN_CONTAINER,
    E_UNSUPPORTED_FIELD,
)

COMMANDS = ("ADD", "DEL", "CHECK", "STATUS", "GC", "VERSION")
PLUGINS = ("cni", "ipam")
# The CNI error codes podbgp's plugins return, by the name the metric carries.
REASONS = {
    E_INCOMPATIBLE: "incompatible_version", E_UNSUPPORTED_FIELD: "unsupported_field",
    E_UNKNOWN_CONTAINER: "unknown_container", E_BAD_ENV: "invalid_environment",
    E_IO: "io_failure", E_DECODE: "decode_failure", E_BAD_CONFIG: "invalid_config",
    E_TRY_AGAIN: "try_again", E_NOT_AVAILABLE: "not_available",
    E_LIMITED_CONNECTIVITY: "limited_connectivity", E_NO_ADDRESS: "no_address",
    E_CHECK_MISMATCH: "check_mismatch", E_DATAPLANE: "dataplane", E_IPAM_PLUGIN: "ipam_plugin",
    E_INTERNAL: "internal",
}
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


def error_code(rc: int, stdout: str) -> str:
    """The code of a failed call's CNI error object ("none" if it printed none)."""
    if rc == 0:
        return ""
    try:
        code = json.loads(stdout).get("code")
    except (ValueError, AttributeError):
        return "none"
    return str(code) if isinstance(code, int) and code in REASONS else "other"


class AgentStats:
    """What the agent counts, thread-safe (one thread per call)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls: Counter[tuple[str, str, str]] = Counter()   # plugin, command, result
        self.errors: Counter[tuple[str, str, str]] = Counter()  # plugin, command, code
        self.in_flight = 0
        self.rejected_peers = 0
        self.bad_requests = 0
        self._observe = None  # the duration histogram, once metrics are served

    def started(self) -> None:
        with self._lock:
            self.in_flight += 1

    def finished(self, plugin: str, command: str, rc: int, stdout: str, seconds: float) -> None:
        plugin = plugin if plugin in PLUGINS else "other"
        command = command if command in COMMANDS else "other"
        code = error_code(rc, stdout)
        with self._lock:
            self.in_flight -= 1
            self.calls[(plugin, command, "error" if rc else "ok")] += 1
            if rc:
                self.errors[(plugin, command, code)] += 1
        if self._observe is not None:
            self._observe(plugin, command, seconds)

    def count_rejected_peer(self) -> None:
        with self._lock:
            self.rejected_peers += 1

    def count_bad_request(self) -> None:
        with self._lock:
            self.bad_requests += 1


class AgentMetrics:
    """The registry behind the agent's /metrics."""

    def __init__(self, stats: AgentStats) -> None:
        from prometheus_client import CollectorRegistry, Histogram, disable_created_metrics

        disable_created_metrics()
        self.stats = stats
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(stats))
        duration = Histogram("podbgp_cni_request_duration_seconds",
                             "Time the agent took to run one plugin call.",
                             ["plugin", "command"], buckets=DURATION_BUCKETS,
                             registry=self.registry)
        stats._observe = lambda p, c, s: duration.labels(p, c).observe(s)

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class _Collector:
    def __init__(self, stats: AgentStats) -> None:
        self.s = stats

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        from bgpd import __version__

        s = self.s
        info = GaugeMetricFamily("podbgp_cni_build_info", "Build information (always 1).",
                                 labels=["version"])
        info.add_metric([__version__], 1)
        yield info
        calls = CounterMetricFamily("podbgp_cni_requests", "Plugin calls the agent ran, by "
                                    "plugin, CNI command and result (ok, error).",
                                    labels=["plugin", "command", "result"])
        errors = CounterMetricFamily("podbgp_cni_errors", "Failed plugin calls by the CNI "
                                     "error code they returned (7 invalid_config: a bad "
                                     "network configuration).",
                                     labels=["plugin", "command", "code", "reason"])
        with s._lock:
            call_items, error_items = sorted(s.calls.items()), sorted(s.errors.items())
            in_flight, peers, bad = s.in_flight, s.rejected_peers, s.bad_requests
        for key, n in call_items:
            calls.add_metric(list(key), n)
        for (plugin, command, code), n in error_items:
            reason = REASONS.get(int(code), code) if code.isdigit() else code
            errors.add_metric([plugin, command, code, reason], n)
        yield calls
        yield errors
        yield GaugeMetricFamily("podbgp_cni_requests_in_flight", "Plugin calls running now.",
                                value=in_flight)
        yield CounterMetricFamily("podbgp_cni_peers_refused", "Connections to the agent's "
                                  "socket from a user that is neither root nor the agent's.",
                                  value=peers)
        yield CounterMetricFamily("podbgp_cni_bad_requests", "Connections that sent no "
                                  "readable request (not a plugin of this package).",
                                  value=bad)
        from cni import warm

        clients = CounterMetricFamily("podbgp_cni_etcd_clients", "etcd clients the agent's "
                                      "workers took for a call: reused (the worker's last "
                                      "one, it answered its check read), opened (new), "
                                      "dropped (a kept one that no longer answered).",
                                      labels=["result"])
        for result, n in sorted(warm.stats().items()):
            clients.add_metric([result], n)
        yield clients
