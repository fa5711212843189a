"""Run ExaBGP with its per-route debug work removed: ``python -m bgpd.exabgp.launch server CONF``.

The speaker (bgpd.exabgp.speaker) starts ExaBGP through this module instead of the
``exabgp`` console script. Arguments are passed to ExaBGP's own entry point
unchanged, so everything ExaBGP does is the same except the cost per route.

Patches come in groups; each group is applied only on ExaBGP 5.0.15 (the pinned
version), all of it or none of it, independently of the other groups: a group
whose expected source text is not there is undone and ExaBGP runs without it
(with a warning on stderr). ``PODBGP_EXABGP_UNPATCHED=1`` in the environment
runs ExaBGP with no group at all; ``PODBGP_EXABGP_UNPATCHED=api`` (a
comma-separated list of group names) leaves out just those groups.

Group ``decode`` (receiving). ExaBGP 5.0.15 builds debug-log closures and
strings for every NLRI it decodes (and looks its family up by formatting a
string per NLRI) even when the log level is WARNING; no setting turns this
off. At 100k routes that is a sizeable share of ExaBGP's CPU time, and
ExaBGP's CPU time is podbgp's convergence time.

- ``log.debug`` becomes a no-op whenever the configured level drops DEBUG
  (re-evaluated every time ExaBGP loads its log options);
- the per-NLRI ``log.debug`` calls in ``Update.unpack_message`` and
  ``Peer._main`` are skipped unless DEBUG is on;
- ``NLRI.unpack_nlri`` caches the decoder class per (afi, safi) instead of
  formatting ``"ipv4/unicast"`` per NLRI;
- ``JSON._update`` caches the family tuple per (class, afi, safi) and the
  next-hop string per next-hop object within one UPDATE;
- a plain IPv4 unicast UPDATE (NLRI in the classic fields only: no MP_REACH /
  MP_UNREACH, no ADD-PATH on receive, DEBUG off) has its two NLRI fields checked
  and turned into prefix text in one loop (``_v4_prefixes``), where ExaBGP built
  an INET + CIDR object per prefix and formatted each again for the JSON; the
  attributes are decoded by ExaBGP as before. ``JSON._update`` writes such an
  UPDATE from that text (the same bytes). Its ``nlris`` are ExaBGP's own NLRI
  objects, decoded from the kept raw fields on first use (RFC 7606
  treat-as-withdraw in ``Protocol.read_message``, an Adj-RIB-In, a text encoder),
  after which the JSON comes from them. A prefix length above 32 or a truncated
  field sends the UPDATE through ExaBGP's loop, which raises its own NOTIFICATION;
- ``Peer._main`` hands each NLRI to the Adj-RIB-In cache only when there is one
  (``update_cache`` returned at once without it; podbgp runs ``adj-rib-in false``)
  or DEBUG is on.

Group ``api`` (sending to many neighbours). The speaker names every peer a
route goes to in one command (``neighbor A , neighbor B ... announce
attributes ...``); ExaBGP 5.0.15 then does O(neighbours x selectors) work per
command (a ``re.escape`` + ``re.search`` per pair in ``match_neighbors``, a
list membership test per neighbour in ``inject_change``) and deep-copies the
route for every neighbour (``Neighbor.remove_self``): a reflector with N
clients paid O(N^2) per reflected route (bench/rr_scale.py).

- ``match_neighbors`` (and the modules that imported it by name) answers from
  an index of the neighbours' names, built once per neighbour list: O(selectors
  + neighbours) per command, the same answer in the same order (tested against
  the original on generated inputs); any selector or name outside the simple
  ``key value`` shape goes through the original matcher;
- ``_Configuration.inject_change`` tests membership in a set, and hands the
  parsed route to every neighbour's adj-rib-out as it is instead of a deep copy
  per neighbour, unless its next hop is ``self`` (which ``remove_self``
  rewrites per neighbour, on a copy, as before). Nothing in ExaBGP changes a
  route held in an adj-rib-out (a withdrawal copies it first:
  ``OutgoingRIB.del_from_rib``), so one object serves them all: the attributes
  are shared, not copied per neighbour (the issue measured ~3.1 KB per route
  per neighbour).

Group ``notify`` (a fix, not a speed-up). When ExaBGP's reader finds a broken
message header (no marker, a length below 19 or above 4,096),
``Protocol.read_message`` reports it to the API with
``Processes.notification(...)`` called with one argument too many — and that
method would in turn call the JSON encoder with one too many. The TypeError
ends the session in ExaBGP's catch-all with no NOTIFICATION, where RFC 4271
§6.1 requires NOTIFICATION 1/1 or 1/2 with the bad length (seen: a
5,000-octet UPDATE from a hostile peer, down reason ""). The report is dropped
(nothing subscribes to it; the down reason "notification sent (1,2)" says what
happened) and the NOTIFICATION goes out as ExaBGP meant it to.

Same group: ``Peer.teardown`` (only ever reached from the API's ``neighbor X
teardown N``, which podbgp sends for max-prefix) closed the session silently
whenever podbgp had announced graceful restart, as if ExaBGP were restarting:
the peer saw a dropped TCP connection, not Cease / Maximum Number of Prefixes
Reached (RFC 4486 §4, 6/1). A teardown now sends its NOTIFICATION: the
session's record of our OPEN drops the GR capability before the teardown, so
ExaBGP's "silent close under GR" test fails for that session only (the next
session negotiates afresh). A restart of ExaBGP itself is unchanged. This is
the one group that changes what ExaBGP sends.

Group ``reload`` (a fix). ``reload`` re-reads the config; every neighbour whose
definition is unchanged gets ``Peer.reconfigure(new)``, which makes the new
Neighbor object the live one and leaves it for the session loop to pick up as
``_neighbor``. If the session has just become Established but not yet run the
start of ``Peer._main``, that start sets ``self.neighbor.previous = None`` on
the very same object, and the loop then reads ``self._neighbor.previous.changes``:
AttributeError ("'NoneType' object has no attribute 'changes'"), "EXABGP
MISBEHAVED", and the unchanged session is reset without a NOTIFICATION (seen
with 1 to 50 peers, issue 18). ``Neighbor.previous`` now reads as an empty
"previous configuration" (no routes, false) where it was None, which every user
of it handles; the loop then finds nothing to change, which is right: the
preamble has just applied the same configuration.

Same hazard for group ``raw``: ``Peer.reconfigure`` replaces the live Neighbor at once,
and podbgp-send bytes queued on the old object (answered ``done``, not yet written)
went with it, unnoticed by the speaker. ``reconfigure`` now moves them (and the
session's raw mode and write-in-progress flag) to the new object.

Also group ``raw``: ExaBGP picks a line's command by substring (``API.response``:
``registered + ' ' in line``, names in reverse order), and ``version``, ``teardown``,
``shutdown``, ``restart``, ``reset`` and ``reload`` are tried before ``podbgp-send``: a
podbgp-send whose base64 payload ended in one of those words ran that command (a
``reset`` answers nothing, which shifts every later answer the speaker pairs in order).
``podbgp-send`` and ``podbgp-hello`` are now picked by their first word, before
ExaBGP's matcher; every other line is matched as before.

Group ``order`` (a fix). The speaker pairs answers with its commands in order, but
ExaBGP answers some commands at once (podbgp-send, teardown, reload, an ``announce
eor`` naming no Established peer: ``error``) and others from a callback run after the
turn's commands (``announce``/``withdraw attributes``, ``announce eor``): an answer
could overtake an earlier command's (an ``error`` then paired with the wrong command:
a refused End-of-RIB booked as sent). While callbacks are pending, the lines a command
writes to its process at once are held and written by a callback queued in the
command's place (ExaBGP runs callbacks in the order they were queued).

Group ``write`` (latency; needs ``raw``). podbgp-send bytes waited for each
session's own turn of ExaBGP's loop (one generator step per session: a
withdrawal reflected to 200 clients was 200 steps before its last byte left).
The loop now writes every session's queued bytes once it has run the API
commands it read (coalesced, in order), straight to the socket, when nothing
else of the session's is pending: no podbgp-send bytes being written by the
session's turn, no message of ExaBGP's own half written (Connection.writer now
notes one: ``_podbgp_mid``), and room for all of it in the socket's send
buffer; otherwise the session's turn writes it, as before. The ``poll`` group
also parks idle sessions for ``_park_seconds`` (hold time / 30, 0.5-3 s) and
lets the loop sleep 250 ms instead of 10 ms when every session is parked.

Group ``lean`` (memory). asyncio imports ``ssl`` whenever it can; ExaBGP speaks
no TLS, and ``ssl`` maps libssl and libcrypto (~4 MiB resident); ``_hashlib``
(hashlib's OpenSSL half) maps libcrypto as well. Importing either raises
ImportError in ExaBGP's process (asyncio runs without ssl, hashlib falls back
to its builtin digests). ``asyncio``, ``pdb`` and ``logging.handlers``, which
ExaBGP imports at start-up but uses only for coroutine API callbacks (none in
5.0.15, see group ``sync``), its debugger (``exabgp.pdb.enable``, a configuration
error under ``exabgp.debug.configuration``) and syslog/file log destinations, and a
dozen standard modules an idle ExaBGP never touches (``_LAZY_MODULES``), are
imported lazily (``_LazyModule``): the module object is there at once and its
code runs, unchanged, the first time anything reads one of its attributes
(issue 17: ~3 MiB of the idle process).
Applied first, before ExaBGP's own imports.

Group ``ports`` (memory). ExaBGP 5.0.15's ``exabgp/protocol/ip/port.py`` is IANA's
port-name table, ``Port.names`` (4,929 entries) and its reverse ``Port.codes``, built
when the module is imported (~0.85 MiB resident in an idle ExaBGP) and read only to
name FlowSpec ports, which podbgp never negotiates. The module (SHA-256 checked) is
compiled with each table a `_LazyTable`: a read-only mapping made, by the module's
own expressions, on first use (the table's text is kept zlib-compressed, ~45 KiB).
Line numbers are unchanged. Applied before ExaBGP's own imports.

Group ``sync`` (CPU, and memory with ``lean``). ``ASYNC.run`` — ExaBGP's loop calls
it on every turn that has API callbacks queued, e.g. each ``announce`` command's —
ran the callbacks through ``asyncio.run``: a new event loop (epoll descriptor,
self-pipe, default executor shutdown) per call, ~0.5 ms on this machine, although
every callback ExaBGP 5.0.15 schedules is a generator and ``_run_async`` never
awaits for one. Generators now run in a plain loop with ``_run_async``'s own rules
(up to ``LIMIT`` steps a call, the next callback on StopIteration, an exception
logged and reported to the service); a coroutine (none in 5.0.15) still goes
through ``asyncio.run``, as before. ``_run_async``'s source is checked (SHA-256).

Group ``channel`` (memory, and one copy less). ExaBGP starts the API process of
its config (``run <python> -m bgpd.exabgp.relay SOCKET``) with ``subprocess.Popen``
(inherited descriptors closed), and that relay, a Python interpreter of its own
(~12 MiB resident), only copied bytes between its pipes and the speaker's unix
socket. For exactly that command ExaBGP now connects to SOCKET itself and uses
the connection as the process's pipes (``_Channel``: the part of ``Popen`` that
``Processes`` touches): no relay process. Closing the speaker's end reads as the
process exiting, so ExaBGP's respawn (a new connection) and its respawn limit
work as they did with the relay; a socket that cannot be reached reads as a
relay that exited. Unpatched, the relay runs as before.

Each source rewrite replaces exact text of ExaBGP's function and refuses
(leaving its group unpatched) if the text is not there; a function replaced
whole is checked against the SHA-256 of the source it replaces. Nothing here
changes what ExaBGP sends or prints at WARNING level:
tests/unit/test_exabgp_launch.py compares decoded JSON of patched and
unpatched ExaBGP byte for byte, the matcher against the original, and the
UPDATEs patched and unpatched ExaBGP send for the same commands. One
difference: ExaBGP's developer warning about a non-callable debug message is
no longer printed when DEBUG is off (there is no such call on these paths).

This module owns nothing at run time; it only rebinds ExaBGP attributes in
its own process before handing over to ExaBGP's ``main``.
"""

