"""Dockerfile, .dockerignore, deploy/requirements.lock and the healthcheck.

The Dockerfile is checked structurally here (tests/image builds and runs it):
pinned base, builder/runtime split, wheels-only install from the lock,
ENTRYPOINT/USER/HEALTHCHECK/EXPOSE. The lock is checked against setup.cfg
and the tested .venv; the healthcheck script is run against a real HTTP
server on loopback.
"""

from __future__ import annotations

import configparser
import http.server
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import REPO, free_port

DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
LOCK = REPO / "deploy" / "requirements.lock"
HEALTHCHECK = REPO / "deploy" / "docker" / "healthcheck.py"
TEST_TOOLS = {"pytest", "pytest-asyncio", "hypothesis", "ruff", "kubernetes-validate",
              "matplotlib", "iniconfig", "pluggy"}


def load_script(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------ lock


def lock_pins() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, sep, version = line.partition("==")
        assert sep and re.fullmatch(r"[0-9][0-9A-Za-z.+!-]*", version), (
            f"{LOCK.name}: {line!r} is not an exact NAME==VERSION pin"
        )
        pins[canonicalize_name(name)] = version
    return pins


def test_lock_matches_setup_cfg_and_tested_venv() -> None:
    gen = load_script(REPO / "deploy" / "gen_requirements_lock.py", "gen_requirements_lock")
    expected = gen.render(gen.closure(gen.runtime_requirements()))
    assert LOCK.read_text() == expected, (
        "deploy/requirements.lock is stale: run .venv/bin/python deploy/gen_requirements_lock.py"
    )


def test_lock_pins_every_runtime_dependency_and_no_test_tool() -> None:
    pins = lock_pins()
    assert pins["exabgp"] == "5.0.15"
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    for line in cfg.get("options", "install_requires").splitlines():
        if not line.strip():
            continue
        req = Requirement(line)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req} from setup.cfg is not pinned in {LOCK.name}"
        assert req.specifier.contains(pins[name]), f"{name}=={pins[name]} violates {req}"
    assert not TEST_TOOLS & set(pins), f"test tools in the runtime lock: {TEST_TOOLS & set(pins)}"
    assert "podbgp" not in pins


def test_generator_names_an_unsatisfied_requirement() -> None:
    gen = load_script(REPO / "deploy" / "gen_requirements_lock.py", "gen_requirements_lock")
    with pytest.raises(LookupError, match=r"exabgp==4\.2\.0.*5\.0\.15 is installed"):
        gen.closure([Requirement("exabgp==4.2.0")])
    with pytest.raises(LookupError, match="no-such-dist-podbgp"):
        gen.closure([Requirement("no-such-dist-podbgp")])


# ------------------------------------------------------------ Dockerfile


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    logical = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or not line:
            continue
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        line, logical = logical + line, ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    assert not logical, "Dockerfile ends inside a line continuation"
    return out


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for ins in instructions():
        if ins[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(ins)
    return result


def base_image() -> str:
    args = dict(
        a.split("=", 1) for i, a in instructions() if i == "ARG" and "=" in a
    )
    froms = [a.split()[0] for i, a in instructions() if i == "FROM"]
    images = {re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], f) for f in froms}
    assert len(images) == 1, f"builder and runtime must share one base, got {images}"
    return images.pop()


def test_base_image_is_pinned_python_311_slim() -> None:
    image = base_image()
    assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?(@sha256:[0-9a-f]{64})?", image), image
    assert "latest" not in image


def test_multi_stage_runtime_has_no_build_tools_or_sources() -> None:
    builder, runtime = stages()[0], stages()[-1]
    assert len(stages()) >= 2
    assert re.search(r"\bAS builder\b", builder[0][1])
    runtime_text = "\n".join(a for _, a in runtime)
    for tool in ("gcc", "build-essential", "python3-dev", "make", "git"):
        assert not re.search(rf"\b{re.escape(tool)}\b", runtime_text), f"{tool} in runtime"
    install = [a for i, a in runtime if i == "RUN" and "pip install" in a]
    assert len(install) == 1, install
    # Wheels from the builder only, constrained by the lock.
    assert "--no-index" in install[0] and "from=builder" in install[0]
    assert "requirements.lock" in install[0]
    # The runtime copies no source tree: only the stdlib helper scripts, and the CNI
    # plugins' forwarder compiled in its own stage.
    copies = [shlex.split(a) for i, a in runtime if i == "COPY"]
    assert ["--from=forwarder", "/podbgp-cni-forward",
            "/usr/local/lib/podbgp/podbgp-cni-forward"] in copies, copies
    copies = [c for c in copies if c[0] != "--from=forwarder"]
    assert copies and all(
        len(c) == 2 and c[0].startswith("deploy/docker/") and c[0].endswith(".py")
        and c[1].startswith("/usr/local/bin/podbgp-") for c in copies
    ), copies


