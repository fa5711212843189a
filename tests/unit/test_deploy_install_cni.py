"""deploy/docker/install-cni.py (podbgp-install-cni), without building a runtime.

The full install — runtime copied, launchers run on a host without Python,
a real CNI ADD through them — is in tests/image/test_image.py, in the image
and exactly as the DaemonSet's init container runs it. These tests pin the
template rendering and every refusal, with the placeholders and environment
names of Calico's installer (projectcalico/calico
cni-plugin/pkg/install/install.go, writeCNIConfig).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO
from tests.unit.test_deploy_docker import load_script

SCRIPT = REPO / "deploy" / "docker" / "install-cni.py"


@pytest.fixture(scope="module")
def ic():
    return load_script(SCRIPT, "podbgp_install_cni")


def configmap_template() -> str:
    cm = yaml.safe_load((REPO / "deploy" / "kubernetes" / "configmap.yaml").read_text())
    return cm["data"]["cni_network_config"]


@pytest.fixture
def host(tmp_path: Path) -> dict[str, str]:
    """A throwaway node: CNI dirs, a TLS secret mount, and the env the manifest sets."""
    (tmp_path / "bin").mkdir()
    (tmp_path / "net").mkdir()
    tls = tmp_path / "tls"
    tls.mkdir()
    for name in ("etcd-ca", "etcd-cert", "etcd-key"):
        (tls / name).write_text(f"-----{name}-----\n")
        (tls / name).chmod(0o400)
    return {"HOST_CNI_BIN_DIR": str(tmp_path / "bin"), "HOST_CNI_NET_DIR": str(tmp_path / "net"),
            "TLS_ASSETS_DIR": str(tls), "ETCD_ENDPOINTS": "https://10.0.0.10:2379",
            "DATASTORE_TYPE": "etcdv3", "KUBERNETES_NODE_NAME": "node-7",
            "CNI_CONF_NAME": "10-podbgp.conflist"}


def test_configmap_template_renders_like_calicos(ic) -> None:
    tls = {"etcd-ca": "/etc/cni/net.d/podbgp-tls/etcd-ca",
           "etcd-cert": "/etc/cni/net.d/podbgp-tls/etcd-cert",
           "etcd-key": "/etc/cni/net.d/podbgp-tls/etcd-key"}
    env = {"ETCD_ENDPOINTS": "https://10.0.0.10:2379", "KUBERNETES_NODE_NAME": "node-7"}
    conf = ic.render(configmap_template(), env, tls)
    text = json.dumps(conf)
    assert "__" not in text
    plugin = conf["plugins"][0]
    assert plugin["etcd_endpoints"] == "https://10.0.0.10:2379"
    assert plugin["etcd_ca_cert_file"] == tls["etcd-ca"]
    assert plugin["nodename"] == "node-7"
    assert {"podbgp-cni", "podbgp-ipam"} <= set(ic.plugin_types(conf))
    assert plugin["mtu"] == 0  # CNI_MTU unset: podbgp-cni's auto-MTU
    # Without TLS files the paths are empty strings, which the plugins read as "no TLS".
    assert ic.render(configmap_template(), env, {})["plugins"][0]["etcd_key_file"] == ""


@pytest.mark.parametrize(
    ("template", "env", "wanted"),
    [
        ('{"cniVersion": "1.0.0", "plugins": [{"type": "__PLUGIN__"}]}', {},
         "unknown placeholder(s) __PLUGIN__"),
        ('{"cniVersion": "1.0.0", "plugins": [{"type": "bridge", "mtu": __CNI_MTU__}]}',
         {"CNI_MTU": "9000;"}, "CNI_MTU='9000;' is not a number"),
        ('{"cniVersion": "1.0.0", "plugins": [{"type": "bridge",}]}', {}, "not valid JSON"),
        ('{"plugins": [{"type": "bridge"}]}', {}, "cniVersion"),
        ('{"cniVersion": "1.0.0", "plugins": [{"name": "x"}]}', {}, "with a 'type'"),
        ('{"cniVersion": "1.0.0", "plugins": []}', {}, "with a 'type'"),
    ],
)
def test_bad_templates_are_refused_with_the_reason(ic, template, env, wanted) -> None:
    with pytest.raises(ic.InstallError) as err:
        ic.render(template, env, {})
    assert wanted in str(err.value)


def test_foreign_plugin_must_already_be_on_the_node(ic, host) -> None:
    env = {**host, "CNI_NETWORK_CONFIG":
           '{"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "portmap"}]}'}
    with pytest.raises(ic.InstallError, match=r"'portmap'.*neither a podbgp plugin"):
        ic.install(env)
    assert not list(Path(host["HOST_CNI_NET_DIR"]).glob("*.conflist")), "config written anyway"
    # With the plugin on the node, the config is written (no podbgp plugin: no runtime).
    (Path(host["HOST_CNI_BIN_DIR"]) / "portmap").write_text("#!/bin/sh\n")
    path = ic.install(env)
    assert json.loads(path.read_text())["plugins"] == [{"type": "portmap"}]
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert not (Path(host["HOST_CNI_BIN_DIR"]) / "podbgp-runtime").exists()


def test_tls_assets_are_copied_and_the_config_points_at_them(ic, host) -> None:
    env = {**host, "CNI_NETWORK_CONFIG": configmap_template(),
           "SKIP_CNI_BINARIES": "podbgp-ipam,podbgp-cni"}
    for plugin in ("podbgp-ipam", "podbgp-cni"):
        (Path(host["HOST_CNI_BIN_DIR"]) / plugin).write_text("#!/bin/sh\n")
    path = ic.install(env)
    tls_dir = Path(host["HOST_CNI_NET_DIR"]) / "podbgp-tls"
    assert sorted(p.name for p in tls_dir.iterdir()) == ["etcd-ca", "etcd-cert", "etcd-key"]
    assert (tls_dir / "etcd-key").read_text() == "-----etcd-key-----\n"
    assert oct(tls_dir.stat().st_mode & 0o777) == "0o700"
    plugin = json.loads(path.read_text())["plugins"][0]
    # Paths as the node sees them (CNI_NET_DIR), not the init container's mount.
    assert plugin["etcd_cert_file"] == "/etc/cni/net.d/podbgp-tls/etcd-cert"
    mtime = path.stat().st_mtime_ns
    ic.install(env)  # idempotent: an unchanged config is not rewritten
    assert path.stat().st_mtime_ns == mtime


def test_missing_template_mounts_and_names_are_named(ic, host, tmp_path) -> None:
    with pytest.raises(ic.InstallError, match="CNI_NETWORK_CONFIG"):
        ic.install(host)
    env = {**host, "CNI_NETWORK_CONFIG_FILE": str(tmp_path / "nope.json")}
    with pytest.raises(ic.InstallError, match=r"nope\.json"):
        ic.install(env)
    env = {**host, "CNI_NETWORK_CONFIG": configmap_template(),
           "HOST_CNI_BIN_DIR": str(tmp_path / "not-mounted")}
    with pytest.raises(ic.InstallError, match="not-mounted is not a writable directory"):
        ic.install(env)
    env = {**host, "CNI_NETWORK_CONFIG": configmap_template(), "CNI_CONF_NAME": "../x.conf"}
    with pytest.raises(ic.InstallError, match="CNI_CONF_NAME"):
        ic.install(env)


def test_launcher_runs_the_console_script_named_in_the_metadata(ic) -> None:
    """The launcher imports what the entry point says, so moved modules need no edit."""
    scripts = ic.console_scripts()
    assert "podbgp-ipam" in scripts
    module, _, attr = scripts["podbgp-ipam"].value.partition(":")
    text = ic.LAUNCHER.format(name="podbgp-ipam", version="0", runtime="podbgp-runtime/x",
                              loader="ld.so", python="python3.11", module=module, attr=attr)
    assert f"from {module} import {attr} as m" in text
    assert text.startswith("#!/bin/sh\n") and '"$@"' in text


def test_the_forwarder_is_installed_with_its_launcher_beside_it(ic, tmp_path) -> None:
    """podbgp-cni/podbgp-ipam as the compiled forwarder (cni/forward.c) when the image has
    it: the /bin/sh launcher goes to <plugin>-python, which the forwarder execs for VERSION
    (containernetworking/cni SPEC.md, "VERSION": supportedVersions on stdout)."""
    import os
    import subprocess

    from cni import forward

    binary = forward.built()
    if binary is None:
        if os.environ.get("CI") == "true" or forward.compiler() is not None:
            pytest.fail(f"{forward.BINARY} is not built: `make deps` builds it")
        pytest.skip("no C compiler: the forwarder cannot be built here")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    launcher = ('#!/bin/sh\necho "{\\"cniVersion\\": \\"1.0.0\\", \\"supportedVersions\\": '
                '[\\"1.0.0\\"], \\"argv0\\": \\"$(basename "$0")\\"}"\n')
    assert ic.install_plugin(bin_dir, "podbgp-ipam", launcher, binary) == (True, True)
    assert (bin_dir / "podbgp-ipam").read_bytes() == binary.read_bytes()
    assert (bin_dir / "podbgp-ipam-python").read_text() == launcher
    r = subprocess.run([str(bin_dir / "podbgp-ipam")], env={"CNI_COMMAND": "VERSION"},
                       input="{}", capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and json.loads(r.stdout)["argv0"] == "podbgp-ipam-python"
    ic.check_plugin(bin_dir / "podbgp-ipam", "1.0.0")
    # Unchanged on a second run; without a forwarder the launcher is the plugin itself.
    assert ic.install_plugin(bin_dir, "podbgp-ipam", launcher, binary) == (False, True)
    assert ic.install_plugin(bin_dir, "podbgp-cni", launcher, tmp_path / "absent") == (True,
                                                                                       False)
    assert (bin_dir / "podbgp-cni").read_text() == launcher
    assert ic.install_plugin(bin_dir, "other", launcher, binary) == (True, False)
