"""Shared helpers for the benchmarks: namespaces, processes, kernel counters, tables.

Owned by bench/. ``Netns`` records everything it creates in a state file in
lab.harness's format (``/run/podbgp-lab/<prefix>.json``), so a benchmark that
is killed half-way is cleaned up by the next lab or benchmark run
(``lab.harness.cleanup_leftovers``). Processes are ended by PID only.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import structlog

from lab import harness

log = structlog.get_logger(__name__)

REPO = Path(__file__).resolve().parent.parent
BIRD1 = REPO / ".cache" / "bird1" / "usr" / "sbin" / "bird"
RESULTS_DIR = REPO / "bench" / "results"


def require_root(name: str) -> None:
    if os.geteuid() != 0:
        print(f"{name} needs root (network namespaces)", file=sys.stderr)
        raise SystemExit(2)


bin_path = harness.bin_path  # a console script of this venv, else PATH


def prefixes(n: int, first_octet: int = 10) -> list[str]:
    """n distinct /26 prefixes inside first_octet.0.0.0/8 (4 per /24)."""
    if not 0 < n <= 1 << 18:
        raise ValueError(f"prefix count {n} out of range 1..{1 << 18}")
    return [f"{first_octet}.{i >> 10}.{(i >> 2) & 255}.{(i & 3) * 64}/26" for i in range(n)]


# ------------------------------------------------------------------ kernel
def fib_prefixes(pid: int) -> int:
    """The "Prefixes" count of the Main table of the namespace `pid` lives in.

    /proc/<pid>/net is the network view of that process: no `ip netns exec`,
    ~3 ms at 100k routes instead of a 1.4 s dump (docs/testing.md)."""
    with open(f"/proc/{pid}/net/fib_triestat") as f:
        text = f.read()
    main = text.find("Main:")
    if main < 0:  # an empty table has no section at all
        return 0
    i = text.find("Prefixes:", main)
    end = text.find("Local:", main)
    if i < 0 or (0 <= end < i):
        return 0
    return int(text[i + 9 : text.index("\n", i)])


def proc_routes(pid: int) -> set[str]:
    """IPv4 routes of the main table (as "a.b.c.d/len") seen by process `pid`."""
    out = set()
    with open(f"/proc/{pid}/net/route") as f:
        next(f)
        for line in f:
            parts = line.split()
            dst, mask = int(parts[1], 16), int(parts[7], 16)
            addr = ".".join(str((dst >> s) & 255) for s in (0, 8, 16, 24))
            out.add(f"{addr}/{bin(mask).count('1')}")
    return out


def rss_tree(pid: int) -> int:
    """Resident bytes of `pid` and all its descendants."""
    return sum(rss(p) for p in proc_tree(pid))


def proc_tree(pid: int) -> list[int]:
    """`pid` and all its live descendants."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, ()))
    return out


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, children: bool = True) -> float:
    """User + system CPU seconds of `pid` (with `children`: plus its reaped children)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # fields[0] is field 3 (state): utime, stime, cutime, cstime are fields 14-17
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / _TICK


def cpu_tree(pid: int) -> float:
    """CPU seconds of a process tree: every live member, plus what its reaped
    children used (so a relay that ExaBGP respawned still counts)."""
    return sum(cpu_seconds(p) for p in proc_tree(pid))


def peak_rss_tree(pid: int) -> int:
    """Sum of each live tree member's peak resident size (VmHWM): an upper bound of
    the tree's peak (the members need not peak at the same moment)."""
    total = 0
    for p in proc_tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            pass
    return total


def smaps_tree(pids: list[int]) -> dict[str, int]:
    """Memory of the process trees rooted at ``pids``, bytes: ``rss`` (resident),
    ``pss`` (proportional: a page shared by n processes counts 1/n in each, so
    the sum over a tree counts a page its members share once, and a page shared
    with processes outside the tree only in part; other Python processes on the
    machine therefore lower it a little), ``uss`` (private to one process: freed
    if that process exits) and ``procs`` (live processes), from
    /proc/<pid>/smaps_rollup."""
    out = {"rss": 0, "pss": 0, "uss": 0, "procs": 0}
    for root in pids:
        for p in proc_tree(root):
            m = smaps(p)
            if m is not None:
                out["procs"] += 1
                for k in ("rss", "pss", "uss"):
                    out[k] += m[k]
    return out


