"""Dockerfile, .dockerignore, deploy/requirements.lock and the healthcheck.

No container engine runs here, so the Dockerfile is checked structurally:
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
    # The runtime copies no source tree: only the healthcheck script.
    copies = [a for i, a in runtime if i == "COPY"]
    assert all("healthcheck.py" in c for c in copies), copies


def test_builder_copies_every_package_setup_cfg_installs() -> None:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    packages = {
        p.strip().rstrip("*") for p in cfg.get("options.packages.find", "include").split()
    }
    copied = {
        shlex.split(a)[0].rstrip("/") for i, a in stages()[0] if i == "COPY"
    }
    missing = {p for p in packages if (REPO / p).is_dir()} - copied
    assert not missing, f"builder stage does not COPY packages {missing}"
    # long_description = file: README.md — the build fails without it.
    assert any("README.md" in a for i, a in stages()[0] if i == "COPY")


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


def dockerignore_patterns() -> list[str]:
    return [
        line.strip() for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; a match on a parent counts."""

    def to_regex(pattern: str) -> re.Pattern:
        out = ""
        for part in re.split(r"(\*\*/|\*|\?)", pattern.strip("/")):
            out += {"**/": "(?:.*/)?", "*": "[^/]*", "?": "[^/]"}.get(part, re.escape(part))
        return re.compile(out + "(?:/.*)?")

    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        if to_regex(pattern.lstrip("!")).fullmatch(path):
            result = not negate
    return result


def test_dockerignore_keeps_build_inputs_and_drops_the_rest() -> None:
    patterns = dockerignore_patterns()
    needed = ["README.md", "setup.cfg", "pyproject.toml", "deploy/requirements.lock",
              "deploy/docker/healthcheck.py", "bgpd/__init__.py", "rib/path.py"]
    for path in needed:
        assert not ignored(path, patterns), f".dockerignore drops {path}, which the build needs"
    for path in [".venv/bin/python", ".git/HEAD", ".cache/bird1/usr/sbin/bird",
                 "tests/conftest.py", "bench/results/x.json", "bgpd/__pycache__/a.pyc",
                 "podbgp.egg-info/PKG-INFO"]:
        assert ignored(path, patterns), f".dockerignore lets {path} into the build context"


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
