"""deploy/systemd: the unit verifies clean and keeps its promises.

`systemd-analyze verify` catches what systemd itself rejects; the INI checks
pin the contract with bgpd (notify, signals, capabilities, environment) so a
later edit cannot quietly weaken it; the MDWE check proves that
MemoryDenyWriteExecute=yes does not break the Python runtime we ship.
The unit is also run by systemd itself, in a container with systemd as
PID 1: tests/image/test_image.py::test_systemd_unit_under_systemd.
"""

from __future__ import annotations

import ctypes
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import REPO, free_port, require, require_binary

UNIT = REPO / "deploy" / "systemd" / "podbgp.service"
ENV_EXAMPLE = REPO / "deploy" / "systemd" / "podbgp.env.example"
VENV_BIN = Path(sys.executable).parent

# bgpd's environment fallbacks (README.md, "Running it").
BGPD_ENV = {
    "NODENAME", "DATASTORE_TYPE", "ETCD_ENDPOINTS", "ETCD_CA_CERT_FILE",
    "ETCD_CERT_FILE", "ETCD_KEY_FILE", "PODBGP_CONFIG_FILE", "PODBGP_HTTP_LISTEN",
}


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """section -> key -> every value in order (systemd keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    logical = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not logical and (not line or line[0] in "#;"):
            continue
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        line, logical = logical + line, ""
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{UNIT.name}: {line!r} before any [section]"
        key, sep, value = line.partition("=")
        assert sep, f"{UNIT.name}: not KEY=VALUE: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


@pytest.fixture(scope="module")
def service() -> dict[str, list[str]]:
    return parse_unit(UNIT.read_text())["Service"]


def one(service: dict[str, list[str]], key: str) -> str:
    values = service.get(key)
    assert values and len(values) == 1, f"{key}= must be set exactly once, got {values}"
    return values[0]


def verify(unit_text: str, tmp_path: Path, binary: str = "bgpd",
           name: str = "podbgp.service") -> subprocess.CompletedProcess:
    """systemd-analyze verify on a copy whose ExecStart names an existing file.

    verify insists that ExecStart's binary exists; here it is the venv's
    console script, not /usr/local/bin/<binary>. Nothing else is changed.
    """
    analyze = require_binary("systemd-analyze")
    exe = VENV_BIN / binary
    require(exe.exists(), f"needs the {binary} console script at {exe} (pip install -e .)")
    text, n = re.subn(rf"(?m)^ExecStart=/usr/local/bin/{binary}\b", f"ExecStart={exe}",
                      unit_text)
    assert n == 1, f"ExecStart must start /usr/local/bin/{binary}"
    copy = tmp_path / name
    copy.write_text(text)
    return subprocess.run(
        [analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60
    )


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    result = verify(UNIT.read_text(), tmp_path)
    # verify exits 0 even for unknown keys and bad values: they only appear
    # on stderr, so stderr must be empty.
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_verify_catches_a_broken_directive(tmp_path: Path) -> None:
    """The check above is only worth something if verify reports mistakes."""
    broken = UNIT.read_text().replace("KillMode=mixed", "KillMode=mixd")
    result = verify(broken, tmp_path)
    assert "mixd" in result.stderr


def test_exposure_score_stays_low(tmp_path: Path) -> None:
    """`systemd-analyze security` scores the sandbox (0 best, 10 worst).

    2.4 when written; the floor is host networking, root with NET_ADMIN and
    no IP allow list, none of which bgpd can give up.
    """
    analyze = require_binary("systemd-analyze")
    copy = tmp_path / "podbgp.service"
    copy.write_text(UNIT.read_text())
    result = subprocess.run(
        [analyze, "security", "--offline=yes", str(copy)],
        capture_output=True, text=True, timeout=60,
    )
    match = re.search(r"Overall exposure level for podbgp\.service: ([0-9.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 3.0, result.stdout


def test_notify_and_lifecycle_contract(service: dict[str, list[str]]) -> None:
    assert one(service, "Type") == "notify"
    # Only bgpd may send READY/WATCHDOG, never its ExaBGP child.
    assert one(service, "NotifyAccess") == "main"
    assert one(service, "ExecStart").split()[0] == "/usr/local/bin/bgpd"
    assert one(service, "ExecReload") == "/bin/kill -HUP $MAINPID"
    # SIGTERM to bgpd alone; leftovers SIGKILLed after it exits.
    assert one(service, "KillMode") == "mixed"
    assert one(service, "KillSignal") == "SIGTERM"
    assert one(service, "Restart") == "on-failure"
    assert "RestartSec" in service
    assert one(service, "WatchdogSec") == "30"
    assert one(service, "EnvironmentFile") == "-/etc/podbgp/podbgp.env"


def test_capabilities_are_exactly_net_admin_and_bind_service(
    service: dict[str, list[str]],
) -> None:
    wanted = {"CAP_NET_ADMIN", "CAP_NET_BIND_SERVICE"}
    assert set(one(service, "CapabilityBoundingSet").split()) == wanted
    assert set(one(service, "AmbientCapabilities").split()) == wanted


def test_hardening_keeps_netlink_and_host_network(service: dict[str, list[str]]) -> None:
    assert set(one(service, "RestrictAddressFamilies").split()) == {
        "AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK",
    }
    for key in ("PrivateNetwork", "PrivateUsers", "IPAddressDeny", "IPAddressAllow"):
        assert key not in service, f"{key}= would cut bgpd off the host's network"
    expected = {
        "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
        "PrivateTmp": "yes", "ProtectKernelTunables": "yes", "LockPersonality": "yes",
        "MemoryDenyWriteExecute": "yes", "SystemCallArchitectures": "native",
        "RuntimeDirectory": "podbgp", "StateDirectory": "podbgp",
    }
    assert {k: one(service, k) for k in expected} == expected


def test_env_example_sets_only_bgpd_variables() -> None:
    assigned = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        m = re.match(r"^#?([A-Z_][A-Z0-9_]*)=(.*)$", line)
        if m:
            assigned[m.group(1)] = m.group(2)
    # BGPD_OPTS feeds ExecStart's $BGPD_OPTS; every other name is bgpd's.
    assert set(assigned) == BGPD_ENV | {"BGPD_OPTS"}
    assert "$BGPD_OPTS" in UNIT.read_text()


MDWE_PROBE = textwrap.dedent(
    """
    import ctypes, mmap, subprocess, sys
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(65, 1, 0, 0, 0) == 0, "PR_SET_MDWE"  # PR_MDWE_REFUSE_EXEC_GAIN
    try:
        mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        sys.exit("control failed: W+X mapping allowed under MDWE")
    except OSError:
        pass
    import asyncio, ssl, json
    import grpc, aetcd, pyroute2, prometheus_client, structlog, yaml, exabgp
    from pyroute2 import IPRoute
    with IPRoute() as ipr:
        assert ipr.get_links(), "no links over rtnetlink"
    async def grpc_roundtrip():
        # gRPC core (aetcd's transport) starts its threads and polls a dead port.
        async with grpc.aio.insecure_channel("127.0.0.1:%d") as ch:
            try:
                await asyncio.wait_for(ch.channel_ready(), 0.5)
            except asyncio.TimeoutError:
                pass
    asyncio.run(grpc_roundtrip())
    # ExaBGP is a child: MDWE is inherited, as under systemd.
    r = subprocess.run([sys.argv[1], "validate", sys.argv[2]], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    print("MDWE-OK")
    """
)


def test_runtime_works_with_memory_deny_write_execute(tmp_path: Path) -> None:
    """MemoryDenyWriteExecute=yes: nothing we run needs W+X memory.

    PR_SET_MDWE (Linux >= 6.3) is the kernel's own form of the same rule
    (newer systemd uses it; 252 uses an equivalent seccomp filter).
    """
    libc = ctypes.CDLL(None, use_errno=True)
    require(libc.prctl(66, 0, 0, 0, 0) >= 0, "kernel lacks PR_GET_MDWE (Linux >= 6.3)")
    exabgp = VENV_BIN / "exabgp"
    require(exabgp.exists(), f"needs {exabgp}")
    conf = tmp_path / "exabgp.conf"
    conf.write_text(
        "neighbor 127.0.0.2 {\n router-id 127.0.0.1; local-address 127.0.0.1;\n"
        " local-as 65000; peer-as 65000; md5-password 'secret';\n"
        " family { ipv4 unicast; ipv6 unicast; }\n}\n"
    )

    result = subprocess.run(
        [sys.executable, "-c", MDWE_PROBE % free_port(), str(exabgp), str(conf)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0 and "MDWE-OK" in result.stdout, result.stdout + result.stderr


# ------------------------------------------------------------ podbgp-policy

POLICY_UNIT = REPO / "deploy" / "systemd" / "podbgp-policy.service"
POLICY_ENV_EXAMPLE = REPO / "deploy" / "systemd" / "podbgp-policy.env.example"
POLICY_ENV = {"PODBGP_POLICY_HTTP_LISTEN", "PODBGP_POLICY_TABLE", "FELIX_INTERFACEPREFIX",
              "PODBGP_POLICY_RESYNC_INTERVAL"}


def test_policy_unit_verifies_and_is_sandboxed(tmp_path: Path) -> None:
    result = verify(POLICY_UNIT.read_text(), tmp_path, "podbgp-policy",
                    "podbgp-policy.service")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    analyze = require_binary("systemd-analyze")
    copy = tmp_path / "podbgp-policy.service"
    result = subprocess.run([analyze, "security", "--offline=yes", str(copy)],
                            capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for podbgp-policy\.service: ([0-9.]+)",
                      result.stdout)
    assert match and float(match.group(1)) <= 3.0, result.stdout + result.stderr


def test_policy_unit_contract() -> None:
    unit = parse_unit(POLICY_UNIT.read_text())
    svc = unit["Service"]
    assert one(svc, "Type") == "notify" and one(svc, "NotifyAccess") == "main"
    # Only nf_tables over netlink: exactly CAP_NET_ADMIN.
    assert one(svc, "CapabilityBoundingSet") == "CAP_NET_ADMIN"
    assert one(svc, "AmbientCapabilities") == "CAP_NET_ADMIN"
    assert "AF_NETLINK" in one(svc, "RestrictAddressFamilies")
    assert "PrivateNetwork" not in svc
    # The same datastore settings as bgpd (its env file), then its own.
    assert svc["EnvironmentFile"] == ["-/etc/podbgp/podbgp.env",
                                      "-/etc/podbgp/podbgp-policy.env"]
    assert one(svc, "ExecStart") == "/usr/local/bin/podbgp-policy $POLICY_OPTS"
    # Ordering on etcd, never a dependency (rules stay while etcd is away).
    assert "Requires" not in unit["Unit"] and "BindsTo" not in unit["Unit"]


def test_policy_env_example_names_only_policy_variables() -> None:
    from policy.main import build_parser

    assigned = set(re.findall(r"(?m)^#?([A-Z_][A-Z0-9_]*)=", POLICY_ENV_EXAMPLE.read_text()))
    assert assigned == POLICY_ENV | {"POLICY_OPTS"}
    helps = build_parser().format_help()
    for var in POLICY_ENV:
        assert var in helps, f"{var} is not an environment fallback of podbgp-policy"


AGENT_UNIT = REPO / "deploy" / "systemd" / "podbgp-cni-agent.service"


def test_cni_agent_unit_verifies_and_keeps_its_promises(tmp_path: Path) -> None:
    """The podbgp-cni agent unit: systemd accepts it, it starts the agent on the socket
    the plugins look for by default, and it grants what setns()/rtnetlink/sysctl need
    and no more (no ProtectKernelTunables: the agent writes /proc/sys/net)."""
    from cni.agent import DEFAULT_AGENT_SOCKET

    analyze = require_binary("systemd-analyze")
    script = VENV_BIN / "podbgp-cni"
    require(script.exists(), f"needs the podbgp-cni console script at {script}")
    text = AGENT_UNIT.read_text()
    unit = parse_unit(text)["Service"]
    start = one(unit, "ExecStart").split()
    assert start[:2] == ["/usr/local/bin/podbgp-cni", "agent"]
    sock = start[start.index("--socket") + 1]
    assert sock.replace("/run/", "/var/run/") == DEFAULT_AGENT_SOCKET
    assert one(unit, "RuntimeDirectory") == sock.split("/")[2]
    assert one(unit, "RuntimeDirectoryMode") == "0700"
    caps = set(one(unit, "CapabilityBoundingSet").split())
    assert {"CAP_NET_ADMIN", "CAP_SYS_ADMIN"} <= caps and "CAP_NET_BIND_SERVICE" not in caps
    assert "ProtectKernelTunables" not in unit
    copy = tmp_path / "podbgp-cni-agent.service"
    copy.write_text(text.replace("ExecStart=/usr/local/bin/podbgp-cni",
                                 f"ExecStart={script}"))
    result = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and result.stderr == "", result.stderr