from __future__ import annotations

import inspect
import os
import sys
import textwrap
import types
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

# the speaker's names for what this module adds (PARENT_ENV: die_with_parent's)
from bgpd.exabgp.commands import HELLO_COMMAND, PARENT_ENV, RAW_COMMAND

PINNED_VERSION = "5.0.15"
UNPATCHED_ENV = "PODBGP_EXABGP_UNPATCHED"
PR_SET_PDEATHSIG = 1


class PatchError(RuntimeError):
    """The installed ExaBGP does not have the exact code a patch expects."""


def exabgp_version() -> str:
    from exabgp import version

    return str(version.release)


def _rewrite(owner: type, name: str, replacements: list[tuple[str, str]],
             extra_globals: dict[str, Any]) -> Callable[..., Any]:
    """Recompile owner.name from its source with exact text replacements.

    The function is compiled inside a class of the same name so that private
    names mangle as in the original, with the original module's globals (plus
    extra_globals, added to that module). Each ``old`` must occur exactly once
    in ExaBGP's source; edits an earlier group made to the same function are
    applied first (``_REWRITES``).
    """
    original, applied = _REWRITES.get((owner, name), (owner.__dict__[name], []))
    func = original.__func__ if isinstance(original, (classmethod, staticmethod)) else original
    source = inspect.getsource(func)  # replacements match the file's own indentation
    if "super()" in source or func.__closure__:
        raise PatchError(f"{owner.__name__}.{name}: needs a closure, cannot recompile")
    replacements = [*applied, *replacements]
    for old, new in replacements:
        count = source.count(old)
        if count != 1:
            raise PatchError(f"{owner.__name__}.{name}: expected text found {count} times: {old!r}")
        source = source.replace(old, new)
    source = textwrap.dedent(source)
    module_globals = func.__globals__
    module_globals.update(extra_globals)
    wrapper = f"class {owner.__name__}:\n" + textwrap.indent(source, "    ")
    namespace: dict[str, Any] = {}
    code = compile(wrapper, f"<podbgp patch of {func.__code__.co_filename}>", "exec")
    exec(code, module_globals, namespace)  # ExaBGP's own source, edited above
    new = namespace[owner.__name__].__dict__[name]
    _REWRITES[(owner, name)] = (original, replacements)
    return new


# (owner, name) -> (ExaBGP's own function, every replacement applied to it so far): a
# function two groups edit is recompiled from ExaBGP's source with the edits of both.
_REWRITES: dict[tuple[Any, str], tuple[Any, list[tuple[str, str]]]] = {}


def _debug_on() -> bool:
    from exabgp.logger.option import option

    return bool(option.logit.get("DEBUG", False))


# The guard put in front of per-NLRI debug calls: a dict lookup, no call (the
# rewritten functions get ``_podbgp_option``, ExaBGP's log option class).
_GUARD = "if _podbgp_option.logit.get('DEBUG'):"


def _patch_logger() -> None:
    """log.debug is a no-op whenever ExaBGP's options say DEBUG is off."""
    from exabgp.logger import _log, log
    from exabgp.logger.option import option

    original_debug = _log.__dict__["debug"]
    original_load = option.__dict__["load"].__func__

    def _eat(cls: type, message: object, source: str = "", level: str = "DEBUG") -> None:
        return None

    def load(cls: type, env: Any) -> None:
        original_load(cls, env)
        # The level can change when options are reloaded: decide again every time.
        # log.silence()/disable() install their own no-op, which is left alone.
        current = log.__dict__.get("debug")
        if not _debug_on():
            log.debug = eat
        elif current is eat:
            log.debug = original_debug

    eat = classmethod(_eat)
    option.load = classmethod(load)
    if not _debug_on():
        log.debug = eat


# The fast path for plain IPv4 unicast UPDATEs (classic NLRI fields, no ADD-PATH, no
# MP_REACH/MP_UNREACH): ExaBGP built an INET + CIDR object per prefix, sliced the bytes
# per prefix, then formatted each prefix again for the JSON (nlri.json -> cidr.prefix ->
# ntop). Here the two NLRI fields are checked and turned into prefix text in one loop;
# the UPDATE keeps the raw fields and builds ExaBGP's NLRI objects only if something
# reads ``nlris`` (treat-as-withdraw, an Adj-RIB-In, a text encoder, DEBUG).
_V4_PAD = tuple(bytes(4 - size) for size in range(5))
_V4_SUFFIX = tuple(f"/{mask}" for mask in range(33))


