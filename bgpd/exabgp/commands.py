"""Names the speaker (in the daemon) and the ExaBGP launcher (in ExaBGP's process) share.

Owned by bgpd/exabgp/. Kept apart so the daemon does not import the launcher, whose
patches only ExaBGP's process runs (issue 17: ~0.4 MiB of an idle bgpd).
"""

from __future__ import annotations

# The PID of the daemon that spawned ExaBGP: ExaBGP dies with it (launch.die_with_parent).
PARENT_ENV = "PODBGP_EXABGP_PARENT"
# API commands the launcher adds to ExaBGP (groups "raw" and "write"): bytes to send, and
# the speaker's hello on connecting.
RAW_COMMAND = "podbgp-send"
HELLO_COMMAND = "podbgp-hello"
