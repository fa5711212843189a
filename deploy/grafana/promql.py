"""The PromQL the dashboard uses, evaluated over /metrics scrapes (no Prometheus needed).

Owned by deploy/grafana. ``preview.py`` renders deploy/grafana/preview.png with
it, and tests/image/test_dashboard.py checks with it that every panel of
podbgp.json returns data from a real node — so a renamed metric or label
empties no panel unnoticed.

The subset is exactly what podbgp.json needs: instant selectors with
``= != =~ !~`` matchers, ``rate``/``irate``/``increase`` over a range,
``sum``/``count``/``min``/``max``/``avg`` with ``by (...)``, and
``histogram_quantile``. Semantics follow Prometheus: 5-minute lookback for
instant selectors, left-open range windows, counter resets and the
extrapolation of rate()/increase() to the window's edges
(promql/functions.go extrapolatedRate), ``__name__`` dropped by functions
and aggregations, histogram_quantile's linear interpolation within the
bucket (promql/quantile.go). Grafana variables: ``$instance`` becomes ``.*`` (the
dashboard's "All"), ``$__rate_interval`` the window given.
Dependencies: prometheus_client's text parser only.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

LOOKBACK = 300.0
AGGREGATIONS = {"sum", "count", "min", "max", "avg"}
RANGE_FUNCS = {"rate", "irate", "increase"}
TOKEN = re.compile(r'\s*(?:(?P<num>\d+(?:\.\d+)?(?:[smhd](?![a-zA-Z_]))?)|(?P<str>"(?:[^"\\]|\\.)*")'
                   r"|(?P<op>=~|!~|!=|=)|(?P<id>[A-Za-z_:][A-Za-z0-9_:]*)|(?P<p>[(){}\[\],]))")


class PromQLError(ValueError):
    """The expression is outside the subset, or wrong for the metric's type."""


@dataclass
class Store:
    """Samples per series over time: (name, labels) -> [(t, value)], and metric types."""

    series: dict[tuple[str, tuple[tuple[str, str], ...]], list[tuple[float, float]]] = field(
        default_factory=dict)
    types: dict[str, str] = field(default_factory=dict)

    def add_scrape(self, t: float, text: str, target: dict[str, str]) -> None:
        """One /metrics body at time ``t``; ``target`` labels as Prometheus adds them."""
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                self.types[sample.name] = family.type
                labels = tuple(sorted({**sample.labels, **target}.items()))
                self.series.setdefault((sample.name, labels), []).append((t, sample.value))

    def times(self) -> list[float]:
        return sorted({t for points in self.series.values() for t, _ in points})


Vector = list[tuple[dict[str, str], float]]


