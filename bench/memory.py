"""Benchmark: memory of the whole process tree at idle, 20k and 100k routes — podbgp
against BIRD 1.6, BIRD 2 and FRR, in the same run.

    sudo .venv/bin/python -m bench.memory [--k 0,20000,100000] [--reps 3]
        [--dut podbgp,podbgp-relay,bird1,bird2,frr] [--settle 3] [--quick] [--json PATH]

Per trial, fresh namespaces: DUT <-veth-> injector (bench.injector), as in
bench.convergence. The injector sends K /26 routes and End-of-RIB once the
session is Established (K = 0: End-of-RIB only, the idle node); once all K are
in the DUT's kernel the DUT is left alone for ``--settle`` seconds (podbgp's
sweep after End-of-RIB, a garbage collection) and its process tree is read
from /proc/<pid>/smaps_rollup: podbgp = bgpd + ExaBGP + any API process
ExaBGP runs; FRR = zebra + bgpd; BIRD = bird. RSS is what each process has
resident, summed (pages two members share count twice); PSS shares each page
among the processes mapping it (the tree's own footprint; other processes on
the machine mapping the same libraries lower it slightly); USS is private.
Medians of ``--reps`` trials; DUTs interleave so machine drift hits all alike.

podbgp's targets (issue 17) are checked on the tree's RSS and PSS: idle <= 50
MiB, 20k routes <= 60 MiB, 100k <= 90 MiB. The last line:
``memory: MiB at idle/20k/100k: podbgp RSS a/b/c PSS d/e/f; ... (targets ...)``.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from dataclasses import asdict, dataclass, field

from bench.common import (
    Netns,
    median,
    require_root,
    smaps,
    smaps_tree,
    table,
)
from bench.convergence import dut_alive_check, injector_pair, poll_kernel, write_json_path
from bench.duts import DUTS, LABELS, parse_duts_and_counts

DEFAULT_K = (0, 20_000, 100_000)
# issue 17: podbgp's whole process tree, MiB, by route count
TARGETS_MIB = {0: 50, 20_000: 60, 100_000: 90}
MIB = 2**20


@dataclass
class Sample:
    dut: str
    k: int
    rep: int
    rss: int = 0
    pss: int = 0
    uss: int = 0
    procs: int = 0
    error: str = ""
    per_process: list[dict] = field(default_factory=list)


def _per_process(pids: list[int]) -> list[dict]:
    """Each member of the tree: its command and RSS/PSS (for the JSON and the notes)."""
    from bench.common import proc_tree

    out = []
    for root in pids:
        for p in proc_tree(root):
            try:
                with open(f"/proc/{p}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:
                continue
            m = smaps(p)
            if m is not None:
                out.append({"pid": p, "cmd": cmd[:160], "rss": m["rss"], "pss": m["pss"],
                            "uss": m["uss"]})
    return out


def trial(dut: str, k: int, rep: int, settle: float, timeout: float) -> Sample:
    s = Sample(dut=dut, k=k, rep=rep)
    with Netns("bm") as env:
        dut_ns, anchor, base, inj = injector_pair(env, k)
        try:
            inj.expect("listening", 60)
            pids = DUTS[dut](env, dut_ns)

            alive = dut_alive_check(env, dut, pids)

            inj.expect("established", 120, alive)
            inj.expect("sent", 60, alive)
            poll_kernel(anchor, lambda n: n >= base + k, timeout, alive)
            time.sleep(settle)
            alive()
            m = smaps_tree(pids)
            s.rss, s.pss, s.uss, s.procs = m["rss"], m["pss"], m["uss"], m["procs"]
            s.per_process = _per_process(pids)
        except Exception as e:
            s.error = f"{type(e).__name__}: {e}"
            tail = env.log("dut.log", 8)
            if tail:
                s.error += f" | dut log: {tail[-600:]}"
        finally:
            with contextlib.suppress(OSError, ValueError):
                inj.send("quit")
    return s


def summarize(samples: list[Sample], duts: list[str], ks: list[int]) -> dict:
    out: dict = {}
    for d in duts:
        for k in ks:
            ok = [s for s in samples if s.dut == d and s.k == k and not s.error]
            out[f"{d}/{k}"] = {
                "dut": d, "k": k, "n": len(ok),
                **{m: median([getattr(s, m) for s in ok]) if ok else float("nan")
                   for m in ("rss", "pss", "uss", "procs")},
            }
    return out


def _name(cmd: str) -> str:
    """A short name for a command line: the module of ``python -m X``, the script a
    Python runs, else the program."""
    words = cmd.split()
    if "-m" in words[:-1]:
        return words[words.index("-m") + 1]
    if words and "python" in words[0].rsplit("/", 1)[-1] and len(words) > 1:
        return words[1].rsplit("/", 1)[-1]
    return words[0].rsplit("/", 1)[-1] if words else "?"


def _k_label(k: int) -> str:
    return "idle" if k == 0 else f"{k // 1000}k" if k % 1000 == 0 else str(k)


def report(summary: dict, samples: list[Sample], duts: list[str],
           ks: list[int]) -> tuple[str, dict]:
    lines = []
    for metric, title in (("rss", "RSS"), ("pss", "PSS"), ("uss", "USS (private)")):
        rows = []
        for d in duts:
            rows.append([LABELS[d], *(summary[f"{d}/{k}"][metric] / MIB for k in ks)])
        lines.append(f"\n{title} of the whole process tree, MiB (median of the successful "
                     "trials; idle = session up, no routes)\n")
        lines.append(table(["DUT", *(_k_label(k) for k in ks)], rows))
    if "podbgp" in duts:
        lines.append("\npodbgp against its targets (issue 17), MiB\n")
        rows = []
        for k in ks:
            if k not in TARGETS_MIB:
                continue
            s = summary[f"podbgp/{k}"]
            t = TARGETS_MIB[k]
            rows.append([_k_label(k), t, s["rss"] / MIB, "met" if s["rss"] <= t * MIB else
                         "NOT met", s["pss"] / MIB, "met" if s["pss"] <= t * MIB else "NOT met"])
        lines.append(table(["routes", "target", "RSS", "RSS target", "PSS", "PSS target"], rows))
        procs = [s for s in samples if s.dut == "podbgp" and not s.error]
        if procs:
            last = max(procs, key=lambda s: (s.k, s.rep))
            lines.append(f"\npodbgp's processes at {_k_label(last.k)} (one trial), MiB\n")
            lines.append(table(["process", "RSS", "PSS", "USS"], [
                [_name(p["cmd"]), p["rss"] / MIB, p["pss"] / MIB, p["uss"] / MIB]
                for p in last.per_process]))
    errors = [s for s in samples if s.error]
    if errors:
        lines.append("\nFailed trials:")
        lines.extend(f"  {s.dut} K={s.k} rep={s.rep}: {s.error[:400]}" for s in errors)
    head = {d: {k: {"rss_mib": summary[f"{d}/{k}"]["rss"] / MIB,
                    "pss_mib": summary[f"{d}/{k}"]["pss"] / MIB} for k in ks} for d in duts}
    parts = []
    for d in duts:
        rss = "/".join(f"{summary[f'{d}/{k}']['rss'] / MIB:.1f}" for k in ks)
        pss = "/".join(f"{summary[f'{d}/{k}']['pss'] / MIB:.1f}" for k in ks)
        parts.append(f"{LABELS[d]} RSS {rss} PSS {pss}")
    verdict = ""
    if "podbgp" in duts:
        met = [summary[f"podbgp/{k}"]["rss"] <= TARGETS_MIB[k] * MIB for k in ks
               if k in TARGETS_MIB]
        met_pss = [summary[f"podbgp/{k}"]["pss"] <= TARGETS_MIB[k] * MIB for k in ks
                   if k in TARGETS_MIB]
        verdict = (f" (targets {'/'.join(str(TARGETS_MIB[k]) for k in ks if k in TARGETS_MIB)}"
                   f": RSS {sum(met)}/{len(met)} met, PSS {sum(met_pss)}/{len(met_pss)} met)")
        head["targets_met_rss"] = all(met)
        head["targets_met_pss"] = all(met_pss)
    lines.append(f"\nmemory: MiB at {'/'.join(_k_label(k) for k in ks)}: "
                 + "; ".join(parts) + verdict)
    return "\n".join(lines), head


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.memory",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--k", default=",".join(map(str, DEFAULT_K)),
                    help="route counts (0 = idle)")
    ap.add_argument("--dut", default="podbgp,podbgp-relay,bird1,bird2,frr",
                    help="DUTs, comma-separated (podbgp-relay: ExaBGP's groups 'channel' and "
                    "'lean' off, the same run's measure of those levers)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--settle", type=float, default=3.0,
                    help="seconds between the last route in the kernel and the reading")
    ap.add_argument("--timeout", type=float, default=300, help="seconds to converge")
    ap.add_argument("--quick", action="store_true", help="K=0,1000, one trial per DUT")
    ap.add_argument("--json", help="write the samples and medians to this file")
    a = ap.parse_args(argv)
    require_root("bench.memory")
    duts, ks = parse_duts_and_counts(ap, a.dut, a.k)
    if a.quick:
        ks, a.reps, a.settle = [0, 1000], 1, min(a.settle, 1.0)
    samples: list[Sample] = []
    for k in ks:
        for rep in range(a.reps):
            for d in duts:
                s = trial(d, k, rep, a.settle, a.timeout)
                samples.append(s)
                state = s.error[:120] if s.error else \
                    f"RSS {s.rss / MIB:.1f} PSS {s.pss / MIB:.1f} MiB ({s.procs} processes)"
                print(f"  trial {LABELS[d]:<8} K={k:<7} rep={rep}: {state}", flush=True)
    summary = summarize(samples, duts, ks)
    text, head = report(summary, samples, duts, ks)
    print(text)
    if a.json:
        write_json_path(a.json, {"samples": [asdict(s) for s in samples], "summary": summary,
                                 "headline": head, "duts": duts, "ks": ks})
    return 0 if not any(s.error for s in samples) else 1


if __name__ == "__main__":
    sys.exit(main())
