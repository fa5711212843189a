"""Benchmark: convergence of K routes into the kernel — podbgp against BIRD 1.6, BIRD 2, FRR.

    sudo .venv/bin/python -m bench.convergence [--k 1000,20000,100000] [--reps 3]
        [--dut podbgp,bird1,bird2,frr] [--quick] [--json PATH] [--profile DIR]

Per trial, fresh namespaces: DUT <-veth-> injector (bench.injector, a raw
BGP speaker with pre-built UPDATEs). The DUT connects, the injector sends K
/26 routes (800 NLRI per UPDATE, one attribute set) and End-of-RIB as soon as
the session is Established. Clocks (CLOCK_MONOTONIC, shared by all
processes): Established (DUT's first KEEPALIVE) and first UPDATE -> all K
routes in the DUT's main table ("Prefixes" of /proc/<pid>/net/fib_triestat,
~3 ms a read at 100k, so polling barely competes with the DUT); then
withdraw of all K -> all gone. Resident memory of the DUT (process tree:
podbgp = daemon + ExaBGP child; FRR = zebra + bgpd) is read once all K are in.
Trials interleave DUTs so machine drift hits all alike; medians are reported.

The last line: `convergence: podbgp/BIRD1.6 <r20k>x at 20k, <r100k>x at 100k, memory <m>x`.
"""

from __future__ import annotations

import argparse
import contextlib
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from bench.common import (
    Netns,
    cpu_seconds,
    fib_prefixes,
    median,
    proc_tree,
    require_root,
    rss_tree,
    table,
    write_json,
)
from bench.duts import DUT_IP, DUTS, INJ_IP, LABELS, parse_duts_and_counts

DEFAULT_K = (1_000, 20_000, 100_000)
# issue 17: podbgp's Established -> all routes in the kernel, as a multiple of BIRD 1.6's
TARGETS_X = {20_000: 2.0, 100_000: 2.5}


@dataclass
class Trial:
    dut: str
    k: int
    rep: int
    established_s: float = float("nan")  # Established -> all K in kernel
    first_update_s: float = float("nan")  # first UPDATE sent -> all K in kernel
    withdraw_s: float = float("nan")  # first withdraw sent -> all gone
    rss_bytes: int = 0
    # CPU seconds (user + system) from Established to all K in the kernel: robust to
    # load where wall time is not. main = the DUT's first process (podbgp: the daemon),
    # children = the rest of its tree (podbgp: ExaBGP; FRR: zebra's side is main).
    cpu_main_s: float = float("nan")
    cpu_children_s: float = float("nan")
    error: str = ""