def _v4_prefixes(data: bytes) -> list[str] | None:
    """The prefixes of an IPv4 unicast NLRI field (RFC 4271 4.3) as ExaBGP's
    ``CIDR.prefix()`` writes them (host bits kept), or None where ExaBGP's own decoder
    (INET.unpack_nlri) would raise: a length above 32 or fewer octets than it needs.
    None sends the whole UPDATE through ExaBGP's code, which raises its own Notify.

    A field of prefixes of one length (a peer's /26 blocks) is read in one
    comprehension: its length octets are every (1 + size)-th octet, all equal, and the
    field a whole number of entries — exactly what the general loop would find."""
    from socket import inet_ntoa

    end = len(data)
    if not end:
        return []
    mask = data[0]
    if mask <= 32:
        size = (mask + 7) >> 3
        step = size + 1
        # every step-th octet the same length, and as many of them as whole entries
        # (a cut last entry makes data[::step] one longer than end // step)
        if data[::step] == bytes((mask,)) * (end // step):
            suffix, pad = _V4_SUFFIX[mask], _V4_PAD[size]
            if size == 4:
                return [inet_ntoa(data[i + 1:i + 5]) + suffix for i in range(0, end, 5)]
            return [inet_ntoa(data[i + 1:i + step] + pad) + suffix for i in range(0, end, step)]
    out: list[str] = []
    append = out.append
    pads, suffixes = _V4_PAD, _V4_SUFFIX
    i = 0
    while i < end:
        mask = data[i]
        if mask > 32:
            return None
        size = (mask + 7) >> 3
        j = i + 1 + size
        if j > end:
            return None
        append(inet_ntoa(data[i + 1:j] + pads[size]) + suffixes[mask])
        i = j
    return out


def _compact_update_class(update_cls: type) -> type:
    from exabgp.bgp.message.action import Action
    from exabgp.bgp.message.update.nlri import NLRI
    from exabgp.protocol.family import AFI, SAFI

    class CompactUpdate(update_cls):  # type: ignore[misc,valid-type]
        """A received IPv4 unicast UPDATE whose prefixes are text already
        (``podbgp_v4``: withdrawn, announced, next hop); ``nlris`` decodes the raw
        fields with ExaBGP's own decoder on first use (then ``podbgp_v4`` is None:
        whoever read ``nlris`` may change the NLRI, e.g. treat-as-withdraw)."""

        def __init__(self, withdrawn: bytes, announced: bytes, attributes: Any, nexthop: Any,
                     prefixes: tuple[list[str], list[str]]) -> None:
            self.attributes = attributes
            self.podbgp_v4: tuple[list[str], list[str], Any] | None = (*prefixes, nexthop)
            self._podbgp_raw = (withdrawn, announced, nexthop)
            self._podbgp_nlris: list[Any] | None = None

        @property
        def nlris(self) -> list[Any]:
            if self._podbgp_nlris is None:
                withdrawn, announced, nexthop = self._podbgp_raw
                nlris = []
                ipv4, unicast = AFI.ipv4, SAFI.unicast
                while withdrawn:  # as Update.unpack_message (checked: cannot raise)
                    nlri, withdrawn = NLRI.unpack_nlri(ipv4, unicast, withdrawn, Action.WITHDRAW, False)
                    nlris.append(nlri)
                while announced:
                    nlri, announced = NLRI.unpack_nlri(ipv4, unicast, announced, Action.ANNOUNCE, False)
                    nlri.nexthop = nexthop
                    nlris.append(nlri)
                self._podbgp_nlris = nlris
                self.podbgp_v4 = None
            return self._podbgp_nlris

        @nlris.setter
        def nlris(self, value: list[Any]) -> None:
            self._podbgp_nlris = value
            self.podbgp_v4 = None

    CompactUpdate.__name__ = CompactUpdate.__qualname__ = "Update"
    return CompactUpdate


def _compact_update(cls: type) -> Callable[[bytes, bytes, Any, Any], Any]:
    def compact(withdrawn: bytes, announced: bytes, attributes: Any, nexthop: Any) -> Any:
        gone = _v4_prefixes(withdrawn)
        new = _v4_prefixes(announced) if gone is not None else None
        if new is None:
            return None
        return cls(withdrawn, announced, attributes, nexthop, (gone, new))

    return compact


def _patch_update() -> None:
    from exabgp.bgp.message.update import Update

    new = _rewrite(Update, "unpack_message", [
        ("            log.debug(lambda nlri=nlri: 'withdrawn NLRI {}'.format(nlri), 'routes')\n",
         "            " + _GUARD + "\n"
         "                log.debug(lambda nlri=nlri: 'withdrawn NLRI {}'.format(nlri), 'routes')\n"),
        ("            log.debug(lambda nlri=nlri: 'announced NLRI {}'.format(nlri), 'routes')\n",
         "            " + _GUARD + "\n"
         "                log.debug(lambda nlri=nlri: 'announced NLRI {}'.format(nlri), 'routes')\n"),
        # Plain IPv4 unicast: prefixes as text in one loop (None: irregular, ExaBGP's
        # loop below decodes it and raises as before). Not with DEBUG on (its per-NLRI
        # lines and the decoded-UPDATE line come from the code below).
        ("        nlris = []\n"
         "        while withdrawn:\n",
         "        if ((withdrawn or announced) and not addpath and MPURNLRI.ID not in attributes\n"
         "                and MPRNLRI.ID not in attributes and not _podbgp_option.logit.get('DEBUG')):\n"
         "            _podbgp_update = _podbgp_compact(withdrawn, announced, attributes, nexthop)\n"
         "            if _podbgp_update is not None:\n"
         "                return _podbgp_update\n"
         "        nlris = []\n"
         "        while withdrawn:\n"),
    ], {"_podbgp_option": _option(),
        "_podbgp_compact": _compact_update(_compact_update_class(Update))})
    Update.unpack_message = new


def _patch_peer() -> None:
    from exabgp.reactor.peer import Peer

    old = ("                        log.debug(\n"
           "                            lazyformat('   UPDATE #%d nlri ' % number, nlri, str),\n"
           "                            self.id(),\n"
           "                        )\n")
    new = ("                        " + _GUARD + "\n"
           "                            log.debug(\n"
           "                                lazyformat('   UPDATE #%d nlri ' % number, nlri, str),\n"
           "                                self.id(),\n"
           "                            )\n")
    # update_cache returns at once without an Adj-RIB-In (podbgp's `adj-rib-in false`):
    # the loop is skipped then, so a compact UPDATE's NLRI objects are never built.
    loop = ("                    for nlri in message.nlris:\n"
            "                        self.neighbor.rib.incoming.update_cache(")
    skip = ("                    for nlri in (message.nlris if self.neighbor.rib.incoming.cache"
            " or _podbgp_option.logit.get('DEBUG') else ()):\n"
            "                        self.neighbor.rib.incoming.update_cache(")
    Peer._main = _rewrite(Peer, "_main", [(old, new), (loop, skip)],
                          {"_podbgp_option": _option()})


def _patch_nlri() -> None:
    from exabgp.bgp.message.update.nlri.nlri import NLRI

    new = _rewrite(NLRI, "unpack_nlri", [
        ("        a, s = AFI.create(afi), SAFI.create(safi)\n"
         "        log.debug(lazynlri(a, s, addpath, data), 'parser')\n"
         "\n"
         "        key = '{}/{}'.format(a, s)\n"
         "        if key in cls.registered_nlri:\n"
         "            return cls.registered_nlri[key].unpack_nlri(a, s, data, action, addpath)\n",
         # registered_nlri is filled at import time; a miss is not cached so the
         # Notify below is raised exactly as before.
         "        hit = _podbgp_nlri_decoders.get((cls, afi, safi))\n"
         "        if hit is not None:\n"
         "            a, s, decoder = hit\n"
         "            " + _GUARD + "\n"
         "                log.debug(lazynlri(a, s, addpath, data), 'parser')\n"
         "            return decoder(a, s, data, action, addpath)\n"
         "        a, s = AFI.create(afi), SAFI.create(safi)\n"
         "        log.debug(lazynlri(a, s, addpath, data), 'parser')\n"
         "\n"
         "        key = '{}/{}'.format(a, s)\n"
         "        if key in cls.registered_nlri:\n"
         "            decoder = cls.registered_nlri[key].unpack_nlri\n"
         "            _podbgp_nlri_decoders[(cls, afi, safi)] = (a, s, decoder)\n"
         "            return decoder(a, s, data, action, addpath)\n"),
    ], {"_podbgp_nlri_decoders": {}, "_podbgp_option": _option()})
    NLRI.unpack_nlri = new


def _option() -> Any:
    from exabgp.logger.option import option

    return option


def _family_key(nlri: Any, cache: dict[tuple[Any, Any, Any], Any]) -> Any:
    """nlri.family().afi_safi(), cached when family() is Family's (afi/safi only)."""
    cls = type(nlri)
    key = (cls, nlri.afi, nlri.safi)
    found = cache.get(key)
    if found is None:
        found = nlri.family().afi_safi()
        family = sys.modules["exabgp.protocol.family"].Family  # imported by then
        if cls.family is family.family and cls.afi_safi is family.afi_safi:
            cache[key] = found
    return found


def _patch_json() -> None:
    from exabgp.reactor.api.response.json import JSON

    old = ("        for nlri in update.nlris:\n"
           "            try:\n"
           "                nexthop = str(nlri.nexthop)\n"
           "            except Exception:\n"
           "                nexthop = 'null'\n"
           "            if nlri.action == Action.ANNOUNCE:  # pylint: disable=E1101\n"
           "                plus.setdefault(nlri.family().afi_safi(), {}).setdefault(nexthop, []).append(nlri)\n"
           "            if nlri.action == Action.WITHDRAW:  # pylint: disable=E1101\n"
           "                minus.setdefault(nlri.family().afi_safi(), []).append(nlri)\n")
    # The next-hop object of an UPDATE is shared by its NLRI: str() it once per
    # object (kept alive by `nexthops`, so its id cannot be reused meanwhile).
    new = ("        nexthops = {}\n"
           "        for nlri in update.nlris:\n"
           "            try:\n"
           "                _nh = nlri.nexthop\n"
           "                _seen = nexthops.get(id(_nh))\n"
           "                if _seen is None:\n"
           "                    _seen = nexthops[id(_nh)] = (_nh, str(_nh))\n"
           "                nexthop = _seen[1]\n"
           "            except Exception:\n"
           "                nexthop = 'null'\n"
           "            if nlri.action == Action.ANNOUNCE:  # pylint: disable=E1101\n"
           "                plus.setdefault(_podbgp_family_key(nlri, _podbgp_families), {})"
           ".setdefault(nexthop, []).append(nlri)\n"
           "            if nlri.action == Action.WITHDRAW:  # pylint: disable=E1101\n"
           "                minus.setdefault(_podbgp_family_key(nlri, _podbgp_families), []).append(nlri)\n")
    # A compact UPDATE (group decode's fast path) is written from its prefix text.
    first = ("    def _update(self, update):\n"
             "        plus = {}\n")
    compact = ("    def _update(self, update):\n"
               "        _podbgp_v4 = getattr(update, 'podbgp_v4', None)\n"
               "        if _podbgp_v4 is not None:\n"
               "            return _podbgp_json_v4(self, update, _podbgp_v4)\n"
               "        plus = {}\n")
    JSON._update = _rewrite(JSON, "_update", [(old, new), (first, compact)],
                            {"_podbgp_family_key": _family_key, "_podbgp_families": {},
                             "_podbgp_json_v4": _json_v4})


def _json_v4(self: Any, update: Any, v4: tuple[list[str], list[str], Any]) -> dict[str, str]:
    """JSON._update's text for a compact UPDATE: the same bytes ExaBGP writes for its
    NLRI objects (one "ipv4 unicast" family, one next hop; ``{ "nlri": "P" }`` or, with
    exabgp.api.compact, ``"P"`` per prefix)."""
    withdrawn, announced, nexthop = v4
    if self.compact:
        head, sep, tail = '"', '", "', '"'
    else:
        head, sep, tail = '{ "nlri": "', '" }, { "nlri": "', '" }'
    nlri = ""
    if announced:
        try:
            hop = str(nexthop)
        except Exception:  # ExaBGP's own rule: 'null'
            hop = "null"
        nlri = f'"announce": {{ "ipv4 unicast": {{ "{hop}": [ {head}{sep.join(announced)}{tail} ] }} }}'
    if withdrawn:
        if nlri:
            nlri += ", "
        nlri += f'"withdraw": {{ "ipv4 unicast": [ {head}{sep.join(withdrawn)}{tail} ] }}'
    attributes = "" if not update.attributes else f'"attribute": {{ {update.attributes.json()} }}'
    text = f'"update": {{ {attributes}, {nlri} }}' if attributes else f'"update": {{ {nlri} }}'
    return {"message": self._json(f"{{ {text} }}")}


def _patch_decode() -> None:
    _patch_update()
    _patch_peer()
    _patch_nlri()
    _patch_json()
    _patch_logger()


def _decode_targets() -> list[tuple[Any, str]]:
    from exabgp.bgp.message.update import Update
    from exabgp.bgp.message.update.nlri.nlri import NLRI
    from exabgp.logger import log
    from exabgp.logger.option import option
    from exabgp.reactor.api.response.json import JSON
    from exabgp.reactor.peer import Peer

    return [(log, "debug"), (option, "load"), (Update, "unpack_message"), (Peer, "_main"),
            (NLRI, "unpack_nlri"), (JSON, "_update")]


# ------------------------------------------------------------- group "notify"

# The two calls in Protocol.read_message that raise TypeError (see the module doc).
_BROKEN_REPORT = (
    "                        self.peer.reactor.processes.notification(\n"
    "                            self.peer.neighbor,\n"
    "                            'receive',\n"
    "                            notify.code,\n"
    "                            notify.subcode,\n"
    "                            str(notify),\n"
    "                            None,\n"
    "                            {},\n"
    "                            {},\n"
    "                        )\n")
_DROPPED_REPORT = ("                        pass  # podbgp: Processes.notification cannot be "
                   "called (TypeError); the NOTIFICATION follows\n")


def _patch_notify() -> None:
    from exabgp.reactor.protocol import Protocol

    Protocol.read_message = _rewrite(Protocol, "read_message", [
        (_BROKEN_REPORT.format("header", "body"), _DROPPED_REPORT),
        (_BROKEN_REPORT.format("b''", "b''"), _DROPPED_REPORT),
    ], {})


    from exabgp.bgp.message.open.capability import Capability
    from exabgp.reactor.peer import Peer

    original = Peer.__dict__["teardown"]
    if list(inspect.signature(original).parameters) != ["self", "code", "restart"]:
        raise PatchError("Peer.teardown: not (self, code, restart)")

    def teardown(self: Any, code: int, restart: bool = True) -> None:
        negotiated = getattr(self.proto, "negotiated", None)
        sent = getattr(negotiated, "sent_open", None)
        if sent is not None:
            sent.capabilities.pop(Capability.CODE.GRACEFUL_RESTART, None)
        original(self, code, restart)

    Peer.teardown = teardown


def _notify_targets() -> list[tuple[Any, str]]:
    from exabgp.reactor.peer import Peer
    from exabgp.reactor.protocol import Protocol

    return [(Protocol, "read_message"), (Peer, "teardown")]


# ------------------------------------------------------------- group "reload"


class _NoPrevious:
    """A neighbour's previous configuration when there is none: no routes, false."""

    changes: tuple = ()

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "<no previous configuration>"


_NO_PREVIOUS = _NoPrevious()


class _Previous:
    """``Neighbor.previous`` as a data descriptor: None is stored, ``_NO_PREVIOUS`` read."""

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        value = obj.__dict__.get("_podbgp_previous")
        return _NO_PREVIOUS if value is None else value

    def __set__(self, obj: Any, value: Any) -> None:
        obj.__dict__["_podbgp_previous"] = value


def _patch_reload() -> None:
    from exabgp.bgp.neighbor import Neighbor

    if "previous" in vars(Neighbor) or "__slots__" in vars(Neighbor):
        raise PatchError("Neighbor: previous is not a plain instance attribute")
    if "self.previous = None" not in inspect.getsource(Neighbor.__init__):
        raise PatchError("Neighbor.__init__: no 'self.previous = None'")
    Neighbor.previous = _Previous()


def _reload_targets() -> list[tuple[Any, str]]:
    from exabgp.bgp.neighbor import Neighbor

    return [(Neighbor, "previous")]


# ---------------------------------------------------------------- group "api"

# SHA-256 of the exact source of the functions replaced whole (ExaBGP 5.0.15).
_MATCH_SOURCES = {
    "match_neighbor": "dca3aaac8c0cb734a7c38d8e473e10e6f9b8dc0e10921f9c79de0635b1950203",
    "match_neighbors": "fb09040781fd15ba8036c18e2a7a4e85f7a58f2ddbea629720229a1df0483244",
}
# Modules that did ``from ...limit import match_neighbors``: their name is rebound too.
_MATCH_USERS = ("exabgp.reactor.api.command.announce", "exabgp.reactor.api.command.rib")


def _simple_words(text: str) -> tuple[str, ...] | None:
    """The words of ``text`` if it is words joined by single spaces with no comma
    (the shape of ExaBGP's neighbour names and of ``key value`` selectors)."""
    words = text.split(" ")
    if not text or "," in text or any(not w or w != w.strip() or not w.isprintable()
                                      for w in words):
        return None
    return tuple(words)


class _NameIndex:
    """For one list of neighbour names: which names hold a given one- or two-word
    string at word boundaries (exactly what ExaBGP's regex tests for such a
    string in such a name). Names of another shape are listed apart."""

    __slots__ = ("by_words", "odd", "peers")

    def __init__(self, peers: tuple[str, ...]) -> None:
        self.peers = peers
        self.by_words: dict[str, set[str]] = {}
        self.odd: list[str] = []  # names the index cannot answer for
        for name in peers:
            words = _simple_words(name)
            if words is None:
                self.odd.append(name)
                continue
            for i, w in enumerate(words):
                self.by_words.setdefault(w, set()).add(name)
                if i + 1 < len(words):
                    self.by_words.setdefault(f"{w} {words[i + 1]}", set()).add(name)


def _make_matcher(original_match: Callable[[Any, str], bool],
                  original_matches: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    """``match_neighbors`` with an index: ExaBGP's ``match_neighbor`` answers only
    for selectors and names the index cannot (and for lists that are not ExaBGP's
    own: unhashable names go to ExaBGP's ``match_neighbors`` whole)."""
    last: list[_NameIndex] = []

    def index_for(peers: Any) -> _NameIndex | None:
        key = tuple(peers)
        if last and last[0].peers == key:
            return last[0]
        if not all(type(p) is str for p in key):
            return None  # not a list of neighbour names
        idx = _NameIndex(key)
        last[:] = [idx]
        return idx

    def indexed(description: Any, idx: _NameIndex) -> set[str] | None:
        """The (simple) names ``description`` matches, or None if the index cannot tell."""
        if not isinstance(description, list) or len(description) != 1:
            return None
        string = description[0]
        if not isinstance(string, str) or string.strip() == "neighbor *":
            return None
        words = _simple_words(string)
        if words is None or len(words) > 2:
            return None
        return idx.by_words.get(string, set())

    def match_neighbors(peers, descriptions):
        """Return the sublist of peers matching the description passed, or None if no description is given"""
        if not descriptions:
            return peers
        idx = index_for(peers)
        if idx is None:
            return original_matches(peers, descriptions)
        matched: set[str] = set()
        slow: list[Any] = []  # descriptions the index cannot answer
        for description in descriptions:
            found = indexed(description, idx)
            if found is None:
                slow.append(description)
            else:
                matched |= found
        odd = set(idx.odd)
        returned = []
        seen: set[str] = set()
        for peer_name in peers:
            if peer_name in seen:
                continue
            if peer_name in odd:
                hit = any(original_match(d, peer_name) for d in descriptions)
            else:
                hit = peer_name in matched or any(original_match(d, peer_name) for d in slow)
            if hit:
                seen.add(peer_name)
                returned.append(peer_name)
        return returned

    return match_neighbors


def _patch_api() -> None:
    import hashlib
    import importlib

    from exabgp.configuration.configuration import _Configuration
    from exabgp.reactor.api.command import limit
    from exabgp.reactor.api.processes import Processes

    for name, digest in _MATCH_SOURCES.items():
        source = inspect.getsource(getattr(limit, name))
        if hashlib.sha256(source.encode()).hexdigest() != digest:
            raise PatchError(f"limit.{name}: source differs from the one this patch replaces")
    matcher = _make_matcher(limit.match_neighbor, limit.match_neighbors)
    users = [importlib.import_module(m) for m in _MATCH_USERS]
    for module in users:
        if module.__dict__.get("match_neighbors") is not limit.match_neighbors:
            raise PatchError(f"{module.__name__}: does not use limit.match_neighbors")
    _Configuration.inject_change = _rewrite(_Configuration, "inject_change", [
        ("        result = False\n"
         "        for neighbor_name in self.neighbors:\n"
         "            if neighbor_name in peers:\n",
         "        result = False\n"
         "        _podbgp_peers = _podbgp_set(peers)\n"
         "        for neighbor_name in self.neighbors:\n"
         "            if neighbor_name in _podbgp_peers:\n"),
        ("                    neighbor.rib.outgoing.add_to_rib(neighbor.remove_self(change))\n",
         # Shared, not copied per neighbour: only a next hop `self` differs per neighbour.
         "                    neighbor.rib.outgoing.add_to_rib(\n"
         "                        neighbor.remove_self(change) if change.nlri.nexthop.SELF\n"
         "                        else change)\n"),
    ], {"_podbgp_set": _membership})
    # A grouped command naming 200 neighbours is ~5 KiB; ExaBGP read 16 KiB of commands
    # per reactor loop (each loop also runs every peer): read what is there.
    Processes.received = _rewrite(Processes, "received", [
        ("                    buf = str(os.read(proc.stdout.fileno(), 16384), 'ascii')\n",
         "                    buf = str(os.read(proc.stdout.fileno(), 1 << 20), 'ascii')\n"),
    ], {})
    limit.match_neighbors = matcher
    for module in users:
        module.match_neighbors = matcher


def _membership(peers: Any) -> Any:
    """A set with the same ``in`` answers as ``peers`` (peers itself if unhashable)."""
    try:
        return set(peers)
    except TypeError:
        return peers


def _api_targets() -> list[tuple[Any, str]]:
    import importlib

    from exabgp.configuration.configuration import _Configuration
    from exabgp.reactor.api.command import limit
    from exabgp.reactor.api.processes import Processes

    return [(limit, "match_neighbors"), (_Configuration, "inject_change"),
            (Processes, "received"),
            *((importlib.import_module(m), "match_neighbors") for m in _MATCH_USERS)]


# ---------------------------------------------------------------- group "raw"

_MARKER = b"\xff" * 16
_RAW_TYPES = (2, 5)  # UPDATE, ROUTE-REFRESH (RFC 7313 BoRR/EoRR)
_RAW_MAX = 4096  # no message longer than a session without extended messages allows


def _raw_messages_ok(data: bytes) -> bool:
    """``data`` is whole BGP messages, each UPDATE or ROUTE-REFRESH, each <= 4096 octets."""
    i, n = 0, len(data)
    if not n:
        return False
    while i < n:
        if n - i < 19 or data[i:i + 16] != _MARKER:
            return False
        length = int.from_bytes(data[i + 16:i + 18], "big")
        if not 19 <= length <= _RAW_MAX or i + length > n or data[i + 18] not in _RAW_TYPES:
            return False
        i += length
    return True


_SIOCOUTQ = 0x5411  # linux/sockios.h: octets in a socket's send queue


# Group "write": sessions podbgp-send queued bytes for since the loop last wrote
# them (id -> peer); filled only while the group is applied.
_QUEUED: dict[int, Any] = {}
_WRITE_NOW: list[bool] = []  # [True] once group "write" is applied


def _write_queued() -> None:
    """Called by the reactor loop (group "poll") once it has run the API commands it
    read: each session's queued podbgp-send bytes — every command of this turn,
    coalesced — written at once where ``_write_now`` may, else left for the session's
    own turn."""
    while _QUEUED:
        _, peer = _QUEUED.popitem()
        if _write_now(peer):
            peer.stats["send-update"] += 1


def _write_now(peer: Any) -> bool:
    """Write the session's queued podbgp-send bytes to its socket right now, whole, if
    that cannot cut into or overtake another write of the session: no podbgp-send
    bytes being written by its own turn (``_podbgp_busy``), no message of ExaBGP's
    own half written (``_podbgp_mid``, set by the patched Connection.writer), and
    room for all of it in the socket's send buffer. True: written (a reflected
    withdrawal reaches N clients in N send()s, not N turns of ExaBGP's loop); False:
    nothing was written, the session's turn writes it as before."""
    import fcntl
    import select
    import socket
    import struct
    import time

    n = peer.neighbor
    data = n.__dict__.get("_podbgp_raw")
    if not data or n.__dict__.get("_podbgp_busy"):
        return False
    conn = getattr(peer.proto, "connection", None)
    io = getattr(conn, "io", None)
    if not isinstance(io, socket.socket) or conn.__dict__.get("_podbgp_mid") \
            or io.gettimeout() != 0.0:
        return False
    try:
        queued = struct.unpack("i", fcntl.ioctl(io.fileno(), _SIOCOUTQ, b"\0" * 4))[0]
        room = io.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) // 4 - queued
        if len(data) > room:
            return False
        sent = io.send(data)
    except (BlockingIOError, InterruptedError):
        return False  # nothing written
    except OSError:
        return False  # the session's own turn meets the error and ends it
    n._podbgp_raw = bytearray()
    view = memoryview(bytes(data))[sent:]
    # The room was checked, so this does not happen in practice; if the kernel took
    # part anyway, the rest must follow before anything else: finish it here.
    deadline = time.monotonic() + 5.0
    while view:
        select.select([], [io], [], max(0.0, deadline - time.monotonic()))
        try:
            view = view[io.send(view):]
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            break
        if time.monotonic() >= deadline:
            break
    if view:
        conn.close()  # half a message on the wire: the session cannot go on
    return True


def _podbgp_send(self: Any, reactor: Any, service: str, line: str, use_json: bool) -> bool:
    """``podbgp-send <base64 messages> <peer address> ...``: the messages, as they are,
    for every named neighbour whose session is Established (others are skipped: the
    speaker sends a new session its whole set), queued in order; written once the
    loop has run this turn's commands (``_write_queued``) or by the session's turn.
    Answers ``error`` if the payload is not whole UPDATE / ROUTE-REFRESH messages;
    nothing is queued then."""
    import base64
    import binascii

    from exabgp.bgp.fsm import FSM

    words = line.split(" ")
    try:
        if words[0] != RAW_COMMAND:
            raise ValueError(line[:40])
        data = base64.b64decode(words[1], validate=True)
    except (IndexError, ValueError, binascii.Error):
        reactor.processes.answer_error(service)
        return False
    if not _raw_messages_ok(data):
        reactor.processes.answer_error(service)
        return False
    wanted = {w for w in words[2:] if w and w != ","}
    for peer in list(reactor._peers.values()):
        neighbor = peer.neighbor
        if str(neighbor["peer-address"]) not in wanted:
            continue
        if peer.fsm == FSM.ESTABLISHED and peer.proto is not None:
            neighbor._podbgp_raw_mode = True
            buf = neighbor.__dict__.get("_podbgp_raw")
            if buf is None:
                buf = neighbor._podbgp_raw = bytearray()
            buf += data
            if _WRITE_NOW:
                _QUEUED[id(peer)] = peer
    reactor.processes.answer_done(service)
    return True


def _podbgp_hello(self: Any, reactor: Any, service: str, line: str, use_json: bool) -> bool:
    """Answers ``done``: this ExaBGP takes ``podbgp-send`` (an unknown command is ``error``)."""
    reactor.processes.answer_done(service)
    return True


# Peer._main: the queued bytes go out in order, one write at a time, never interleaved
# with another of the session's writers (a keepalive waits for a partial write to end).
_MAIN_RAW = [
    ("        send_ka = KA(self.proto.connection.session, self.proto)\n",
     "        send_ka = KA(self.proto.connection.session, self.proto)\n"
     "        _podbgp_raw = None  # podbgp-send bytes being written\n"),
    ("                if send_ka() is not False:\n",
     "                if _podbgp_raw is None and send_ka() is not False:\n"),
    ("                # Need to send update\n"
     "                if not new_routes and self.neighbor.rib.outgoing.pending():\n",
     "                # podbgp-send: bytes handed over by the API, written as they are\n"
     "                if _podbgp_raw is None and not (new_routes or refresh or operational\n"
     "                                                or command_eor):\n"
     "                    _podbgp_buf = self.neighbor.__dict__.get('_podbgp_raw')\n"
     "                    if _podbgp_buf:\n"
     "                        self.neighbor._podbgp_raw = bytearray()\n"
     "                        self.stats['send-update'] += 1\n"
     "                        _podbgp_raw = self.proto.connection.writer(bytes(_podbgp_buf))\n"
     "                        self.neighbor._podbgp_busy = True\n"
     "                if _podbgp_raw is not None:\n"
     "                    try:\n"
     "                        if next(_podbgp_raw):\n"
     "                            _podbgp_raw = None\n"
     "                    except StopIteration:\n"
     "                        _podbgp_raw = None\n"
     "                    if _podbgp_raw is None:\n"
     "                        self.neighbor._podbgp_busy = False\n"
     "\n"
     "                # Need to send update\n"
     "                if not new_routes and _podbgp_raw is None and "
     "self.neighbor.rib.outgoing.pending():\n"),
    ("                if (\n"
     "                    new_routes\n",
     "                if (\n"
     "                    new_routes\n"
     "                    or _podbgp_raw is not None\n"
     "                    or self.neighbor.__dict__.get('_podbgp_raw')\n"),
]


def _patch_raw() -> None:
    from exabgp.bgp.neighbor import Neighbor
    from exabgp.reactor.api import API
    from exabgp.reactor.api.command import Command
    from exabgp.reactor.peer import Peer

    for name in (RAW_COMMAND, HELLO_COMMAND):
        if name in Command.callback["text"]:
            raise PatchError(f"ExaBGP already has a command {name!r}")
    Peer._main = _rewrite(Peer, "_main", _MAIN_RAW, {})
    # A session that ends drops what was queued for it (the speaker re-sends the whole
    # set to the next one).
    Neighbor.reset_rib = _rewrite(Neighbor, "reset_rib", [
        ("        self.refresh = deque()\n",
         "        self.refresh = deque()\n"
         "        self._podbgp_raw = bytearray()\n"
         "        self._podbgp_busy = False\n"),
    ], {})

    # ROUTE-REFRESH from a peer fed by podbgp-send: ExaBGP's adj-rib-out has none of its
    # routes (an enhanced refresh would send BoRR/EoRR around nothing and the peer would
    # drop every route); the speaker answers it (it gets the refresh event).
    Peer.resend = _rewrite(Peer, "resend", [
        ("        self.neighbor.rib.outgoing.resend(enhanced, family)\n",
         "        if not self.neighbor.__dict__.get('_podbgp_raw_mode'):\n"
         "            self.neighbor.rib.outgoing.resend(enhanced, family)\n"),
    ], {})
    # A reload that finds the peer unchanged makes the new Neighbor object the live one
    # at once (Peer.reconfigure): what podbgp-send queued on the old one, acknowledged
    # with ``done``, moves with it instead of being dropped with the old object.
    original_reconfigure = Peer.__dict__["reconfigure"]
    if list(inspect.signature(original_reconfigure).parameters) != ["self", "restart_neighbor"]:
        raise PatchError("Peer.reconfigure: not (self, restart_neighbor)")

    def reconfigure(self: Any, restart_neighbor: Any = None) -> None:
        old = self.neighbor
        original_reconfigure(self, restart_neighbor)
        _carry_raw(old, self.neighbor)

    Peer.reconfigure = reconfigure
    # ExaBGP's matcher takes a line for any command it contains followed by a space (a
    # podbgp-send payload ending in 'reload', 'reset', ...: module doc): podbgp's own
    # commands are picked by their first word before it sees the line.
    original_response = API.__dict__["response"]
    if list(inspect.signature(original_response).parameters) != \
            ["self", "reactor", "service", "command", "use_json"]:
        raise PatchError("API.response: not (self, reactor, service, command, use_json)")
    own = (RAW_COMMAND, HELLO_COMMAND)

    def response(self: Any, reactor: Any, service: str, command: str, use_json: bool) -> Any:
        name = command.split(" ", 1)[0]
        if name in own:
            return self.callback["text"][name](self, reactor, service, command, use_json)
        return original_response(self, reactor, service, command, use_json)

    API.response = response
    Command.register(RAW_COMMAND)(_podbgp_send)
    Command.register(HELLO_COMMAND, False)(_podbgp_hello)


def _carry_raw(old: Any, new: Any) -> None:
    """Move the session's podbgp-send state from the Neighbor object it replaced to the
    new one: queued bytes (ahead of any the new one holds), a write in progress, raw mode."""
    if new is None or new is old:
        return
    state = old.__dict__
    queued = state.get("_podbgp_raw")
    if queued:
        new._podbgp_raw = bytearray(queued) + new.__dict__.get("_podbgp_raw", b"")
        old._podbgp_raw = bytearray()
    for name in ("_podbgp_busy", "_podbgp_raw_mode"):
        if state.get(name):
            setattr(new, name, True)


def _raw_targets() -> list[tuple[Any, str]]:
    from exabgp.bgp.neighbor import Neighbor
    from exabgp.reactor.api import API
    from exabgp.reactor.peer import Peer

    return [(Peer, "_main"), (Peer, "resend"), (Peer, "reconfigure"), (Neighbor, "reset_rib"),
            (API, "response")]


# --------------------------------------------------------------- group "poll"

PARK_SECONDS = 0.5  # parked peers are looked at least this often (their timers)
PARK_MAX_SECONDS = 3.0  # and each runs at least this often
IDLE_SLEEP_SECONDS = 0.25  # the loop's wait when every session is parked (was 10 ms)


def _park_seconds(peer: Any) -> float:
    """How long an idle Established session may stay parked: its timers count whole
    seconds (exabgp.bgp.timer), a KEEPALIVE is due every hold time / 3 and the hold
    timer expires after the hold time (RFC 4271 §4.4, §10), so running it every hold
    time / 30 keeps both within a tenth of a KEEPALIVE interval. 0.5 s to 3 s (90 s hold)."""
    try:
        hold = int(peer.proto.negotiated.holdtime)
    except (AttributeError, TypeError, ValueError):
        return PARK_SECONDS
    if hold <= 0:
        return PARK_MAX_SECONDS  # no keepalives, no hold timer
    return min(PARK_MAX_SECONDS, max(PARK_SECONDS, hold / 30))


def _podbgp_wake(peer: Any, since: float, now: float) -> bool:
    """Run a parked peer: it has something to send or to act on, or it is due."""
    if now - since >= _park_seconds(peer):
        return True
    n = peer.neighbor
    return bool(peer._teardown is not None or peer._neighbor is not None
                or n.rib.outgoing.pending() or n.__dict__.get("_podbgp_raw")
                or n.eor or n.messages or n.refresh)


def _patch_poll() -> None:
    """Reactor.run gave every active peer a turn on every loop (<= 10 ms), so N idle
    sessions cost N generator steps, a poll() and a recv() each, 100 times a second
    (a reflector with 200 clients: ~20% of a core doing nothing). An Established peer
    that had nothing to do ("LATER") is now parked until its socket is readable, it has
    something queued (adj-rib-out, podbgp-send bytes, EoR, operational, refresh), a
    teardown or new definition arrives, or ``_park_seconds`` pass (keepalives and
    timers are checked when it runs). Peers in any other state run every loop, as
    before. Parked peers are looked at (``_podbgp_wake``, O(parked)) only after an API
    command or asynchronous work (what can queue something for them) and every
    PARK_SECONDS, not on every turn of the loop; and when every session is parked
    and nothing is due the loop waits IDLE_SLEEP_SECONDS in poll() (sockets and the
    API channel still wake it at once) instead of 10 ms."""
    from exabgp.reactor.loop import Reactor

    Reactor.run = _rewrite(Reactor, "run", [
        ("        ms_sleep = int(self._sleep_time * 1000)\n",
         "        ms_sleep = int(self._sleep_time * 1000)\n"
         "        _podbgp_parked = {}  # peer key -> when it was parked\n"
         "        _podbgp_scan = True  # look at the parked peers on the next turn\n"
         "        _podbgp_next = 0.0  # ... and at the latest then (their timers)\n"),
        ("                peers = self.active_peers()\n",
         "                peers = self.active_peers()\n"
         "                if _podbgp_parked:\n"
         "                    _podbgp_now = time.monotonic()\n"
         "                    if _podbgp_scan or _podbgp_now >= _podbgp_next:\n"
         "                        _podbgp_scan = False\n"
         "                        _podbgp_next = _podbgp_now + PARK_SECONDS\n"
         "                        for _podbgp_key in list(_podbgp_parked):\n"
         "                            if _podbgp_key not in peers:\n"
         "                                del _podbgp_parked[_podbgp_key]  # gone\n"
         "                            elif _podbgp_wake(self._peers[_podbgp_key],\n"
         "                                              _podbgp_parked[_podbgp_key],\n"
         "                                              _podbgp_now):\n"
         "                                del _podbgp_parked[_podbgp_key]\n"
         "                            else:\n"
         "                                peers.discard(_podbgp_key)\n"
         "                    else:\n"
         "                        peers.difference_update(_podbgp_parked)\n"),
        ("                        # no need to come back to it before a a full cycle\n"
         "                        peers.discard(key)\n",
         "                        # no need to come back to it before a a full cycle\n"
         "                        peers.discard(key)\n"
         "                        if peer.fsm == FSM.ESTABLISHED:\n"
         "                            _podbgp_parked[key] = time.monotonic()\n"),
        ("                    if io not in api_fds:\n"
         "                        peers.add(workers[io])\n",
         "                    if io not in api_fds:\n"
         "                        peers.add(workers[io])\n"
         "                        _podbgp_parked.pop(workers[io], None)\n"),
        ("                    self.api.process(self, service, command)\n",
         "                    self.api.process(self, service, command)\n"
         "                    _podbgp_scan = True\n"),
        ("                self.asynchronous.run()\n",
         "                if not self.asynchronous.ready():\n"
         "                    _podbgp_scan = True\n"
         "                self.asynchronous.run()\n"
         "                if sleep and not _podbgp_scan and _podbgp_parked and \\\n"
         "                        self.asynchronous.ready() and \\\n"
         "                        _podbgp_parked.keys() >= self.active_peers():\n"
         "                    # every session parked, nothing due: wait for a socket, the\n"
         "                    # API or the next look at the parked peers\n"
         "                    sleep = max(1, min(int(IDLE_SLEEP_SECONDS * 1000), int(\n"
         "                        (_podbgp_next - time.monotonic()) * 1000)))\n"),
    ], {"_podbgp_wake": _podbgp_wake, "PARK_SECONDS": PARK_SECONDS,
        "IDLE_SLEEP_SECONDS": IDLE_SLEEP_SECONDS})


def _poll_targets() -> list[tuple[Any, str]]:
    from exabgp.reactor.loop import Reactor

    return [(Reactor, "run")]


# -------------------------------------------------------------- group "write"


def _patch_write() -> None:
    """podbgp-send bytes written from the loop's API turn (``_write_queued``) instead of
    by each session's own turn: a reflected change to N sessions was N generator
    steps of ExaBGP's loop before its first byte left; Connection.writer notes a
    message it has only partly written (``_podbgp_mid``) so nothing is written into
    the middle of it."""
    from exabgp.reactor.loop import Reactor
    from exabgp.reactor.network.connection import Connection

    Connection.writer = _rewrite(Connection, "writer", [
        ("                    data = data[number:]\n"
         "                    if not data:\n"
         "                        yield True\n"
         "                        return\n"
         "                    yield False\n",
         "                    data = data[number:]\n"
         "                    if not data:\n"
         "                        self._podbgp_mid = False\n"
         "                        yield True\n"
         "                        return\n"
         "                    self._podbgp_mid = True\n"
         "                    yield False\n"),
    ], {})
    Reactor.run = _rewrite(Reactor, "run", [
        ("                self.asynchronous.run()\n",
         "                _write_queued()  # podbgp-send bytes of this turn's commands\n"
         "                self.asynchronous.run()\n"),
    ], {"_write_queued": _write_queued})
    _WRITE_NOW[:] = [True]


def _write_targets() -> list[tuple[Any, str]]:
    from exabgp.reactor.loop import Reactor
    from exabgp.reactor.network.connection import Connection

    return [(Connection, "writer"), (Reactor, "run")]


# --------------------------------------------------------------- group "lean"

# Modules ExaBGP 5.0.15 imports without using: asyncio imports ``ssl`` if it can (ExaBGP
# speaks no TLS; asyncio works without it), which maps libssl and libcrypto (~4 MiB
# resident). Blocked before ExaBGP's first import, so the group runs first.
# ``_hashlib`` (hashlib's OpenSSL half) maps libcrypto too; ExaBGP hashes nothing, and
# this module's own source check (sha256) gets hashlib's builtin implementation.
_UNUSED_MODULES = ("ssl", "_hashlib")


# Imported by ExaBGP at start-up (or by the standard modules it imports), not used by
# an idle ExaBGP under podbgp (group ``sync`` keeps asyncio unused; the others serve
# its debugger, syslog/file logging, shutil's archives, inbound connections' ids...):
# executed on first use instead. Found by making every standard module lazy in a
# running idle ExaBGP and keeping those still unexecuted (issue 17); source modules
# only (an extension module is loaded by its creation already).
_LAZY_MODULES = ("asyncio", "pdb", "logging.handlers", "bisect", "bz2", "csv", "glob",
                 "heapq", "lzma", "pickle", "pprint", "queue", "random", "stringprep",
                 "uuid")


class _LazyModule(types.ModuleType):
    """A module whose code runs the first time an attribute it does not have yet is
    read. Unlike importlib.util.LazyLoader's modules (any attribute, ``__spec__``
    included, loads them), the import system's own reads (``__spec__``, ``__path__``,
    ``__file__``) do not: on Python 3.11 every later ``import X`` statement reads
    ``X.__spec__``, which would load a LazyLoader module at once."""

    def __getattr__(self, attr: str) -> Any:
        spec = self.__spec__
        self.__class__ = types.ModuleType  # executed once: the module is itself from now on
        try:
            spec.loader.exec_module(self)
        except BaseException:
            sys.modules.pop(spec.name, None)  # as a failed import leaves it
            raise
        return getattr(self, attr)


def lazy_import(name: str) -> bool:
    """Put a lazily executed ``name`` in sys.modules (``_LazyModule``). False if it is
    already imported, cannot be found or is not a Python source module."""
    import importlib.machinery
    import importlib.util

    if name in sys.modules:
        return False
    spec = importlib.util.find_spec(name)
    if spec is None or not isinstance(spec.loader, importlib.machinery.SourceFileLoader):
        return False  # not found, or an extension/builtin/frozen module
    module = importlib.util.module_from_spec(spec)
    module.__class__ = _LazyModule
    sys.modules[name] = module
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, module)  # ``import a.b as c`` reads a.b
    return True