def _tokens(expr: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    expr = expr.strip()
    while pos < len(expr):
        m = TOKEN.match(expr, pos)
        if not m or m.end() == pos:
            raise PromQLError(f"cannot parse at {expr[pos:pos + 20]!r}")
        kind = m.lastgroup
        out.append((kind, m.group(kind)))
        pos = m.end()
        while pos < len(expr) and expr[pos].isspace():
            pos += 1
    return out


def _seconds(text: str) -> float:
    unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    return float(text[:-1]) * unit[text[-1]] if text[-1] in unit else float(text)


class _Parser:
    def __init__(self, expr: str) -> None:
        self.toks = _tokens(expr)
        self.i = 0

    def peek(self) -> tuple[str, str] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, value: str | None = None) -> tuple[str, str]:
        tok = self.peek()
        if tok is None or (value is not None and tok[1] != value):
            raise PromQLError(f"expected {value!r}, got {tok}")
        self.i += 1
        return tok

    def labels(self) -> list[str]:
        self.take("(")
        names = []
        while self.peek() and self.peek()[1] != ")":
            names.append(self.take()[1])
            if self.peek() and self.peek()[1] == ",":
                self.take(",")
        self.take(")")
        return names

    def expr(self) -> tuple:
        kind, value = self.take()
        if kind == "num":
            return ("num", float(value))
        if kind != "id":
            raise PromQLError(f"unexpected {value!r}")
        nxt = self.peek()
        if value in AGGREGATIONS:
            by = None
            if nxt and nxt[1] in ("by", "without"):
                if self.take()[1] == "without":
                    raise PromQLError("without() is not supported")
                by = self.labels()
            self.take("(")
            inner = self.expr()
            self.take(")")
            if by is None and self.peek() and self.peek()[1] == "by":
                self.take()
                by = self.labels()
            return ("agg", value, by or [], inner)
        if nxt and nxt[1] == "(" and value in RANGE_FUNCS | {"histogram_quantile"}:
            self.take("(")
            args = [self.expr()]
            while self.peek() and self.peek()[1] == ",":
                self.take(",")
                args.append(self.expr())
            self.take(")")
            return ("call", value, args)
        if nxt and nxt[1] == "(":
            raise PromQLError(f"function {value}() is not supported")
        matchers = []
        if nxt and nxt[1] == "{":
            self.take("{")
            while self.peek() and self.peek()[1] != "}":
                label = self.take()[1]
                op = self.take()[1]
                text = self.take()[1]
                matchers.append((label, op, bytes(text[1:-1], "utf-8").decode("unicode_escape")))
                if self.peek() and self.peek()[1] == ",":
                    self.take(",")
            self.take("}")
        window = None
        if self.peek() and self.peek()[1] == "[":
            self.take("[")
            window = _seconds(self.take()[1])
            self.take("]")
        return ("sel", value, matchers, window)


def parse(expr: str, rate_interval: str = "1m") -> tuple:
    text = expr.replace("$__rate_interval", rate_interval).replace("$instance", ".*")
    p = _Parser(text)
    tree = p.expr()
    if p.peek() is not None:
        raise PromQLError(f"trailing {p.peek()[1]!r}")
    return tree


def _match(labels: dict[str, str], matchers: list[tuple[str, str, str]]) -> bool:
    for label, op, value in matchers:
        have = labels.get(label, "")
        ok = {"=": have == value, "!=": have != value,
              "=~": re.fullmatch(value, have) is not None,
              "!~": re.fullmatch(value, have) is None}[op]
        if not ok:
            return False
    return True


def _select(store: Store, node: tuple, t: float) -> list[tuple[dict[str, str], list]]:
    _, name, matchers, window = node
    span = window if window is not None else LOOKBACK
    out = []
    for (sname, labels), points in store.series.items():
        if sname != name:
            continue
        lab = dict(labels)
        if not _match(lab, matchers):
            continue
        pts = [(ts, v) for ts, v in points if t - span < ts <= t]
        if pts:
            out.append((lab, pts))
    return out


def _range_func(store: Store, fn: str, node: tuple, t: float) -> Vector:
    if node[0] != "sel" or node[3] is None:
        raise PromQLError(f"{fn}() needs a range selector")
    name = node[1]
    kind = store.types.get(name)
    if kind not in ("counter", "histogram"):
        raise PromQLError(f"{fn}() over {kind or 'unknown'} {name}")
    out: Vector = []
    window = node[3]
    for labels, pts in _select(store, node, t):
        if len(pts) < 2:
            continue
        if fn == "irate":
            (t1, a), (t2, b) = pts[-2:]
            out.append((labels, (b - a if b >= a else b) / (t2 - t1)))
            continue
        delta = 0.0
        for (_, a), (_, b) in itertools.pairwise(pts):
            delta += b - a if b >= a else b  # a reset starts again from 0
        # Prometheus' extrapolatedRate (promql/functions.go): extend the sampled
        # interval towards the window's edges, by at most half a sample interval
        # where the data stops short, and never below zero for a counter.
        first_t, last_t = pts[0][0], pts[-1][0]
        sampled = last_t - first_t
        average = sampled / (len(pts) - 1)
        to_start, to_end = first_t - (t - window), t - last_t
        if to_start >= average * 1.1:
            to_start = average / 2
        if delta > 0 and pts[0][1] >= 0:
            to_start = min(to_start, sampled * pts[0][1] / delta)
        if to_end >= average * 1.1:
            to_end = average / 2
        increase = delta * (sampled + to_start + to_end) / sampled
        out.append((labels, increase if fn == "increase" else increase / window))
    return out


