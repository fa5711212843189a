"""Benchmark: churn at scale — a reflector under a flapping peer and clients resetting in turn.

    sudo .venv/bin/python -m bench.soak [--duration 600] [--clients 100] [--flap 1000]
        [--reflector podbgp,bird2] [--quick] [--json PATH]

Per reflector (podbgp, then BIRD 2, same parameters, fresh namespaces; the lab
of bench.rr_scale): ``--clients`` route-reflector clients (bench.rrclients), each
announcing its /26, plus one more client that also flaps ``--flap`` /26 blocks
(all announced, then all withdrawn, ``--rate`` toggles a second). Meanwhile the
clients reset their sessions in turn (NOTIFICATION Cease, close; the reflector
dials again), one every ``--reset-every`` seconds. For ``--duration`` seconds.

Measured: the reflector's resident memory (whole process tree) every 5 s,
its growth after ``--warmup`` seconds (median of the last 30 s against the
median of the 30 s after warm-up, and the largest sample against that
baseline); its CPU; error lines in its log (podbgp: JSON ``"level": "error"``;
BIRD: lines with "error"); session resets nobody asked for; then, churn
stopped, how long until every client's view equals what is announced
(all blocks but its own, every attribute checked as in bench.rr_scale), and
whether the reflector's kernel table (its Loc-RIB as installed) holds exactly
what is announced.

Targets (issue 16): RSS after warm-up grows < 2 MiB, no error logs, every
client's view equals the reflector's Loc-RIB at the end.
The last line: `soak: podbgp RSS +<x> MiB after warm-up (BIRD 2 +<y>), ...`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field

from bench.common import (
    Netns,
    cpu_tree,
    median,
    proc_routes,
    proc_tree,
    require_root,
    rss_tree,
    table,
)
from bench.rr_scale import (
    LABELS,
    _keep_logs,
    _loadavg,
    lab,
    reflectors,
    start_clients,
    start_reflector,
)
from bench.rrclients import block

TARGET_GROWTH_MIB = 2.0
SAMPLE_EVERY = 5.0
WINDOW = 30.0  # seconds of samples a baseline / final median is taken over


@dataclass
class Soak:
    reflector: str
    duration_s: float
    clients: int
    flap: int
    flaps: int = 0
    cpu_limit: float = 0.0  # cores the reflector was capped at during the churn (0: none)
    resets_done: int = 0
    unexpected_resets: int = 0
    notifications: int = 0
    cpu_s: float = float("nan")
    rss_samples: list[tuple[float, int]] = field(default_factory=list)  # (seconds, bytes)
    # podbgp: podbgp_speaker_events_pending (events parsed, not yet taken by the node)
    # every sample, through the churn and the settling: (seconds, count; -1 unreadable)
    pending_samples: list[tuple[float, int]] = field(default_factory=list)
    pending_at_stop: int = -1
    pending_max: int = -1
    rss_baseline: float = float("nan")
    rss_final: float = float("nan")
    growth_mib: float = float("nan")
    max_growth_mib: float = float("nan")
    error_logs: int = 0
    error_examples: list[str] = field(default_factory=list)
    settle_s: float = float("nan")
    settle_cpu_s: float = float("nan")  # the reflector's CPU from churn's end to the check
    mismatched_clients: int = -1
    wrong_attributes: int = -1
    kernel_equal: bool = False
    kernel_missing: int = -1
    kernel_extra: int = -1
    error: str = ""


def error_lines(kind: str, text: str) -> list[str]:
    out = []
    for line in text.splitlines():
        if kind == "podbgp":
            with contextlib.suppress(ValueError):
                if json.loads(line).get("level") in ("error", "critical"):
                    out.append(line)
            continue
        if "error" in line.lower():
            out.append(line)
    return out


def events_pending(ns: str) -> int:
    """podbgp_speaker_events_pending read from the reflector's /metrics in `ns` (-1: unreadable)."""
    try:
        out = subprocess.run(["ip", "netns", "exec", ns, "curl", "-s", "-m", "2",
                              "http://127.0.0.1:9179/metrics"], capture_output=True,
                             text=True, timeout=5).stdout
    except (OSError, subprocess.TimeoutExpired):
        return -1
    for line in out.splitlines():
        if line.startswith("podbgp_speaker_events_pending "):
            return int(float(line.split()[1]))
    return -1