def _patch_lean() -> None:
    """Importing the unused modules now raises ImportError (a module some import already
    loaded stays: there is nothing left to save); the lazy ones load on first use."""
    for name in _UNUSED_MODULES:
        if name not in sys.modules:
            sys.modules[name] = None  # type: ignore[assignment]
    for name in _LAZY_MODULES:
        lazy_import(name)


def _lean_targets() -> list[tuple[Any, str]]:
    return []


# -------------------------------------------------------------- group "ports"

_PORT_MODULE = "exabgp.protocol.ip.port"
_PORT_SHA256 = "8d3c5261c32e7c5e1e23f5ec0457a28dc345dd3054b56eb092dc104a1f32ada7"
_PORT_NAMES = "    names = {\n"
_PORT_CODES = "    codes = dict([(inst, name) for (name, inst) in names.items()])\n"


class _LazyTable(Mapping):
    """A read-only mapping whose dict ``build()`` makes on first use."""

    def __init__(self, build: Callable[[], dict]) -> None:
        self._build: Callable[[], dict] | None = build
        self._table: dict | None = None

    def _data(self) -> dict:
        if self._table is None:
            assert self._build is not None
            self._table, self._build = self._build(), None
        return self._table

    @property
    def built(self) -> bool:
        return self._table is not None

    def __getitem__(self, key: Any) -> Any:
        return self._data()[key]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._data())

    def __len__(self) -> int:
        return len(self._data())

    def __contains__(self, key: object) -> bool:
        return key in self._data()

    def get(self, key: Any, default: Any = None) -> Any:
        return self._data().get(key, default)

    def __repr__(self) -> str:
        return repr(self._data())


