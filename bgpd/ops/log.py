"""structlog set-up for bgpd and bgpctl.

One event per line with key=value context: JSON when stderr is not a TTY (or
``--log-format json``), the console renderer otherwise. Library loggers that
use stdlib logging (aetcd, pyroute2, asyncio) go through the same renderer.
"""

from __future__ import annotations

import logging
import sys

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR, "critical": logging.CRITICAL}


def parse_level(text: str) -> int:
    try:
        return _LEVELS[text.lower()]
    except KeyError:
        raise ValueError(
            f"invalid log level {text!r} (choose from {', '.join(_LEVELS)})"
        ) from None


def configure(fmt: str | None = None, level: str = "info", stream=None) -> None:
    """Configure structlog and stdlib logging. ``fmt``: json, console or None (auto)."""
    stream = stream or sys.stderr
    if fmt is None:
        fmt = "console" if stream.isatty() else "json"
    if fmt not in ("json", "console"):
        raise ValueError(f"invalid log format {fmt!r} (choose json or console)")
    lvl = parse_level(level)
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(lvl)
    # Chatty libraries stay at WARNING unless we are debugging.
    for name in ("aetcd", "pyroute2", "grpc", "asyncio"):
        logging.getLogger(name).setLevel(max(lvl, logging.WARNING))