class Injector:
    """The injector subprocess and its timestamped report lines."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.lines: queue.Queue[tuple[str, str]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with contextlib.suppress(ValueError, OSError):
            for line in self.proc.stdout:
                tag, _, rest = line.strip().partition(" ")
                self.lines.put((tag, rest))
        self.lines.put(("eof", ""))

    def expect(self, tag: str, timeout: float, alive: Callable[[], None] | None = None) -> float:
        """The injector's time of ``tag``; ``alive`` (a DUT check) is asked every second
        meanwhile, so a DUT that died at start fails the trial at once, not at the timeout."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"injector: no {tag!r} within {timeout:.0f}s")
            try:
                got, rest = self.lines.get(timeout=min(left, 1.0))
            except queue.Empty:
                if alive is not None:
                    alive()
                continue
            if got == tag:
                return float(rest)
            if got in ("eof", "error", "notification", "closed"):
                raise RuntimeError(f"injector: {got} {rest} (waiting for {tag})")

    def send(self, cmd: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()


def poll_kernel(anchor: int, done, timeout: float, alive) -> float:
    """CLOCK_MONOTONIC of the first read where done(count) holds.

    Sleeps twice the cost of a read between reads: at most a third of one core
    goes to watching, and the resolution stays a few ms at 100k routes."""
    deadline = time.monotonic() + timeout
    checks = 0
    while True:
        t0 = time.monotonic()
        n = fib_prefixes(anchor)
        t1 = time.monotonic()
        if done(n):
            return t1
        if t1 > deadline:
            raise TimeoutError(f"kernel has {n} prefixes after {timeout:.0f}s")
        checks += 1
        if checks % 50 == 0:
            alive()
        time.sleep(max(0.001, 2 * (t1 - t0)))


def injector_pair(env: Netns, k: int) -> tuple[str, int, int, Injector]:
    """The DUT's namespace linked to an injector of ``k`` routes (started, not yet
    listening): (DUT namespace, its FIB anchor, its FIB size before, the injector)."""
    dut_ns, inj_ns = env.add_ns("d"), env.add_ns("i")
    env.link(dut_ns, f"{DUT_IP}/24", inj_ns, f"{INJ_IP}/24")
    anchor = env.anchor(dut_ns)
    base = fib_prefixes(anchor)
    inj = Injector(env.spawn(inj_ns, [sys.executable, "-m", "bench.injector", "--listen",
                                      INJ_IP, "--count", str(k)],
                             "injector.log", pipes=True))
    return dut_ns, anchor, base, inj


def dut_alive_check(env: Netns, dut: str, pids: list[int]) -> Callable[[], None]:
    """A check that raises (with the end of the DUT's log) once a DUT process exited."""
    def alive() -> None:
        for p in env.procs:
            if p.pid in pids and p.poll() is not None:
                raise RuntimeError(f"{dut} exited ({p.returncode}): {env.log('dut.log', 5)}")
    return alive


def trial(dut: str, k: int, rep: int, timeout: float, profile_dir: str | None = None) -> Trial:
    tr = Trial(dut=dut, k=k, rep=rep)
    with Netns("bc") as env:
        dut_ns, anchor, base, inj = injector_pair(env, k)
        pids: list[int] = []
        spy = None
        try:
            inj.expect("listening", 60)
            pids = DUTS[dut](env, dut_ns)

            alive = dut_alive_check(env, dut, pids)

            if profile_dir and dut == "podbgp":
                spy = start_profiler(pids[0], f"{profile_dir}/podbgp-{k}.txt")
            t_est = inj.expect("established", 120, alive)
            cpu0 = cpu_split(pids[0])
            t_first = inj.expect("first_update", 10)
            t_in = poll_kernel(anchor, lambda n: n >= base + k, timeout, alive)
            cpu1 = cpu_split(pids[0])
            tr.established_s, tr.first_update_s = t_in - t_est, t_in - t_first
            tr.cpu_main_s, tr.cpu_children_s = cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]
            tr.rss_bytes = sum(rss_tree(p) for p in pids)
            if spy is not None:
                stop_profiler(spy)
                spy = None
            inj.send("withdraw")
            t_wd = inj.expect("withdraw", 10)
            t_out = poll_kernel(anchor, lambda n: n <= base, timeout, alive)
            tr.withdraw_s = t_out - t_wd
        except Exception as e:
            tr.error = f"{type(e).__name__}: {e}"
            tail = env.log("dut.log", 8) or env.log("bgpd.log", 8)
            if tail:
                tr.error += f" | dut log: {tail[-600:]}"
        finally:
            if spy is not None:
                stop_profiler(spy)
            with contextlib.suppress(OSError, ValueError):
                inj.send("quit")
    return tr


def cpu_split(pid: int) -> tuple[float, float]:
    """(CPU seconds of ``pid`` itself, of the rest of its tree)."""
    main = cpu_seconds(pid, children=False)
    return main, sum(cpu_seconds(p) for p in proc_tree(pid) if p != pid)


