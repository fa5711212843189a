"""A small driver for nftables tables that podbgp owns, through Debian's `nft`.

Shared by the policy agent (policy/) and the NAT/overlay code: each keeps its
own table (``inet podbgp-policy``, ``ip podbgp-nat``, ...) and hands this
module whole nft scripts. It knows nothing of policy or NAT.

- `Nft.apply(script)` runs one ``nft -f -`` transaction: the kernel applies all
  of it or none of it (nft's own guarantee), the convention kube-proxy's
  nftables mode follows (knftables).
- Ownership: every statement at the top level of a script must name a table
  whose name podbgp owns (`is_owned`: ``podbgp`` or ``podbgp-*``/``podbgp_*``);
  anything else (another table, ``flush ruleset``, a statement without a
  table) is refused before nft runs, so a bug in a caller can never touch
  Felix's, kube-proxy's or the administrator's rules.
- `Nft.list_table` reads a table as nft's JSON (``nft -j list table``), or
  None when it is missing; `fingerprint` digests it without the parts the
  kernel changes by itself (handles, counter values, set element expiry), so
  a caller that remembers the fingerprint of what it wrote can tell whether
  the table was since changed by someone else (`Nft.state`).
- Errors are `NftError`: which operation, which namespace, nft's message and
  the script line it points at.

The calls are synchronous: in the caller's own namespace libnftables runs them
in-process (~0.2 ms; the library is the `nft` binary's engine), in another
namespace one short-lived `nft` process each (~5-25 ms). An asyncio caller
runs them with ``asyncio.to_thread``.
"""

from __future__ import annotations

import ctypes
import enum
import errno
import hashlib
import json
import os
import re
import struct
import subprocess
import threading
from collections.abc import Iterable
from dataclasses import dataclass

OWNED_PREFIX = "podbgp"
FAMILIES = ("ip", "ip6", "inet", "arp", "bridge", "netdev")

# Object keywords that may follow a command at the top level of an nft script,
# each followed by [family] table-name.
_OBJECTS = {
    "table", "chain", "rule", "set", "map", "element", "flowtable",
    "counter", "quota", "limit", "ct", "secmark", "synproxy",
}
_COMMANDS = {
    "add", "create", "insert", "replace", "delete", "destroy", "flush",
    "reset", "list", "rename",
}
_CT_OBJECTS = {"helper", "timeout", "expectation"}
_ERR_POS = re.compile(r"^/dev/stdin:(\d+):(\d+)-(\d+): (.*)$")


def is_owned(table: str) -> bool:
    """True for table names podbgp owns: ``podbgp`` and ``podbgp-``/``podbgp_``*."""
    return table == OWNED_PREFIX or (
        table.startswith(OWNED_PREFIX) and table[len(OWNED_PREFIX)] in "-_"
    )


class NftError(RuntimeError):
    """An nft operation failed; the message names what failed and where."""

    def __init__(self, op: str, message: str, *, netns: str | None = None,
                 line: str | None = None) -> None:
        where = f" in netns {netns}" if netns else ""
        text = f"nft {op}{where}: {message}"
        if line is not None:
            text += f" (script line: {line.strip()!r})"
        super().__init__(text)
        self.op = op
        self.netns = netns
        self.nft_message = message
        self.line = line


class NotOwnedError(NftError):
    """A script or call named a table podbgp does not own (nothing ran)."""


class TableState(enum.Enum):
    OK = "ok"
    MISSING = "missing"
    TAMPERED = "tampered"


@dataclass(frozen=True)
class TableRef:
    family: str
    name: str

    def __str__(self) -> str:
        return f"{self.family} {self.name}"


# ----------------------------------------------------------- script scanning


def _statements(script: str) -> Iterable[tuple[int, list[str]]]:
    """Top-level statements of an nft script as (line number, tokens).

    Tokens inside ``{ ... }`` blocks are dropped (a table block's contents
    name no table); quoted strings and comments are skipped.
    """
    depth = 0
    tokens: list[str] = []
    start_line = 1
    line_no = 1
    i = 0
    n = len(script)
    while i < n:
        c = script[i]
        if c == "\n" or c == ";":
            if depth == 0 and tokens:
                yield start_line, tokens
                tokens = []
            if c == "\n":
                line_no += 1
            i += 1
            continue
        if c == "#":
            while i < n and script[i] != "\n":
                i += 1
            continue
        if c == '"':
            j = script.find('"', i + 1)
            i = n if j < 0 else j + 1
            continue
        if c == "{":
            depth += 1
            i += 1
            continue
        if c == "}":
            depth -= 1
            if depth < 0:
                raise NotOwnedError("apply", f"unbalanced '}}' on line {line_no}")
            i += 1
            continue
        if c.isspace():
            i += 1
            continue
        j = i
        while j < n and not script[j].isspace() and script[j] not in ';{}#"':
            j += 1
        if depth == 0:
            if not tokens:
                start_line = line_no
            tokens.append(script[i:j])
        i = j
    if depth == 0 and tokens:
        yield start_line, tokens


