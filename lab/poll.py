"""The lab's one polling loop (lab.harness.Lab.wait_for, lab.etcd_cluster)."""

from __future__ import annotations

import time


def wait_for(pred, timeout: float, what: str, interval: float = 0.05):
    """Poll ``pred`` until it returns something truthy and return that; errors it raises
    mean "not yet" (the last one is reported). TimeoutError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            v = pred()
            if v:
                return v
        except Exception as e:  # keep polling, report the last
            last_exc = e
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}"
                       + (f" (last error: {last_exc})" if last_exc else ""))
