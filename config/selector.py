"""Calico's label selector language, parsed into a small immutable AST.

Owned by config/. Used to validate the selector fields of IPPool/BGPPeer and by
peer planning to pick nodes (``Selector.matches(node.metadata.labels)``).

Grammar (Calico's, ``libcalico-go/lib/selector``)::

    expr    := and ( "||" and )*
    and     := unary ( "&&" unary )*
    unary   := "!" unary | "(" expr ")" | "all()" | "global()" | "has(" key ")"
             | key "==" str | key "!=" str | key "in" "{" strs "}"
             | key "not" "in" "{" strs "}" | key "contains" str
             | key "starts" "with" str | key "ends" "with" str
    str     := '...' | "..."

Semantics follow Calico: ``k != "v"`` and ``k not in {...}`` are true when the
label is absent; ``contains``/``starts with``/``ends with`` need the label.

Choice: the empty (or all-blank) selector parses to ``all()``, as Calico's
parser does and as an IPPool's empty ``nodeSelector`` means. Whether an empty
``BGPPeer.nodeSelector`` means "unset" is the caller's business (the model
keeps ``None`` for unset). ``global()`` (Calico's "not namespaced" selector)
matches every node, since nodes are never namespaced.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["Selector", "SelectorError", "parse_selector"]


class SelectorError(ValueError):
    """A selector that does not parse; names the position and the text."""

    def __init__(self, text: str, pos: int, reason: str) -> None:
        self.text = text
        self.pos = pos
        self.reason = reason
        super().__init__(f"invalid selector {text!r} at position {pos}: {reason}")


class Selector:
    """A parsed selector. Immutable; equal selectors compare and hash equal."""

    __slots__ = ()

    def matches(self, labels: Mapping[str, str]) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def __str__(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError


def _q(value: str) -> str:
    return "'" + value + "'" if '"' in value else '"' + value + '"'


@dataclass(frozen=True, slots=True)
class All(Selector):
    def matches(self, labels: Mapping[str, str]) -> bool:
        return True

    def __str__(self) -> str:
        return "all()"


@dataclass(frozen=True, slots=True)
class Global(Selector):
    def matches(self, labels: Mapping[str, str]) -> bool:
        return True

    def __str__(self) -> str:
        return "global()"


@dataclass(frozen=True, slots=True)
class Has(Selector):
    key: str

    def matches(self, labels: Mapping[str, str]) -> bool:
        return self.key in labels

    def __str__(self) -> str:
        return f"has({self.key})"


@dataclass(frozen=True, slots=True)
class Compare(Selector):
    key: str
    op: str  # "==", "!=", "contains", "starts with", "ends with"
    value: str

    def matches(self, labels: Mapping[str, str]) -> bool:
        got = labels.get(self.key)
        if self.op == "==":
            return got == self.value
        if self.op == "!=":
            return got != self.value
        if got is None:
            return False
        if self.op == "contains":
            return self.value in got
        if self.op == "starts with":
            return got.startswith(self.value)
        return got.endswith(self.value)

    def __str__(self) -> str:
        return f"{self.key} {self.op} {_q(self.value)}"


@dataclass(frozen=True, slots=True)
class In(Selector):
    key: str
    values: frozenset[str]
    negated: bool = False

    def matches(self, labels: Mapping[str, str]) -> bool:
        got = labels.get(self.key)
        inside = got is not None and got in self.values
        return not inside if self.negated else inside

    def __str__(self) -> str:
        vals = ", ".join(_q(v) for v in sorted(self.values))
        return f"{self.key} {'not in' if self.negated else 'in'} {{{vals}}}"


@dataclass(frozen=True, slots=True)
class Not(Selector):
    operand: Selector

    def matches(self, labels: Mapping[str, str]) -> bool:
        return not self.operand.matches(labels)

    def __str__(self) -> str:
        inner = str(self.operand)
        if isinstance(self.operand, (And, Or, Compare, In)):
            inner = f"({inner})"
        return f"!{inner}"


@dataclass(frozen=True, slots=True)
class And(Selector):
    operands: tuple[Selector, ...]

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(o.matches(labels) for o in self.operands)

    def __str__(self) -> str:
        return " && ".join(f"({o})" if isinstance(o, Or) else str(o) for o in self.operands)


@dataclass(frozen=True, slots=True)
class Or(Selector):
    operands: tuple[Selector, ...]

    def matches(self, labels: Mapping[str, str]) -> bool:
        return any(o.matches(labels) for o in self.operands)

    def __str__(self) -> str:
        return " || ".join(str(o) for o in self.operands)


# Label keys: Kubernetes qualified names with an optional DNS prefix.
_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_./-]*")
_WORD = re.compile(r"[A-Za-z]+")


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def error(self, reason: str, pos: int | None = None) -> SelectorError:
        return SelectorError(self.text, self.pos if pos is None else pos, reason)

    def skip_ws(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in " \t\r\n":
            self.pos += 1

    def peek(self, token: str) -> bool:
        self.skip_ws()
        return self.text.startswith(token, self.pos)

    def accept(self, token: str) -> bool:
        if self.peek(token):
            self.pos += len(token)
            return True
        return False

    def expect(self, token: str, what: str) -> None:
        if not self.accept(token):
            found = self.text[self.pos : self.pos + 10] or "end of selector"
            raise self.error(f"expected {what}, found {found!r}")

    def accept_word(self, word: str) -> bool:
        self.skip_ws()
        m = _WORD.match(self.text, self.pos)
        if m and m.group() == word:
            end = m.end()
            # a keyword must not run into a key ("inside" is not "in")
            if end < len(self.text) and (self.text[end].isalnum() or self.text[end] in "_./-"):
                return False
            self.pos = end
            return True
        return False

    def parse(self) -> Selector:
        self.skip_ws()
        if self.pos == len(self.text):
            return All()
        sel = self.parse_or()
        self.skip_ws()
        if self.pos != len(self.text):
            raise self.error(f"unexpected {self.text[self.pos:self.pos + 10]!r}")
        return sel

    def parse_or(self) -> Selector:
        items = [self.parse_and()]
        while self.accept("||"):
            items.append(self.parse_and())
        return items[0] if len(items) == 1 else Or(tuple(items))

    def parse_and(self) -> Selector:
        items = [self.parse_unary()]
        while self.accept("&&"):
            items.append(self.parse_unary())
        return items[0] if len(items) == 1 else And(tuple(items))

    def parse_unary(self) -> Selector:
        self.skip_ws()
        if self.pos == len(self.text):
            raise self.error("expected an expression, found end of selector")
        if self.accept("!") and not self.text.startswith("=", self.pos):
            return Not(self.parse_unary())
        if self.accept("("):
            inner = self.parse_or()
            self.expect(")", "')'")
            return inner
        start = self.pos
        if self.accept_word("all"):
            self.expect("(", "'(' after all")
            self.expect(")", "')' after all(")
            return All()
        if self.accept_word("global"):
            self.expect("(", "'(' after global")
            self.expect(")", "')' after global(")
            return Global()
        if self.accept_word("has"):
            if self.accept("("):
                key = self.parse_key()
                self.expect(")", "')' after has(key")
                return Has(key)
            self.pos = start  # a label called "has"
        key = self.parse_key()
        return self.parse_operation(key)

    def parse_key(self) -> str:
        self.skip_ws()
        m = _KEY.match(self.text, self.pos)
        if not m:
            found = self.text[self.pos : self.pos + 10] or "end of selector"
            raise self.error(f"expected a label key, found {found!r}")
        self.pos = m.end()
        return m.group()

    def parse_operation(self, key: str) -> Selector:
        if self.accept("=="):
            return Compare(key, "==", self.parse_string())
        if self.accept("!="):
            return Compare(key, "!=", self.parse_string())
        if self.accept_word("in"):
            return In(key, self.parse_set())
        if self.accept_word("not"):
            if not self.accept_word("in"):
                raise self.error("expected 'in' after 'not'")
            return In(key, self.parse_set(), negated=True)
        if self.accept_word("contains"):
            return Compare(key, "contains", self.parse_string())
        if self.accept_word("starts"):
            if not self.accept_word("with"):
                raise self.error("expected 'with' after 'starts'")
            return Compare(key, "starts with", self.parse_string())
        if self.accept_word("ends"):
            if not self.accept_word("with"):
                raise self.error("expected 'with' after 'ends'")
            return Compare(key, "ends with", self.parse_string())
        found = self.text[self.pos : self.pos + 10] or "end of selector"
        raise self.error(
            f"expected an operator (==, !=, in, not in, contains, starts with, ends with) "
            f"after label {key!r}, found {found!r}"
        )

    def parse_string(self) -> str:
        self.skip_ws()
        if self.pos >= len(self.text) or self.text[self.pos] not in "'\"":
            found = self.text[self.pos : self.pos + 10] or "end of selector"
            raise self.error(f"expected a quoted string, found {found!r}")
        quote = self.text[self.pos]
        end = self.text.find(quote, self.pos + 1)
        if end < 0:
            raise self.error("unterminated string")
        value = self.text[self.pos + 1 : end]
        self.pos = end + 1
        return value

    def parse_set(self) -> frozenset[str]:
        self.expect("{", "'{'")
        values: list[str] = []
        if self.accept("}"):
            return frozenset()
        while True:
            values.append(self.parse_string())
            if self.accept("}"):
                return frozenset(values)
            self.expect(",", "',' or '}'")


def parse_selector(text: str) -> Selector:
    """Parse Calico selector ``text``; raises `SelectorError` naming position and reason."""
    if not isinstance(text, str):
        raise SelectorError(repr(text), 0, "a selector must be a string")
    return _parse_cached(text)


@functools.lru_cache(maxsize=8192)
def _parse_cached(text: str) -> Selector:
    # Parsed selectors are immutable, and the same texts recur in every policy
    # (validation, then the policy engine): parse each once. Errors are not cached.
    return _Parser(text).parse()