@contextlib.contextmanager
def cpu_cap(pid: int, fraction: float):
    """While open, `pid`'s process tree gets at most `fraction` of one core (a cgroup's
    CPU quota, v1 or v2): a reflector starved as on a loaded machine, on purpose.
    Yields a callable that lifts the cap (the processes go back to the root group)."""
    v2 = os.path.exists("/sys/fs/cgroup/cgroup.controllers")
    root = "/sys/fs/cgroup" if v2 else "/sys/fs/cgroup/cpu"
    group = f"{root}/podbgp-soak-{os.getpid()}"
    os.mkdir(group)
    period = 100_000
    if v2:
        with open(f"{group}/cpu.max", "w") as f:
            f.write(f"{int(fraction * period)} {period}")
    else:
        with open(f"{group}/cpu.cfs_period_us", "w") as f:
            f.write(str(period))
        with open(f"{group}/cpu.cfs_quota_us", "w") as f:
            f.write(str(int(fraction * period)))

    def move(to: str) -> None:
        for p in proc_tree(pid):
            with contextlib.suppress(OSError), open(f"{to}/cgroup.procs", "w") as f:
                f.write(str(p))

    def lift() -> None:
        move(root)

    move(group)
    try:
        yield lift
    finally:
        lift()
        for _ in range(50):  # a process leaving its group is not instant
            try:
                os.rmdir(group)
                break
            except OSError:
                time.sleep(0.1)


def run(kind: str, a: argparse.Namespace) -> Soak:
    n = a.clients + 1  # client 0 also flaps
    res = Soak(reflector=kind, duration_s=a.duration, clients=a.clients, flap=a.flap,
               cpu_limit=a.cpu_limit)
    with Netns("rk") as env, contextlib.ExitStack() as stack:
        r_ns, c_ns = lab(env, n)
        anchor = env.anchor(r_ns)
        clients = start_clients(env, c_ns, n, "--flap", str(a.flap))
        try:
            pid = start_reflector(env, r_ns, kind, n)
            proc = env.procs[-1]

            def alive() -> None:
                if proc.poll() is not None:
                    raise RuntimeError(f"{kind} exited ({proc.returncode}): "
                                       f"{env.log('reflector.log', 5)[-600:]}")

            clients.expect("converged", a.timeout, alive)
            cap = stack.enter_context(cpu_cap(pid, a.cpu_limit)) if a.cpu_limit else None
            t0 = time.monotonic()
            cpu0 = cpu_tree(pid)
            clients.ask(f"flap on {a.rate}", "flap")
            nxt_sample = nxt_reset = t0
            victim = 1
            while (now := time.monotonic()) < t0 + a.duration:
                if now >= nxt_sample:
                    res.rss_samples.append((now - t0, rss_tree(pid)))
                    if kind == "podbgp":
                        res.pending_samples.append((now - t0, events_pending(r_ns)))
                    nxt_sample += SAMPLE_EVERY
                    alive()
                if now >= nxt_reset:
                    clients.send(f"reset {victim}")
                    res.resets_done += 1
                    victim = victim % a.clients + 1
                    nxt_reset += a.reset_every
                time.sleep(max(0.0, min(nxt_sample, nxt_reset) - time.monotonic()))
            clients.ask("flap off", "flap")
            res.cpu_s = cpu_tree(pid) - cpu0
            if cap is not None:
                cap()  # settling at full speed: a backlog drains, a lost change stays lost
            # Churn over: every client must end up holding exactly what is announced.
            # The reflector's CPU meanwhile tells a backlog (still working through
            # the churn) from a lost change (idle, views still wrong).
            t_stop = time.monotonic()
            cpu_stop = cpu_tree(pid)
            if kind == "podbgp":
                res.pending_at_stop = events_pending(r_ns)
            while True:
                if kind == "podbgp":
                    res.pending_samples.append((time.monotonic() - t0, events_pending(r_ns)))
                check = clients.ask("check", "check", 60)
                if check["mismatched_clients"] == 0 or time.monotonic() - t_stop > a.settle:
                    break
                time.sleep(1.0)
            res.settle_s = time.monotonic() - t_stop
            res.pending_max = max((c for _, c in res.pending_samples), default=-1)
            res.settle_cpu_s = cpu_tree(pid) - cpu_stop
            res.mismatched_clients = check["mismatched_clients"]
            res.wrong_attributes = check["wrong_attributes"]
            res.unexpected_resets, res.notifications = check["resets"], check["notifications"]
            res.flaps = check["flaps"]
            if res.mismatched_clients:
                res.error = f"views differ after {a.settle:.0f}s: {check['examples'][:2]}"
            # The reflector's Loc-RIB as installed in its kernel: the announced blocks.
            announced = {block(i) for i in range(n)}
            if check["announced"] > n:  # the flap set ended announced
                announced |= {block(j, 128) for j in range(a.flap)}
            have = {p for p in proc_routes(anchor) if p.startswith("10.")}
            res.kernel_missing = len(announced - have)
            res.kernel_extra = len(have - announced)
            res.kernel_equal = have == announced
            alive()
        except Exception as e:
            res.error = (res.error + " | " if res.error else "") + f"{type(e).__name__}: {e}"
        finally:
            with contextlib.suppress(OSError, ValueError):
                clients.send("quit")
            errs = error_lines(kind, env.log("reflector.log", 10**6))
            res.error_logs, res.error_examples = len(errs), [e[:300] for e in errs[:3]]
            if a.keep:
                _keep_logs(env, a.keep, f"soak-{kind}")
    _rss_growth(res, a.warmup)
    return res