def smaps(pid: int) -> dict[str, int] | None:
    """``rss``, ``pss``, ``uss`` of one process in bytes (None: it is gone)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            fields = {}
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[-1] == "kB":
                    fields[parts[0].rstrip(":")] = int(parts[1]) * 1024
    except OSError:
        return None
    return {"rss": fields.get("Rss", 0), "pss": fields.get("Pss", 0),
            "uss": fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)}


def rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


# --------------------------------------------------------------- namespaces
class Netns:
    """Throwaway namespaces + processes for one benchmark trial (context manager).

    State is written in lab.harness's leftover format before anything is
    created, so a crash is cleaned up by the next run."""

    def __init__(self, tag: str = "bn") -> None:
        self.prefix = tag + uuid.uuid4().hex[:4]
        self.workdir = Path(tempfile.mkdtemp(prefix="podbgp-bench-"))
        os.chmod(self.workdir, 0o755)  # FRR runs as user frr and reads its config here
        self.namespaces: list[str] = []
        self.pids: list[int] = []
        self.procs: list[subprocess.Popen] = []
        self._state = harness.STATE_DIR / f"{self.prefix}.json"
        self._links = 0

    def _save(self) -> None:
        harness.write_state(self._state, self.namespaces, self.pids, self.workdir)

    def __enter__(self) -> Netns:
        harness.cleanup_leftovers()
        self._save()
        return self

    def __exit__(self, *exc) -> None:
        self.down()

    def add_ns(self, short: str) -> str:
        name = f"{self.prefix}{short}"
        self.namespaces.append(name)
        self._save()
        harness.run("ip", "netns", "add", name)
        harness.run("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def link(self, ns1: str, addr1: str, ns2: str, addr2: str) -> tuple[str, str]:
        """A veth pair between two namespaces with the given addresses (CIDR); its
        (ns1 side, ns2 side) interface names."""
        self._links += 1
        a, b = f"{self.prefix}a{self._links}", f"{self.prefix}b{self._links}"
        harness.run("ip", "link", "add", a, "netns", ns1, "type", "veth", "peer", "name", b,
                    "netns", ns2)
        for ns, ifn, addr in ((ns1, a, addr1), (ns2, b, addr2)):
            harness.run("ip", "-n", ns, "addr", "add", addr, "dev", ifn)
            harness.run("ip", "-n", ns, "link", "set", ifn, "up")
        return a, b

    def add_addresses(self, ns: str, ifname: str, cidrs: list[str]) -> None:
        """Many addresses on one link in one `ip -batch` (hundreds of `ip` runs take seconds)."""
        if cidrs:
            harness.run("ip", "-n", ns, "-batch", "-",
                        input="".join(f"addr add {c} dev {ifname}\n" for c in cidrs))

    def spawn(self, ns: str, cmd: list[str], log_name: str, *, pipes: bool = False,
              env: dict | None = None) -> subprocess.Popen:
        """Run `cmd` in `ns` (exec'd by `ip netns exec`, so the PID is the command's)."""
        log_path = self.workdir / log_name
        with open(log_path, "ab") as logf:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", ns, *cmd], env=env, start_new_session=True, cwd=REPO,
                stdin=subprocess.PIPE if pipes else subprocess.DEVNULL,
                stdout=subprocess.PIPE if pipes else logf, stderr=logf,
                text=pipes, bufsize=1 if pipes else -1)
        self.pids.append(proc.pid)
        self.procs.append(proc)
        self._save()
        return proc

    def anchor(self, ns: str) -> int:
        """A sleeping process in `ns`: its /proc/<pid>/net shows that namespace."""
        pid = self.spawn(ns, ["sleep", "100000"], "anchor.log").pid
        wait_in_ns(pid, ns)
        return pid

    def kill(self, pid: int, sig: int = signal.SIGTERM, wait: float = 5.0) -> None:
        harness._kill_pid(pid, sig, wait=wait)

    def log(self, name: str, tail: int = 30) -> str:
        p = self.workdir / name
        if not p.exists():
            return ""
        return "\n".join(p.read_text(errors="replace").splitlines()[-tail:])

    def down(self) -> None:
        for proc in self.procs:
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
        for pid in reversed(self.pids):
            harness._kill_pid(pid, signal.SIGTERM, wait=2)
        for ns in reversed(self.namespaces):
            harness._del_ns(ns)
        shutil.rmtree(self.workdir, ignore_errors=True)
        self._state.unlink(missing_ok=True)
        self.namespaces.clear()
        self.pids.clear()
        self.procs.clear()


def wait_in_ns(pid: int, ns: str, timeout: float = 10.0) -> None:
    """Wait until `pid` (spawned by `ip netns exec ns`) has entered `ns`: until
    then its /proc/<pid>/net is the ROOT namespace's view."""
    want = os.stat(f"/var/run/netns/{ns}").st_ino
    wait_until(lambda: os.stat(f"/proc/{pid}/ns/net").st_ino == want, timeout,
               f"pid {pid} to enter namespace {ns}", interval=0.002)


def wait_until(pred, timeout: float, what: str, interval: float = 0.01):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


# ------------------------------------------------------------------ output
def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def percentile(xs: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    k = max(0, min(len(s) - 1, math.ceil(p / 100 * len(s)) - 1))
    return s[k]


def table(headers: list[str], rows: list[list]) -> str:
    """A GitHub-markdown table (also readable as plain text)."""
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) + " |"
             for r in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _fmt(c) -> str:
    if isinstance(c, float):
        if c != c:
            return "—"
        return f"{c:.3f}" if c < 100 else f"{c:,.0f}"
    if isinstance(c, int):
        return f"{c:,}"
    return str(c)


def write_json(name: str, data: dict) -> Path:
    """Machine-readable results for run_all (bench/results/<name>.json)."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    p = RESULTS_DIR / f"{name}.json"
    p.write_text(json.dumps(data, indent=1, default=str) + "\n")
    return p


def _version(cmd: list[str]) -> str:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "not found"
    out = (r.stdout + r.stderr).strip().splitlines()
    return out[0].strip() if out else "?"


def machine() -> dict[str, str]:
    mem = "?"
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        mem = f"{int(f.readline().split()[1]) // 1024} MiB"
    cpu = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    from bgpd import __version__

    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "nproc": str(os.cpu_count()), "cpu": cpu, "memory": mem,
        "kernel": platform.release(), "python": platform.python_version(),
        "podbgp": __version__,
        "exabgp": _version([bin_path("exabgp"), "version"]),
        "bird1": _version([str(BIRD1), "--version"]),
        "bird2": _version(["bird", "--version"]),
        "frr": _version(["/usr/lib/frr/bgpd", "--version"]),
        "loadavg": open("/proc/loadavg").read().split(" ", 3)[:3].__str__(),
    }
