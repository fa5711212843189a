"""Logging of podbgp's CNI plugins: structlog JSON lines on stderr.

Owned by cni/. stdout carries the CNI result only, so logs go to stderr,
one JSON event per line (the runtime usually keeps them with its own log).
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog


def configure(level: str, stream: TextIO | None = None) -> None:
    lvl = logging.getLevelName(level.upper().replace("WARN", "WARNING").replace(
        "WARNINGING", "WARNING"))
    if not isinstance(lvl, int):
        lvl = logging.WARNING
    structlog.configure(
        processors=[structlog.processors.add_log_level,
                    structlog.processors.TimeStamper(fmt="iso"),
                    structlog.processors.JSONRenderer()],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(file=stream or sys.stderr),
        cache_logger_on_first_use=False,
    )
