"""Prometheus text exposition (format 0.0.4) for podbgp's own metrics: the few types
bgpd and podbgp-policy use, and nothing else.

Owned by bgpd/ops/ (bgpd.ops.metrics, policy.metrics). The names mirror
prometheus_client's (``CounterMetricFamily``, ``GaugeMetricFamily``,
``Histogram``, a registry, ``generate_latest``) and the text is byte for byte
what prometheus_client 0.26 writes for them with ``_created`` series disabled
(tests/unit/test_promtext.py renders the same families with both). Why not the
library: importing ``prometheus_client`` imports its push-gateway and HTTP-server
code, and with it ``ssl`` (libssl and libcrypto mapped) — ~6 MiB resident in a
daemon that only ever writes this text (issue 17).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence


def _number(value: float) -> str:
    """A sample value as Go prints it (prometheus_client's floatToGoString)."""
    d = float(value)
    if d == math.inf:
        return "+Inf"
    if d == -math.inf:
        return "-Inf"
    if math.isnan(d):
        return "NaN"
    s = repr(d)
    dot = s.find(".")
    if d > 0 and dot > 6:  # Go switches to exponents sooner than Python
        mantissa = f"{s[0]}.{s[1:dot]}{s[dot + 1:]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return s


def _label_value(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _help(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n")


class _Family:
    """One metric family: name, help, type and its samples (name suffix, labels, value)."""

    type = ""
    suffix = ""  # what each sample's name adds to the family's

    def __init__(self, name: str, documentation: str, value: float | None = None,
                 labels: Sequence[str] | None = None) -> None:
        self.name = name
        self.documentation = documentation
        self._labels = tuple(labels or ())
        self.samples: list[tuple[str, tuple[tuple[str, str], ...], float]] = []
        if value is not None:
            if self._labels:
                raise ValueError(f"{name}: value and labels are exclusive")
            self.add_metric((), value)

    def add_metric(self, labels: Sequence[str], value: float) -> None:
        if len(labels) != len(self._labels):
            raise ValueError(f"{self.name}: {len(self._labels)} label values expected")
        pairs = tuple(sorted(zip(self._labels, (str(v) for v in labels), strict=True)))
        self.samples.append((self.suffix, pairs, value))

    def text(self) -> Iterator[str]:
        yield f"# HELP {self.name}{self.suffix} {_help(self.documentation)}\n"
        yield f"# TYPE {self.name}{self.suffix} {self.type}\n"
        for suffix, pairs, value in self.samples:
            labels = ",".join(f'{k}="{_label_value(v)}"' for k, v in pairs)
            yield (f"{self.name}{suffix}{{{labels}}} {_number(value)}\n" if labels
                   else f"{self.name}{suffix} {_number(value)}\n")


class GaugeMetricFamily(_Family):
    type = "gauge"


class CounterMetricFamily(_Family):
    """A counter: exposed as ``<name>_total`` (a trailing ``_total`` given is dropped
    first, as prometheus_client does)."""

    type = "counter"
    suffix = "_total"

    def __init__(self, name: str, documentation: str, value: float | None = None,
                 labels: Sequence[str] | None = None) -> None:
        super().__init__(name.removesuffix("_total"), documentation, value, labels)


class Histogram:
    """A histogram without labels, observed as things happen."""

    def __init__(self, name: str, documentation: str, buckets: Sequence[float],
                 registry: Registry | None = None) -> None:
        bounds = [float(b) for b in buckets]
        if bounds != sorted(bounds):
            raise ValueError(f"{name}: buckets not in increasing order")
        if not bounds or bounds[-1] != math.inf:
            bounds.append(math.inf)
        self.name = name
        self.documentation = documentation
        self._bounds = bounds
        self._counts = [0] * len(bounds)
        self._sum = 0.0
        if registry is not None:
            registry.register(self)

    def observe(self, amount: float) -> None:
        self._sum += amount
        for i, bound in enumerate(self._bounds):
            if amount <= bound:
                self._counts[i] += 1
                break

    def collect(self) -> Iterator[_Family]:
        fam = _Family(self.name, self.documentation)
        fam.type = "histogram"
        total = 0
        for bound, n in zip(self._bounds, self._counts, strict=True):
            total += n
            fam.samples.append(("_bucket", (("le", _number(bound)),), float(total)))
        fam.samples.append(("_count", (), float(total)))
        fam.samples.append(("_sum", (), self._sum))
        yield fam


class Registry:
    """Collectors (anything with ``collect()`` yielding families), in registration order."""

    def __init__(self) -> None:
        self._collectors: list = []

    def register(self, collector) -> None:
        self._collectors.append(collector)

    def collect(self) -> Iterable[_Family]:
        for c in self._collectors:
            yield from c.collect()


def generate_latest(registry: Registry) -> bytes:
    return "".join(line for fam in registry.collect() for line in fam.text()).encode()