def _rss_growth(res: Soak, warmup: float) -> None:
    base = [b for t, b in res.rss_samples if warmup <= t < warmup + WINDOW]
    end = res.rss_samples[-1][0] if res.rss_samples else 0.0
    final = [b for t, b in res.rss_samples if t >= end - WINDOW and t >= warmup]
    after = [b for t, b in res.rss_samples if t >= warmup]
    if base and final:
        res.rss_baseline, res.rss_final = median(base), median(final)
        res.growth_mib = (res.rss_final - res.rss_baseline) / 2**20
        res.max_growth_mib = (max(after) - res.rss_baseline) / 2**20


def _count(c: int) -> str:
    return "-" if c < 0 else str(c)


def report(results: list[Soak]) -> tuple[str, dict]:
    rows = []
    for r in results:
        rows.append([LABELS[r.reflector], f"{r.duration_s:.0f}", r.flaps, r.resets_done,
                     r.unexpected_resets, r.cpu_s, r.rss_baseline / 2**20, r.rss_final / 2**20,
                     r.growth_mib, r.max_growth_mib, r.error_logs, r.settle_s, r.settle_cpu_s,
                     _count(r.pending_at_stop), _count(r.pending_max), r.mismatched_clients, r.wrong_attributes,
                     "yes" if r.kernel_equal else f"no (-{r.kernel_missing} +{r.kernel_extra})"])
    lines = ["", table(["reflector", "seconds", "flaps", "resets asked", "resets unasked",
                        "CPU s", "RSS MiB after warm-up", "RSS MiB at end", "growth MiB",
                        "max growth MiB", "error logs", "settle s", "CPU s settling",
                        "events pending at stop", "events pending max",
                        "clients differing",
                        "wrong attrs", "kernel = announced"], rows)]
    for r in results:
        if r.error:
            lines.append(f"  {LABELS[r.reflector]}: {r.error[:600]}")
        for e in r.error_examples:
            lines.append(f"  {LABELS[r.reflector]} error log: {e}")
    head: dict = {}
    p = next((r for r in results if r.reflector == "podbgp"), None)
    b = next((r for r in results if r.reflector == "bird2"), None)
    if p is not None:
        ok = lambda c: "met" if c else "NOT met"  # noqa: E731
        equal = p.mismatched_clients == 0 and p.wrong_attributes == 0 and p.kernel_equal
        head = {"growth_mib": p.growth_mib, "max_growth_mib": p.max_growth_mib,
                "error_logs": p.error_logs, "views_equal": equal,
                "bird_growth_mib": b.growth_mib if b else float("nan")}
        lines.append(f"\nTargets ({p.duration_s:.0f} s, {p.clients} clients resetting in turn, "
                     f"{p.flap} routes flapping; issue 16):")
        lines.append(f"- RSS after warm-up grows < {TARGET_GROWTH_MIB:g} MiB: "
                     f"{ok(p.growth_mib < TARGET_GROWTH_MIB)} ({p.growth_mib:+.2f} MiB, "
                     f"largest sample {p.max_growth_mib:+.2f} MiB)")
        lines.append(f"- no error logs: {ok(p.error_logs == 0)} ({p.error_logs})")
        lines.append(f"- every client's view equals the reflector's Loc-RIB at the end: "
                     f"{ok(equal)} ({p.mismatched_clients} clients differ, "
                     f"{p.wrong_attributes} wrong attributes, kernel "
                     f"{'equal' if p.kernel_equal else 'differs'}; settled in "
                     f"{p.settle_s:.1f} s, reflector CPU meanwhile {p.settle_cpu_s:.1f} s)")
        lines.append(f"\nsoak: podbgp RSS {p.growth_mib:+.2f} MiB after warm-up (BIRD 2 "
                     f"{head['bird_growth_mib']:+.2f}), {p.error_logs} error logs, "
                     f"{p.unexpected_resets} unasked resets, views equal: "
                     f"{'yes' if equal else 'no'}")
    return "\n".join(lines), head


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=600.0, help="seconds of churn")
    ap.add_argument("--clients", type=int, default=100, help="clients resetting in turn")
    ap.add_argument("--flap", type=int, default=1000, help="routes the flapping peer toggles")
    ap.add_argument("--rate", type=float, default=1.0, help="flap toggles per second")
    ap.add_argument("--reset-every", type=float, default=3.0, help="seconds between resets")
    ap.add_argument("--warmup", type=float, default=60.0, help="seconds before the baseline")
    ap.add_argument("--settle", type=float, default=300.0, help="seconds allowed to settle")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds to converge first")
    ap.add_argument("--reflector", default="podbgp,bird2")
    ap.add_argument("--quick", action="store_true", help="60 s, 20 clients, 200 routes")
    ap.add_argument("--keep", metavar="DIR", help="copy each run's logs here")
    ap.add_argument("--cpu-limit", type=float, default=0.0, metavar="CORES",
                    help="cap the reflector at this share of a core during the churn "
                    "(a cgroup quota; lifted for the settling): a reflector that falls "
                    "behind on purpose, to tell a backlog from a lost change")
    ap.add_argument("--json", help="write the results to this file")
    a = ap.parse_args(argv)
    require_root("bench.soak")
    kinds = reflectors(ap, a.reflector)
    if a.quick:
        a.duration, a.clients, a.flap, a.warmup, a.reset_every = 60.0, 20, 200, 20.0, 2.0
    if not 1 <= a.clients <= 2000 or a.flap < 0 or a.duration < a.warmup + 2 * WINDOW / 3:
        ap.error("need 1..2000 clients, --flap >= 0 and a duration longer than the warm-up")
    print(f"load before: {_loadavg()}", flush=True)
    results = []
    for k in kinds:
        r = run(k, a)
        results.append(r)
        print(f"  soak {LABELS[k]:<7} {r.duration_s:.0f}s"
              + (f" (capped at {r.cpu_limit:g} core)" if r.cpu_limit else "") + f": growth {r.growth_mib:+.2f} MiB, "
              f"errors {r.error_logs}, differing clients {r.mismatched_clients}"
              + (f" ({r.error[:200]})" if r.error else ""), flush=True)
    print(f"load after: {_loadavg()}", flush=True)
    text, head = report(results)
    print(text)
    if a.json:
        from pathlib import Path

        Path(a.json).write_text(json.dumps({"results": [asdict(r) for r in results],
                                            "headline": head}, indent=1, default=str) + "\n")
    return 0 if results and not any(r.error for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