# One entry of port.py's names table, as every one of its lines is written (checked).
_PORT_ENTRY = r"^        (\d+): '([^'\\\n]*)',$"


def _port_names(names_text: bytes) -> dict[int, str]:
    """The names table from its compressed lines: what the dict display evaluates to
    (same pairs in the same order; a repeated port keeps its first place, last name)."""
    import re
    import zlib

    text = zlib.decompress(names_text).decode()
    return dict((int(port), name) for port, name in re.findall(_PORT_ENTRY, text, re.M))


def _port_tables(names_text: bytes) -> tuple[_LazyTable, _LazyTable]:
    """Port.names and Port.codes as port.py builds them, each on first use."""
    names = _LazyTable(lambda: _port_names(names_text))
    codes = _LazyTable(lambda: dict([(inst, name) for (name, inst) in names.items()]))
    return names, codes


def _lean_port_source(source: str) -> tuple[str, bytes]:
    """port.py with ``names`` and ``codes`` read from ``_podbgp_tables`` (same line
    numbers), and the names table's text, compressed. PatchError if it is not 5.0.15's."""
    import hashlib
    import zlib

    if hashlib.sha256(source.encode()).hexdigest() != _PORT_SHA256:
        raise PatchError(f"{_PORT_MODULE}: not the source this patch was written for")
    lines = source.splitlines(keepends=True)
    start = lines.index(_PORT_NAMES)
    end = lines.index("    }\n", start)
    codes = lines.index(_PORT_CODES, end)
    # (every line between is one `N: 'name',` entry: the SHA-256 pins it, a test reads it)
    entries = "".join(lines[start + 1:end])
    lines[start:end + 1] = ["    names = _podbgp_tables[0]\n"] + ["\n"] * (end - start)
    lines[codes] = "    codes = _podbgp_tables[1]\n"
    return "".join(lines), zlib.compress(entries.encode(), 1)