def tables_in_script(script: str) -> list[TableRef]:
    """Every table the top-level statements of `script` name, in order.

    Raises `NotOwnedError` for a statement that names no table (``flush
    ruleset``, ``list tables``, ``include``, ``define`` ...): such statements
    reach beyond one table, and this driver does not run them.
    """
    lines = script.splitlines()
    out: list[TableRef] = []
    for line_no, toks in _statements(script):
        line = lines[line_no - 1] if line_no <= len(lines) else ""
        k = 0
        if toks[0] in _COMMANDS:
            k = 1
        if k >= len(toks) or toks[k] not in _OBJECTS:
            raise NotOwnedError(
                "apply", f"statement does not name one table: {' '.join(toks)!r}",
                line=line,
            )
        if toks[k] == "ct" and k + 1 < len(toks) and toks[k + 1] in _CT_OBJECTS:
            k += 1
        k += 1
        family = "ip"  # nft's default family when none is given
        if k < len(toks) and toks[k] in FAMILIES:
            family = toks[k]
            k += 1
        if k >= len(toks):
            raise NotOwnedError("apply", f"statement names no table: {' '.join(toks)!r}",
                                line=line)
        out.append(TableRef(family, toks[k]))
    return out


def check_owned(script: str) -> list[TableRef]:
    """The tables `script` touches; `NotOwnedError` if any is not podbgp's."""
    refs = tables_in_script(script)
    for ref in refs:
        if not is_owned(ref.name):
            raise NotOwnedError(
                "apply", f"table {ref} is not podbgp's (owned names start with "
                f"{OWNED_PREFIX!r}); nothing was run",
            )
    return refs


# ------------------------------------------------------------- fingerprints

_VOLATILE = {"handle", "expires", "packets", "bytes", "metainfo"}


def normalize(listing: dict) -> list:
    """nft's JSON listing without what the kernel changes on its own."""

    def strip(x):
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if k not in _VOLATILE}
        if isinstance(x, list):
            return [strip(v) for v in x]
        return x

    return [strip(o) for o in listing.get("nftables", []) if "metainfo" not in o]


