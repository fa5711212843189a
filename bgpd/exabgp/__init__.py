"""The ExaBGP backend: everything in podbgp that knows ExaBGP 5.0.15 exists.

- ``speaker``: ``Speaker``, the supervised ExaBGP child and its command channel
  (what the node drives through the speaker interface, ``bgpd.speaker``);
- ``conf``: the ExaBGP configuration and environment renderer;
- ``launch``: the guarded launcher that runs ExaBGP minus its per-route debug work;
- ``relay``: the tiny stdin/stdout <-> unix-socket copier ExaBGP runs as its API process;
- ``parse``: ExaBGP's JSON API lines -> ``bgpd.events``.

This module is the backend object itself (``bgpd.speaker.Backend``):
``new_speaker`` and ``build_info``. It imports nothing heavy at import time:
the relay (``python -m bgpd.exabgp.relay``) runs this file first and must start
in milliseconds.

Nothing outside this folder imports ``exabgp`` or names ExaBGP's commands or
JSON; ``bgpd.main`` is the one place that picks this backend
(docs/architecture.md, "What may import what").
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bgpd.exabgp.speaker import Speaker
    from bgpd.speaker import SpeakerConfig


def new_speaker(config: SpeakerConfig) -> Speaker:
    """One ExaBGP child for this node; its files live in ``<state dir>/exabgp``."""
    from bgpd.exabgp.speaker import Speaker

    return Speaker(config.node_name, config.router_id, config.addresses,
                   config.state_dir / "exabgp", listen_port=config.listen_port)


def build_info() -> dict[str, str]:
    """``podbgp_build_info`` labels: the ExaBGP package version, from ExaBGP's own
    ``exabgp.version`` (a module of constants; importlib.metadata would add ~1.5 MiB
    to the daemon for one string, issue 17)."""
    try:
        from exabgp import version

        return {"exabgp_version": str(version.release)}
    except Exception:
        return {"exabgp_version": "unknown"}
