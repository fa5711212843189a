"""bench.convergence.Injector.expect: a DUT that dies while the injector waits for the
session fails the trial within a second, not at the 120 s timeout (a bgpd that could
not start cost bench.memory two minutes a trial, twelve for a run)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from bench.convergence import Injector


def _injector(script: str) -> Injector:
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                            stdin=subprocess.PIPE, text=True)
    return Injector(proc)


def test_expect_asks_the_dut_check_while_it_waits() -> None:
    inj = _injector("import time; print('listening 0.5', flush=True); time.sleep(30)")
    calls = []

    def alive() -> None:
        calls.append(time.monotonic())
        if len(calls) == 2:
            raise RuntimeError("podbgp exited (1): ModuleNotFoundError")

    try:
        assert inj.expect("listening", 10, alive) == 0.5
        calls.clear()
        start = time.monotonic()
        with pytest.raises(RuntimeError, match="podbgp exited"):
            inj.expect("established", 120, alive)
        assert time.monotonic() - start < 5  # not the 120 s timeout
        assert len(calls) == 2
    finally:
        inj.proc.kill()
        inj.proc.wait()


def test_expect_without_a_check_still_times_out_and_reads_tags() -> None:
    inj = _injector("print('listening 1.5', flush=True); print('sent 2.5', flush=True)")
    try:
        assert inj.expect("sent", 10) == 2.5  # earlier tags are skipped
        with pytest.raises(RuntimeError, match="eof"):
            inj.expect("established", 10)
    finally:
        inj.proc.kill()
        inj.proc.wait()