def fingerprint(listing: dict | None) -> str | None:
    """A digest of a table's listing that ignores handles and counter values."""
    if listing is None:
        return None
    blob = json.dumps(normalize(listing), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


# -------------------------------------------------------------------- driver


class _Lib:
    """libnftables in this process: the library the `nft` binary is a front end to
    (Debian's nftables package ships it), driven with the same command text.
    ~0.2 ms a call instead of ~5-25 ms for starting `nft`; one context, used
    under a lock (the agent calls from worker threads)."""

    _JSON = 1 << 4  # NFT_CTX_OUTPUT_JSON

    def __init__(self) -> None:
        lib = ctypes.CDLL(_LIBNFTABLES)
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        for fn in ("nft_ctx_buffer_output", "nft_ctx_buffer_error"):
            getattr(lib, fn).argtypes = [ctypes.c_void_p]
        for fn in ("nft_ctx_get_output_buffer", "nft_ctx_get_error_buffer"):
            getattr(lib, fn).argtypes = [ctypes.c_void_p]
            getattr(lib, fn).restype = ctypes.c_char_p
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        lib.nft_ctx_set_dry_run.argtypes = [ctypes.c_void_p, ctypes.c_bool]
        self.lib = lib
        self.ctx = lib.nft_ctx_new(0)  # NFT_CTX_DEFAULT
        if not self.ctx:
            raise OSError("nft_ctx_new failed")
        lib.nft_ctx_buffer_output(self.ctx)
        lib.nft_ctx_buffer_error(self.ctx)
        self.lock = threading.Lock()

    def run(self, text: str, *, dry_run: bool, json_out: bool) -> tuple[int, str, str]:
        with self.lock:
            self.lib.nft_ctx_set_dry_run(self.ctx, dry_run)
            self.lib.nft_ctx_output_set_flags(self.ctx, self._JSON if json_out else 0)
            rc = self.lib.nft_run_cmd_from_buffer(self.ctx, text.encode())
            out = (self.lib.nft_ctx_get_output_buffer(self.ctx) or b"").decode()
            err = (self.lib.nft_ctx_get_error_buffer(self.ctx) or b"").decode()
        return rc, out, err


_LIBNFTABLES = "libnftables.so.1"
_lib: _Lib | None = None
_lib_failed = False
_lib_guard = threading.Lock()


def _library() -> _Lib | None:
    global _lib, _lib_failed
    with _lib_guard:
        if _lib is None and not _lib_failed:
            try:
                _lib = _Lib()
            except (OSError, AttributeError):
                _lib_failed = True  # no library: the nft binary is used
        return _lib


# nf_tables over netlink, for `Nft.table_exists` (linux/netfilter/nfnetlink.h, nf_tables.h)
_NETLINK_NETFILTER = 12
_NFT_MSG_GETTABLE = (10 << 8) | 1  # NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETTABLE
_NFT_MSG_NEWTABLE = (10 << 8) | 0
_NFTA_TABLE_NAME = 1
_NLM_F_REQUEST_ACK = 0x1 | 0x4
_NFPROTO = {"inet": 1, "ip": 2, "arp": 3, "netdev": 5, "bridge": 7, "ip6": 10}


def _nfnl_table_exists(netns: str | None, nfproto: int, name: str) -> bool:
    """True if the kernel holds table `name` of family `nfproto`; False on ENOENT;
    OSError for any other answer (or none within 5 s). The socket, attribute and
    message walking are fib_sync.netlink's (loaded by the daemon anyway)."""
    from fib_sync.netlink import (
        _HDR,
        NLMSG_ERROR,
        _netlink_socket,
        _nla,
        iter_messages,
        parse_error,
    )

    with _netlink_socket(netns, _NETLINK_NETFILTER) as sock:
        sock.settimeout(5.0)
        sock.bind((0, 0))
        # nfgenmsg (family, version 0, res_id 0), then the table's name
        body = struct.pack("=BBH", nfproto, 0, 0) + _nla(_NFTA_TABLE_NAME, name.encode() + b"\0")
        sock.send(_HDR.pack(16 + len(body), _NFT_MSG_GETTABLE, _NLM_F_REQUEST_ACK, 1, 0) + body)
        found = False
        while True:
            data = sock.recv(65536)
            for off, ln, typ, flags, seq in iter_messages(data, len(data)):
                if seq != 1:
                    continue
                if typ == _NFT_MSG_NEWTABLE:
                    found = True
                elif typ == NLMSG_ERROR:
                    err, _text = parse_error(data, off, ln, flags)
                    if err == 0:
                        return found
                    if err == errno.ENOENT:
                        return False
                    raise OSError(err, f"nf_tables GETTABLE: {os.strerror(err)}")


class Nft:
    """Runs nft in one network namespace (None: the caller's own).

    In the caller's own namespace the commands go to libnftables in-process
    (`in_process`, the default when the library loads); in another namespace,
    or with ``in_process=False``, to the `nft` binary (``ip netns exec``).
    Either way one command text is one transaction with the same semantics.
    """

    def __init__(self, netns: str | None = None, binary: str | None = None,
                 timeout: float = 30.0, in_process: bool | None = None) -> None:
        self.netns = netns
        self._binary = binary
        self.timeout = timeout
        want = netns is None and binary is None if in_process is None else in_process
        self._want_lib = want and netns is None
        self._lib_resolved = not self._want_lib
        self._lib_handle: _Lib | None = None

    @property
    def _lib(self) -> _Lib | None:
        """libnftables, loaded by the first command that needs it (not by the
        constructor: a caller with nothing to do never maps the library)."""
        if not self._lib_resolved:
            self._lib_handle = _library()
            self._lib_resolved = True
        return self._lib_handle

    @property
    def in_process(self) -> bool:
        return self._lib is not None

    @property
    def binary(self) -> str:
        """The `nft` program, looked up on first use (shutil, which imports bz2 and
        lzma, stays out of a daemon that never runs it: issue 17)."""
        if self._binary is None:
            import shutil

            self._binary = shutil.which("nft") or "/usr/sbin/nft"
        return self._binary

    def _cmd(self, *args: str) -> list[str]:
        cmd = [self.binary, *args]
        if self.netns:
            cmd = ["ip", "netns", "exec", self.netns, *cmd]
        return cmd

    def _nft(self, op: str, text: str, *, dry_run: bool = False, json_out: bool = False,
             script: str | None = None) -> str:
        """Run command text (a script, or one command) as one transaction."""
        if self._lib is not None:
            rc, out, err = self._lib.run(text, dry_run=dry_run, json_out=json_out)
            if rc == 0:
                return out
            if script is not None and "\n" in script.strip() and not dry_run:
                # The library names no line of a multi-line script: let `nft -c`
                # find it (nothing was applied; the check sees the same kernel state).
                try:
                    self._run(op, ["-c", "-f", "-"], stdin=script, script=script)
                except NftError as e:
                    raise e from None
            raise self._error(op, err, script)
        if json_out:  # nft 1.0.6 prints no JSON for commands read with -f: one command
            return self._run(op, ["-j", *text.split()], script=script)
        return self._run(op, [*(["-c"] if dry_run else []), "-f", "-"], stdin=text,
                         script=script)

    def _run(self, op: str, args: list[str], stdin: str | None = None,
             script: str | None = None) -> str:
        try:
            r = subprocess.run(
                self._cmd(*args), input=stdin, capture_output=True, text=True,
                timeout=self.timeout,
            )
        except FileNotFoundError as e:
            raise NftError(op, f"cannot run {self.binary!r}: {e.strerror} "
                           "(install Debian's nftables package)", netns=self.netns) from e
        except subprocess.TimeoutExpired as e:
            raise NftError(op, f"timed out after {self.timeout:g}s",
                           netns=self.netns) from e
        if r.returncode != 0:
            raise self._error(op, r.stderr, script)
        return r.stdout

    def _error(self, op: str, stderr: str, script: str | None) -> NftError:
        lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
        message = lines[0] if lines else "failed with no message"
        line = None
        m = _ERR_POS.match(message)
        if m:
            message = m.group(4)
            if script is not None:
                script_lines = script.splitlines()
                idx = int(m.group(1)) - 1
                if 0 <= idx < len(script_lines):
                    line = script_lines[idx]
        elif len(lines) > 1 and "netns" in message:
            message = " ".join(lines)
        return NftError(op, message, netns=self.netns, line=line)

    # --------------------------------------------------------- transactions

    def apply(self, script: str) -> None:
        """Run `script` as one atomic transaction (all of it or nothing)."""
        check_owned(script)
        self._nft("apply", script, script=script)

    def check(self, script: str) -> None:
        """Have nft parse and check `script` against the kernel without applying it."""
        check_owned(script)
        self._nft("check", script, dry_run=True, script=script)

    # -------------------------------------------------------------- reading

    def list_table(self, family: str, name: str) -> dict | None:
        """The table as nft's JSON document, or None when it does not exist."""
        self._require_owned("list", family, name)
        try:
            out = self._nft("list", f"list table {family} {name}", json_out=True)
        except NftError as e:
            if "No such file or directory" in e.nft_message:
                return None
            raise
        try:
            return json.loads(out)
        except json.JSONDecodeError as e:
            raise NftError("list", f"unreadable JSON for table {family} {name}: {e}",
                           netns=self.netns) from e

    def list_tables(self) -> list[TableRef]:
        """Every table in the namespace (podbgp's and others', names only)."""
        doc = json.loads(self._nft("list", "list tables", json_out=True) or "{}")
        return [
            TableRef(o["table"]["family"], o["table"]["name"])
            for o in doc.get("nftables", []) if "table" in o
        ]

    def exists(self, family: str, name: str) -> bool:
        return TableRef(family, name) in self.list_tables()

    def table_exists(self, family: str, name: str) -> bool:
        """Whether one of podbgp's tables exists, asked of the kernel directly
        (nf_tables' GETTABLE over netlink): neither libnftables nor an `nft`
        process, for a caller that only wants to know whether it has anything to
        do. Falls back to `exists` when netlink gives no clear answer."""
        self._require_owned("list", family, name)
        try:
            return _nfnl_table_exists(self.netns, _NFPROTO[family], name)
        except OSError:
            return self.exists(family, name)

    def fingerprint(self, family: str, name: str) -> str | None:
        return fingerprint(self.list_table(family, name))

    def state(self, family: str, name: str, expected: str | None) -> TableState:
        """MISSING, or TAMPERED when the table's fingerprint is not `expected`."""
        fp = self.fingerprint(family, name)
        if fp is None:
            return TableState.MISSING
        return TableState.OK if fp == expected else TableState.TAMPERED

    def delete_table(self, family: str, name: str) -> None:
        """Remove one of podbgp's tables if present (tests and explicit teardown)."""
        self._require_owned("delete", family, name)
        # "add" then "delete" in one transaction: succeeds whether or not it
        # existed (nft 1.0.6 has no "destroy").
        self.apply(f"add table {family} {name}\ndelete table {family} {name}\n")

    def _require_owned(self, op: str, family: str, name: str) -> None:
        if family not in FAMILIES:
            raise NftError(op, f"unknown nft family {family!r}", netns=self.netns)
        if not is_owned(name):
            raise NotOwnedError(op, f"table {family} {name} is not podbgp's",
                                netns=self.netns)