def test_the_forwarder_is_compiled_statically_in_a_stage_of_its_own() -> None:
    """cni/forward.c runs on the node (podbgp-install-cni copies it there), whatever libc
    the node has: -static; warnings on; the path is the one install-cni reads."""
    (fwd,) = [s for s in stages() if re.search(r"\bAS forwarder\b", s[0][1])]
    text = "\n".join(a for _, a in fwd)
    assert "gcc" in text and "libc6-dev" in text and "COPY cni/forward.c" in "\n".join(
        f"{i} {a}" for i, a in fwd)
    cc = [a for i, a in fwd if i == "RUN" and a.startswith("cc ")]
    assert cc and all(f in cc[0].split() for f in ("-static", "-Wall", "-Wextra", "-O2"))
    script = (REPO / "deploy" / "docker" / "install-cni.py").read_text()
    assert 'FORWARDER = "/usr/local/lib/podbgp/podbgp-cni-forward"' in script


def test_builder_gets_every_package_setup_cfg_installs() -> None:
    """The builder copies the whole context; .dockerignore must let each package in."""
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    packages = {
        p.strip().rstrip("*") for p in cfg.get("options.packages.find", "include").split()
    }
    copies = [shlex.split(a) for i, a in stages()[0] if i == "COPY"]
    assert [".", "/src/"] in copies, copies
    context = load_script(REPO / "scripts" / "image_context.py", "image_context")
    files = set(context.context_files(REPO))
    for package in sorted(p for p in packages if (REPO / p).is_dir()):
        sources = {str(f.relative_to(REPO)) for f in (REPO / package).rglob("*.py")}
        assert sources and sources <= files, (
            f".dockerignore keeps {sorted(sources - files)[:3]} of package {package} "
            "out of the build context")
    # long_description = file: README.md; the lock; the helper scripts.
    for needed in ("README.md", "setup.cfg", "pyproject.toml", "deploy/requirements.lock",
                   "deploy/docker/healthcheck.py", "deploy/docker/install-cni.py"):
        assert needed in files, f"{needed} is not in the build context"
    # Nothing that is not needed: no tests, caches, VCS, virtualenvs.
    assert not {f for f in files if f.split("/")[0] in (
        "tests", "bench", "docs", ".git", ".venv", ".cache", "scripts")}


def test_entrypoint_user_healthcheck_expose() -> None:
    runtime = stages()[-1]
    final = {i: a for i, a in runtime}
    entry = final["ENTRYPOINT"]
    assert entry.startswith("["), "ENTRYPOINT must be exec form so SIGTERM reaches the init"
    argv = json.loads(entry)
    # tini as PID 1 forwards SIGTERM to bgpd alone and reaps orphans.
    assert argv == ["/usr/bin/tini", "--", "bgpd"]
    assert any("apt-get install" in a and " tini" in a for i, a in runtime if i == "RUN")
    assert final["USER"] in ("0", "0:0", "root")
    assert "podbgp-healthcheck" in final["HEALTHCHECK"]
    assert "9179/tcp" in final["EXPOSE"].split()
    assert final["STOPSIGNAL"] == "SIGTERM"


