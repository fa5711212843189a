"""`bgpctl node status` rendering and the not-running message."""

import socket

import pytest

from bgpd.ctl.status import StatusError, fetch_status, render_status

STATUS = {
    "node": "node1", "as": 64512, "router_id": "10.99.0.11", "ready": True,
    "peers": [
        {"address": "10.99.0.13", "type": "node-to-node mesh", "state": "up",
         "since": "19:01:02", "info": "Established"},
        {"address": "10.99.0.12", "type": "global", "state": "start",
         "since": "19:00:00", "info": "Connect"},
        {"address": "fd00::2", "type": "node specific", "state": "up",
         "since": "19:00:01", "info": "Established"},
    ],
}


def test_status_table_splits_families_and_sorts_peers() -> None:
    text = render_status(STATUS)
    v4, v6 = text.split("IPv6 BGP status")
    assert "| PEER ADDRESS |" in v4 and "PEER TYPE" in v4 and "SINCE" in v4
    assert v4.index("10.99.0.12") < v4.index("10.99.0.13")
    assert "fd00::2" not in v4 and "fd00::2" in v6
    row = next(ln for ln in v4.splitlines() if "10.99.0.13" in ln)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells == ["10.99.0.13", "node-to-node mesh", "up", "19:01:02", "Established"]


def test_a_session_that_is_not_configured_says_why() -> None:
    # One bad peer is one bad peer (issue 13): it shows up, not configured, with the
    # reason, beside the running session to the same address on another port.
    peers = [*STATUS["peers"],
             {"address": "10.99.0.12", "port": 1790, "type": "global",
              "state": "not configured", "since": "",
              "info": "another session to 10.99.0.12 is configured"}]
    v4 = render_status({**STATUS, "peers": peers}).split("IPv6 BGP status")[0]
    row = next(ln for ln in v4.splitlines() if "10.99.0.12:1790" in ln)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells == ["10.99.0.12:1790", "global", "not configured", "",
                     "another session to 10.99.0.12 is configured"]
    firsts = [ln.strip("|").split("|")[0].strip() for ln in v4.splitlines()
              if ln.startswith("|") and "10.99" in ln]
    assert firsts == ["10.99.0.12", "10.99.0.12:1790", "10.99.0.13"]


def test_no_peers_of_a_family_is_said() -> None:
    text = render_status({**STATUS, "peers": STATUS["peers"][:1]})
    assert "No IPv6 peers found." in text
    assert "No IPv4 peers found." not in text


def test_daemon_not_running_is_a_clear_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(StatusError, match=f"not running.*127.0.0.1:{port}/status"):
        fetch_status(f"http://127.0.0.1:{port}")
