"""Benchmark: route reflection at scale — podbgp as the reflector for N iBGP clients, against BIRD 2.

    sudo .venv/bin/python -m bench.rr_scale [--n 50,100,200] [--reps 1]
        [--reflector podbgp,bird2] [--withdrawals 5] [--quick] [--json PATH]

Per trial, fresh namespaces: the reflector R (172.30.0.1, AS 64512, cluster id
244.0.0.1) <-veth-> the clients' namespace C, where bench.rrclients runs N
simulated clients, one source address each (172.30.1.1, .2, ...). The
reflector has one iBGP session per client and dials them (a Calico reflector
configured with ``peerIP`` BGPPeers: podbgp from a Node with
``routeReflectorClusterID`` and N BGPPeers; BIRD 2 with ``rr client`` and the
same cluster id), and installs what it learns in its kernel, as a Calico
reflector node does. Each client announces one /26 with itself as next hop
once its session is Established, then counts what it receives and checks the
reflection rules on every route (next hop kept, ORIGINATOR_ID = the
originating client, CLUSTER_LIST holding the cluster id).

Clocks (CLOCK_MONOTONIC, shared by all processes):
- *start -> all*: reflector process spawned -> every client holds all N-1 other
  blocks (includes process start-up; BIRD waits its 1 s ``connect delay``);
- *first session -> all*: the first client session Established -> every client
  holds all N-1 other blocks (the reflection work itself; the main figure);
- *one withdrawal reaches all*: a client withdraws its block -> no other client
  holds it (and the re-announcement -> every other client holds it again),
  ``--withdrawals`` samples on a quiet reflector;
- *EoR after Established*: per client, its session Established -> the
  reflector's End-of-RIB arrives (graceful-restart clients wait for it).
Reflector CPU seconds (user+system, whole process tree: podbgp = daemon +
ExaBGP + relay) and peak resident memory (sum of VmHWM of the tree) are read
at convergence; idle CPU over ``--idle`` seconds after the withdrawal samples.
Session resets: client sessions that ended without the client asking.

The non-reflector baseline for memory: podbgp as an ordinary node (no cluster
id) with one session, to a stand-in reflector that sends it the same N-1
reflected blocks (``rrclients --node-routes``); its peak RSS once all are in its
kernel.

The last line: `rr_scale: N=<max> podbgp/BIRD 2 convergence <r>x, ...`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import queue
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import asdict, dataclass, field

from bench.common import (
    Netns,
    bin_path,
    cpu_tree,
    fib_prefixes,
    median,
    peak_rss_tree,
    require_root,
    table,
)
from bench.convergence import start_profiler, stop_profiler
from bench.duts import podbgp_resources
from bench.rrclients import address

RR_IP = "172.30.0.1"
FIRST_CLIENT = "172.30.1.1"
PREFIX_LEN = 16  # one link: the reflector and every client address
ASN = 64512
CLUSTER_ID = "244.0.0.1"
DEFAULT_N = (50, 100, 200)
LABELS = {"podbgp": "podbgp", "bird2": "BIRD 2"}
# Targets (issue 16), checked at the largest N
TARGET_RATIO = 3.0
TARGET_WITHDRAW_MS = 50.0
TARGET_RSS_RATIO = 2.0
TARGET_FLAT = 1.5  # CPU per reflected route at the largest N / at the smallest


# ------------------------------------------------------------------ configs
def podbgp_config(n: int, reflector: bool = True) -> str:
    """A file datastore: pool, BGPConfiguration (no mesh), the node, one BGPPeer per client."""
    cid = f", routeReflectorClusterID: {CLUSTER_ID}" if reflector else ""
    return podbgp_resources("rr", f"{RR_IP}/{PREFIX_LEN}", ASN, [
        (f"client-{i}", address(FIRST_CLIENT, i), ASN) for i in range(n)], cid)


def bird_config(n: int) -> str:
    peers = "\n".join(f"protocol bgp c{i} from rrc {{ neighbor {address(FIRST_CLIENT, i)} "
                      f"as {ASN}; }}" for i in range(n))
    return textwrap.dedent(f"""\
        router id {RR_IP};
        protocol device {{ scan time 10; }}
        protocol kernel {{ persist; scan time 60; ipv4 {{ import none; export all; }}; }}
        template bgp rrc {{
            local {RR_IP} as {ASN};
            rr client; rr cluster id {CLUSTER_ID};
            connect delay time 1; connect retry time 1; error wait time 1, 2;
            ipv4 {{ import all; export all; }};
        }}
        """) + peers + "\n"


def start_reflector(env: Netns, ns: str, kind: str, n: int, reflector: bool = True) -> int:
    """Spawn the reflector (or, reflector=False, a plain podbgp node); its PID."""
    if kind == "podbgp":
        conf = env.workdir / "podbgp.yaml"
        conf.write_text(podbgp_config(n, reflector))
        proc = env.spawn(ns, [bin_path("bgpd"), "--node", "rr", "--datastore", "file",
                              "--config-file", str(conf), "--log-format", "json",
                              "--log-level", "warning", "--state-dir", str(env.workdir / "state"),
                              "--convergence-timeout", "600"], "reflector.log")
        return proc.pid
    if kind == "bird2":
        conf = env.workdir / "bird.conf"
        conf.write_text(bird_config(n))
        proc = env.spawn(ns, ["bird", "-f", "-c", str(conf), "-s", str(env.workdir / "bird.ctl"),
                              "-P", str(env.workdir / "bird.pid")], "reflector.log")
        return proc.pid
    raise ValueError(f"unknown reflector {kind!r}")


# -------------------------------------------------------------- the clients
class Clients:
    """The bench.rrclients subprocess: JSON report lines in, commands out."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.lines: queue.Queue[dict] = queue.Queue()
        self.log: list[dict] = []  # closed / notification reports, kept for the result
        self.hooks: dict[str, object] = {}  # event -> called with the report, on arrival
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with contextlib.suppress(ValueError, OSError):
            for line in self.proc.stdout:
                try:
                    msg = json.loads(line)
                except ValueError:
                    msg = {"event": "garbage", "line": line[:200]}
                if msg.get("event") in ("closed", "notification"):
                    self.log.append(msg)
                hook = self.hooks.get(msg.get("event"))
                if hook is not None:
                    hook(msg)  # type: ignore[operator]
                self.lines.put(msg)
        self.lines.put({"event": "eof"})

    def expect(self, event: str, timeout: float, alive=None) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"clients: no {event!r} within {timeout:.0f}s")
            try:
                msg = self.lines.get(timeout=min(left, 1.0))
            except queue.Empty:
                if alive is not None:
                    alive()
                continue
            if msg["event"] == event:
                return msg
            if msg["event"] in ("eof", "error"):
                raise RuntimeError(f"clients: {msg}")

    def send(self, cmd: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()

    def ask(self, cmd: str, event: str, timeout: float = 30) -> dict:
        self.send(cmd)
        return self.expect(event, timeout)


def start_clients(env: Netns, ns: str, n: int, *extra: str) -> Clients:
    c = Clients(env.spawn(ns, [sys.executable, "-m", "bench.rrclients", "--first", FIRST_CLIENT,
                               "--count", str(n), "--asn", str(ASN), "--cluster-id", CLUSTER_ID,
                               *extra], "clients.log", pipes=True))
    c.expect("listening", 60)
    return c


def lab(env: Netns, n: int) -> tuple[str, str]:
    """Reflector and clients' namespaces, one link, every client address on it."""
    r_ns, c_ns = env.add_ns("r"), env.add_ns("c")
    _, c_if = env.link(r_ns, f"{RR_IP}/{PREFIX_LEN}", c_ns,
                       f"{address(FIRST_CLIENT, 0)}/{PREFIX_LEN}")
    env.add_addresses(c_ns, c_if, [f"{address(FIRST_CLIENT, i)}/{PREFIX_LEN}"
                                   for i in range(1, n)])
    return r_ns, c_ns


# ------------------------------------------------------------------- trials
@dataclass
class Trial:
    reflector: str
    n: int
    rep: int
    first_session_s: float = float("nan")  # spawn -> the first session Established
    sessions_s: float = float("nan")  # spawn -> every session Established
    start_s: float = float("nan")  # spawn -> every client complete
    converge_s: float = float("nan")  # first Established -> every client complete
    cpu_s: float = float("nan")  # reflector CPU at convergence
    reflect_cpu_s: float = float("nan")  # of which after the first session came up
    clients_cpu_s: float = float("nan")  # the simulated clients' CPU at convergence
    peak_rss: int = 0
    withdraw_ms: list[float] = field(default_factory=list)
    announce_ms: list[float] = field(default_factory=list)
    eor_max_s: float = float("nan")  # max over clients of Established -> EoR
    eor_median_s: float = float("nan")
    idle_cpu_pct: float = float("nan")
    resets: int = 0
    notifications: int = 0
    wrong_attributes: int = 0
    bad_examples: list[str] = field(default_factory=list)
    error: str = ""

    @property
    def routes(self) -> int:
        return self.n * (self.n - 1)


def trial(kind: str, n: int, rep: int, *, withdrawals: int, idle: float,
          timeout: float, keep: str | None = None, profile: str | None = None) -> Trial:
    tr = Trial(reflector=kind, n=n, rep=rep)
    with Netns("rs") as env:
        r_ns, c_ns = lab(env, n)
        clients = start_clients(env, c_ns, n)
        pid = 0
        spy = None
        try:
            t_spawn = time.monotonic()
            at_first: list[float] = []
            clients.hooks["first_session"] = lambda _msg: at_first.append(cpu_tree(pid))
            pid = start_reflector(env, r_ns, kind, n)
            proc = env.procs[-1]
            if profile and kind == "podbgp":
                spy = start_profiler(pid, f"{profile}/podbgp-rr-{n}.txt")

            def alive() -> None:
                if proc.poll() is not None:
                    raise RuntimeError(f"{kind} exited ({proc.returncode}): "
                                       f"{env.log('reflector.log', 5)[-600:]}")

            try:
                conv = clients.expect("converged", timeout, alive)
            except TimeoutError:
                st = clients.ask("status", "status")
                raise TimeoutError(f"not converged after {timeout:.0f}s: {st['up']}/{n} up, "
                                   f"{st['incomplete']} clients incomplete, "
                                   f"{st['routes_held']}/{tr.routes} routes held") from None
            tr.cpu_s = cpu_tree(pid)
            if at_first:
                tr.reflect_cpu_s = tr.cpu_s - at_first[0]
            tr.clients_cpu_s = cpu_tree(clients.proc.pid)
            tr.peak_rss = peak_rss_tree(pid)
            if spy is not None:
                stop_profiler(spy)
                spy = None
            est = [t for t in conv["established"] if t is not None]
            done = [t for t in conv["complete"] if t is not None]
            tr.sessions_s = max(est) - t_spawn
            tr.first_session_s = conv["first_established"] - t_spawn
            tr.start_s = max(done) - t_spawn
            tr.converge_s = max(done) - conv["first_established"]
            eor = [e - s for e, s in zip(conv["eor"], conv["established"], strict=True)
                   if e is not None and s is not None]
            if eor:
                tr.eor_max_s, tr.eor_median_s = max(eor), median(eor)
            # withdrawal / re-announcement samples, spread over the clients
            if profile and kind == "podbgp":
                spy = start_profiler(pid, f"{profile}/podbgp-rr-{n}-withdrawals.txt")
            for k in range(withdrawals):
                i = (k * 7919) % n
                time.sleep(0.2)
                w = clients.ask(f"withdraw {i}", "withdrawn")
                tr.withdraw_ms.append((w["t"] - w["t0"]) * 1000)
                time.sleep(0.2)
                a = clients.ask(f"announce {i}", "announced")
                tr.announce_ms.append((a["t"] - a["t0"]) * 1000)
            if spy is not None:
                stop_profiler(spy)
                spy = None
            c0 = cpu_tree(pid)
            t0 = time.monotonic()
            time.sleep(idle)
            tr.idle_cpu_pct = 100 * (cpu_tree(pid) - c0) / (time.monotonic() - t0)
            st = clients.ask("status", "status")
            tr.resets, tr.notifications = st["resets"], st["notifications"]
            tr.wrong_attributes, tr.bad_examples = st["bad"], st["bad_examples"]
            alive()
        except Exception as e:
            tr.error = f"{type(e).__name__}: {e}"
            tail = env.log("reflector.log", 6)
            if tail:
                tr.error += f" | reflector log: {tail[-600:]}"
        finally:
            if spy is not None:
                stop_profiler(spy)
            with contextlib.suppress(OSError, ValueError):
                clients.send("quit")
            if keep:
                _keep_logs(env, keep, f"{kind}-{n}-{rep}")
    return tr


def _keep_logs(env: Netns, where: str, tag: str) -> None:
    """Copy the trial's logs (and podbgp's ExaBGP config) to `where` before cleanup."""
    import shutil
    from pathlib import Path

    dest = Path(where) / tag
    dest.mkdir(parents=True, exist_ok=True)
    for f in env.workdir.rglob("*"):
        if f.is_file() and (f.suffix in (".log", ".conf", ".yaml")):
            with contextlib.suppress(OSError):
                shutil.copy(f, dest / f.name)


def node_rss(n: int, timeout: float) -> tuple[int, str]:
    """Peak RSS of podbgp as a plain node learning the N-1 reflected blocks (bytes, error)."""
    with Netns("rs") as env:
        r_ns, c_ns = lab(env, n)
        anchor = env.anchor(r_ns)
        base = fib_prefixes(anchor)
        clients = start_clients(env, c_ns, 1, "--node-routes", str(n - 1))
        try:
            pid = start_reflector(env, r_ns, "podbgp", 1, reflector=False)
            proc = env.procs[-1]
            deadline = time.monotonic() + timeout
            while fib_prefixes(anchor) < base + n - 1:
                if proc.poll() is not None:
                    return 0, f"node: podbgp exited: {env.log('reflector.log', 5)[-600:]}"
                if time.monotonic() > deadline:
                    return 0, f"node: routes not in the kernel after {timeout:.0f}s"
                time.sleep(0.05)
            time.sleep(0.5)  # let the node settle (export, metrics) before reading its peak
            return peak_rss_tree(pid), ""
        finally:
            with contextlib.suppress(OSError, ValueError):
                clients.send("quit")


# ------------------------------------------------------------------ report
def summarize(trials: list[Trial], kinds: list[str], ns: list[int]) -> dict:
    out: dict = {}
    for k in kinds:
        for n in ns:
            ok = [t for t in trials if t.reflector == k and t.n == n and not t.error]
            out[f"{k}/{n}"] = {
                "reflector": k, "n": n, "ok": len(ok),
                "trials": len([t for t in trials if t.reflector == k and t.n == n]),
                "sessions_s": median([t.sessions_s for t in ok]),
                "start_s": median([t.start_s for t in ok]),
                "converge_s": median([t.converge_s for t in ok]),
                "cpu_s": median([t.cpu_s for t in ok]),
                "reflect_cpu_s": median([t.reflect_cpu_s for t in ok]),
                "clients_cpu_s": median([t.clients_cpu_s for t in ok]),
                "peak_rss": median([t.peak_rss for t in ok]) if ok else 0,
                "withdraw_ms": median([x for t in ok for x in t.withdraw_ms]),
                "withdraw_max_ms": max([x for t in ok for x in t.withdraw_ms], default=float("nan")),
                "announce_ms": median([x for t in ok for x in t.announce_ms]),
                "eor_max_s": median([t.eor_max_s for t in ok]),
                "idle_cpu_pct": median([t.idle_cpu_pct for t in ok]),
                "resets": sum(t.resets for t in ok),
                "wrong_attributes": sum(t.wrong_attributes for t in ok),
            }
    return out


def _ratio(a: float, b: float) -> float:
    return a / b if a == a and b == b and b > 0 else float("nan")


def report(summary: dict, trials: list[Trial], kinds: list[str], ns: list[int],
           node: dict[int, int]) -> tuple[str, dict]:
    lines = []
    rows = []
    for n in ns:
        for k in kinds:
            s = summary[f"{k}/{n}"]
            routes = n * (n - 1)
            rows.append([n, LABELS[k], f"{s['ok']}/{s['trials']}", s["sessions_s"],
                         s["converge_s"], s["start_s"], routes / s["converge_s"] if s["ok"] else
                         float("nan"), s["cpu_s"], s["reflect_cpu_s"], s["clients_cpu_s"],
                         1e6 * s["reflect_cpu_s"] / routes if s["ok"] else
                         float("nan"), s["peak_rss"] / 2**20 if s["ok"] else float("nan"),
                         s["withdraw_ms"], s["withdraw_max_ms"], s["announce_ms"],
                         s["eor_max_s"], s["idle_cpu_pct"], s["resets"], s["wrong_attributes"]])
    lines.append("\nEvery trial (medians over the successful trials; times in seconds unless ms)\n")
    lines.append(table(["N", "reflector", "ok", "sessions up", "1st session->all",
                        "start->all", "reflected routes/s", "CPU s", "CPU s after 1st",
                        "clients' CPU s", "CPU us/route",
                        "peak RSS MiB", "withdraw ms", "withdraw max ms", "announce ms",
                        "EoR after Est. max", "idle CPU %", "resets", "wrong attrs"], rows))
    head: dict = {}
    if "podbgp" in kinds and "bird2" in kinds:
        rows = []
        for n in ns:
            p, b = summary[f"podbgp/{n}"], summary[f"bird2/{n}"]
            rows.append([n, b["converge_s"], p["converge_s"], _ratio(p["converge_s"],
                         b["converge_s"]), b["start_s"], p["start_s"],
                         _ratio(p["start_s"], b["start_s"]),
                         n * (n - 1) / p["converge_s"] if p["ok"] else float("nan"),
                         f"{b['cpu_s']:.2f} / {p['cpu_s']:.2f}",
                         f"{b['peak_rss'] / 2**20:.1f} / {p['peak_rss'] / 2**20:.1f} / "
                         f"{node.get(n, 0) / 2**20:.1f}",
                         f"{b['withdraw_ms']:.1f} / {p['withdraw_ms']:.1f}",
                         f"{b['eor_max_s']:.2f} / {p['eor_max_s']:.2f}",
                         f"{b['resets']} / {p['resets']}"])
        lines.append("\nBIRD 2 against podbgp as the reflector, same clients, same run\n")
        lines.append(table(["N", "BIRD 2 s", "podbgp s", "ratio", "BIRD 2 s (start)",
                            "podbgp s (start)", "ratio (start)", "podbgp reflected routes/s",
                            "CPU s (BIRD / podbgp)",
                            "peak RSS MiB (BIRD / podbgp RR / podbgp node)",
                            "one withdrawal reaches all ms (BIRD / podbgp)",
                            "EoR after Est. max s (BIRD / podbgp)", "resets (BIRD / podbgp)"],
                           rows))
        nmax, nmin = max(ns), min(ns)
        p, b = summary[f"podbgp/{nmax}"], summary[f"bird2/{nmax}"]
        pmin = summary[f"podbgp/{nmin}"]
        # the reflection work: CPU from the first session to convergence, per route
        per = lambda s, n: s["reflect_cpu_s"] / (n * (n - 1)) if s["ok"] else float("nan")  # noqa: E731
        head = {
            "n": nmax,
            "ratio": _ratio(p["converge_s"], b["converge_s"]),
            "ratio_start": _ratio(p["start_s"], b["start_s"]),
            "withdraw_ms": p["withdraw_max_ms"],
            "bird_withdraw_ms": b["withdraw_max_ms"],
            "rss_ratio": _ratio(p["peak_rss"], node.get(nmax, 0)),
            "resets": p["resets"],
            "flat": _ratio(per(p, nmax), per(pmin, nmin)) if nmax != nmin else float("nan"),
            "wrong": p["wrong_attributes"] + b["wrong_attributes"],
        }
        ok = lambda c: "met" if c and p["ok"] else "NOT met"  # noqa: E731
        lines.append(f"\nTargets at N = {nmax} (issue 16):")
        lines.append(f"- convergence <= {TARGET_RATIO:g}x BIRD 2: {ok(head['ratio'] <= TARGET_RATIO)}"
                     f" ({head['ratio']:.2f}x first session->all; {head['ratio_start']:.2f}x "
                     "start->all)")
        lines.append(f"- one withdrawal reaching all clients <= {TARGET_WITHDRAW_MS:g} ms: "
                     f"{ok(head['withdraw_ms'] <= TARGET_WITHDRAW_MS)} (max "
                     f"{head['withdraw_ms']:.1f} ms, median {p['withdraw_ms']:.1f} ms; "
                     f"BIRD 2 max {head['bird_withdraw_ms']:.1f} ms)")
        lines.append(f"- reflector RSS <= {TARGET_RSS_RATIO:g}x a non-reflector node: "
                     f"{ok(head['rss_ratio'] <= TARGET_RSS_RATIO)} ({head['rss_ratio']:.2f}x: "
                     f"{p['peak_rss'] / 2**20:.1f} / {node.get(nmax, 0) / 2**20:.1f} MiB)")
        lines.append(f"- no session reset under the burst: {ok(head['resets'] == 0 and p['ok'])}"
                     f" ({head['resets']} resets)")
        if nmax != nmin:
            lines.append(f"- cost per reflected route flat in N (<= {TARGET_FLAT:g}x from "
                         f"N = {nmin} to {nmax}): {ok(head['flat'] <= TARGET_FLAT)} "
                         f"({1e6 * per(pmin, nmin):.0f} -> {1e6 * per(p, nmax):.0f} us CPU "
                         f"per route, {head['flat']:.2f}x)")
        lines.append(f"- reflection attributes correct (next hop, ORIGINATOR_ID, CLUSTER_LIST): "
                     f"{ok(head['wrong'] == 0)} ({head['wrong']} wrong)")
    errors = [t for t in trials if t.error]
    if errors:
        lines.append("\nFailed trials:")
        lines.extend(f"  {LABELS[t.reflector]} N={t.n} rep={t.rep}: {t.error[:500]}"
                     for t in errors)
    bad = [t for t in trials if t.bad_examples]
    for t in bad[:3]:
        lines.append(f"  wrong attributes at {LABELS[t.reflector]} N={t.n}: {t.bad_examples}")
    if head:
        lines.append(
            f"\nrr_scale: N={head['n']} podbgp/BIRD 2 convergence {head['ratio']:.2f}x "
            f"(start->all {head['ratio_start']:.2f}x), one withdrawal reaches all in "
            f"{head['withdraw_ms']:.1f} ms (BIRD 2 {head['bird_withdraw_ms']:.1f} ms), "
            f"RSS {head['rss_ratio']:.2f}x a plain node, {head['resets']} resets"
            + (f", CPU per route {head['flat']:.2f}x from N={min(ns)}" if len(ns) > 1 else ""))
    else:
        parts = [f"{LABELS[k]} N={n} {summary[f'{k}/{n}']['converge_s']:.3f}s"
                 for k in kinds for n in ns]
        lines.append(f"\nrr_scale: {', '.join(parts)}")
    return "\n".join(lines), head


def reflectors(ap: argparse.ArgumentParser, text: str) -> list[str]:
    """The --reflector list, each one known (else an argparse error)."""
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    bad = [k for k in kinds if k not in LABELS]
    if bad or not kinds:
        ap.error(f"--reflector: unknown {', '.join(bad) or text!r} (known: {', '.join(LABELS)})")
    return kinds


def _loadavg() -> str:
    from pathlib import Path

    return Path("/proc/loadavg").read_text().strip()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.rr_scale",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--n", default=",".join(map(str, DEFAULT_N)), help="client counts")
    ap.add_argument("--reflector", default="podbgp,bird2", help="reflectors, comma-separated")
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--withdrawals", type=int, default=5, help="withdrawal samples per trial")
    ap.add_argument("--idle", type=float, default=5.0, help="seconds of idle CPU measured")
    ap.add_argument("--timeout", type=float, default=300, help="seconds to converge")
    ap.add_argument("--no-node", action="store_true", help="skip the plain-node RSS baseline")
    ap.add_argument("--quick", action="store_true", help="N=20, one trial each")
    ap.add_argument("--keep", metavar="DIR", help="copy each trial's logs here")
    ap.add_argument("--profile", metavar="DIR", help="py-spy profiles of podbgp (to "
                    "convergence; then over the withdrawal samples)")
    ap.add_argument("--json", help="write the trials and medians to this file")
    a = ap.parse_args(argv)
    require_root("bench.rr_scale")
    kinds = reflectors(ap, a.reflector)
    try:
        ns = [int(x) for x in a.n.split(",")]
    except ValueError:
        ap.error(f"--n: {a.n!r} is not a comma-separated list of numbers")
    if any(not 2 <= n <= 2000 for n in ns):
        ap.error("--n: each client count must be within 2..2000")
    if a.quick:
        ns, a.reps, a.withdrawals, a.idle = [20], 1, 3, 2.0
    print(f"load before: {_loadavg()}", flush=True)
    trials: list[Trial] = []
    node: dict[int, int] = {}
    for n in ns:
        for rep in range(a.reps):
            for k in kinds:
                t = trial(k, n, rep, withdrawals=a.withdrawals, idle=a.idle, timeout=a.timeout,
                          keep=a.keep, profile=a.profile)
                trials.append(t)
                state = t.error[:160] if t.error else (
                    f"{t.converge_s:.3f}s (start {t.start_s:.3f}s, first session "
                    f"{t.first_session_s:.3f}s), cpu {t.cpu_s:.2f}s (clients "
                    f"{t.clients_cpu_s:.2f}s), "
                    f"withdraw {median(t.withdraw_ms):.1f} ms, resets {t.resets}")
                print(f"  trial {LABELS[k]:<7} N={n:<4} rep={rep}: {state}", flush=True)
        if "podbgp" in kinds and not a.no_node:
            node[n], err = node_rss(n, a.timeout)
            print(f"  plain podbgp node, {n - 1} routes: "
                  f"{err or f'peak RSS {node[n] / 2**20:.1f} MiB'}", flush=True)
    print(f"load after: {_loadavg()}", flush=True)
    summary = summarize(trials, kinds, ns)
    text, head = report(summary, trials, kinds, ns, node)
    print(text)
    if a.json:
        from pathlib import Path

        Path(a.json).write_text(json.dumps({
            "trials": [asdict(t) for t in trials], "summary": summary, "headline": head,
            "node_rss": node, "reflectors": kinds, "ns": ns}, indent=1, default=str) + "\n")
    return 0 if trials and not any(t.error for t in trials) else 1


if __name__ == "__main__":
    sys.exit(main())
