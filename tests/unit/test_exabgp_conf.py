"""bgpd.exabgp.conf: golden renders, validation errors, hostile values."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bgpd.exabgp.conf import ExaBGPConfigError, check_peers, render_config, render_env
from bgpd.peerspec import PeerSpec, PeerType

GOLDEN = Path(__file__).parent / "golden"
REGEN = os.environ.get("PODBGP_REGEN_GOLDEN") == "1"
RELAY = ["/usr/bin/python3", "-m", "bgpd.exabgp.relay", "/run/podbgp/exabgp.sock"]
EXABGP = Path(sys.executable).parent / "exabgp"


def spec(**kw) -> PeerSpec:
    base = dict(
        address="10.99.0.2", peer_as=65000, local_address="10.99.0.1", local_as=65000,
        router_id="10.99.0.1", peer_type=PeerType.MESH,
    )
    base.update(kw)
    return PeerSpec(**base)


CASES = {
    "mesh_active": [spec()],
    "mesh_passive_v6": [
        spec(address="fd00::2", local_address="fd00::1", passive=True, hold_time=30,
             graceful_restart_time=300),
    ],
    "ebgp_md5_ttl_port": [
        spec(address="192.0.2.7", peer_as=64999, local_address="192.0.2.1",
             peer_type=PeerType.GLOBAL, password="s3cret", ttl_security=1, port=1790,
             graceful_restart_time=0, hold_time=0),
    ],
    "many_sorted": [
        spec(address="10.99.0.9"), spec(address="10.99.0.3", passive=True),
        spec(address="fd00::9", local_address="fd00::1"),
    ],
}


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / f"{name}.conf"
    if REGEN:
        path.write_text(text)
    assert path.exists(), f"missing golden file {path}; run with PODBGP_REGEN_GOLDEN=1"
    assert text == path.read_text(), f"render of {name} differs from {path}"


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden(name: str) -> None:
    check_golden(name, render_config("10.99.0.1", ["10.99.0.1", "fd00::1"], CASES[name], RELAY))


def test_order_of_sessions_does_not_change_text() -> None:
    a = render_config("10.99.0.1", ["10.99.0.1"], CASES["many_sorted"], RELAY)
    b = render_config("10.99.0.1", ["10.99.0.1"], list(reversed(CASES["many_sorted"])), RELAY)
    assert a == b


def test_passive_is_always_explicit() -> None:
    active = render_config("10.99.0.1", ["10.99.0.1"], [spec(passive=False)], RELAY)
    passive = render_config("10.99.0.1", ["10.99.0.1"], [spec(passive=True)], RELAY)
    assert "passive false;" in active
    assert "passive true;" in passive


def test_password_is_base64_and_never_plain() -> None:
    text = render_config("10.99.0.1", ["10.99.0.1"], [spec(password="hunter2")], RELAY)
    assert "hunter2" not in text
    assert "md5-base64 true;" in text
    assert "md5-password 'aHVudGVyMg==';" in text


def test_ttl_security_hops() -> None:
    text = render_config("10.99.0.1", ["10.99.0.1"], [spec(ttl_security=3)], RELAY)
    assert "outgoing-ttl 255;" in text
    assert "incoming-ttl 253;" in text


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("address", "10.99.0.300", "address"),
        ("local_address", "fd00::1", "IPv6 source for an IPv4 peer"),
        ("router_id", "fd00::1", "router id must be IPv4"),
        ("peer_as", 0, "peer_as"),
        ("local_as", 2**32, "local_as"),
        ("peer_as", True, "not an integer"),
        ("port", 70000, "port"),
        ("hold_time", 2, "must be 0 or at least 3"),
        ("graceful_restart_time", 5000, "graceful_restart_time"),
        ("ttl_security", 256, "ttl_security"),
        ("bind_source", "no", "bind_source"),
        ("password", "", "non-empty"),
        ("password", "x" * 81, "TCP MD5 allows 80"),
        ("passive", "yes", "passive"),
    ],
)
def test_bad_values_are_rejected_with_the_field(field: str, value: object, needle: str) -> None:
    bad = dataclasses.replace(spec(), **{field: value})
    with pytest.raises(ExaBGPConfigError, match=re.escape(needle)):
        render_config("10.99.0.1", ["10.99.0.1"], [bad], RELAY)


def test_ttl_security_255_is_calicos_maximum() -> None:
    # Calico's ttlSecurity is a uint8 and confd renders `multihop 255`; issue 13: podbgp
    # used to refuse the whole peer set for it.
    text = render_config("10.99.0.1", ["10.99.0.1"], [spec(ttl_security=255)], RELAY)
    assert "incoming-ttl 1;" in text


def test_source_address_none_lets_the_kernel_choose() -> None:
    text = render_config("10.99.0.1", ["10.99.0.1"], [spec(bind_source=False)], RELAY)
    assert "local-address auto;" in text and "local-address 10.99.0.1" not in text


def test_one_bad_session_is_left_out_alone() -> None:
    good = spec()
    other = spec(address="10.99.0.3", peer_as=65003)
    bad_pw = spec(address="10.99.0.4", password="p" * 81)
    second_port = spec(port=1791)
    ok, bad = check_peers("10.99.0.1", [bad_pw, good, second_port, other])
    assert ok == [good, other]
    assert [(s.address, s.port) for s, _ in bad] == [("10.99.0.2", 1791), ("10.99.0.4", 179)]
    assert "configured twice" in bad[0][1] and "TCP MD5 allows 80" in bad[1][1]
    assert "ppp" not in bad[1][1]  # never the password itself


def test_password_not_in_error() -> None:
    with pytest.raises(ExaBGPConfigError) as info:
        render_config("10.99.0.1", ["10.99.0.1"], [spec(password="p" * 90)], RELAY)
    assert "ppp" not in str(info.value)


def test_duplicate_address_rejected() -> None:
    with pytest.raises(ExaBGPConfigError, match="configured twice"):
        render_config("10.99.0.1", ["10.99.0.1"], [spec(), spec(port=1790)], RELAY)


@pytest.mark.parametrize("word", ["/bin/x;", "/bin/x y", "/bin/{", "rel/ative", "/a'b", "/a\nb"])
def test_relay_command_words_checked(word: str) -> None:
    with pytest.raises(ExaBGPConfigError, match="relay command"):
        render_config("10.99.0.1", ["10.99.0.1"], [spec()], [word, "-m", "bgpd.exabgp.relay"])


def test_env() -> None:
    env = render_env(["10.99.0.1", "fd00::1"])
    assert env["exabgp.tcp.bind"] == "10.99.0.1 fd00::1"
    assert env["exabgp.api.ack"] == "true"
    assert env["exabgp.daemon.user"] == "root"
    assert env["exabgp.daemon.drop"] == "false"
    assert env["exabgp.daemon.daemonize"] == "false"
    assert env["exabgp.api.cli"] == "false"
    assert env["exabgp.log.level"] == "WARNING"
    with pytest.raises(ExaBGPConfigError, match="at least one"):
        render_env([])
    with pytest.raises(ExaBGPConfigError, match="local address"):
        render_env(["10.0.0.1 0.0.0.0"])


# ------------------------------------------------------------------ hostile

HOSTILE = [
    "x'; } neighbor 6.6.6.6 { peer-as 1; #",
    'a" ; process evil { run /bin/sh; }',
    "line\nneighbor 6.6.6.6 {\n",
    "}}}};;;{{{",
    "\\u0027\\n",
    "10.99.0.2; passive true",
    "10.99.0.2\n",
]


def skeleton(text: str) -> list[str]:
    """Block structure of an ExaBGP config: statement keywords, braces, semicolons.

    Quoted strings are collapsed (ExaBGP's tokeniser treats both quote kinds).
    """
    out: list[str] = []
    word_start = True
    quote = ""
    for ch in text:
        if quote:
            if ch == quote:
                quote = ""
            continue
        if ch in "'\"":
            quote = ch
            out.append("Q")
        elif ch in "{};":
            out.append(ch)
            word_start = True
        elif ch == "\n":
            out.append("NL")
        elif ch.isspace():
            pass
        elif word_start:
            out.append("W")
            word_start = False
    return out


@pytest.mark.parametrize("value", HOSTILE)
@pytest.mark.parametrize("field", ["address", "local_address", "router_id"])
def test_hostile_addresses_rejected(field: str, value: str) -> None:
    bad = dataclasses.replace(spec(), **{field: value})
    with pytest.raises(ExaBGPConfigError):
        render_config("10.99.0.1", ["10.99.0.1"], [bad], RELAY)


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_node_values_rejected(value: str) -> None:
    with pytest.raises(ExaBGPConfigError):
        render_config(value, ["10.99.0.1"], [spec()], RELAY)
    with pytest.raises(ExaBGPConfigError):
        render_config("10.99.0.1", [value], [spec()], RELAY)
    with pytest.raises(ExaBGPConfigError):
        render_env([value])


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_names_and_passwords_cannot_change_structure(value: str) -> None:
    benign = render_config("10.99.0.1", ["10.99.0.1"], [spec(password="benign")], RELAY)
    hostile_spec = spec(password=value, name=value, peer_node=value, filters=(value,))
    text = render_config("10.99.0.1", ["10.99.0.1"], [hostile_spec], RELAY)
    assert skeleton(text) == skeleton(benign)
    assert text.count("\n") == benign.count("\n")
    # Nothing of the hostile value appears: names are not rendered at all.
    assert value not in text


def test_hostile_render_passes_exabgp_validate(tmp_path: Path) -> None:
    """ExaBGP's own parser reads the hostile render as exactly one neighbor."""
    if not EXABGP.exists():
        pytest.skip(f"{EXABGP} not installed")
    specs = [spec(password=HOSTILE[0], name=HOSTILE[2]),
             spec(address="fd00::2", local_address="fd00::1", password=HOSTILE[1])]
    conf = tmp_path / "exabgp.conf"
    conf.write_text(render_config("10.99.0.1", ["10.99.0.1"], specs, [sys.executable, "-V"]))
    r = subprocess.run([str(EXABGP), "validate", "-n", str(conf)], capture_output=True,
                       text=True, timeout=60)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert re.findall(r"neighbor\s+(\S+)", out.split("checking neighbors", 1)[1]) == [
        "10.99.0.2", "fd00::2"]
    assert "6.6.6.6" not in out
