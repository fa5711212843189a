"""``bgpctl``: the calicoctl-style CLI (console script ``bgpctl = bgpd.ctl:main``).

- ``cli``: argument parsing, resource verbs (create/apply/replace/delete/get);
- ``status``: ``bgpctl node status`` (reads the daemon's ``/status``);
- ``ipam``: ``bgpctl ipam show|release``.
"""

from bgpd.ctl.cli import main

__all__ = ["main"]
