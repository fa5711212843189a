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


# ------------------------------------------------------------------ verifying

_PROTO_NAMES = {"icmp": 1, "tcp": 6, "udp": 17, "ipv6-icmp": 58, "icmpv6": 58, "sctp": 132,
                "udplite": 136}


def _elem_text(e) -> str:
    """A set element from nft's JSON in the text `Ruleset` uses."""
    if isinstance(e, dict) and "elem" in e:
        e = e["elem"].get("val")
    if isinstance(e, dict) and "concat" in e:
        parts = []
        for p in e["concat"]:
            parts.append(str(_PROTO_NAMES.get(p, p)) if isinstance(p, str) else str(p))
        return " . ".join(parts)
    return str(e)


def check_listing(listing: dict | None, rs: Ruleset) -> list[str]:
    """How the kernel's table (``nft -j list table``) differs from `rs`; [] when it
    matches: the same chains with the same rules (compared by count and comment,
    the rules' expressions as nft prints them are not our text), sets with the
    same elements, maps with the same entries."""
    if listing is None:
        return [f"table {TABLE_FAMILY} {rs.table} is missing"]
    chains: dict[str, list] = {}
    sets: dict[str, set[str]] = {}
    maps: dict[str, dict[str, str]] = {}
    for obj in listing.get("nftables", []):
        if "chain" in obj:
            chains.setdefault(obj["chain"]["name"], [])
        elif "rule" in obj:
            r = obj["rule"]
            chains.setdefault(r["chain"], []).append(r.get("comment"))
        elif "set" in obj:
            sets[obj["set"]["name"]] = {_elem_text(e) for e in obj["set"].get("elem", [])}
        elif "map" in obj:
            entries = {}
            for key, verdict in obj["map"].get("elem", []):
                (kind, body), = verdict.items()
                entries[str(key)] = f"{kind} {body['target']}" if isinstance(body, dict) else kind
            maps[obj["map"]["name"]] = entries
    problems = []
    for name in sorted(rs.chains.keys() ^ chains.keys()):
        problems.append(f"chain {name} {'missing' if name in rs.chains else 'not ours'}")
    for name in sorted(rs.chains.keys() & chains.keys()):
        want = [_comment_of(r) for r in rs.chains[name].rules]
        if chains[name] != want:
            problems.append(f"chain {name}: {len(chains[name])} rules, expected {len(want)}"
                            if len(want) != len(chains[name]) else f"chain {name}: rules differ")
    for name in sorted(rs.sets.keys() ^ sets.keys()):
        problems.append(f"set {name} {'missing' if name in rs.sets else 'not ours'}")
    for name in sorted(rs.sets.keys() & sets.keys()):
        want = {e.strip('"') for e in rs.sets[name].elements}
        if sets[name] != want:
            problems.append(f"set {name}: {len(want - sets[name])} elements missing, "
                            f"{len(sets[name] - want)} extra")
    for name in sorted(rs.maps.keys() ^ maps.keys()):
        problems.append(f"map {name} {'missing' if name in rs.maps else 'not ours'}")
    for name in sorted(rs.maps.keys() & maps.keys()):
        if maps[name] != dict(rs.maps[name].elements):
            problems.append(f"map {name}: entries differ")
    return problems


def _comment_of(rule: str) -> str | None:
    marker = ' comment "'
    at = rule.rfind(marker)
    return rule[at + len(marker):-1] if at >= 0 and rule.endswith('"') else None