class _PortFinder:
    """A meta path finder for exabgp.protocol.ip.port (only): compiled with lazy tables."""

    def __init__(self, path: str, source: str, names_text: bytes) -> None:
        self.path, self.source, self.names_text = path, source, names_text

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != _PORT_MODULE:
            return None
        import importlib.util
        from importlib.machinery import SourceFileLoader

        finder = self

        class Loader(SourceFileLoader):
            def get_code(self, fullname: str) -> Any:
                return compile(finder.source, self.path, "exec", dont_inherit=True)

            def exec_module(self, module: types.ModuleType) -> None:
                module._podbgp_tables = _port_tables(finder.names_text)  # type: ignore[attr-defined]
                try:
                    super().exec_module(module)
                finally:
                    del module._podbgp_tables  # type: ignore[attr-defined]
                    sys.meta_path[:] = [f for f in sys.meta_path if f is not finder]

        return importlib.util.spec_from_file_location(name, self.path,
                                                      loader=Loader(name, self.path))


def _patch_ports() -> None:
    import importlib.util

    if _PORT_MODULE in sys.modules:
        return  # already imported: nothing left to save
    spec = importlib.util.find_spec("exabgp")  # the package is not imported by this
    if spec is None or not spec.submodule_search_locations:
        raise PatchError("exabgp: package not found")
    path = os.path.join(spec.submodule_search_locations[0], "protocol", "ip", "port.py")
    with open(path, encoding="utf-8") as f:
        source, names_text = _lean_port_source(f.read())
    sys.meta_path.insert(0, _PortFinder(path, source, names_text))