def _quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Prometheus' bucketQuantile over (upper bound, cumulative count), +Inf last."""
    buckets.sort()
    if len(buckets) < 2 or not math.isinf(buckets[-1][0]):
        return math.nan
    total = buckets[-1][1]
    if total == 0:
        return math.nan
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return buckets[-2][0]
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (
                count - lower_count)
        lower_bound, lower_count = bound, count
    return math.nan


def evaluate(store: Store, tree: tuple, t: float) -> Vector:
    kind = tree[0]
    if kind == "num":
        return [({}, tree[1])]
    if kind == "sel":
        if tree[3] is not None:
            raise PromQLError("a range selector outside rate()/increase()")
        return [({k: v for k, v in labels.items() if k != "__name__"}, pts[-1][1])
                for labels, pts in _select(store, tree, t)]
    if kind == "call":
        fn, args = tree[1], tree[2]
        if fn in RANGE_FUNCS:
            return _range_func(store, fn, args[0], t)
        q = args[0][1]
        groups: dict[tuple, list[tuple[float, float]]] = {}
        for labels, value in evaluate(store, args[1], t):
            if "le" not in labels:
                raise PromQLError("histogram_quantile() over series without le")
            key = tuple(sorted((k, v) for k, v in labels.items() if k != "le"))
            groups.setdefault(key, []).append((float(labels["le"]), value))
        return [(dict(key), _quantile(q, b)) for key, b in groups.items()]
    if kind == "agg":
        op, by, inner = tree[1], tree[2], tree[3]
        groups2: dict[tuple, list[float]] = {}
        for labels, value in evaluate(store, inner, t):
            key = tuple((k, labels[k]) for k in by if k in labels)
            groups2.setdefault(key, []).append(value)
        fns = {"sum": sum, "count": len, "min": min, "max": max,
               "avg": lambda v: sum(v) / len(v)}
        return [(dict(key), float(fns[op](vals))) for key, vals in groups2.items()]
    raise PromQLError(f"unknown node {kind}")


def metric_names(tree: tuple) -> set[str]:
    if tree[0] == "sel":
        return {tree[1]}
    if tree[0] == "call":
        return set().union(*(metric_names(a) for a in tree[2]))
    if tree[0] == "agg":
        return metric_names(tree[3])
    return set()


def legend(fmt: str, labels: dict[str, str]) -> str:
    """Grafana's legendFormat: {{label}} replaced; a missing label stays visible."""
    return re.sub(r"\{\{\s*([a-zA-Z_]+)\s*\}\}", lambda m: labels.get(m.group(1), m.group(0)),
                  fmt)


def panels(dashboard: dict) -> list[dict]:
    out = []
    for p in dashboard["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))
    return [p for p in out if p.get("targets")]


def check_dashboard(dashboard: dict, store: Store, t: float, rate_interval: str) -> list[str]:
    """Everything that would show an empty or wrong panel at time ``t``; [] when none."""
    problems = []
    for panel in panels(dashboard):
        for target in panel["targets"]:
            where = f"{panel['title']!r} ({target['expr']})"
            try:
                result = evaluate(store, parse(target["expr"], rate_interval), t)
            except PromQLError as exc:
                problems.append(f"{where}: {exc}")
                continue
            if not result:
                missing = [n for n in metric_names(parse(target["expr"], rate_interval))
                           if not any(s == n for s, _ in store.series)]
                problems.append(f"{where}: no data" + (
                    f" (no series {', '.join(missing)} in the scrape)" if missing else
                    " (series exist, but none match the labels)"))
                continue
            for labels, _ in result:
                text = legend(target.get("legendFormat", ""), labels)
                if "{{" in text:
                    problems.append(f"{where}: legend {target['legendFormat']!r} names a label "
                                    f"the result does not have ({sorted(labels)})")
                    break
    return problems
