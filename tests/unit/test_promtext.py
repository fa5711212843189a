"""bgpd.ops.promtext writes what prometheus_client 0.26 writes for the same metrics.

prometheus_client is the reference (a test dependency here: the daemons no longer
import it, issue 17). Both render the same families — counters (with and without
a trailing _total), gauges, label values that need escaping, values Go prints in
exponent form, a histogram with observations on and between bucket bounds — and
the text must be identical; prometheus_client's parser must read ours.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bgpd.ops import promtext

LABEL_VALUES = ["10.0.0.1", 'a"quote', "back\\slash", "new\nline", "", "é ü", "fd00::1"]


def _families(lib, rows: list[tuple[str, float]]):
    c = lib.CounterMetricFamily("podbgp_x_total", "Counts.\nTwo lines \\ here.", labels=["peer",
                                                                                        "reason"])
    for i, (label, value) in enumerate(rows):
        c.add_metric([label, f"r{i % 3}"], value)
    yield c
    yield lib.CounterMetricFamily("podbgp_plain", "No labels.", value=rows[0][1] if rows else 0)
    g = lib.GaugeMetricFamily("podbgp_g", "A gauge.", labels=["kind"])
    for label, value in rows:
        g.add_metric([label], value)
    yield g
    yield lib.GaugeMetricFamily("podbgp_one", "One value.", value=12345678.0)


class _Collector:
    def __init__(self, lib, rows) -> None:
        self.lib, self.rows = lib, rows

    def collect(self):
        yield from _families(self.lib, self.rows)


def _render_reference(rows, observations) -> bytes:
    import prometheus_client as pc
    from prometheus_client import core

    pc.disable_created_metrics()
    reg = pc.CollectorRegistry(auto_describe=False)
    reg.register(_Collector(core, rows))
    h = pc.Histogram("podbgp_h_seconds", "A histogram.", buckets=(0.001, 0.5, 1, 2.5, 10),
                     registry=reg)
    for x in observations:
        h.observe(x)
    return pc.generate_latest(reg)


def _render_ours(rows, observations) -> bytes:
    reg = promtext.Registry()
    reg.register(_Collector(promtext, rows))
    h = promtext.Histogram("podbgp_h_seconds", "A histogram.", buckets=(0.001, 0.5, 1, 2.5, 10),
                           registry=reg)
    for x in observations:
        h.observe(x)
    return promtext.generate_latest(reg)


_value = st.one_of(st.integers(0, 10**12).map(float),
                   st.floats(min_value=0, max_value=1e15, allow_nan=False),
                   st.sampled_from([0.0, 1.0, 1e6, 1234567.0, 0.1, math.inf]))


@settings(max_examples=200, deadline=None)
@given(rows=st.lists(st.tuples(st.sampled_from(LABEL_VALUES), _value), max_size=6,
                     unique_by=lambda r: r[0]),
       observations=st.lists(st.sampled_from([0.0, 0.001, 0.0011, 0.5, 0.7, 1, 2.5, 9.9, 10,
                                              11, 1000.0]), max_size=12))
def test_text_is_prometheus_clients(rows, observations) -> None:
    assert _render_ours(rows, observations) == _render_reference(rows, observations)


def test_parser_reads_it_back() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    text = _render_ours([("10.0.0.1", 3.0), ('a"quote', 1e7)], [0.2, 3.0]).decode()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    x = fams["podbgp_x"]  # the parser strips _total from counter family names
    assert x.type == "counter"
    assert {(s.labels["peer"], s.value) for s in x.samples} == {("10.0.0.1", 3.0),
                                                                ('a"quote', 1e7)}
    h = {(s.name, s.labels.get("le")): s.value for s in fams["podbgp_h_seconds"].samples}
    assert h[("podbgp_h_seconds_bucket", "0.5")] == 1
    assert h[("podbgp_h_seconds_bucket", "+Inf")] == 2 == h[("podbgp_h_seconds_count", None)]
    assert h[("podbgp_h_seconds_sum", None)] == pytest.approx(3.2)


def test_labels_must_match() -> None:
    g = promtext.GaugeMetricFamily("g", "x", labels=["a", "b"])
    with pytest.raises(ValueError, match="2 label values"):
        g.add_metric(["only one"], 1)
    with pytest.raises(ValueError, match="exclusive"):
        promtext.GaugeMetricFamily("g", "x", value=1, labels=["a"])