def _ports_targets() -> list[tuple[Any, str]]:
    return []


# -------------------------------------------------------------- group "order"


def _emit(write: Callable[..., Any], held: list[tuple[str, str, Any]]) -> Any:
    """An ASYNC callback (generator) that writes a command's held answer lines."""
    for process, string, neighbor in held:
        write(process, string, neighbor)
    return
    yield  # a generator: ASYNC runs it in its turn


def _patch_order() -> None:
    """A command's answer (``done``/``error`` and any line before it) is written after
    the answers of every command read before it. ExaBGP answers some commands at once
    (podbgp-send, teardown, reload, an ``announce eor`` naming no Established peer:
    ``error``) and others from a callback it runs later (``announce``/``withdraw
    attributes``, ``announce eor``), so an answer could overtake an earlier command's,
    and the speaker, which pairs answers with commands in order, took one command's
    ``error`` for another's. While callbacks are pending, the lines a command writes
    to its own process at once are held and written by a callback queued where the
    command's own callbacks go: ExaBGP runs callbacks in the order they were queued."""
    from exabgp.reactor.api import API
    from exabgp.reactor.asynchronous import ASYNC

    original = API.__dict__["process"]
    if list(inspect.signature(original).parameters) != ["self", "reactor", "service", "command"]:
        raise PatchError("API.process: not (self, reactor, service, command)")
    if "self._async = deque()" not in inspect.getsource(ASYNC.__init__):
        raise PatchError("ASYNC: callbacks are not a deque in self._async")

    def process(self: Any, reactor: Any, service: str, command: str) -> Any:
        queued = getattr(reactor.asynchronous, "_async", None)
        if not queued:  # nothing earlier still to answer
            return original(self, reactor, service, command)
        at = len(queued)
        processes = reactor.processes
        write = processes.write
        held: list[tuple[str, str, Any]] = []

        def hold(process: str, string: str, neighbor: Any = None) -> bool:
            if process != service or string is None:
                return write(process, string, neighbor)
            held.append((process, string, neighbor))
            return True

        processes.write = hold
        try:
            return original(self, reactor, service, command)
        finally:
            del processes.write  # the class's again
            if held:
                queued = reactor.asynchronous._async  # (``reset`` replaces the deque)
                queued.insert(min(at, len(queued)), (service, _emit(write, held)))

    API.process = process


def _order_targets() -> list[tuple[Any, str]]:
    from exabgp.reactor.api import API

    return [(API, "process")]


# --------------------------------------------------------------- group "sync"

# ExaBGP 5.0.15's ASYNC._run_async, whose rules _run_generators keeps for generators.
_RUN_ASYNC_SHA256 = "7640837abdd9df3e50e808f04422732537290b42d07fd9afa0ce8e8075dff859"


def _is_coroutine(callback: Any) -> bool:
    return inspect.iscoroutine(callback) or inspect.iscoroutinefunction(callback)


def _run_generators(self: Any) -> bool:
    """ASYNC._run_async for generator callbacks, without an event loop: up to LIMIT
    steps, the next callback when one is exhausted, an exception logged and reported
    to its service (``_notify_error``). A coroutine met on the way (ExaBGP 5.0.15
    schedules none) is put back and the rest runs as before, through asyncio.run."""
    from exabgp.logger import log

    if not self._async:
        return False
    uid, callback = self._async.popleft()
    for _ in range(self.LIMIT):
        if _is_coroutine(callback):
            self._async.appendleft((uid, callback))
            import asyncio

            return bool(asyncio.run(self._run_async()))
        try:
            next(callback)
        except StopIteration:
            if not self._async:
                return False
            uid, callback = self._async.popleft()
        except Exception as exc:
            log.error(lambda uid=uid: f'async | {uid} | problem with function', 'reactor')
            for line in str(exc).split('\n'):
                log.error(lambda line=line, uid=uid: f'async | {uid} | {line}', 'reactor')
            self._notify_error(uid)
            if not self._async:
                return False
            uid, callback = self._async.popleft()
    self._async.appendleft((uid, callback))
    return True


