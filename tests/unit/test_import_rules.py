"""What may import what (docs/architecture.md, "What may import what"), checked on the
source: a layering rule that is only written down erodes with the first hurried fix."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("bgpd", "rib", "fib_sync", "config", "ipam", "policy")


def fresh(code: str) -> str:
    """What ``code`` prints, run in a fresh interpreter from the repository."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=True, cwd=REPO).stdout


def modules(package: str) -> list[Path]:
    return sorted(p for p in (REPO / package).rglob("*.py"))


def rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def imports(path: Path) -> set[str]:
    """Every module name ``path`` imports (absolute; relative ones resolved)."""
    tree = ast.parse(path.read_text(), str(path))
    pkg = rel(path).removesuffix(".py").split("/")[:-1]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = pkg[: len(pkg) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
    return out


def importers(target: str, where: tuple[str, ...] = PACKAGES) -> set[str]:
    """Files under ``where`` that import ``target`` or anything below it."""
    found = set()
    for package in where:
        for path in modules(package):
            if any(m == target or m.startswith(target + ".") for m in imports(path)):
                found.add(rel(path))
    return found


def test_only_the_exabgp_backend_imports_exabgp() -> None:
    assert {f for f in importers("exabgp") if not f.startswith("bgpd/exabgp/")} == set()


def test_only_the_composition_root_names_the_backend() -> None:
    outside = {f for f in importers("bgpd.exabgp") if not f.startswith("bgpd/exabgp/")}
    assert outside == {"bgpd/main.py"}


def test_the_node_and_shell_use_the_speaker_interface_only() -> None:
    for f in ("bgpd/node.py", "bgpd/daemon.py", "bgpd/peers.py", "bgpd/translate.py",
              "bgpd/events.py", "bgpd/speaker.py"):
        assert "bgpd.exabgp" not in {m[:11] for m in imports(REPO / f)}, f


@pytest.mark.parametrize("forbidden", ["asyncio", "pyroute2", "subprocess", "config",
                                       "fib_sync", "bgpd", "aetcd"])
def test_rib_is_pure(forbidden: str) -> None:
    assert importers(forbidden, ("rib",)) == set()


CONFIG_IO = {"config/datastore.py", "config/etcd_store.py", "config/etcd_client.py",
             "config/file_store.py"}


@pytest.mark.parametrize("forbidden", ["asyncio", "aetcd", "grpc", "pyroute2", "bgpd", "rib",
                                       "fib_sync"])
def test_config_model_half_does_no_io(forbidden: str) -> None:
    assert importers(forbidden, ("config",)) - CONFIG_IO == set()


@pytest.mark.parametrize("forbidden", ["bgpd", "rib", "config", "ipam", "policy"])
def test_fib_sync_knows_no_bgp_and_no_config(forbidden: str) -> None:
    assert importers(forbidden, ("fib_sync",)) == set()


def test_the_node_core_does_no_io_and_reads_no_clock() -> None:
    path = REPO / "bgpd" / "node.py"
    mods = imports(path)
    for forbidden in ("asyncio", "socket", "subprocess", "fib_sync.syncer", "bgpd.daemon",
                      "bgpd.ops"):
        assert not any(m == forbidden or m.startswith(forbidden + ".") for m in mods), forbidden
    calls = {f"{n.func.value.id}.{n.func.attr}" for n in ast.walk(ast.parse(path.read_text()))
             if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
             and isinstance(n.func.value, ast.Name)}
    assert not calls & {"time.time", "time.monotonic", "time.sleep", "os.kill"}, calls


@pytest.mark.parametrize("package", ["bgpd/ops", "bgpd/ctl"])
def test_ops_and_ctl_import_no_backend(package: str) -> None:
    assert importers("bgpd.exabgp", (package,)) == set()
    assert importers("exabgp", (package,)) == set()


def test_the_rules_see_real_imports() -> None:
    """The checker itself: it finds imports that exist (else every rule passes vacuously)."""
    assert "bgpd/exabgp/launch.py" in importers("exabgp")
    assert "bgpd/daemon.py" in importers("fib_sync")
    assert "config/etcd_store.py" in importers("aetcd", ("config",))
    assert "bgpd.speaker.PeerConfigError" in imports(REPO / "bgpd" / "exabgp" / "conf.py")


def test_the_daemon_imports_neither_pyroute2_nor_prometheus_client_nor_ssl() -> None:
    """Issue 17 (memory): the daemon's import graph, in a fresh interpreter as the bgpd
    console script starts it, loads no pyroute2 (fib_sync encodes its own messages), no
    prometheus_client (bgpd.ops.promtext), no pydantic nor pydantic_core (config.lite
    validates the models: ~9 MiB), no importlib.metadata (build_info reads
    exabgp.version), and ``ssl`` and
    ``_hashlib`` are refused by bgpd.main, not loaded (etcd's TLS is grpc's own, tests/integration/test_etcd_store_tls.py;
    hashlib serves sha256/sha1 from its builtin modules): libcrypto is never mapped."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", (
        "import sys; import bgpd.main, bgpd.daemon, bgpd.exabgp, fib_sync, config.file_store\n"
        "import config.etcd_store, policy.metrics, config.parse, config.policy, config.k8s\n"
        "import config.endpoints, ipam.tunnel, bgpd.ctl.cli\n"
        "import hashlib\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pyroute2', "
        "'prometheus_client', 'pydantic', 'pydantic_core')), sys.modules.get('ssl'), "
        "sys.modules.get('_hashlib'))\n"
        "print(hashlib.sha256(b'abc').hexdigest(), hashlib.sha1(b'abc').hexdigest())\n"
        "print(any('libcrypto' in line for line in open('/proc/self/maps')))\n"
        "import bgpd.exabgp, config.model\n"
        "print(bgpd.exabgp.build_info()['exabgp_version'], config.model.Metadata(name='7').name,\n"
        "      'importlib.metadata' in sys.modules)\n"
        "import importlib.metadata\n"
        "print(importlib.metadata.version('exabgp'))")],
        capture_output=True, text=True, timeout=120, check=True, cwd=REPO)
    lines = out.stdout.splitlines()
    assert lines[0] == "[] None None", out.stdout
    # the builtin digests serve what podbgp hashes (FIPS 180-4 test vectors for "abc")
    assert lines[1] == ("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad "
                        "a9993e364706816aba3e25717850c26c9cd0d89d")
    assert lines[2] == "False"  # libcrypto is not mapped at all
    # the models validate, and the build label reads ExaBGP's own version module: the
    # installed distribution's version, importlib.metadata never imported
    version = lines[4]
    assert lines[3] == f"{version} 7 False", out.stdout


def test_config_models_build_their_validators_on_first_use() -> None:
    """Issue 17 (memory): CalicoModel defers building each model's validator
    (``defer_build``) and no module makes a model instance at import, so an idle daemon
    holds validators only for the kinds its datastore has shown it (~1 MiB less idle:
    policy, BGPFilter, ... never built); the first use builds one and validates as
    ever."""
    out = fresh(
        "import sys, inspect, config.lite\n"
        "import bgpd.main, bgpd.daemon, config.file_store, config.etcd_store, config.parse\n"
        "import config.policy, config.k8s, ipam.model\n"
        "def built():\n"
        "    return sorted({c.__name__ for m in ('config.model', 'config.policy', 'config.k8s',"
        " 'ipam.model') for c in vars(sys.modules[m]).values() if inspect.isclass(c)"
        " and issubclass(c, config.lite.BaseModel) and c.__pydantic_complete__})\n"
        "print(built())\n"
        "r = config.parse.parse_resource({'apiVersion': 'projectcalico.org/v3', 'kind': 'IPPool',"
        " 'metadata': {'name': 'p'}, 'spec': {'cidr': '10.0.0.0/16'}})\n"
        "print(built(), r.spec.cidr)\n"
        "p = config.parse.parse_resource({'apiVersion': 'projectcalico.org/v3',"
        " 'kind': 'Profile', 'metadata': {'name': 'x'}})\n"
        "print(p.spec == config.policy.ProfileSpec(), config.policy.Rule(action='Allow').src"
        " == config.policy.EntityRule(), 'Profile' in built())\n")
    lines = out.splitlines()
    assert lines[0] == "[]", out
    # an IPPool's validation builds its own model's and those of the parts it holds
    assert lines[1] == "['IPPool', 'IPPoolSpec', 'Metadata'] 10.0.0.0/16", out
    assert lines[2] == "True True True", out


def test_an_etcd_daemon_imports_no_yaml_and_no_policy_models_until_used() -> None:
    """Issue 17 (memory): config.parse imports yaml (YAML text: the file datastore,
    bgpctl), config.policy and config.k8s on first use, so a daemon reading etcd loads
    none of them (~1.3 MiB); each loads when its kind or YAML text comes. The daemon
    never imports ExaBGP's launcher (bgpd.exabgp.commands holds the names they share:
    ~0.4 MiB), nor shutil (with bz2 and lzma: fib_sync.nft looks `nft` up on first
    use) nor the IPAM allocator (ipam.tunnel needs it only from its caller)."""
    out = fresh(
        "import sys\n"
        "import bgpd.main, bgpd.daemon, bgpd.exabgp.speaker, config.etcd_store\n"
        "import config.parse as p\n"
        "now = lambda: [m for m in ('yaml', 'config.policy', 'config.k8s') if m in sys.modules]\n"
        "print(now(), 'bgpd.exabgp.launch' in sys.modules)\n"
        "print([m for m in ('shutil', 'bz2', 'lzma', 'ipam.allocator') if m in sys.modules])\n"
        "from fib_sync.nft import Nft\n"
        "print(Nft().binary.endswith('nft'), 'shutil' in sys.modules)\n"
        "p.parse_resource({'apiVersion': 'projectcalico.org/v3', 'kind': 'GlobalNetworkPolicy',"
        " 'metadata': {'name': 'g'}, 'spec': {}})\n"
        "print(now())\n"
        "p.parse_resource({'apiVersion': 'v1', 'kind': 'Namespace', 'metadata': {'name': 'n'}})\n"
        "print(now())\n"
        "print(p.load_yaml_documents('a: 5663:12'), now())\n")
    assert out.splitlines() == [
        "[] False", "[]", "True True", "['config.policy']", "['config.policy', 'config.k8s']",
        "[{'a': '5663:12'}] ['yaml', 'config.policy', 'config.k8s']"], out


def test_a_file_datastore_daemon_imports_tempfile_only_to_write(tmp_path: Path) -> None:
    """Issue 17 (memory): a daemon on the file datastore reads the file and never writes
    it, so tempfile (with shutil, random, bz2, lzma: ~0.5 MiB) is imported by the first
    write (bgpctl, IPAM), which still lands whole through a temporary file."""
    path = tmp_path / "podbgp.yaml"
    out = fresh(
        "import asyncio, sys\n"
        "import bgpd.main, bgpd.daemon, bgpd.exabgp.speaker, config.file_store, config.parse\n"
        "now = lambda: [m for m in ('tempfile', 'shutil', 'bz2', 'lzma') if m in sys.modules]\n"
        "print(now())\n"
        f"store = config.file_store.FileDatastore({str(path)!r})\n"
        "pool = config.parse.parse_resource({'apiVersion': 'projectcalico.org/v3',"
        " 'kind': 'IPPool', 'metadata': {'name': 'p'}, 'spec': {'cidr': '10.0.0.0/16'}})\n"
        "async def main():\n"
        "    await store.start()\n"
        "    await store.wait_loaded(5)\n"
        "    print(now())\n"
        "    await store.create(pool)\n"
        "    print(now(), [r.spec.cidr for r in await store.list('IPPool')])\n"
        "    await store.close()\n"
        "asyncio.run(main())\n")
    printed = [line for line in out.splitlines() if line.startswith("[")]  # not the logs
    assert printed == [
        "[]", "[]", "['tempfile', 'shutil', 'bz2', 'lzma'] ['10.0.0.0/16']"], out
    assert "cidr: 10.0.0.0/16" in path.read_text()
    # no temporary file left beside the file and its lock
    assert sorted(p.name for p in tmp_path.iterdir()) == [".podbgp.yaml.lock", "podbgp.yaml"]
