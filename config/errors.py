"""Configuration errors: one exception type that names what was wrong.

Owned by config/. Raised by `config.parse` (and nothing else in config/ that
reads user input); the datastores log it and count it, bgpctl prints ``str()``
of it as its one-line error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class FieldProblem:
    """One problem in one field: ``field`` is a dotted path like ``spec.cidr``."""

    field: str
    value: Any
    reason: str


_MISSING = object()


def _show(value: Any) -> str:
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return text


class ConfigError(ValueError):
    """A resource (or etcd key/value) that podbgp will not accept.

    ``str()`` reads ``IPPool "p1": spec.cidr: '10.0.0.1/16': host bits set``.
    ``problems`` holds every problem found (the first is also in
    ``field``/``value``/``reason``).
    """

    def __init__(
        self,
        kind: str,
        name: str,
        field: str,
        value: Any = _MISSING,
        reason: str = "",
        *,
        key: str | None = None,
        problems: Sequence[FieldProblem] = (),
    ) -> None:
        self.kind = kind or "?"
        self.name = name or ""
        self.field = field
        self.value = None if value is _MISSING else value
        self.has_value = value is not _MISSING
        self.reason = reason
        self.key = key
        self.problems: tuple[FieldProblem, ...] = tuple(problems) or (
            FieldProblem(field, self.value, reason),
        )
        super().__init__(str(self))

    def _one(self, field: str, value: Any, has_value: bool, reason: str) -> str:
        parts = []
        if field:
            parts.append(field)
        if has_value:
            parts.append(_show(value))
        parts.append(reason)
        return ": ".join(parts)

    def __str__(self) -> str:
        head = f'{self.kind} "{self.name}"' if self.name else self.kind
        if self.key:
            head = f"{head} (key {self.key})"
        text = f"{head}: {self._one(self.field, self.value, self.has_value, self.reason)}"
        extra = len(self.problems) - 1
        if extra > 0:
            rest = "; ".join(
                self._one(p.field, p.value, True, p.reason) for p in self.problems[1:4]
            )
            more = f" (+{extra - 3} more)" if extra > 3 else ""
            text = f"{text} (also: {rest}{more})"
        return text

    def __reduce__(self):  # keep picklable despite the keyword-only arguments
        return (
            _rebuild,
            (self.kind, self.name, self.field, self.value, self.has_value, self.reason,
             self.key, self.problems),
        )


def _rebuild(kind, name, field, value, has_value, reason, key, problems) -> ConfigError:
    return ConfigError(
        kind, name, field, value if has_value else _MISSING, reason, key=key, problems=problems
    )
