"""``Rib``: Adj-RIB-In per peer, Loc-RIB, Adj-RIB-Out per peer, kernel intent.

Owned by rib/; one instance lives in the daemon and only the daemon's RIB task
calls it. Every operation returns a ``Changes`` value and calls no one.

Storage is chosen for 100k+ paths: Adj-RIB-In keeps the received ``Path``
objects once (post-policy = pre-policy minus a per-peer ``rejected`` map,
because import policy only accepts or rejects), the Loc-RIB keeps per prefix either the lone accepted candidate itself (the
common case: one path per prefix, which is then the selection, ``ONLY_PATH``)
or a ``_Dest`` with the tuple of candidates and the selected ECMP tuple (an
entry object and a 1-tuple per prefix cost ~110 bytes a route), Adj-RIB-Out maps
prefix -> interned ``ExportAttrs`` (shared by every prefix with the same
attributes). Kernel intent is not stored: it is a pure function of a prefix's
selected ECMP set and the config (``kernel_route``), recomputed for the old and
the new set when a set changes (a stored copy cost ~125 bytes per route).
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Hashable, Iterable, Mapping
from operator import attrgetter

import structlog

from rib.bestpath import BestReason, select_best
from rib.changes import Changes, ExportDelta, Rejection, best_change
from rib.inputs import (
    FilterAction,
    MaxPrefixAction,
    PeerPolicy,
    RibConfig,
    apply_operations,
    communities_for,
    first_rule,
    parse_prefix,
)
from rib.kernel import KernelContext, KernelRoute, kernel_route, lone_kernel_route
from rib.path import LOCAL_PEER, Origin, Path, PathAttrs, PeerKind, PeerRef, Withdraw
from rib.policy import (
    ExportAttrs,
    ExportContext,
    ImportContext,
    RejectReason,
    export_key,
    import_reasons,
)

log = structlog.get_logger(__name__)

_INTERN_LIMIT = 200_000  # distinct export attribute sets kept for sharing


class _Peer:
    """Per-session state (Adj-RIB-In pre/post policy, Adj-RIB-Out). Owned by ``Rib``.

    ADD-PATH (RFC 7911): paths with identifier 0 (or none) live here; each other
    identifier the peer uses gets a stream, a ``_Peer`` of its own in ``streams``
    with its own Adj-RIB-In (so a path is replaced and withdrawn by its id alone)
    and no Adj-RIB-Out. A stream counts its accepted paths in its session's
    ``accepted`` (``acct``), so max-prefix bounds the session's paths, whatever ids
    the peer invents.
    """

    __slots__ = ("__weakref__", "_owner", "accepted", "adj_in", "adj_out", "eclass",
                 "end_of_rib", "orig", "policy", "rejected", "streams", "up")

    def __init__(self, policy: PeerPolicy, acct: _Peer | None = None) -> None:
        self.policy = policy
        self.eclass: tuple[PeerPolicy, int] | None = None  # (policy, its export class)
        self.up = True
        self.adj_in: dict[str, Path] = {}  # everything received (pre-policy)
        self.rejected: dict[str, RejectReason] = {}  # prefixes import policy dropped
        self.adj_out: dict[str, ExportAttrs] = {}  # what the peer has been told
        self.accepted = 0  # accepted paths (session and its streams), for max-prefix
        # A stream's session, held weakly: no reference cycle (see ``acct``).
        self._owner = None if acct is None else weakref.ref(acct)
        self.end_of_rib = False
        self.streams: dict[int, _Peer] = {}  # ADD-PATH identifier -> its paths
        # Paths an import rule's operations changed: adj_in holds the changed path (the
        # Loc-RIB candidate), ``orig`` what the peer sent (pre-policy views, re-import).
        self.orig: dict[str, Path] = {}

    @property
    def acct(self) -> _Peer:
        """The session whose ``accepted`` counts this one's paths: itself, or an ADD-PATH
        stream's session. Not a reference to itself (nor the stream's a strong one back):
        a session ``peer_down`` drops is freed at once with its tables, not left to the
        cyclic collector, which under steady churn need not run for hours (bgpd.main's
        thresholds; issue 16's soak: each client reset left its ~30 KiB behind)."""
        owner = self._owner
        return self if owner is None else owner()

    def all(self) -> list[_Peer]:
        """The session's own state and its ADD-PATH streams."""
        return [self, *self.streams.values()] if self.streams else [self]


class _Dest:
    """A Loc-RIB entry of a prefix with two or more accepted candidates: the
    candidates and the selected ECMP set (best first). Owned by ``Rib``; a prefix
    with one candidate stores that ``Path`` instead."""

    __slots__ = ("members", "paths", "reason")

    def __init__(self) -> None:
        self.paths: tuple[Path, ...] = ()
        self.members: tuple[Path, ...] = ()
        self.reason = BestReason.ONLY_PATH


# What a prefix's Loc-RIB entry selected before an operation touched it, kept in
# the operation's ``touched`` map: None (no candidate), the lone Path, or the ECMP
# tuple of a ``_Dest``.
_Before = Path | tuple[Path, ...] | None


def _members(entry: Path | _Dest) -> tuple[Path, ...]:
    return entry.members if type(entry) is _Dest else (entry,)


_ATTRS, _PATH_ID = attrgetter("attrs"), attrgetter("path_id")


class Rib:
    def __init__(self, config: RibConfig, *, record_best: bool = True) -> None:
        """``record_best``: list each changed Loc-RIB entry in ``Changes.best`` (one
        ``BestChange`` per changed prefix). The daemon does not read them (it asks
        ``best()`` when it needs an answer) and passes False: a burst of 100k new
        prefixes then builds no such object (issue 17, CPU per route)."""
        self._record_best = record_best
        self._peers: dict[Hashable, _Peer] = {}
        # prefix -> the lone candidate Path, or a _Dest (two or more candidates)
        self._dest: dict[str, Path | _Dest] = {}
        self._local: dict[str, Path] = {}
        self._intern: dict[tuple, ExportAttrs] = {}
        self._classes: dict[tuple, int] = {}  # export class -> its number
        self._apply_config(config)
        touched: dict[str, _Before] = {}
        for prefix, path in self._local.items():
            self._replace_candidate(prefix, None, path, touched)
        self._settle(touched, Changes())

    def compact(self) -> None:
        """Give back what a shrunken table still holds: Python dicts keep their largest
        size after deletions (200,000 withdrawn prefixes leave tables sized for
        200,000), and the export context caches a verdict per prefix ever seen.
        Rebuilds the per-prefix dicts at their current size and clears the cache;
        changes no content. Called by the daemon's housekeeping after a large
        withdrawal (bgpd.ops.memory)."""
        self._dest = dict(self._dest)
        self._local = dict(self._local)
        self._ectx.forget()
        for peer in self._peers.values():
            for part in peer.all():
                part.adj_in = dict(part.adj_in)
                part.rejected = dict(part.rejected)
                part.adj_out = dict(part.adj_out)

    # ---- views --------------------------------------------------------------------

    @property
    def config(self) -> RibConfig:
        return self._config

    def peer_keys(self) -> tuple[Hashable, ...]:
        return tuple(self._peers)

    def is_up(self, key: Hashable) -> bool:
        peer = self._peers.get(key)
        return peer is not None and peer.up

    def counts(self, key: Hashable) -> tuple[int, int, int]:
        """(received, accepted, advertised) prefix counts of ``key``, without copies
        (metrics and /status read these on every scrape); zeros for an unknown peer."""
        peer = self._peers.get(key)
        if peer is None:
            return (0, 0, 0)
        if peer.streams:
            received = sum(len(p.adj_in) for p in peer.all())
            return (received, received - sum(len(p.rejected) for p in peer.all()),
                    len(peer.adj_out))
        received = len(peer.adj_in)
        return (received, received - len(peer.rejected), len(peer.adj_out))

    def path_count(self) -> int:
        """Paths in all Adj-RIBs-In."""
        return sum(len(s.adj_in) for p in self._peers.values() for s in p.all())

    def adj_rib_in(self, key: Hashable, post_policy: bool = False) -> dict[str, Path]:
        """A copy of what ``key`` sent (``post_policy``: only what import accepted)."""
        peer = self._peer(key)
        if not post_policy:
            return {**peer.adj_in, **peer.orig}
        rej = peer.rejected
        return {p: path for p, path in peer.adj_in.items() if p not in rej}

    def rejected(self, key: Hashable) -> dict[str, RejectReason]:
        return dict(self._peer(key).rejected)

    def adj_rib_out(self, key: Hashable) -> dict[str, ExportAttrs]:
        return dict(self._peer(key).adj_out)

    def loc_rib(self) -> dict[str, tuple[Path, ...]]:
        """prefix -> ECMP set, best path first."""
        return {p: _members(d) for p, d in self._dest.items()}

    def prefix_count(self) -> int:
        """Prefixes with a selected path (``len(loc_rib())`` without the copy)."""
        return len(self._dest)

    def best(self, prefix: str) -> Path | None:
        d = self._dest.get(prefix)
        if type(d) is _Dest:
            return d.members[0]
        return d

    def best_reason(self, prefix: str) -> BestReason | None:
        d = self._dest.get(prefix)
        if d is None:
            return None
        return d.reason if type(d) is _Dest else BestReason.ONLY_PATH

    def desired_routes(self) -> dict[str, KernelRoute]:
        """The whole kernel intent (what fib_sync.set_desired wants)."""
        kctx = self._kctx
        out: dict[str, KernelRoute] = {}
        for prefix, dest in self._dest.items():
            route = kernel_route(prefix, _members(dest), kctx)
            if route is not None:
                out[prefix] = route
        return out

    def all_end_of_rib(self) -> bool:
        """Every up peer has sent End-of-RIB (the daemon's cue to sweep the FIB)."""
        return all(p.end_of_rib for p in self._peers.values() if p.up)

    def __len__(self) -> int:
        """Number of paths held in all Adj-RIBs-In."""
        return self.path_count()

    # ---- sessions -----------------------------------------------------------------

    def peer_up(self, policy: PeerPolicy) -> Changes:
        """Session established: returns the full export set for it (``full=True``).

        Paths kept stale from a graceful restart stay until re-announced or swept.
        """
        peer = self._peers.get(policy.key)
        changes = Changes()
        if peer is None:
            peer = self._peers[policy.key] = _Peer(policy)
        else:
            for part in peer.all():
                part.up = True
                part.end_of_rib = False
            if policy != peer.policy:
                for part in peer.all():
                    part.policy = policy
                self._reimport(peer, changes)
        peer.adj_out = {}
        # A fresh, full delta: anything queued for the old session is superseded.
        delta = changes.exports[policy.key] = ExportDelta(full=True)
        self._reexport(peer, delta)
        log.debug("rib.peer_up", peer=policy.key, exported=len(peer.adj_out))
        return changes

    def set_peer_policy(self, policy: PeerPolicy) -> Changes:
        """A peer's policy changed: re-run import on its Adj-RIB-In, diff its exports."""
        peer = self._peer(policy.key)
        changes = Changes()
        for part in peer.all():
            part.policy = policy
        self._reimport(peer, changes)
        if peer.up:
            self._reexport(peer, changes.export_for(policy.key))
        return changes

    def peer_down(self, key: Hashable) -> Changes:
        """Session gone without graceful restart: forget everything it sent."""
        peer = self._peers.pop(key, None)
        changes = Changes()
        if peer is None:
            return changes
        touched: dict[str, _Before] = {}
        for part in peer.all():
            rej = part.rejected
            for prefix, path in part.adj_in.items():
                if prefix not in rej:
                    self._replace_candidate(prefix, path, None, touched)
        self._settle(touched, changes)
        log.debug("rib.peer_down", peer=key, withdrawn=len(touched))
        return changes

    def mark_stale(self, key: Hashable) -> Changes:
        """Graceful restart: the session dropped; keep its paths, flagged stale.

        Forwarding carries on over them (RFC 4724 §4.2); nothing is exported to the
        peer until ``peer_up``.
        """
        peer = self._peer(key)
        changes = Changes()
        peer.adj_out = {}
        touched: dict[str, _Before] = {}
        # Paths of one UPDATE share their attributes: so do their stale copies.
        stale_of: dict[PathAttrs, PathAttrs] = {}

        def stale_copy(path: Path) -> Path:
            attrs = path.attrs
            s = stale_of.get(attrs)
            if s is None:
                s = stale_of[attrs] = dataclasses.replace(attrs, stale=True)
            return Path.of(path.prefix, s)

        for part in peer.all():
            part.up = False
            part.end_of_rib = False
            rej = part.rejected
            adj_in = part.adj_in
            for prefix, path in adj_in.items():
                if path.stale:
                    continue
                stale = stale_copy(path)
                adj_in[prefix] = stale
                if prefix not in rej:
                    self._replace_candidate(prefix, path, stale, touched)
            for prefix, path in part.orig.items():
                part.orig[prefix] = stale_copy(path)
        self._settle(touched, changes)
        return changes

    def end_of_rib(self, key: Hashable) -> Changes:
        """The peer finished its initial update: drop what it did not re-announce."""
        self._peer(key).end_of_rib = True
        return self.sweep_stale(key)

    def sweep_stale(self, key: Hashable | None = None) -> Changes:
        """Remove stale paths of ``key`` (all peers if None): restart timer expired."""
        changes = Changes()
        touched: dict[str, _Before] = {}
        keys = list(self._peers) if key is None else [key]
        for k in keys:
            peer = self._peer(k)
            for part in peer.all():
                stale = [p for p, path in part.adj_in.items() if path.stale]
                for prefix in stale:
                    self._remove(part, prefix, touched)
            if peer.streams:
                peer.streams = {i: st for i, st in peer.streams.items() if st.adj_in}
            if not peer.up and not peer.adj_in and not peer.streams:
                del self._peers[k]
        self._settle(touched, changes)
        return changes

    # ---- updates ------------------------------------------------------------------

    def update(
        self,
        key: Hashable,
        announced: Iterable[Path] = (),
        withdrawn: Iterable[str | Withdraw] = (),
    ) -> Changes:
        """One UPDATE from peer ``key``: withdrawals first, then announcements."""
        peer = self._peer(key)
        if not peer.up:
            raise ValueError(f"update from peer {key!r}: session is not up (call peer_up)")
        changes = Changes()
        touched: dict[str, _Before] = {}
        for w in withdrawn:
            if isinstance(w, str) or not w.path_id:
                self._remove(peer, w if isinstance(w, str) else w.prefix, touched)
            else:
                stream = peer.streams.get(w.path_id)
                if stream is not None:
                    self._remove(stream, w.prefix, touched)
        if announced:
            if not isinstance(announced, (list, tuple)):
                announced = list(announced)
            # ADD-PATH: one stream per identifier (read from the shared attributes in C:
            # a generator over Path.path_id's property cost ~0.5 µs a path)
            if any(map(_PATH_ID, map(_ATTRS, announced))):
                groups: dict[int, list[Path]] = {}
                for p in announced:
                    groups.setdefault(p.path_id, []).append(p)
                for pid, paths in groups.items():
                    self._announce(self._stream(peer, pid), paths, touched, changes)
            else:
                self._announce(peer, announced, touched, changes)
        self._settle(touched, changes)
        return changes

    @staticmethod
    def _stream(peer: _Peer, path_id: int) -> _Peer:
        if not path_id:
            return peer
        stream = peer.streams.get(path_id)
        if stream is None:
            stream = peer.streams[path_id] = _Peer(peer.policy, acct=peer)
        return stream

    def announce(self, key: Hashable, paths: Iterable[Path]) -> Changes:
        return self.update(key, announced=paths)

    def withdraw(self, key: Hashable, prefixes: Iterable[str | Withdraw]) -> Changes:
        return self.update(key, withdrawn=prefixes)

    # ---- configuration ------------------------------------------------------------

    def set_config(self, config: RibConfig) -> Changes:
        """Node config changed (pools, blocks, cluster id, ...): re-run import over every
        Adj-RIB-In, re-originate, re-select and re-export; return the differences."""
        changes = Changes()
        if config == self._config:
            return changes
        old_local = self._local
        old_kctx = self._kctx
        self._apply_config(config)
        touched: dict[str, _Before] = {}
        for prefix in old_local.keys() | self._local.keys():
            old, new = old_local.get(prefix), self._local.get(prefix)
            if old is not None and old == new:
                self._local[prefix] = old  # the object the Loc-RIB already holds
                continue
            self._replace_candidate(prefix, old, new, touched)
        for peer in self._peers.values():
            self._reimport(peer, changes, settle=False, touched=touched)
        for prefix, dest in self._dest.items():  # every prefix with a kernel route
            if prefix not in touched:
                touched[prefix] = dest.members if type(dest) is _Dest else dest
        self._settle(touched, changes, force=True, export=False, old_kctx=old_kctx)
        for key, peer in self._peers.items():
            if peer.up:
                delta = ExportDelta()
                self._reexport(peer, delta)
                if delta.announce or delta.withdraw:
                    changes.exports[key] = delta
        return changes

    # ---- internals ----------------------------------------------------------------

    def _peer(self, key: Hashable) -> _Peer:
        peer = self._peers.get(key)
        if peer is None:
            raise KeyError(f"unknown peer {key!r} (call peer_up first)")
        return peer

    def _apply_config(self, config: RibConfig) -> None:
        self._config = config
        self._ictx = ImportContext(config)
        self._ectx = ExportContext(config)
        self._kctx = KernelContext(config)
        self._intern.clear()
        local: dict[str, Path] = {}
        for prefix in (*config.own_blocks, *config.service_prefixes, *config.held):
            std, large = communities_for(config.prefix_advertisements, parse_prefix(prefix))
            local[prefix] = Path(
                prefix=prefix,
                next_hop="",
                peer=LOCAL_PEER,
                origin=Origin.IGP,
                communities=std,
                large_communities=large,
            )
        self._local = local

    def _replace_candidate(
        self, prefix: str, old: Path | None, new: Path | None, touched: dict[str, _Before]
    ) -> None:
        """Swap candidate ``old`` for ``new`` (either may be None) and note in
        ``touched`` what the prefix selected before this operation first touched it
        (``_settle`` compares against that)."""
        dests = self._dest
        entry = dests.get(prefix)
        is_dest = type(entry) is _Dest
        if prefix not in touched:
            touched[prefix] = entry.members if is_dest else entry  # type: ignore[union-attr]
        if not is_dest:
            # None or a lone Path: the common cases, without building tuples.
            if entry is None or entry is old:
                if new is not None:
                    dests[prefix] = new
                elif entry is not None:
                    del dests[prefix]
                return
            if new is None:
                return  # ``old`` is not a candidate here
            dest = dests[prefix] = _Dest()
            dest.paths = (entry, new)
            return
        paths = entry.paths  # type: ignore[union-attr]
        if old is not None:
            paths = tuple([p for p in paths if p is not old])
        if new is not None:
            paths = (*paths, new)
        if len(paths) > 1:
            entry.paths = paths  # type: ignore[union-attr]
        else:
            dests[prefix] = paths[0]  # back to a lone Path (paths is never empty here)

    def _remove(self, peer: _Peer, prefix: str, touched: dict[str, _Before]) -> None:
        path = peer.adj_in.pop(prefix, None)
        if path is None:
            return
        if peer.orig:
            peer.orig.pop(prefix, None)
        if peer.rejected.pop(prefix, None) is None:
            owner = peer._owner  # peer.acct, inline: once per withdrawn path
            (peer if owner is None else owner()).accepted -= 1
            self._replace_candidate(prefix, path, None, touched)

    def _announce(
        self, peer: _Peer, paths: Iterable[Path], touched: dict[str, _Before], changes: Changes
    ) -> None:
        policy = peer.policy
        ictx = self._ictx
        adj_in = peer.adj_in
        rejected = peer.rejected
        acct = peer.acct
        limit = policy.max_prefixes
        key = policy.key
        dests = self._dest
        if not isinstance(paths, (list, tuple)):
            paths = list(paths)
        ops = policy.import_ops
        orig = peer.orig
        for path, reason in zip(paths, import_reasons(paths, policy, ictx), strict=True):
            prefix = path.prefix
            old = adj_in.get(prefix)
            # One string object per prefix in every table (issue 17): a prefix this RIB
            # already holds keeps the string it holds it by (the parser's are fresh
            # per UPDATE; interning them cost a 100k-entry table of its own).
            if old is not None:
                if old.prefix is not prefix:  # re-announced
                    prefix = old.prefix
                    path = Path.of(prefix, path.attrs)
            else:
                held = dests.get(prefix)
                if held is not None:  # another peer's (or stream's) candidate
                    known = held.paths[0].prefix if type(held) is _Dest else held.prefix
                    if known is not prefix:
                        prefix = known
                        path = Path.of(prefix, path.attrs)
            was_accepted = old is not None and prefix not in rejected
            if ops:
                path = self._import_operations(path, policy, orig)
            elif orig:
                orig.pop(prefix, None)
            adj_in[prefix] = path
            if reason is None and not was_accepted and limit is not None and (
                acct.accepted >= limit
            ):
                reason = RejectReason.MAX_PREFIX
                if policy.max_prefix_action is MaxPrefixAction.TEARDOWN and (
                    key not in changes.teardown
                ):
                    changes.teardown.append(key)
            if reason is None:
                if not was_accepted:
                    acct.accepted += 1
                    if old is not None:
                        del rejected[prefix]
                    old = None
                if old is None and prefix not in dests:
                    # A new prefix (the common case of a burst): _replace_candidate inline.
                    if prefix not in touched:
                        touched[prefix] = None
                    dests[prefix] = path
                else:
                    self._replace_candidate(prefix, old, path, touched)
            else:
                rejected[prefix] = reason
                changes.rejected.append(Rejection(key, prefix, reason))
                if was_accepted:
                    acct.accepted -= 1
                    self._replace_candidate(prefix, old, None, touched)

    @staticmethod
    def _import_operations(path: Path, policy: PeerPolicy, orig: dict[str, Path]) -> Path:
        """The path as the first matching import rule's operations leave it (BGPFilter
        addCommunity / prependASPath / setPriority); the original is kept in ``orig``."""
        rule = first_rule(policy.import_filters, parse_prefix(path.prefix), False, path)
        if rule is None or not rule.operations or rule.action is not FilterAction.ACCEPT:
            orig.pop(path.prefix, None)
            return path
        comms, large, as_path, lp = apply_operations(
            rule.operations, path.communities, path.large_communities, path.as_path,
            path.local_pref)
        orig[path.prefix] = path
        return path.replace(communities=comms, large_communities=large, as_path=as_path,
                            local_pref=lp)

    def _reimport(
        self,
        peer: _Peer,
        changes: Changes,
        settle: bool = True,
        touched: dict[str, _Before] | None = None,
    ) -> None:
        """Re-run import policy over the peer's whole Adj-RIB-In (pre-policy), its
        ADD-PATH streams included."""
        if touched is None:
            touched = {}
        peer.accepted = 0
        parts = peer.all()
        olds = []
        for part in parts:
            # Re-import what the peer sent, not what an import operation made of it.
            olds.append((part.rejected, {**part.adj_in, **part.orig}))
            for prefix, path in part.adj_in.items():
                if prefix not in part.rejected:
                    self._replace_candidate(prefix, path, None, touched)
            part.rejected = {}
            part.adj_in = {}
            part.orig = {}
        sub = Changes()
        for part, (old_rejected, old_in) in zip(parts, olds, strict=True):
            mark = len(sub.rejected)
            self._announce(part, old_in.values(), touched, sub)
            # Report only rejections that are new or whose reason changed.
            changes.rejected.extend(
                r for r in sub.rejected[mark:] if old_rejected.get(r.prefix) is not r.reason
            )
        for k in sub.teardown:
            if k not in changes.teardown:
                changes.teardown.append(k)
        if settle:
            self._settle(touched, changes)

    def _attrs_for(self, peer: _Peer, best: Path, shared: dict | None = None
                   ) -> ExportAttrs | None:
        """What ``best`` is sent to ``peer`` with (None: not sent). ``shared``: answers
        of this operation by (path, export class) — peers whose policies read alike
        (``_export_class``) get the same attributes for a path, so a route reflected to
        200 clients is worked out once, not 200 times; only split horizon (never back
        to the peer it came from) differs between them, and is checked first."""
        policy = peer.policy
        if shared is not None:
            source = best.attrs.peer
            if source.kind is not PeerKind.LOCAL and source.address == policy.peer.address:
                return None
            ec = peer.eclass
            if ec is None or ec[0] is not policy:
                ec = peer.eclass = (policy, self._export_class(policy))
            ck = (id(best), ec[1])
            hit = shared.get(ck)
            # the path itself is kept beside the answer: an id is only unique while
            # its object lives
            if hit is not None and hit[0] is best:
                return hit[1]
        key = export_key(best, policy, self._ectx)
        if key is None:
            attrs = None
        else:
            attrs = self._intern.get(key)
            if attrs is None:
                if len(self._intern) >= _INTERN_LIMIT:
                    self._intern.clear()
                attrs = self._intern[key] = ExportAttrs(*key)
        if shared is not None:
            shared[ck] = (best, attrs)
        return attrs

    def _export_class(self, policy: PeerPolicy) -> int:
        """Peers with equal export classes get equal attributes for any path they may be
        sent: the fields of a target policy ``rib.policy.export_key`` reads besides the
        peer's address (split horizon). One small int per distinct class."""
        tpeer = policy.peer
        cls = (tpeer.kind, tpeer.rr_client, tpeer.local_asn, policy.export_filters,
               policy.next_hop_mode, policy.self_next_hop)
        return self._classes.setdefault(cls, len(self._classes))

    def _export_one(self, peer: _Peer, prefix: str, best: Path | None, delta_get,
                    shared: dict | None = None) -> None:
        attrs = self._attrs_for(peer, best, shared) if best is not None else None
        adj_out = peer.adj_out
        old = adj_out.get(prefix)
        if attrs is None:
            if old is not None:
                del adj_out[prefix]
                delta_get(peer.policy.key).withdraw.append(prefix)
            return
        if old is not None and (old is attrs or old == attrs):
            return
        adj_out[prefix] = attrs
        announce = delta_get(peer.policy.key).announce
        group = announce.get(attrs)
        if group is None:
            announce[attrs] = [prefix]
        else:
            group.append(prefix)

    def _reexport(self, peer: _Peer, delta: ExportDelta) -> None:
        """Recompute the peer's whole Adj-RIB-Out; put the difference (or, for a
        ``full`` delta, everything) in ``delta``."""
        old_out = {} if delta.full else peer.adj_out
        new_out: dict[str, ExportAttrs] = {}
        announce = delta.announce
        for prefix, dest in self._dest.items():
            attrs = self._attrs_for(peer, dest.members[0] if type(dest) is _Dest else dest)
            if attrs is None:
                continue
            new_out[prefix] = attrs
            old = old_out.get(prefix)
            if old is not None and (old is attrs or old == attrs):
                continue
            group = announce.get(attrs)
            if group is None:
                announce[attrs] = [prefix]
            else:
                group.append(prefix)
        delta.withdraw.extend(p for p in old_out if p not in new_out)
        peer.adj_out = new_out

    def _settle(
        self,
        touched: dict[str, _Before],
        changes: Changes,
        force: bool = False,
        export: bool = True,
        old_kctx: KernelContext | None = None,
    ) -> None:
        """Re-select best paths of ``touched`` prefixes and derive exports and kernel intent.

        ``old_kctx``: the kernel context the current selections were made under
        (set_config passes the previous one), to tell what the kernel holds now.
        """
        max_paths = self._config.max_paths
        kctx = self._kctx
        if old_kctx is None:
            old_kctx = kctx
        dests = self._dest
        up_peers = [p for p in self._peers.values() if p.up] if export else []
        delta_get = changes.export_for
        shared: dict = {}  # (id(path), export class) -> (path, attributes), this operation
        record_best = self._record_best
        best_append = changes.best.append
        add_append = changes.kernel_add.append
        # lone_kernel_route's memos (one per kernel context): a run of prefixes with one
        # candidate each and one shared PathAttrs (an UPDATE's) builds its routes alike
        memo: list = []
        old_memo: list = []
        # Split horizon (``_attrs_for``: never back to the peer a path came from), decided
        # once per source peer for the fast path below: to the peer it came from a new
        # prefix has nothing to send, only an Adj-RIB-Out entry to withdraw if one is left.
        split_src: PeerRef | None = None
        send_to: list[_Peer] = up_peers
        held_back: list[_Peer] = []
        for prefix, before in touched.items():
            dest = dests.get(prefix)
            if before is None and dest is not None and type(dest) is not _Dest:
                # A new prefix with one candidate (a burst's common case): the general
                # code below with its answers known (changed, nothing to remove).
                if record_best:
                    best_append(best_change(prefix, None, dest, (dest,), BestReason.ONLY_PATH))
                src = dest.attrs.peer
                if src is not split_src:
                    split_src = src
                    if src.kind is PeerKind.LOCAL:
                        send_to, held_back = up_peers, []
                    else:
                        send_to = [p for p in up_peers if p.policy.peer.address != src.address]
                        held_back = [p for p in up_peers if p.policy.peer.address == src.address]
                for peer in send_to:
                    self._export_one(peer, prefix, dest, delta_get, shared)
                for peer in held_back:
                    if prefix in peer.adj_out:
                        self._export_one(peer, prefix, dest, delta_get, shared)
                route = lone_kernel_route(prefix, dest, kctx, memo)
                if route is not None:
                    add_append(route)
                continue
            if type(dest) is _Dest:
                members, reason = select_best(dest.paths, max_paths)
                dest.members = members
                dest.reason = reason
                if type(before) is tuple:
                    same = len(members) == len(before) and all(
                        a is b for a, b in zip(members, before, strict=True)
                    )
                else:
                    same = len(members) == 1 and members[0] is before
            else:
                # A lone candidate (or none) is its own selection.
                if type(before) is tuple:
                    same = dest is not None and len(before) == 1 and before[0] is dest
                else:
                    same = dest is before
                if same and not force:
                    continue
                members, reason = ((dest,) if dest is not None else ()), BestReason.ONLY_PATH
            if same and not force:
                continue
            old_members = (
                () if before is None else before if type(before) is tuple else (before,)
            )
            old_best = old_members[0] if old_members else None
            new_best = members[0] if members else None
            if not same and record_best:
                best_append(best_change(prefix, old_best, new_best, members, reason))
            if new_best is not old_best:
                for peer in up_peers:
                    self._export_one(peer, prefix, new_best, delta_get, shared)
            route = (None if not members else
                     lone_kernel_route(prefix, members[0], kctx, memo) if len(members) == 1
                     else kernel_route(prefix, members, kctx))
            old_route = (None if not old_members else
                         lone_kernel_route(prefix, old_members[0], old_kctx, old_memo)
                         if len(old_members) == 1 else kernel_route(prefix, old_members, old_kctx))
            if route is None:
                if old_route is not None:
                    changes.kernel_remove.append(old_route)
            elif old_route is None or old_route != route:
                changes.kernel_add.append(route)


def rib_from(config: RibConfig, peers: Mapping[PeerPolicy, Iterable[Path]]) -> Rib:
    """A RIB built from scratch: every peer up, then its paths announced (tests, resync)."""
    rib = Rib(config)
    for policy in peers:
        rib.peer_up(policy)
    for policy, paths in peers.items():
        rib.announce(policy.key, list(paths))
    return rib
