"""Run ExaBGP with its per-route debug work removed: ``python -m bgpd.exabgp.launch server CONF``.

The speaker (bgpd.exabgp.speaker) starts ExaBGP through this module instead of the
``exabgp`` console script. Arguments are passed to ExaBGP's own entry point
unchanged, so everything ExaBGP does is the same except the cost per route.

Why: ExaBGP 5.0.15 builds debug-log closures and strings for every NLRI it
decodes (and looks its family up by formatting a string per NLRI) even when
the log level is WARNING; no setting turns this off. At 100k routes that is
a sizeable share of ExaBGP's CPU time, and ExaBGP's CPU time is podbgp's
convergence time.

What is patched (only on ExaBGP 5.0.15, the pinned version; any other
version runs unpatched with a warning on stderr, and so does any version when
``PODBGP_EXABGP_UNPATCHED=1`` is in the environment):

- ``log.debug`` becomes a no-op whenever the configured level drops DEBUG
  (re-evaluated every time ExaBGP loads its log options);
- the per-NLRI ``log.debug`` calls in ``Update.unpack_message`` and
  ``Peer._main`` are skipped unless DEBUG is on;
- ``NLRI.unpack_nlri`` caches the decoder class per (afi, safi) instead of
  formatting ``"ipv4/unicast"`` per NLRI;
- ``JSON._update`` caches the family tuple per (class, afi, safi) and the
  next-hop string per next-hop object within one UPDATE.

Each source rewrite replaces exact text of ExaBGP's function and refuses
(leaving ExaBGP unpatched) if the text is not there. Nothing here changes
what ExaBGP sends or prints at WARNING level: tests/unit/test_exabgp_launch.py
compares decoded JSON of patched and unpatched ExaBGP byte for byte. One
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
from collections.abc import Callable
from typing import Any

PINNED_VERSION = "5.0.15"
UNPATCHED_ENV = "PODBGP_EXABGP_UNPATCHED"


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
    extra_globals, added to that module). Each ``old`` must occur exactly once.
    """
    raw = owner.__dict__[name]
    func = raw.__func__ if isinstance(raw, (classmethod, staticmethod)) else raw
    source = inspect.getsource(func)  # replacements match the file's own indentation
    if "super()" in source or func.__closure__:
        raise PatchError(f"{owner.__name__}.{name}: needs a closure, cannot recompile")
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
    return new


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


def _patch_update() -> None:
    from exabgp.bgp.message.update import Update

    new = _rewrite(Update, "unpack_message", [
        ("            log.debug(lambda nlri=nlri: 'withdrawn NLRI {}'.format(nlri), 'routes')\n",
         "            " + _GUARD + "\n"
         "                log.debug(lambda nlri=nlri: 'withdrawn NLRI {}'.format(nlri), 'routes')\n"),
        ("            log.debug(lambda nlri=nlri: 'announced NLRI {}'.format(nlri), 'routes')\n",
         "            " + _GUARD + "\n"
         "                log.debug(lambda nlri=nlri: 'announced NLRI {}'.format(nlri), 'routes')\n"),
    ], {"_podbgp_option": _option()})
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
    Peer._main = _rewrite(Peer, "_main", [(old, new)], {"_podbgp_option": _option()})


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
    JSON._update = _rewrite(JSON, "_update", [(old, new)],
                            {"_podbgp_family_key": _family_key, "_podbgp_families": {}})


def patch() -> bool:
    """Apply every patch, or none: False (and a warning on stderr) if any does not fit."""
    version = exabgp_version()
    if version != PINNED_VERSION:
        sys.stderr.write(f"podbgp: exabgp {version} is not {PINNED_VERSION}; running it unpatched\n")
        return False
    from exabgp.bgp.message.update import Update
    from exabgp.bgp.message.update.nlri.nlri import NLRI
    from exabgp.logger import log
    from exabgp.logger.option import option
    from exabgp.reactor.api.response.json import JSON
    from exabgp.reactor.peer import Peer

    saved = [(owner, name, owner.__dict__.get(name)) for owner, name in (
        (log, "debug"), (option, "load"), (Update, "unpack_message"), (Peer, "_main"),
        (NLRI, "unpack_nlri"), (JSON, "_update"))]
    try:
        _patch_update()
        _patch_peer()
        _patch_nlri()
        _patch_json()
        _patch_logger()
    except (PatchError, OSError, SyntaxError, KeyError) as exc:
        for owner, name, value in saved:
            if value is None:
                if name in owner.__dict__:
                    delattr(owner, name)  # it was inherited: drop our shadowing attribute
            else:
                setattr(owner, name, value)
        sys.stderr.write(f"podbgp: could not patch exabgp ({exc}); running it unpatched\n")
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    # Escape hatch (and the A/B switch for benchmarks): plain ExaBGP, same command line.
    if os.environ.get(UNPATCHED_ENV, "") not in ("", "0"):
        sys.stderr.write(f"podbgp: {UNPATCHED_ENV} is set; running exabgp unpatched\n")
    else:
        patch()
    from exabgp.application.main import main as exabgp_main

    sys.argv = ["exabgp", *args]  # what the console script would see
    return exabgp_main()


if __name__ == "__main__":
    sys.exit(main())
