#!/usr/bin/env python3
"""The files a container build sees, by .dockerignore, and their digest.

    python3 scripts/image_context.py [--list] [EXTRA ...]

Prints a digest of every file in the build context (path, mode, content),
applying .dockerignore as Docker does: patterns match from the context root,
``**/`` spans directories, a pattern matching a parent directory excludes
everything below it, and the last matching pattern wins (``!`` re-includes).
EXTRA strings (e.g. the base image's ID) are mixed in. scripts/build-image.sh
labels the image with it and skips a rebuild when nothing changed.
Standard library only: it runs with the host's python3 before any venv.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def pattern_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    for part in re.split(r"(\*\*/|\*|\?)", pattern.strip("/")):
        out += {"**/": "(?:.*/)?", "*": "[^/]*", "?": "[^/]"}.get(part, re.escape(part))
    return re.compile(out + "(?:/.*)?")


def load_patterns(root: Path) -> list[tuple[bool, re.Pattern[str]]]:
    path = root / ".dockerignore"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out.append((line.startswith("!"), pattern_regex(line.lstrip("!"))))
    return out


def ignored(path: str, patterns: list[tuple[bool, re.Pattern[str]]]) -> bool:
    result = False
    for negate, regex in patterns:
        if regex.fullmatch(path):
            result = not negate
    return result


def context_files(root: Path = ROOT) -> list[str]:
    patterns = load_patterns(root)
    may_reinclude = any(negate for negate, _ in patterns)
    files = []
    for dirpath, dirs, names in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        rel = "" if rel == "." else rel + "/"
        # An ignored directory is skipped whole unless a "!" pattern could
        # bring something under it back.
        dirs[:] = sorted(d for d in dirs if may_reinclude or not ignored(rel + d, patterns))
        for name in sorted(names):
            path = rel + name
            if not ignored(path, patterns):
                files.append(path)
    return files


def digest(root: Path = ROOT, extra: list[str] = ()) -> str:
    h = hashlib.sha256()
    for item in extra:
        h.update(item.encode() + b"\0")
    for path in context_files(root):
        full = root / path
        if full.is_symlink():
            h.update(f"{path}\0->{os.readlink(full)}\0".encode())
            continue
        h.update(f"{path}\0{full.stat().st_mode & 0o777:o}\0".encode())
        h.update(full.read_bytes())
    return h.hexdigest()[:24]


def main(argv: list[str]) -> int:
    if argv[:1] == ["--list"]:
        print("\n".join(context_files()))
        return 0
    print(digest(extra=argv))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
