"""bgpd.ops.lock: one bgpd per state directory and per routing table.

In-process where the kernel allows it (a second flock on a new open file
description conflicts even inside one process; a second bind of an abstract
socket name fails with EADDRINUSE), and with a killed child to show the kernel
releases both. Table/protocol numbers are random so parallel runs on one host
never meet.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bgpd.ops.lock import LOCK_FILE, AlreadyRunning, InstanceLocks


@pytest.fixture
def table() -> int:
    return random.randint(10_000, 2**31 - 1)


def test_second_holder_of_a_state_dir_is_refused_naming_pid_and_dir(tmp_path: Path,
                                                                     table: int) -> None:
    first = InstanceLocks()
    first.acquire(tmp_path, table, 201)
    try:
        assert (tmp_path / LOCK_FILE).read_text() == f"{os.getpid()}\n"
        second = InstanceLocks()
        with pytest.raises(AlreadyRunning) as err:
            second.acquire(tmp_path, table + 1, 201)
        text = str(err.value)
        assert f"pid {os.getpid()}" in text and str(tmp_path) in text and "\n" not in text
    finally:
        first.release()
    again = InstanceLocks()
    again.acquire(tmp_path, table, 201)  # released: free again
    again.release()


def test_second_daemon_for_one_routing_table_is_refused(tmp_path: Path, table: int) -> None:
    first = InstanceLocks()
    first.acquire(tmp_path / "a", table, 201)
    try:
        with pytest.raises(AlreadyRunning) as err:
            InstanceLocks().acquire(tmp_path / "b", table, 201)
        assert f"routing table {table} protocol 201" in str(err.value)
        assert f"pid {os.getpid()}" in str(err.value)
        # The dir lock taken before the table lock failed is given back.
        other = InstanceLocks()
        other.acquire(tmp_path / "b", table, 202)
        other.release()
    finally:
        first.release()


def test_the_kernel_releases_both_when_the_holder_is_killed(tmp_path: Path, table: int) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from bgpd.ops.lock import InstanceLocks; "
         "InstanceLocks().acquire(sys.argv[1], int(sys.argv[2]), 201); print('held', flush=True); "
         "time.sleep(60)", str(tmp_path), str(table)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        with pytest.raises(AlreadyRunning) as err:
            InstanceLocks().acquire(tmp_path, table, 201)
        assert f"pid {child.pid}" in str(err.value)
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        locks = InstanceLocks()
        locks.acquire(tmp_path, table, 201)  # no stale lock survives its holder
        locks.release()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(5)


def test_bgpd_main_exits_1_with_one_line(tmp_path: Path, table: int) -> None:
    held = InstanceLocks()
    held.acquire(tmp_path, table, 201)
    try:
        r = subprocess.run([sys.executable, "-m", "bgpd.main", "--node", "n1", "--state-dir",
                            str(tmp_path), "--route-table", str(table), "--datastore", "file",
                            "--config-file", str(tmp_path / "none.yaml")],
                           capture_output=True, text=True, timeout=60)
    finally:
        held.release()
    assert r.returncode == 1, r
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bgpd: state directory"), r.stderr
    assert f"pid {os.getpid()}" in lines[0] and r.stdout == ""


def test_second_policy_agent_for_one_table_exits_1_with_one_line() -> None:
    """Issue 18: podbgp-policy keeps no state directory but owns an nftables table per
    network namespace; a second agent for it exits before touching etcd or nft."""
    from bgpd.ops.lock import policy_table_lock

    name = f"podbgp-t{random.randint(10_000, 2**31 - 1)}"
    held = policy_table_lock(name)
    try:
        # etcd at a closed port and a 1 s timeout: were the lock not taken first, the
        # agent would be waiting on etcd (or nft) instead of exiting at once.
        r = subprocess.run([sys.executable, "-m", "policy.main", "--node", "n1", "--table", name,
                            "--etcd-endpoints", "http://127.0.0.1:9"],
                           capture_output=True, text=True, timeout=60)
        with pytest.raises(AlreadyRunning) as err:
            policy_table_lock(name)
    finally:
        held.close()
    assert r.returncode == 1, r
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"podbgp-policy: nftables table inet {name}"), \
        r.stderr
    assert f"pid {os.getpid()}" in lines[0] and r.stdout == ""
    assert f"pid {os.getpid()}" in str(err.value)
    policy_table_lock(name).close()  # free again once the holder let go
