"""bgpd.ops.metrics: exactly the metrics docs/metrics.md documents, with its types and labels,
fed from the daemon's state at scrape time."""

from __future__ import annotations

import re
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bgpd.ops.metrics import Metrics

DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"


def documented() -> dict[str, tuple[str, frozenset[str]]]:
    """name -> (type, label names) from the table in docs/metrics.md."""
    out = {}
    for line in DOC.read_text().splitlines():
        m = re.match(r"\|\s*`((?:podbgp|process)_\w+)`\s*\|\s*(\w+)\s*\|([^|]*)\|", line)
        if m:
            labels = frozenset(re.findall(r"`(\w+)`", m.group(3)))
            out[m.group(1)] = (m.group(2), labels)
    return out


class FakeDaemon:
    """The attributes and views bgpd.metrics reads from bgpd.daemon.Daemon."""

    def __init__(self) -> None:
        now = time.time()
        self.opts = SimpleNamespace(datastore="etcdv3")
        self.backend = SimpleNamespace(build_info=lambda: {"exabgp_version": "5.0.15"})
        self._peers = [
            {"address": "10.99.0.12", "type": "node-to-node mesh", "state": "up",
             "since_epoch": now - 100, "flaps": 2, "prefixes_received": 7,
             "prefixes_accepted": 5, "prefixes_advertised": 3},
            {"address": "10.99.0.101", "type": "global", "state": "start",
             "since_epoch": now - 5, "flaps": 0, "prefixes_received": 0,
             "prefixes_accepted": 0, "prefixes_advertised": 0},
        ]
        self.rejections = Counter({("10.99.0.12", "not-in-pool"): 2})
        self.speaker = SimpleNamespace(events_pending=lambda: 17, stats=SimpleNamespace(
            updates_received=11, restarts=1, garbage_lines=4, prefixes_announced=600,
            prefixes_withdrawn=199, commands_failed=3,
            connections=2))
        self.fib = SimpleNamespace(
            stats=SimpleNamespace(installed=6, replaced=1, deleted=2, swept=3, failed=1,
                                  repairs=5),
            conflicting_prefixes={"10.244.9.0/26"})
        self.store = SimpleNamespace(connected=True, stats=SimpleNamespace(
            reconnects_total=2, rejected_total=Counter({("BGPPeer", "invalid JSON"): 1}),
            unknown_fields_total=Counter({"Node": 3})))
        self.snapshot = SimpleNamespace(revision=42, rejected={"/calico/x": "bad"})
        self.convergence_seconds = 1.5

    def peer_states(self):
        return self._peers

    def rib_prefix_count(self) -> int:
        return 9

    def rib_path_count(self) -> int:
        return 12

    def kernel_route_counts(self) -> dict[str, int]:
        return {"unicast": 4, "multipath": 1, "blackhole": 2}

    def is_ready(self) -> bool:
        return True


def scrape(d) -> dict:
    m = Metrics(d)
    m.fib_sync_seconds.observe(0.003)
    return {f.name: f for f in text_string_to_metric_families(m.render().decode())}


def sample(fams: dict, name: str, **labels: str) -> float:
    for fam in fams.values():
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    raise KeyError(f"{name} {labels}")


def exposed_families(fams: dict) -> dict[str, tuple[str, frozenset[str]]]:
    """name -> (type, label names) of scraped families, named as docs name samples
    (the parser strips _total from counter family names)."""
    exposed = {}
    for fam in fams.values():
        name = fam.name + "_total" if fam.type == "counter" else fam.name
        labels: set[str] = set()
        for s in fam.samples:
            labels |= set(s.labels) - {"le"}
        exposed[name] = (fam.type, frozenset(labels))
    return exposed


def test_exposed_names_types_and_labels_match_the_doc() -> None:
    doc = documented()
    assert len(doc) >= 25  # the table parsed
    exposed = exposed_families(scrape(FakeDaemon()))
    podbgp = {n: v for n, v in exposed.items() if n.startswith(("podbgp_", "process_"))}
    assert set(podbgp) - set(doc) == set(), "exposed but undocumented"
    assert set(doc) - set(podbgp) == set(), "documented but not exposed"
    for name, (typ, labels) in doc.items():
        assert podbgp[name][0] == typ, name
        if podbgp[name][1]:  # families without samples show no labels
            assert podbgp[name][1] == labels, name


