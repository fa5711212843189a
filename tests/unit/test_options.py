"""bgpd.options: every bad value is a UsageError naming its option; env fallbacks."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from bgpd.options import DEFAULT_ROUTE_PROTOCOL, UsageError, parse_options

ENV_VARS = ("NODENAME", "DATASTORE_TYPE", "ETCD_ENDPOINTS", "ETCD_CA_CERT_FILE", "ETCD_CERT_FILE",
            "ETCD_KEY_FILE", "PODBGP_CONFIG_FILE", "PODBGP_HTTP_LISTEN",
            "PODBGP_ROUTE_PROTOCOL", "PODBGP_ROUTE_TABLE", "PODBGP_LOG_FORMAT",
            "PODBGP_LOG_LEVEL", "PODBGP_STATE_DIR", "PODBGP_CONVERGENCE_TIMEOUT",
            "PODBGP_RESYNC_INTERVAL", "PODBGP_MAX_PATHS", "PODBGP_SECRETS_DIR",
            "PODBGP_DATAPLANE", "FELIX_VXLANVNI", "FELIX_VXLANPORT", "FELIX_VXLANMTU",
            "FELIX_IPINIPMTU")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for v in ENV_VARS:
        monkeypatch.delenv(v, raising=False)


def test_defaults() -> None:
    o = parse_options([])
    assert o.node == socket.gethostname()
    assert o.datastore == "etcdv3"
    assert o.etcd_endpoints == ("http://127.0.0.1:2379",)
    assert o.http_listen == ("127.0.0.1", 9179)
    assert o.route_protocol == DEFAULT_ROUTE_PROTOCOL == 201
    assert o.route_table == 254
    assert o.log_format is None and o.log_level == "info"
    assert o.state_dir == "/run/podbgp"
    assert o.convergence_timeout == 120 and o.resync_interval == 30 and o.max_paths == 1
    assert o.secrets_dir == "/etc/podbgp/secrets"


def test_flags_parse(tmp_path: Path) -> None:
    ca, cert, key = (tmp_path / n for n in ("ca.pem", "c.pem", "k.pem"))
    for f in (ca, cert, key):
        f.write_text("x")
    o = parse_options([
        "--node", "n7", "--etcd-endpoints", "https://a:2379, https://b:2379",
        "--etcd-ca", str(ca), "--etcd-cert", str(cert), "--etcd-key", str(key),
        "--http-listen", "[::1]:9000", "--route-protocol", "0xc9", "--route-table", "100",
        "--log-format", "console", "--log-level", "DEBUG", "--state-dir", "/x",
        "--convergence-timeout", "2.5", "--resync-interval", "1", "--max-paths", "64",
        "--secrets-dir", "/s"])
    assert o.node == "n7"
    assert o.etcd_endpoints == ("https://a:2379", "https://b:2379")
    assert (o.etcd_ca, o.etcd_cert, o.etcd_key) == (str(ca), str(cert), str(key))
    assert o.http_listen == ("::1", 9000)
    assert o.route_protocol == 201 and o.route_table == 100
    assert o.log_format == "console" and o.log_level == "debug"
    assert o.state_dir == "/x" and o.secrets_dir == "/s"
    assert o.convergence_timeout == 2.5 and o.resync_interval == 1.0 and o.max_paths == 64


def test_env_fallbacks(monkeypatch, tmp_path: Path) -> None:
    conf = tmp_path / "c.yaml"
    conf.write_text("")
    env = {"NODENAME": "envnode", "DATASTORE_TYPE": "file", "PODBGP_CONFIG_FILE": str(conf),
           "ETCD_ENDPOINTS": "http://e1:1,http://e2:2", "PODBGP_HTTP_LISTEN": ":9999",
           "PODBGP_ROUTE_PROTOCOL": "202", "PODBGP_ROUTE_TABLE": "7",
           "PODBGP_LOG_FORMAT": "json", "PODBGP_LOG_LEVEL": "warning",
           "PODBGP_STATE_DIR": "/st", "PODBGP_CONVERGENCE_TIMEOUT": "9",
           "PODBGP_RESYNC_INTERVAL": "5", "PODBGP_MAX_PATHS": "4",
           "PODBGP_SECRETS_DIR": "/sec"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    o = parse_options([])
    assert o.node == "envnode" and o.datastore == "file" and o.config_file == str(conf)
    assert o.etcd_endpoints == ("http://e1:1", "http://e2:2")
    assert o.http_listen == ("0.0.0.0", 9999)
    assert (o.route_protocol, o.route_table) == (202, 7)
    assert (o.log_format, o.log_level) == ("json", "warning")
    assert (o.state_dir, o.secrets_dir) == ("/st", "/sec")
    assert (o.convergence_timeout, o.resync_interval, o.max_paths) == (9, 5, 4)
    # A flag beats its environment variable; an empty variable means "unset".
    assert parse_options(["--node", "flag"]).node == "flag"
    monkeypatch.setenv("NODENAME", "")
    assert parse_options([]).node == socket.gethostname()


def test_env_values_are_checked_too(monkeypatch) -> None:
    monkeypatch.setenv("PODBGP_ROUTE_PROTOCOL", "twelve")
    with pytest.raises(UsageError, match="--route-protocol"):
        parse_options([])


@pytest.mark.parametrize(("argv", "needle"), [
    (["--datastore", "kubernetes"], "--datastore"),
    (["--datastore", "file"], "--config-file"),
    (["--etcd-endpoints", "etcd:2379"], "--etcd-endpoints"),
    (["--etcd-endpoints", " , "], "--etcd-endpoints"),
    (["--etcd-ca", "/nonexistent/ca.pem"], "--etcd-ca"),
    (["--etcd-cert", "/nonexistent/c.pem"], "--etcd-cert"),
    (["--etcd-key", "/nonexistent/k.pem"], "--etcd-key"),
    (["--http-listen", "9179"], "--http-listen"),
    (["--http-listen", "localhost:9179"], "--http-listen"),
    (["--http-listen", "127.0.0.1:70000"], "--http-listen"),
    (["--route-protocol", "x"], "--route-protocol"),
    (["--route-protocol", "0"], "--route-protocol"),
    (["--route-protocol", "256"], "--route-protocol"),
    (["--route-protocol", "12"], "--route-protocol"),  # BIRD's
    (["--route-protocol", "80"], "--route-protocol"),  # Felix's
    (["--route-protocol", "186"], "--route-protocol"),  # FRR's
    (["--route-table", "0"], "--route-table"),
    (["--route-table", "main"], "--route-table"),
    (["--route-table", str(2**32)], "--route-table"),
    (["--log-format", "xml"], "--log-format"),
    (["--log-level", "loud"], "--log-level"),
    (["--convergence-timeout", "-1"], "--convergence-timeout"),
    (["--convergence-timeout", "soon"], "--convergence-timeout"),
    (["--resync-interval", "0.5"], "--resync-interval"),
    (["--max-paths", "0"], "--max-paths"),
    (["--max-paths", "65"], "--max-paths"),
])
def test_bad_value_names_the_option(argv: list[str], needle: str) -> None:
    with pytest.raises(UsageError) as ei:
        parse_options(argv)
    msg = str(ei.value)
    assert needle in msg
    assert "\n" not in msg


def test_cert_and_key_go_together(tmp_path: Path) -> None:
    cert = tmp_path / "c.pem"
    cert.write_text("x")
    with pytest.raises(UsageError, match="--etcd-cert and --etcd-key"):
        parse_options(["--etcd-cert", str(cert)])


def _bgpd(*args: str) -> subprocess.CompletedProcess:
    """The installed console script, as a user runs it (else the module)."""
    script = Path(sys.executable).parent / "bgpd"
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "bgpd.main"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[2])


@pytest.mark.parametrize(("args", "needle"), [
    (("--bogus",), "--bogus"),
    (("--node",), "--node"),
    (("--route-protocol", "17"), "--route-protocol"),
    (("--http-listen", "nowhere"), "--http-listen"),
])
def test_cli_usage_error_is_one_line_exit_2(args: tuple[str, ...], needle: str) -> None:
    r = _bgpd(*args)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("bgpd: ") and needle in lines[0]
    assert "Traceback" not in r.stderr and r.stdout == ""


def test_cli_version() -> None:
    r = _bgpd("--version")
    assert r.returncode == 0 and r.stdout.startswith("podbgp ")


def test_dataplane_setting_flag_and_env(monkeypatch) -> None:
    o = parse_options([])
    assert o.dataplane is True  # standalone: podbgp keeps tunnels and NAT
    assert (o.vxlan_vni, o.vxlan_port, o.vxlan_mtu, o.ipip_mtu) == (4096, 4789, 0, 0)
    assert parse_options(["--dataplane", "off"]).dataplane is False
    monkeypatch.setenv("PODBGP_DATAPLANE", "off")  # what the sidecar manifest sets
    assert parse_options([]).dataplane is False
    assert parse_options(["--dataplane", "on"]).dataplane is True  # the flag wins
    monkeypatch.setenv("FELIX_VXLANMTU", "1400")  # Calico's name for the same setting
    monkeypatch.setenv("FELIX_VXLANVNI", "4097")
    o = parse_options([])
    assert (o.vxlan_mtu, o.vxlan_vni) == (1400, 4097)


@pytest.mark.parametrize("args, message", [
    (["--dataplane", "maybe"], "--dataplane: 'maybe' is not on or off"),
    (["--vxlan-vni", "0"], "--vxlan-vni: 0 is out of range"),
    (["--vxlan-vni", "16777216"], "--vxlan-vni: 16777216 is out of range"),
    (["--vxlan-port", "70000"], "--vxlan-port: 70000 is out of range"),
    (["--vxlan-mtu", "50"], "--vxlan-mtu: 50 is below the minimum MTU 68"),
    (["--ipip-mtu", "x"], "--ipip-mtu: 'x' is not a number"),
])
def test_dataplane_bad_values(args, message) -> None:
    with pytest.raises(UsageError, match=re.escape(message)):
        parse_options(args)
