"""Paths into a decoded JSON/YAML document (dicts and lists), for tests that mutate one."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


def paths(node: Any, here: tuple = ()) -> Iterator[tuple]:
    """Every path in ``node``, the root's ``()`` first: dict keys and list indexes."""
    yield here
    if isinstance(node, dict):
        for k, v in node.items():
            yield from paths(v, (*here, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from paths(v, (*here, i))


def get(node: Any, path: tuple) -> Any:
    for part in path:
        node = node[part]
    return node


def put(root: Any, path: tuple, value: Any) -> Any:
    """``root`` with ``value`` at ``path``, changed in place (the root path: ``value``)."""
    if not path:
        return value
    get(root, path[:-1])[path[-1]] = value
    return root