def test_values_come_from_daemon_state() -> None:
    fams = scrape(FakeDaemon())
    assert sample(fams, "podbgp_bgp_session_up", peer="10.99.0.12",
                  peer_type="node-to-node mesh") == 1
    assert sample(fams, "podbgp_bgp_session_up", peer="10.99.0.101", peer_type="global") == 0
    assert 99 < sample(fams, "podbgp_bgp_session_uptime_seconds", peer="10.99.0.12") < 200
    assert sample(fams, "podbgp_bgp_session_uptime_seconds", peer="10.99.0.101") == 0
    assert sample(fams, "podbgp_bgp_session_flaps_total", peer="10.99.0.12") == 2
    assert sample(fams, "podbgp_bgp_prefixes_received", peer="10.99.0.12") == 7
    assert sample(fams, "podbgp_bgp_prefixes_accepted", peer="10.99.0.12") == 5
    assert sample(fams, "podbgp_bgp_prefixes_advertised", peer="10.99.0.12") == 3
    assert sample(fams, "podbgp_bgp_prefixes_rejected_total", peer="10.99.0.12",
                  reason="not-in-pool") == 2
    assert sample(fams, "podbgp_bgp_updates_received_total") == 11
    assert sample(fams, "podbgp_speaker_restarts_total") == 1
    assert sample(fams, "podbgp_speaker_garbage_events_total") == 4
    assert sample(fams, "podbgp_bgp_prefixes_sent_total", action="announce") == 600
    assert sample(fams, "podbgp_bgp_prefixes_sent_total", action="withdraw") == 199
    assert sample(fams, "podbgp_speaker_command_failures_total") == 3
    assert sample(fams, "podbgp_speaker_events_pending") == 17
    assert sample(fams, "podbgp_speaker_channel_connections_total") == 2
    assert sample(fams, "podbgp_rib_prefixes") == 9
    assert sample(fams, "podbgp_rib_paths") == 12
    assert sample(fams, "podbgp_kernel_routes", kind="multipath") == 1
    assert sample(fams, "podbgp_kernel_routes", kind="blackhole") == 2
    assert sample(fams, "podbgp_fib_routes_installed_total") == 7  # added + replaced
    assert sample(fams, "podbgp_fib_routes_deleted_total") == 5  # deleted + swept
    assert sample(fams, "podbgp_fib_route_failures_total") == 1
    assert sample(fams, "podbgp_fib_conflicts") == 1
    assert sample(fams, "podbgp_fib_repairs_total") == 5
    assert sample(fams, "podbgp_fib_sync_duration_seconds_count") == 1
    assert sample(fams, "podbgp_fib_sync_duration_seconds_bucket", le="0.005") == 1
    assert sample(fams, "podbgp_fib_sync_duration_seconds_bucket", le="0.0025") == 0
    assert sample(fams, "podbgp_datastore_connected", datastore="etcdv3") == 1
    assert sample(fams, "podbgp_datastore_revision") == 42
    assert sample(fams, "podbgp_datastore_reconnects_total") == 2
    assert sample(fams, "podbgp_config_rejected_total", kind="BGPPeer",
                  reason="invalid JSON") == 1
    assert sample(fams, "podbgp_config_unknown_fields_total", kind="Node") == 3
    assert sample(fams, "podbgp_config_stale") == 1
    assert sample(fams, "podbgp_convergence_seconds") == 1.5
    assert sample(fams, "podbgp_ready") == 1
    assert sample(fams, "podbgp_build_info") == 1


def test_daemon_before_config_and_speaker() -> None:
    """Right after start: no snapshot, no speaker, nothing converged -> zeros, no crash."""
    d = FakeDaemon()
    d.snapshot = None
    d.speaker = None
    d._peers = []
    d.convergence_seconds = None
    d.store.connected = False
    d.is_ready = lambda: False
    fams = scrape(d)
    assert sample(fams, "podbgp_config_stale") == 0
    assert sample(fams, "podbgp_datastore_revision") == 0
    assert sample(fams, "podbgp_datastore_connected", datastore="etcdv3") == 0
    assert sample(fams, "podbgp_convergence_seconds") == 0
    assert sample(fams, "podbgp_bgp_updates_received_total") == 0
    assert sample(fams, "podbgp_ready") == 0
    with pytest.raises(KeyError):
        sample(fams, "podbgp_bgp_session_up")


def test_real_daemon_exposes_the_documented_set(tmp_path: Path) -> None:
    """The real Daemon object (not started) renders every documented family."""
    from bgpd import exabgp
    from bgpd.daemon import Daemon
    from bgpd.options import parse_options

    conf = tmp_path / "c.yaml"
    conf.write_text("")
    d = Daemon(parse_options(["--node", "n1", "--datastore", "file", "--config-file",
                              str(conf), "--state-dir", str(tmp_path / "st")]), backend=exabgp)
    text = d.metrics.render().decode()
    names = set()
    for fam in text_string_to_metric_families(text):
        names.add(fam.name + "_total" if fam.type == "counter" else fam.name)
    assert names == set(documented())