def _patch_sync() -> None:
    """ASYNC.run runs generator callbacks itself instead of in a new event loop each call."""
    import hashlib

    from exabgp.reactor.asynchronous import ASYNC

    source = inspect.getsource(ASYNC._run_async)
    if hashlib.sha256(source.encode()).hexdigest() != _RUN_ASYNC_SHA256:
        raise PatchError("ASYNC._run_async: source differs from the one this patch follows")
    ASYNC.run = _rewrite(ASYNC, "run", [
        ("            # Only generators, run synchronously\n"
         "            return asyncio.run(self._run_async())\n",
         "            # Only generators, run synchronously\n"
         "            return _podbgp_run_generators(self)\n"),
    ], {"_podbgp_run_generators": _run_generators})


def _sync_targets() -> list[tuple[Any, str]]:
    from exabgp.reactor.asynchronous import ASYNC

    return [(ASYNC, "run")]


# ------------------------------------------------------------ group "channel"

RELAY_MODULE = "bgpd.exabgp.relay"
_CONNECT_TRIES = 20  # x 50 ms: a respawn racing the speaker re-creating its socket


class _ChannelWriter:
    """The ``stdin`` of a channel: blocking writes of whole commands' answers and
    events onto a socket whose descriptor ExaBGP made non-blocking (for reads)."""

    def __init__(self, sock: Any) -> None:
        self._sock = sock

    def write(self, data: bytes) -> int:
        import errno
        import select

        view = memoryview(data)
        while view:
            try:
                sent = self._sock.send(view)
            except BlockingIOError:
                select.select([], [self._sock], [])  # the speaker reads: wait for room
                continue
            except OSError as exc:
                # ExaBGP's Processes.write takes EPIPE as "the helper is gone" (any other
                # errno makes it retry the write forever)
                raise BrokenPipeError(errno.EPIPE, "podbgp channel closed") from exc
            view = view[sent:]
        return len(data)

    def flush(self) -> None:
        return None

    def close(self) -> None:
        return None


class _ChannelReader:
    """The ``stdout`` of a channel: ExaBGP polls and ``os.read``s its descriptor."""

    def __init__(self, sock: Any) -> None:
        self._sock = sock

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        return None


class _Channel:
    """What ExaBGP's ``Processes`` keeps for an API process (the subset of
    ``subprocess.Popen`` it uses), backed by a unix socket ExaBGP connected to the
    speaker itself: no relay process, no copy. ``poll()`` is None while the speaker
    holds its end and 0 once it closed it (ExaBGP then respawns: connects again)."""

    pid = 0

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self.stdin = _ChannelWriter(sock)
        self.stdout = _ChannelReader(sock)
        self.returncode: int | None = None

    def poll(self) -> int | None:
        import socket

        if self.returncode is None:
            try:
                if self._sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"":
                    self.returncode = 0  # the speaker closed the channel
            except (BlockingIOError, InterruptedError):
                pass  # open, nothing to read
            except OSError:
                self.returncode = 1
        return self.returncode

    def terminate(self) -> None:
        import socket

        if self.returncode is None:
            self.returncode = 0
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()

    kill = terminate

    def wait(self, timeout: float | None = None) -> int:
        return self.returncode if self.returncode is not None else 0


def _relay_socket(run: Any) -> str | None:
    """The socket path if ``run`` is the speaker's relay command
    (``<python> -m bgpd.exabgp.relay SOCKET``), else None."""
    if isinstance(run, (list, tuple)) and len(run) >= 4 and run[-3] == "-m" \
            and run[-2] == RELAY_MODULE and isinstance(run[-1], str):
        return run[-1]
    return None


def _podbgp_channel(run: Any) -> _Channel | None:
    """For the relay command: the speaker's socket, connected here (None: any other
    program, which ExaBGP starts as before). A socket that cannot be reached gives
    a channel that reads as an exited process, so ExaBGP's respawn limit applies
    exactly as to a relay that could not connect."""
    import socket
    import time

    path = _relay_socket(run)
    if path is None:
        return None
    for attempt in range(_CONNECT_TRIES):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
            return _Channel(sock)
        except OSError as exc:
            sock.close()
            if attempt + 1 == _CONNECT_TRIES:
                sys.stderr.write(f"podbgp: cannot connect to {path}: {exc}\n")
            else:
                time.sleep(0.05)
    dead_a, dead_b = socket.socketpair()
    dead_b.close()  # reads as end of file at once
    channel = _Channel(dead_a)
    channel.returncode = 1
    return channel


def _patch_channel() -> None:
    """ExaBGP 5.0.15 starts an API process with ``subprocess.Popen`` (inherited
    descriptors closed). For the speaker's relay command, ExaBGP now connects to the
    speaker's unix socket itself instead: the relay process (a Python interpreter,
    ~12 MiB, that only copied bytes) is not started, and the bytes are not copied
    twice. Any other ``run`` line starts its program as before."""
    from exabgp.reactor.api.processes import Processes

    Processes._start = _rewrite(Processes, "_start", [
        ("                self._process[process] = subprocess.Popen(\n",
         "                self._process[process] = _podbgp_channel(run) or subprocess.Popen(\n"),
    ], {"_podbgp_channel": _podbgp_channel})


def _channel_targets() -> list[tuple[Any, str]]:
    from exabgp.reactor.api.processes import Processes

    return [(Processes, "_start")]


# name -> (apply, what it rebinds: restored if the group does not fit)
GROUPS: dict[str, tuple[Callable[[], None], Callable[[], list[tuple[Any, str]]]]] = {
    "lean": (_patch_lean, _lean_targets),  # first: before anything imports asyncio
    "ports": (_patch_ports, _ports_targets),  # before anything imports exabgp.protocol.ip
    "sync": (_patch_sync, _sync_targets),
    "decode": (_patch_decode, _decode_targets),
    "api": (_patch_api, _api_targets),
    "notify": (_patch_notify, _notify_targets),
    "raw": (_patch_raw, _raw_targets),
    "order": (_patch_order, _order_targets),
    "poll": (_patch_poll, _poll_targets),
    "write": (_patch_write, _write_targets),  # after "raw" and "poll"
    "reload": (_patch_reload, _reload_targets),
    "channel": (_patch_channel, _channel_targets),
}


def _restore(saved: list[tuple[Any, str, Any]]) -> None:
    for owner, name, value in saved:
        if value is None:
            if name in vars(owner):
                delattr(owner, name)  # it was inherited: drop our shadowing attribute
        else:
            setattr(owner, name, value)


def patch(skip: Iterable[str] = ()) -> bool:
    """Apply every group not in ``skip``, each all or nothing. False (and a warning on
    stderr) if the version is not the pinned one or any group does not fit."""
    version = exabgp_version()
    if version != PINNED_VERSION:
        sys.stderr.write(f"podbgp: exabgp {version} is not {PINNED_VERSION}; running it unpatched\n")
        return False
    ok = True
    for group, (apply, targets) in GROUPS.items():
        if group in skip:
            continue
        saved = [(owner, name, vars(owner).get(name)) for owner, name in targets()]
        rewrites = dict(_REWRITES)
        try:
            apply()
        except (PatchError, OSError, SyntaxError, KeyError, TypeError) as exc:
            _restore(saved)
            _REWRITES.clear()
            _REWRITES.update(rewrites)
            sys.stderr.write(f"podbgp: could not patch exabgp ({group}: {exc}); "
                             f"running it without the {group!r} patches\n")
            ok = False
    # inspect.getsource (the rewrites) left the source text of every patched ExaBGP
    # module in linecache: not needed again (a traceback reads the file afresh).
    import linecache

    linecache.clearcache()
    return ok


def die_with_parent() -> bool:
    """SIGKILL when the daemon that spawned us dies (``PR_SET_PDEATHSIG``), armed here,
    after exec, for the PID in ``PODBGP_EXABGP_PARENT`` (the variable is removed: the
    relay ExaBGP starts must not inherit it). False without it.

    Not in the speaker's ``preexec_fn``: that runs Python in a child forked from a
    threaded daemon, and the fork runs gRPC's (the etcd client's) fork handlers while
    its threads are busy; the child then sometimes died of SIGSEGV/SIGABRT before
    exec (ExaBGP "exited" with code -11 at start-up, issue 18). If the daemon died
    before this ran, our parent is already someone else: exit, as PDEATHSIG would
    have done.
    """
    parent = os.environ.pop(PARENT_ENV, "")
    if not parent.isdigit():
        return False
    import ctypes
    import signal

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        sys.stderr.write(f"podbgp: prctl(PR_SET_PDEATHSIG): errno {ctypes.get_errno()}\n")
    if os.getppid() != int(parent):
        sys.stderr.write(f"podbgp: parent {parent} is gone; not starting exabgp\n")
        sys.exit(1)
    return True


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    die_with_parent()  # first: nothing else may run while an orphan could be left behind
    # Escape hatch (and the A/B switch for benchmarks): plain ExaBGP, same command line;
    # or a list of groups to leave out.
    unpatched = os.environ.get(UNPATCHED_ENV, "").strip()
    if unpatched in ("1", "true", "yes", "all"):
        sys.stderr.write(f"podbgp: {UNPATCHED_ENV} is set; running exabgp unpatched\n")
    elif unpatched in ("", "0"):
        patch()
    else:
        skip = {g.strip() for g in unpatched.split(",") if g.strip()}
        sys.stderr.write(f"podbgp: {UNPATCHED_ENV}={unpatched}: without the "
                         f"{', '.join(sorted(skip))} patches\n")
        patch(skip)
    from exabgp.application.main import main as exabgp_main

    sys.argv = ["exabgp", *args]  # what the console script would see
    return exabgp_main()


if __name__ == "__main__":
    sys.exit(main())
