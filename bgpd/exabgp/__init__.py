"""The ExaBGP backend: everything in podbgp that knows ExaBGP 5.0.15 exists.

- ``speaker``: ``Speaker``, the supervised ExaBGP child and its command channel
  (what the node core drives through the speaker interface);
- ``conf``: the ExaBGP configuration and environment renderer;
- ``launch``: the guarded launcher that runs ExaBGP minus its per-route debug work;
- ``relay``: the tiny stdin/stdout <-> unix-socket copier ExaBGP runs as its API process;
- ``parse``: ExaBGP's JSON API lines -> ``bgpd.events``.

Nothing outside this folder imports ``exabgp`` or names ExaBGP's commands or
JSON (docs/architecture.md, "What may import what").
"""