def start_profiler(pid: int, out: str) -> subprocess.Popen | None:
    """py-spy on the daemon (if installed): a flame graph of the convergence."""
    from bench.common import bin_path

    try:
        spy = bin_path("py-spy")
    except RuntimeError:
        print("(py-spy not installed: no profile)", file=sys.stderr)
        return None
    return subprocess.Popen([spy, "record", "-p", str(pid), "-o", out, "-r", "200", "-f", "raw",
                             "--subprocesses", "--nonblocking"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_profiler(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def summarize(trials: list[Trial], duts: list[str], ks: list[int]) -> dict:
    """Medians per (dut, k) over the successful trials."""
    out: dict = {}
    for d in duts:
        for k in ks:
            ok = [t for t in trials if t.dut == d and t.k == k and not t.error]
            out[f"{d}/{k}"] = {
                "dut": d, "k": k, "n": len(ok),
                "established_s": median([t.established_s for t in ok]),
                "first_update_s": median([t.first_update_s for t in ok]),
                "withdraw_s": median([t.withdraw_s for t in ok]),
                "rss_bytes": median([t.rss_bytes for t in ok]) if ok else 0,
                "cpu_main_s": median([t.cpu_main_s for t in ok]),
                "cpu_children_s": median([t.cpu_children_s for t in ok]),
            }
    return out


def report(summary: dict, trials: list[Trial], duts: list[str], ks: list[int]) -> tuple[str, dict]:
    lines = []
    for k in ks:
        rows = []
        for d in duts:
            s = summary[f"{d}/{k}"]
            rows.append([LABELS[d], s["n"], s["established_s"], s["first_update_s"],
                         s["withdraw_s"], k / s["established_s"] if s["n"] else float("nan"),
                         s["rss_bytes"] / 2**20 if s["n"] else float("nan"),
                         s["cpu_main_s"], s["cpu_children_s"]])
        lines.append(f"\nK = {k:,} routes (median of the successful trials; seconds)\n")
        lines.append(table(["DUT", "ok", "Established->kernel", "1st UPDATE->kernel",
                            "withdraw->gone", "routes/s", "RSS MiB", "CPU s (main)",
                            "CPU s (children)"], rows))
    kmax = max(ks)
    head: dict = {}
    ref = "bird1" if "bird1" in duts else None
    if ref and "podbgp" in duts:
        mem_rows = []
        kmin = min(ks)
        for d in duts:
            s, s0 = summary[f"{d}/{kmax}"], summary[f"{d}/{kmin}"]
            per = s["rss_bytes"] / kmax if s["n"] else float("nan")
            # what one more route costs, without the fixed cost of the runtime
            marg = ((s["rss_bytes"] - s0["rss_bytes"]) / (kmax - kmin)
                    if s["n"] and s0["n"] and kmax > kmin else float("nan"))
            head[f"marginal/{d}"] = marg
            mem_rows.append([LABELS[d], s["rss_bytes"] / 2**20 if s["n"] else float("nan"),
                             per, marg])
        lines.append(f"\nMemory at {kmax:,} routes (resident, whole process tree)\n")
        lines.append(table(["DUT", "RSS MiB", "bytes/route (RSS/K)",
                            f"marginal bytes/route ({kmin // 1000}k->{kmax // 1000}k)"],
                           mem_rows))
        mp, mb = head.pop("marginal/podbgp"), head.get(f"marginal/{ref}", float("nan"))
        head = {"marginal_memory": mp / mb if mb == mb and mb > 0 else float("nan")}
        for k in ks:
            p, b = summary[f"podbgp/{k}"], summary[f"{ref}/{k}"]
            head[k] = (p["established_s"] / b["established_s"]
                       if p["n"] and b["n"] else float("nan"))
        p, b = summary[f"podbgp/{kmax}"], summary[f"{ref}/{kmax}"]
        head["memory"] = p["rss_bytes"] / b["rss_bytes"] if p["n"] and b["n"] else float("nan")
    errors = [t for t in trials if t.error]
    if errors:
        lines.append("\nFailed trials:")
        lines.extend(f"  {t.dut} K={t.k} rep={t.rep}: {t.error[:400]}" for t in errors)
    if head:
        rows = [[f"{k // 1000}k", f"<= {TARGETS_X[k]}x", head[k],
                 "met" if head[k] <= TARGETS_X[k] else "NOT met"] for k in ks if k in TARGETS_X]
        if rows:
            lines.append("\npodbgp against its convergence targets (issue 17), "
                         "Established->kernel as a multiple of BIRD 1.6's\n")
            lines.append(table(["routes", "target", "ratio", "target"], rows))
        parts = [f"{head[k]:.2f}x at {k // 1000}k" for k in ks]
        lines.append(f"\nconvergence: podbgp/BIRD1.6 {', '.join(parts)}, "
                     f"memory {head['memory']:.2f}x at {kmax // 1000}k "
                     f"(marginal per route {head['marginal_memory']:.2f}x)")
    else:
        parts = [f"{LABELS[d]} {summary[f'{d}/{kmax}']['established_s']:.3f}s" for d in duts]
        lines.append(f"\nconvergence: K={kmax}: {', '.join(parts)}")
    return "\n".join(lines), head


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.convergence",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--k", default=",".join(map(str, DEFAULT_K)), help="route counts")
    ap.add_argument("--dut", default="podbgp,bird1,bird2,frr", help="DUTs, comma-separated")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=300, help="seconds per phase")
    ap.add_argument("--quick", action="store_true", help="K=1000, one trial per DUT")
    ap.add_argument("--json", help="write the trials and medians to this file")
    ap.add_argument("--profile", metavar="DIR", help="py-spy flame graphs of podbgp here")
    a = ap.parse_args(argv)
    require_root("bench.convergence")
    duts, ks = parse_duts_and_counts(ap, a.dut, a.k)
    if a.quick:
        ks, a.reps = [1000], 1
    trials: list[Trial] = []
    for k in ks:
        for rep in range(a.reps):
            for d in duts:
                t = trial(d, k, rep, a.timeout, a.profile)
                trials.append(t)
                state = t.error[:120] if t.error else f"{t.established_s:.3f}s"
                print(f"  trial {LABELS[d]:<8} K={k:<7} rep={rep}: {state}", flush=True)
    summary = summarize(trials, duts, ks)
    text, head = report(summary, trials, duts, ks)
    print(text)
    if a.json:
        write_json_path(a.json, {"trials": [asdict(t) for t in trials], "summary": summary,
                                 "headline": {str(k): v for k, v in head.items()},
                                 "duts": duts, "ks": ks})
    return 0 if not any(t.error for t in trials) else 1


def write_json_path(path: str, data: dict) -> None:
    import json
    from pathlib import Path

    Path(path).write_text(json.dumps(data, indent=1, default=str) + "\n")


__all__ = ["Trial", "main", "trial", "write_json"]

if __name__ == "__main__":
    sys.exit(main())