def test_dockerignore_keeps_build_inputs_and_drops_the_rest() -> None:
    context = load_script(REPO / "scripts" / "image_context.py", "image_context")
    patterns = context.load_patterns(REPO)
    ignored = context.ignored
    needed = ["README.md", "setup.cfg", "pyproject.toml", "deploy/requirements.lock",
              "deploy/docker/healthcheck.py", "bgpd/__init__.py", "rib/path.py"]
    for path in needed:
        assert not ignored(path, patterns), f".dockerignore drops {path}, which the build needs"
    for path in [".venv/bin/python", ".git/HEAD", ".cache/bird1/usr/sbin/bird",
                 "tests/conftest.py", "bench/results/x.json", "bgpd/__pycache__/a.pyc",
                 "podbgp.egg-info/PKG-INFO"]:
        assert ignored(path, patterns), f".dockerignore lets {path} into the build context"


def test_context_digest_follows_docker_ignore_rules(tmp_path: Path) -> None:
    """scripts/image_context.py: what a rebuild depends on, by Docker's rules."""
    context = load_script(REPO / "scripts" / "image_context.py", "image_context")
    (tmp_path / ".dockerignore").write_text("# comment\ntests\n**/*.pyc\ndocs\n!docs/keep.md\n")
    for rel in ("pkg/a.py", "pkg/__pycache__/a.cpython-311.pyc", "tests/t.py", "docs/x.md",
                "docs/keep.md"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(rel)
    assert context.context_files(tmp_path) == [".dockerignore", "docs/keep.md", "pkg/a.py"]
    before = context.digest(tmp_path, ["base-id"])
    (tmp_path / "tests" / "t.py").write_text("changed")        # ignored: same digest
    assert context.digest(tmp_path, ["base-id"]) == before
    assert context.digest(tmp_path, ["other-base"]) != before  # a new base rebuilds
    (tmp_path / "pkg" / "a.py").write_text("changed")          # a source: new digest
    assert context.digest(tmp_path, ["base-id"]) != before


# ----------------------------------------------------------- healthcheck


@pytest.fixture
def healthz_server() -> Iterator[tuple[int, dict]]:
    """A loopback HTTP server whose /healthz status the test sets."""
    state = {"status": 200}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            code = state["status"] if self.path == "/healthz" else 404
            self.send_response(code)
            self.end_headers()
            self.wfile.write(b"ok\n")

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def run_healthcheck(listen: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PODBGP_HTTP_LISTEN"}
    if listen is not None:
        env["PODBGP_HTTP_LISTEN"] = listen
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK)], env=env, capture_output=True, text=True, timeout=30
    )


def test_healthcheck_follows_bgpd_status(healthz_server: tuple[int, dict]) -> None:
    port, state = healthz_server
    assert run_healthcheck(f"127.0.0.1:{port}").returncode == 0
    # A wildcard listen address is probed on loopback.
    assert run_healthcheck(f"0.0.0.0:{port}").returncode == 0
    state["status"] = 503
    result = run_healthcheck(f"127.0.0.1:{port}")
    assert result.returncode == 1 and "503" in result.stderr


def test_healthcheck_fails_when_nothing_listens() -> None:
    result = run_healthcheck(f"127.0.0.1:{free_port()}")
    assert result.returncode == 1 and "healthz" in result.stderr


def test_healthcheck_names_a_bad_listen_value() -> None:
    result = run_healthcheck("localhost")
    assert result.returncode == 1 and "PODBGP_HTTP_LISTEN='localhost'" in result.stderr


@pytest.mark.parametrize(
    ("listen", "url"),
    [
        ("127.0.0.1:9179", "http://127.0.0.1:9179/healthz"),
        ("0.0.0.0:9179", "http://127.0.0.1:9179/healthz"),
        ("10.1.2.3:80", "http://10.1.2.3:80/healthz"),
        ("[::]:9179", "http://[::1]:9179/healthz"),
        ("[fd00::1]:9179", "http://[fd00::1]:9179/healthz"),
        (":9179", "http://127.0.0.1:9179/healthz"),
    ],
)
def test_healthz_url(listen: str, url: str) -> None:
    hc = load_script(HEALTHCHECK, "podbgp_healthcheck")
    assert hc.healthz_url(listen) == url


@pytest.mark.parametrize("listen", ["127.0.0.1", "127.0.0.1:http", "127.0.0.1:0", "h:70000"])
def test_healthz_url_rejects(listen: str) -> None:
    hc = load_script(HEALTHCHECK, "podbgp_healthcheck")
    with pytest.raises(ValueError, match="PODBGP_HTTP_LISTEN"):
        hc.healthz_url(listen)
