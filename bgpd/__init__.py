"""podbgp daemon (bgpd) and CLI (bgpctl)."""

__version__ = "0.1.0"
