"""The nftables state podbgp-policy wants, and its rendering as nft scripts.

Owned by policy/. A `Ruleset` is a plain value (sets, verdict maps, chains
with their rule lines); `render_full` writes the whole table as one atomic
transaction that replaces whatever is there, `render_diff` the smallest
transaction that turns one Ruleset into another (set elements and map
elements added/removed, changed chains flushed and refilled, new objects
created before anything refers to them, old ones removed after nothing
does). Both are pure and golden-tested; fib_sync.nft runs them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

TABLE_FAMILY = "inet"


@dataclass(frozen=True, slots=True)
class SetDef:
    name: str
    type: str  # nft type expression: "ipv4_addr", "ifname", "ipv4_addr . inet_proto . inet_service"
    elements: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class MapDef:
    name: str
    type: str  # "ifname : verdict"
    elements: Mapping[str, str] = field(default_factory=dict)  # key -> verdict


@dataclass(frozen=True, slots=True)
class ChainDef:
    name: str
    rules: tuple[str, ...] = ()
    header: str | None = None  # base chain: "type filter hook forward priority filter; ..."


@dataclass
class Ruleset:
    table: str
    sets: dict[str, SetDef] = field(default_factory=dict)
    maps: dict[str, MapDef] = field(default_factory=dict)
    chains: dict[str, ChainDef] = field(default_factory=dict)

    @property
    def rule_count(self) -> int:
        return sum(len(c.rules) for c in self.chains.values())

    @property
    def element_count(self) -> int:
        return sum(len(s.elements) for s in self.sets.values())


def _elements(items) -> str:
    return ", ".join(sorted(items))


def _map_elements(items: Mapping[str, str]) -> str:
    return ", ".join(f'"{k}" : {v}' for k, v in sorted(items.items()))


def render_full(rs: Ruleset) -> str:
    """One transaction that replaces the table with `rs` (created if absent).

    Packets see the old table or the new one, never a mix and never no table.
    """
    t = f"{TABLE_FAMILY} {rs.table}"
    out = [f"add table {t}", f"delete table {t}", f"table {t} {{"]
    for s in sorted(rs.sets.values(), key=lambda s: s.name):
        out.append(f"\tset {s.name} {{ type {s.type}; }}")
    for m in sorted(rs.maps.values(), key=lambda m: m.name):
        out.append(f"\tmap {m.name} {{ type {m.type}; }}")
    for c in sorted(rs.chains.values(), key=lambda c: c.name):
        out.append(f"\tchain {c.name} {{ {c.header} }}" if c.header else f"\tchain {c.name} {{ }}")
    out.append("}")
    for s in sorted(rs.sets.values(), key=lambda s: s.name):
        if s.elements:
            out.append(f"add element {t} {s.name} {{ {_elements(s.elements)} }}")
    for c in sorted(rs.chains.values(), key=lambda c: c.name):
        out.extend(f"add rule {t} {c.name} {r}" for r in c.rules)
    for m in sorted(rs.maps.values(), key=lambda m: m.name):
        if m.elements:
            out.append(f"add element {t} {m.name} {{ {_map_elements(m.elements)} }}")
    return "\n".join(out) + "\n"


def render_diff(old: Ruleset, new: Ruleset) -> str:
    """The transaction turning `old` (what the kernel has) into `new`; "" if equal."""
    if old.table != new.table or any(
            new.sets[n].type != old.sets[n].type for n in new.sets.keys() & old.sets.keys()):
        return render_full(new)  # set names carry their type; this is only a safety net
    t = f"{TABLE_FAMILY} {new.table}"
    out: list[str] = []
    # 1. New sets and maps, and new chains (empty), so later lines can refer to them.
    for name in sorted(new.sets.keys() - old.sets.keys()):
        s = new.sets[name]
        out.append(f"add set {t} {name} {{ type {s.type}; }}")
    for name in sorted(new.maps.keys() - old.maps.keys()):
        m = new.maps[name]
        out.append(f"add map {t} {name} {{ type {m.type}; }}")
    for name in sorted(new.chains.keys() - old.chains.keys()):
        c = new.chains[name]
        out.append(f"add chain {t} {name} {{ {c.header} }}" if c.header
                   else f"add chain {t} {name}")
    # 2. Set elements.
    for name in sorted(new.sets):
        s = new.sets[name]
        before = old.sets[name].elements if name in old.sets else frozenset()
        if s.elements is before:
            continue
        gone, added = before - s.elements, s.elements - before
        if gone:
            out.append(f"delete element {t} {name} {{ {_elements(gone)} }}")
        if added:
            out.append(f"add element {t} {name} {{ {_elements(added)} }}")
    # 3. Chains whose rules changed: flushed and refilled in the same transaction.
    for name in sorted(new.chains):
        c = new.chains[name]
        prev = old.chains.get(name)
        if prev is not None and prev.rules == c.rules and prev.header == c.header:
            continue
        if prev is not None:
            out.append(f"flush chain {t} {name}")
            if prev.header != c.header and c.header:
                out.append(f"add chain {t} {name} {{ {c.header} }}")
        out.extend(f"add rule {t} {name} {r}" for r in c.rules)
    # 4. Map elements (after the chains they point to exist).
    for name in sorted(new.maps):
        m = new.maps[name]
        before = old.maps[name].elements if name in old.maps else {}
        gone = [k for k in before if k not in m.elements or m.elements[k] != before[k]]
        added = {k: v for k, v in m.elements.items() if before.get(k) != v}
        if gone:
            keys = ", ".join(f'"{k}"' for k in sorted(gone))
            out.append(f"delete element {t} {name} {{ {keys} }}")
        if added:
            out.append(f"add element {t} {name} {{ {_map_elements(added)} }}")
    # 5. Removed maps, chains (flushed first: they may jump to each other), sets.
    for name in sorted(old.maps.keys() - new.maps.keys()):
        out.append(f"delete map {t} {name}")
    gone_chains = sorted(old.chains.keys() - new.chains.keys())
    for name in gone_chains:
        out.append(f"flush chain {t} {name}")
    for name in gone_chains:
        out.append(f"delete chain {t} {name}")
    for name in sorted(old.sets.keys() - new.sets.keys()):
        out.append(f"delete set {t} {name}")
    return "\n".join(out) + "\n" if out else ""
