"""The podbgp image, built from Debian's archive, run as the deployment files say.

Owned by tests/image/. One lab (lab/harness.py): a segment with nodes in
network namespaces, an etcd with TLS and client certificates (as
deploy/kubernetes expects: Secret files, https endpoint), and BIRD 2 as a
top-of-rack router in its own namespace, originating 10.244.200.0/26 and
installing what it learns into its kernel. Then:

- the standalone DaemonSet's ``podbgp`` container and the calico-node
  sidecar's ``podbgp`` container, each started with exactly the manifest's
  command, args, env, securityContext, resources and volumeMounts (read from
  deploy/kubernetes/*.yaml by tests/image/kube.py, never restated), in a
  node's namespace standing in for the host network: the manifest's probes
  answer, ``podman healthcheck run`` is healthy, the session with BIRD is
  Established, routes go both ways into the kernels, ``bgpctl node status``
  works inside the container, ``podman stop`` ends it with exit 0 within
  the grace period and the routes stay;
- the image with the file datastore mounted (a directory, so edits that
  replace the file are seen) and the hardening flags of the README;
- the DaemonSet's ``install-cni`` init container into a throwaway host
  directory; the plugins it installed (``podbgp-cni`` + ``podbgp-ipam``, as the
  ConfigMap names them) then set up and remove a pod on a host whose own
  Python is hidden;
- deploy/systemd's ``podbgp.service`` and ``podbgp-policy.service`` run by
  systemd itself, as PID 1 of an unprivileged container.

Every namespace and process belongs to the lab or to the test and is removed
even on failure; containers are removed before the lab goes down.
"""

from __future__ import annotations

import configparser
import contextlib
import json
import re
import shutil
import subprocess
import tarfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from lab.harness import Lab, bin_path, run
from tests.conftest import REPO, netns_add, netns_del, require, require_binary, unique_name
from tests.image import kube
from tests.image.conftest import REPORT, SYSTEMD_IMAGE, BuiltImage, Podman
from tests.integration.test_etcd_store_tls import make_pki
from tests.interop.conftest import Bird

pytestmark = [pytest.mark.slow, pytest.mark.root, pytest.mark.etcd]

K8S = REPO / "deploy" / "kubernetes"
NODE_AS, TOR_AS = 64512, 64513
# A block of a node behind the ToR (inside the pool: podbgp imports only pool prefixes).
TOR_PREFIX = "10.244.200.0/26"
POOL = "10.244.0.0/16"
TLS_PORT = 2479
BLOCKS = {"node1": "10.244.1.0/26", "node2": "10.244.2.0/26", "node3": "10.244.3.0/26"}
# What Calico's calico-etcd.yaml (projectcalico/calico manifests/calico-etcd.yaml)
# contributes to the calico-node pod the sidecar patch is merged into.
CALICO_NODE_POD = {
    "hostNetwork": True,
    "terminationGracePeriodSeconds": 0,
    "volumes": [{"name": "etcd-certs",
                 "secret": {"secretName": "calico-etcd-secrets", "defaultMode": 0o400}}],
}


def load(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def daemonset(path: Path) -> dict:
    return next(d for d in load(path) if d["kind"] == "DaemonSet")


def container_named(pod: dict, name: str, init: bool = False) -> dict:
    key = "initContainers" if init else "containers"
    return next(c for c in pod[key] if c["name"] == name)


def standalone_pod() -> dict:
    return daemonset(K8S / "podbgp.yaml")["spec"]["template"]["spec"]


def sidecar_pod() -> dict:
    """calico-node's pod with the sidecar patch merged (strategic merge: by name)."""
    patch = daemonset(K8S / "podbgp-sidecar.yaml")["spec"]["template"]["spec"]
    pod = {**CALICO_NODE_POD, **{k: v for k, v in patch.items() if k != "volumes"}}
    pod["volumes"] = CALICO_NODE_POD["volumes"] + patch.get("volumes", [])
    return pod


# ------------------------------------------------------------------ the lab


class ImageLab:
    """Lab + TLS etcd + BIRD ToR, and the objects a cluster would hold."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.pki = lab.workdir / "pki"
        self.pki.mkdir()
        etcd_ip = lab.etcd_endpoint.split("//")[1].split(":")[0]
        make_pki(self.pki, (etcd_ip, "127.0.0.1"))
        self.endpoint = f"https://{etcd_ip}:{TLS_PORT}"
        data = lab.workdir / "etcd-tls"
        peer = f"http://127.0.0.1:{TLS_PORT + 1}"
        lab.spawn_in(lab.etcd_ns, [
            require_binary("etcd"), "--name", "tls", "--data-dir", str(data),
            "--listen-client-urls", f"{self.endpoint},https://127.0.0.1:{TLS_PORT}",
            "--advertise-client-urls", self.endpoint, "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer, "--initial-cluster", f"tls={peer}",
            "--initial-cluster-state", "new", "--heartbeat-interval", "10",
            "--election-timeout", "100", "--log-level", "error",
            "--cert-file", str(self.pki / "server.crt"), "--key-file", str(self.pki / "server.key"),
            "--trusted-ca-file", str(self.pki / "ca.crt"), "--client-cert-auth"], "etcd-tls.log")
        lab.wait_for(self._etcd_healthy, 15, "the TLS etcd")
        self.secret = {"etcd-ca": (self.pki / "ca.crt").read_bytes(),
                       "etcd-cert": (self.pki / "client.crt").read_bytes(),
                       "etcd-key": (self.pki / "client.key").read_bytes()}

    def _etcd_healthy(self) -> bool:
        r = run("curl", "-s", "-m", "1", "--cacert", str(self.pki / "ca.crt"), "--cert",
                str(self.pki / "client.crt"), "--key", str(self.pki / "client.key"),
                f"https://127.0.0.1:{TLS_PORT}/health", ns=self.lab.etcd_ns, check=False)
        return '"health":"true"' in r.stdout

    def tls_args(self) -> list[str]:
        return ["--etcd-endpoints", self.endpoint, "--etcd-ca", str(self.pki / "ca.crt"),
                "--etcd-cert", str(self.pki / "client.crt"),
                "--etcd-key", str(self.pki / "client.key")]

    def apply(self, *docs: dict) -> None:
        text = "\n---\n".join(json.dumps(d) for d in docs)
        run(bin_path("bgpctl"), *self.tls_args(), "apply", "-f", "-", ns=self.lab.etcd_ns,
            input=text)

    def claim_block(self, node: str, cidr: str) -> None:
        """A confirmed block affinity, as Calico IPAM writes it (key and value)."""
        key = f"/calico/ipam/v2/host/{node}/ipv4/block/{cidr.replace('/', '-')}"
        self._etcdctl("put", key, json.dumps({"state": "confirmed", "deleted": False}))

    def etcd_keys(self, prefix: str) -> list[str]:
        return self._etcdctl("get", "--prefix", "--keys-only", prefix).split()

    def _etcdctl(self, *args: str) -> str:
        return run(require_binary("etcdctl"), f"--endpoints=https://127.0.0.1:{TLS_PORT}",
                   f"--cacert={self.pki / 'ca.crt'}", f"--cert={self.pki / 'client.crt'}",
                   f"--key={self.pki / 'client.key'}", *args, ns=self.lab.etcd_ns,
                   env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"}).stdout

    def kube_node(self, name: str, host_root: Path) -> kube.Node:
        node = self.lab.nodes[name]
        podbgp_config = {d["metadata"]["name"]: d["data"] for d in load(K8S / "configmap.yaml")}
        # What a user edits before applying: the etcd endpoints of their cluster.
        for data in podbgp_config.values():
            data["etcd_endpoints"] = self.endpoint
        return kube.Node(
            name=name, host_ip=node.ip, netns=node.ns, host_root=host_root,
            config_maps={**podbgp_config, "calico-config": {"etcd_endpoints": self.endpoint}},
            secrets={"podbgp-etcd-tls": self.secret, "calico-etcd-secrets": self.secret})


def http_get(ns: str, url: str) -> tuple[int, str]:
    code = ("import sys,urllib.request,urllib.error\n"
            "try:\n r=urllib.request.urlopen(sys.argv[1],timeout=2); print(r.status); "
            "print(r.read().decode())\n"
            "except urllib.error.HTTPError as e: print(e.code); print(e.read().decode())\n"
            "except Exception as e: print(0); print(e)\n")
    r = run("python3", "-c", code, url, ns=ns, check=False)
    status, _, body = r.stdout.partition("\n")
    return int(status or 0), body


def kernel_routes(ns: str, *args: str) -> dict[str, dict]:
    out = run("ip", "-j", "route", "show", *args, ns=ns).stdout
    return {r["dst"]: r for r in json.loads(out or "[]")}


@pytest.fixture(scope="module")
def image_lab(image: BuiltImage) -> Iterator[ImageLab]:
    require_binary("etcd")
    require_binary("bird")
    require(Path("/usr/lib/cni/bridge").exists(), "needs containernetworking-plugins")
    with Lab(nodes=3) as lab:
        il = ImageLab(lab)
        il.apply(
            {"apiVersion": "projectcalico.org/v3", "kind": "BGPConfiguration",
             "metadata": {"name": "default"},
             "spec": {"asNumber": NODE_AS, "nodeToNodeMeshEnabled": False}},
            {"apiVersion": "projectcalico.org/v3", "kind": "IPPool", "metadata": {"name": "pods"},
             "spec": {"cidr": POOL, "blockSize": 26, "ipipMode": "Never", "vxlanMode": "Never"}},
            {"apiVersion": "projectcalico.org/v3", "kind": "BGPPeer", "metadata": {"name": "tor"},
             "spec": {"peerIP": "10.99.0.101", "asNumber": TOR_AS}},
            *({"apiVersion": "projectcalico.org/v3", "kind": "Node", "metadata": {"name": n},
               "spec": {"bgp": {"ipv4Address": f"{lab.nodes[n].ip}/24"}}}
              for n in ("node1", "node2")),
        )
        for n in ("node1", "node2"):
            il.claim_block(n, BLOCKS[n])
        tor = lab.add_external("tor")
        assert tor.ip == "10.99.0.101"
        il.bird = Bird(lab, tor, TOR_AS, [(n.ip, NODE_AS) for n in lab.nodes.values()],
                       originate=[TOR_PREFIX])
        yield il


# ------------------------------------------------------------- containers


def process_rss_mb(podman: Podman, name: str) -> dict[str, float]:
    """Resident memory of the container's processes below tini: bgpd and its ExaBGP."""
    pid1 = int(podman.inspect(name, "{{.State.Pid}}"))
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rpartition(")")[2].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))

    def rss(pid: int) -> float:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    out: dict[str, float] = {}
    todo = list(children.get(pid1, []))
    while todo:
        pid = todo.pop()
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        label = "exabgp" if any(b"exabgp" in c for c in cmd) else Path(cmd[0].decode()).name
        if any(c.endswith(b"bgpd") for c in cmd[:2]):
            label = "bgpd"
        out[label] = round(out.get(label, 0.0) + rss(pid), 1)
        todo += children.get(pid, [])
    return out


@contextlib.contextmanager
def started(podman: Podman, argv: list[str], name: str) -> Iterator[str]:
    podman.remove(name)
    try:
        podman(*argv)
        yield name
    except BaseException:
        print(f"--- {name} log ---\n{podman('logs', name, check=False).stderr[-4000:]}")
        raise
    finally:
        podman.remove(name)


def wait_routed(il: ImageLab, node: str, block: str, podman: Podman, name: str) -> None:
    """Session Established both sides, BIRD's prefix in the node, the node's block at BIRD."""
    ns, ip = il.lab.nodes[node].ns, il.lab.nodes[node].ip

    def ok() -> bool:
        if podman.inspect(name, "{{.State.Running}}") != "true":
            raise AssertionError(f"{name} exited: {podman('logs', name, check=False).stderr[-3000:]}")
        learned = kernel_routes(ns, "proto", "201").get(TOR_PREFIX, {})
        return (il.bird.established(ip) and learned.get("gateway") == "10.99.0.101"
                and block in il.bird.kernel())

    il.lab.wait_for(ok, 60, f"{node}: Established with BIRD and routes both ways")


def start_probed(podman: Podman, il: ImageLab, pod: dict, c: dict, kn: kube.Node,
                 scratch: Path, stack: contextlib.ExitStack) -> tuple[str, kube.Translated]:
    """Start one container of the pod as the manifest says; wait for its probes."""
    spec = kube.podman_run(pod, c, kn, scratch / c["name"],
                           name=f"{c['name']}-{uuid.uuid4().hex[:8]}")
    name = spec.argv[spec.argv.index("--name") + 1]
    stack.enter_context(started(podman, spec.argv, name))
    ns = il.lab.nodes[kn.name].ns
    for probe in ("livenessProbe", "readinessProbe"):
        if probe in c:
            url = kube.probe_url(c, probe, spec.env, kn.host_ip)
            last: list[tuple[int, str]] = []

            def ok(u: str = url, seen: list = last) -> bool:
                seen[:] = [http_get(ns, u)]
                return seen[0][0] == 200

            try:
                il.lab.wait_for(ok, 30, f"{c['name']}: {url} ({probe})")
            except TimeoutError as exc:
                raise AssertionError(f"{exc}; last answer: {last}") from None
    return name, spec


def stop_in_grace(podman: Podman, name: str, grace: int) -> float:
    """podman stop as the kubelet stops a container; exit 0 within the grace period."""
    t0 = time.monotonic()
    podman("stop", "-t", str(grace), name, timeout=grace + 30)
    took = time.monotonic() - t0
    assert podman.inspect(name, "{{.State.ExitCode}}") == "0", podman(
        "logs", name, check=False).stderr[-3000:]
    assert took < grace, f"{name} did not exit before the grace period ran out"
    return round(took, 2)


def check_manifest_pod(podman: Podman, il: ImageLab, image: BuiltImage, pod: dict,
                       node: str, scratch: Path) -> dict[str, object]:
    """Run the pod's containers (podbgp and, where the pod has it, the policy agent)
    as the manifest says; the full lifecycle of the podbgp container."""
    kn = il.kube_node(node, scratch / "host")
    ns = il.lab.nodes[node].ns
    ours = [c for c in pod["containers"] if c.get("image", "").rpartition(":")[0] == "podbgp"]
    assert "podbgp" in [c["name"] for c in ours]
    for c in ours:
        assert c["image"].rpartition(":")[2] == image.tag.rpartition(":")[2], (
            f"{c['name']} runs {c['image']}, the build makes {image.tag}")
    result: dict[str, object] = {}
    with contextlib.ExitStack() as stack:
        t0 = time.monotonic()
        names = {}
        for c in ours:
            names[c["name"]], _ = start_probed(podman, il, pod, c, kn, scratch, stack)
            result[f"{c['name']}_probes_ok_s"] = round(time.monotonic() - t0, 2)
        name, c = names["podbgp"], container_named(pod, "podbgp")
        hc = podman("healthcheck", "run", name, check=False)
        assert hc.returncode == 0, f"HEALTHCHECK unhealthy: {hc.stdout} {hc.stderr}"
        wait_routed(il, node, BLOCKS[node], podman, name)
        # The kubelet's limit is in force, and the filesystem is what the manifest says.
        limit = c["resources"]["limits"]["memory"]
        assert int(podman.inspect(name, "{{.HostConfig.Memory}}")) == kube.quantity(limit)
        touch = podman("exec", name, "touch", "/usr/local/x", check=False)
        assert touch.returncode != 0 and "Read-only file system" in touch.stderr
        caps = podman("exec", name, "grep", "CapEff", "/proc/1/status").stdout.split()[1]
        assert int(caps, 16) == (1 << 12) | (1 << 10), f"CapEff {caps}: not NET_ADMIN+BIND only"
        # bgpctl inside the pod, as deploy/README.md tells users to run it.
        status = podman("exec", name, "sh", "-c", 'bgpctl node status --url "http://$HOST_IP:9179"')
        assert "10.99.0.101" in status.stdout and "Established" in status.stdout, status.stdout
        time.sleep(3)  # idle: converged, only keepalives from here
        for cname, cid in names.items():
            result[f"{cname}_idle_rss_mb"] = process_rss_mb(podman, cid)
        grace = int(pod.get("terminationGracePeriodSeconds", 30))
        for cname, cid in names.items():
            result[f"{cname}_stop_s"] = stop_in_grace(podman, cid, grace)
        # The routes stay in the kernel after the daemon stopped.
        routes = kernel_routes(ns, "proto", "201")
        assert routes.get(TOR_PREFIX, {}).get("gateway") == "10.99.0.101", routes
        assert routes.get(BLOCKS[node], {}).get("type") == "blackhole", routes
    return result


def test_image_build_export_and_contents(podman: Podman, image: BuiltImage) -> None:
    # The export is a docker-archive that keeps the HEALTHCHECK.
    with tarfile.open(image.export) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))
        config = json.load(tar.extractfile(manifest[0]["Config"]))
    assert manifest[0]["RepoTags"] == [image.tag]
    assert "podbgp-healthcheck" in " ".join(config["config"]["Healthcheck"]["Test"])
    assert config["config"]["Entrypoint"] == ["/usr/bin/tini", "--", "bgpd"]
    # Every console script of the package is on PATH in the image, and only the
    # runtime lock's distributions are installed (no pip, no test tools).
    listing = podman("run", "--rm", "--network", "none", "--health-interval", "disable",
                     "--entrypoint", "python", image.tag, "-c",
                     "import importlib.metadata as m, shutil, json, glob; "
                     "d = m.distribution('podbgp'); "
                     "print(json.dumps({'scripts': {e.name: shutil.which(e.name) for e in "
                     "d.entry_points if e.group == 'console_scripts'}, 'dists': sorted("
                     "x.metadata['Name'] for x in m.distributions()), 'dpkg_cfg': ''.join("
                     "open(f).read() for f in glob.glob('/etc/dpkg/dpkg.cfg.d/*'))}))").stdout
    found = json.loads(listing)
    # The base has the official image's dpkg settings (debuerreotype's minimizing
    # config: no fsync per unpacked file) and its slim excludes.
    assert "force-unsafe-io" in found["dpkg_cfg"], found
    assert "path-exclude=/usr/share/doc/*" in found["dpkg_cfg"], found
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    wanted = {line.split("=")[0].strip()
              for line in cfg.get("options.entry_points", "console_scripts").splitlines()
              if line.strip()}
    assert set(found["scripts"]) == wanted
    assert all(path and path.startswith("/usr/local/bin/") for path in found["scripts"].values())
    def canonical(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    lock = {canonical(line.split("==")[0])
            for line in (REPO / "deploy" / "requirements.lock").read_text().splitlines()
            if line and not line.startswith("#")}
    dists = {canonical(d) for d in found["dists"]}
    assert dists - {"podbgp"} == lock, dists ^ lock
    assert image.size < 300e6, f"image is {image.size / 1e6:.0f} MB"


@pytest.mark.parametrize("flavour", ["standalone", "sidecar"])
def test_daemonset_pod_as_the_manifest_says(
    podman: Podman, image: BuiltImage, image_lab: ImageLab, flavour: str, tmp_path: Path,
) -> None:
    pod, node = (standalone_pod(), "node1") if flavour == "standalone" else (sidecar_pod(), "node2")
    result = check_manifest_pod(podman, image_lab, image, pod, node, tmp_path)
    REPORT[f"{flavour}_pod"] = result
    rss = result["podbgp_idle_rss_mb"]
    assert {"bgpd", "exabgp"} <= set(rss), rss
    limit = kube.quantity(container_named(pod, "podbgp")["resources"]["limits"]["memory"])
    assert sum(rss.values()) * 2**20 < limit / 2, f"idle RSS {rss} near the {limit} limit"


def test_file_datastore_mounted_read_only(podman: Podman, image: BuiltImage,
                                          image_lab: ImageLab, tmp_path: Path) -> None:
    """The README's `podman run` with the file datastore, edits seen through the mount."""
    lab, node = image_lab.lab, image_lab.lab.nodes["node3"]
    conf_dir = tmp_path / "podbgp"
    conf_dir.mkdir()
    docs = [
        {"apiVersion": "projectcalico.org/v3", "kind": "BGPConfiguration",
         "metadata": {"name": "default"},
         "spec": {"asNumber": NODE_AS, "nodeToNodeMeshEnabled": False}},
        {"apiVersion": "projectcalico.org/v3", "kind": "IPPool", "metadata": {"name": "pods"},
         "spec": {"cidr": POOL, "blockSize": 26}},
        {"apiVersion": "projectcalico.org/v3", "kind": "BGPPeer", "metadata": {"name": "tor"},
         "spec": {"peerIP": "10.99.0.101", "asNumber": TOR_AS}},
        {"apiVersion": "projectcalico.org/v3", "kind": "Node", "metadata": {"name": "node3"},
         "spec": {"bgp": {"ipv4Address": f"{node.ip}/24"}}},
        {"apiVersion": "projectcalico.org/v3", "kind": "BlockAffinity",
         "metadata": {"name": "node3-10-244-3-0-26"},
         "spec": {"node": "node3", "cidr": BLOCKS["node3"], "state": "confirmed"}},
    ]

    def write(documents: list[dict]) -> None:
        tmp = conf_dir / ".resources.yaml.tmp"
        tmp.write_text(yaml.safe_dump_all(documents))
        tmp.rename(conf_dir / "resources.yaml")  # replaced, as editors and ConfigMaps do

    write(docs)
    name = f"podbgp-file-{uuid.uuid4().hex[:8]}"
    argv = ["run", "-d", "--name", name, "--network", f"ns:/run/netns/{node.ns}",
            "--health-interval", "disable", "--cap-drop", "ALL", "--cap-add", "NET_ADMIN",
            "--cap-add", "NET_BIND_SERVICE", "--read-only", "--tmpfs", "/run/podbgp",
            "--tmpfs", "/tmp", "-v", f"{conf_dir}:/etc/podbgp:ro",
            "-e", "NODENAME=node3", "-e", "DATASTORE_TYPE=file",
            "-e", "PODBGP_CONFIG_FILE=/etc/podbgp/resources.yaml",
            "-e", f"PODBGP_HTTP_LISTEN={node.ip}:9179", image.tag]
    with started(podman, argv, name):
        wait_routed(image_lab, "node3", BLOCKS["node3"], podman, name)
        assert podman("healthcheck", "run", name, check=False).returncode == 0
        extra = "10.244.33.0/26"
        write([*docs, {"apiVersion": "projectcalico.org/v3", "kind": "BlockAffinity",
                       "metadata": {"name": "node3-10-244-33-0-26"},
                       "spec": {"node": "node3", "cidr": extra, "state": "confirmed"}}])
        lab.wait_for(lambda: extra in image_lab.bird.kernel(), 30,
                     "the edited file's new block at BIRD")
        podman("stop", "-t", "30", name, timeout=60)
        assert podman.inspect(name, "{{.State.ExitCode}}") == "0"


def test_install_cni_init_container_into_a_throwaway_host(
    podman: Podman, image: BuiltImage, image_lab: ImageLab, tmp_path: Path,
) -> None:
    """The init container as the manifest says; then the node uses what it installed."""
    lab = image_lab.lab
    pod = standalone_pod()
    init = container_named(pod, "install-cni", init=True)
    node = lab.add_node("node4")
    host_root = tmp_path / "host"
    # A node with the standard plugins in /opt/cni/bin (containernetworking-plugins).
    (host_root / "opt/cni/bin").mkdir(parents=True)
    for plugin in ("bridge", "host-local", "loopback", "portmap"):
        src = Path("/usr/lib/cni") / plugin
        if src.exists():
            (host_root / "opt/cni/bin" / plugin).write_bytes(src.read_bytes())
            (host_root / "opt/cni/bin" / plugin).chmod(0o755)
    kn = image_lab.kube_node("node4", host_root)
    spec = kube.podman_run(pod, init, kn, tmp_path / "volumes",
                           name=f"install-cni-{uuid.uuid4().hex[:8]}", init=True)
    argv = spec.argv
    name = argv[argv.index("--name") + 1]
    try:
        t0 = time.monotonic()
        first = podman(*argv, timeout=300)
        REPORT["install_cni_s"] = round(time.monotonic() - t0, 1)
        again = podman(*argv, timeout=300)
    finally:
        podman.remove(name)
    assert "runtime_installed" in first.stderr and "runtime_up_to_date" in again.stderr
    assert "network_config_up_to_date" in again.stderr

    bin_dir, net_dir = host_root / "opt/cni/bin", host_root / "etc/cni/net.d"
    conf_path = net_dir / spec.env["CNI_CONF_NAME"]
    conf = json.loads(conf_path.read_text())
    assert oct(conf_path.stat().st_mode & 0o777) == "0o600"
    assert "__" not in conf_path.read_text()
    types = {p["type"] for p in conf["plugins"]} | {
        p["ipam"]["type"] for p in conf["plugins"] if "ipam" in p}
    ours = {t for t in types if t.startswith("podbgp-")}
    assert ours and all((bin_dir / t).stat().st_mode & 0o111 for t in ours)
    # podbgp-cni/podbgp-ipam are the image's static forwarder (cni/forward.c) with the
    # /bin/sh launcher beside each: the ADD below goes forwarder -> launcher (no agent).
    for t in ours:
        elf = (bin_dir / t).read_bytes()
        assert elf[:5] == b"\x7fELF\x02", t  # ELF64; static: no PT_INTERP program header
        phoff, (phentsize, phnum) = int.from_bytes(elf[0x20:0x28], "little"), (
            int.from_bytes(elf[0x36:0x38], "little"), int.from_bytes(elf[0x38:0x3a], "little"))
        assert all(int.from_bytes(elf[phoff + i * phentsize:][:4], "little") != 3
                   for i in range(phnum)), f"{t} is dynamically linked"
        assert (bin_dir / f"{t}-python").read_text().startswith("#!/bin/sh\n")
    runtimes = list((bin_dir / "podbgp-runtime").iterdir())
    assert len(runtimes) == 1
    REPORT["cni_runtime_mb"] = round(sum(
        p.stat().st_size for p in runtimes[0].rglob("*") if p.is_file()) / 1e6, 1)
    plugin = conf["plugins"][0]
    for key, secret in (("etcd_ca_cert_file", "etcd-ca"), ("etcd_cert_file", "etcd-cert"),
                        ("etcd_key_file", "etcd-key")):
        assert plugin[key] == f"/etc/cni/net.d/podbgp-tls/{secret}"
        assert (net_dir / "podbgp-tls" / secret).read_bytes() == image_lab.secret[secret]
    assert plugin["etcd_endpoints"] == image_lab.endpoint and plugin["nodename"] == node.name

    # The node runs the installed plugins with its own Python out of sight: a CNI
    # ADD through the installed main plugin (podbgp-cni) and its IPAM (podbgp-ipam).
    netconf = {"cniVersion": conf["cniVersion"], "name": conf["name"], **plugin}
    for key in ("etcd_ca_cert_file", "etcd_cert_file", "etcd_key_file"):
        netconf[key] = str(host_root) + netconf[key]  # the node's /etc is host_root/etc here
    netconf["ipam"] = {**netconf["ipam"], "lock_file": str(host_root / "run/podbgp/ipam.lock")}
    # No node agent here: the installed runtime does the work (not another test's agent).
    netconf["agent_socket"] = str(host_root / "run/podbgp-cni/agent.sock")
    pod_ns = unique_name("pbtimgpod")
    netns_add(pod_ns)
    cid = uuid.uuid4().hex
    hide = ("mount -t tmpfs none /usr/lib/python3.11 && mount -t tmpfs none /usr/lib/python3"
            f" && exec ip netns exec {node.ns} {bin_dir}/{plugin['type']}")

    def cni(command: str) -> subprocess.CompletedProcess:
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_COMMAND": command,
               "CNI_CONTAINERID": cid, "CNI_NETNS": f"/var/run/netns/{pod_ns}",
               "CNI_IFNAME": "eth0", "CNI_PATH": str(bin_dir),
               "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod_ns}"}
        return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", hide],
                              input=json.dumps(netconf), env=env, capture_output=True,
                              text=True, timeout=120)

    try:
        t0 = time.monotonic()
        add = cni("ADD")
        REPORT["installed_cni_add_s"] = round(time.monotonic() - t0, 2)  # no agent: cold Python
        assert add.returncode == 0, add.stdout + add.stderr
        ip = json.loads(add.stdout)["ips"][0]["address"]
        assert ip.startswith("10.244."), ip
        addr = ip.split("/")[0]
        assert addr in run("ip", "-j", "addr", "show", "eth0", ns=pod_ns).stdout
        if plugin["type"] == "podbgp-cni":  # Calico's data plane: a host route per pod
            (route,) = json.loads(run("ip", "-j", "route", "show", addr, ns=node.ns).stdout)
            assert route["dev"].startswith("cali"), route
            assert any(pod_ns in k for k in image_lab.etcd_keys(
                "/calico/resources/v3/projectcalico.org/workloadendpoints/default/"))
        delete = cni("DEL")
        assert delete.returncode == 0, delete.stdout + delete.stderr
        assert not json.loads(run("ip", "-j", "route", "show", addr, ns=node.ns).stdout or "[]")
        assert not any(pod_ns in k for k in image_lab.etcd_keys(
            "/calico/resources/v3/projectcalico.org/workloadendpoints/"))
    finally:
        netns_del(pod_ns)
        shutil.rmtree(host_root, ignore_errors=True)  # ~100 MB of runtime


def test_systemd_unit_under_systemd(podman: Podman, image: BuiltImage, image_lab: ImageLab,
                                    tmp_path: Path) -> None:
    """deploy/systemd/podbgp.service and podbgp-policy.service with their env examples,
    run by systemd itself.

    The test machine's PID 1 is not systemd, so systemd runs as PID 1 of a
    container (tests/image/systemd.Containerfile: the podbgp image plus
    Debian's systemd) in a node's namespace, not privileged: the unit's own
    sandbox needs SYS_ADMIN (mount namespaces), MKNOD (PrivateDevices) and
    SYS_RESOURCE (LimitNOFILE) in the container's bounding set. The units are
    mounted unchanged; the env files are the examples with only their values set.
    """
    lab, bird = image_lab.lab, image_lab.bird
    node = lab.add_node("nodesd")
    block = "10.244.5.0/26"
    image_lab.apply({"apiVersion": "projectcalico.org/v3", "kind": "Node",
                     "metadata": {"name": node.name},
                     "spec": {"bgp": {"ipv4Address": f"{node.ip}/24"}}})
    image_lab.claim_block(node.name, block)
    bird.neighbors.append((node.ip, NODE_AS))
    bird.reconfigure()
    # The env example with this cluster's values; its TLS paths as they are.
    values = {"NODENAME": node.name, "ETCD_ENDPOINTS": image_lab.endpoint,
              "PODBGP_HTTP_LISTEN": f"{node.ip}:9179"}
    lines = []
    tls_paths = {}
    for line in (REPO / "deploy/systemd/podbgp.env.example").read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not key.startswith("#"):
            value = values.get(key, value)
            if key.startswith("ETCD_") and key.endswith("_FILE"):
                tls_paths[key] = value
        lines.append(f"{key}{sep}{value}" if sep else line)
    env_file = tmp_path / "podbgp.env"
    env_file.write_text("\n".join(lines) + "\n")
    env_file.chmod(0o600)
    # podbgp-policy's own example: every line is a commented default; set the listener.
    policy_listen = f"{node.ip}:9180"
    policy_env = tmp_path / "podbgp-policy.env"
    policy_lines = (REPO / "deploy/systemd/podbgp-policy.env.example").read_text().splitlines()
    assert "#PODBGP_POLICY_HTTP_LISTEN=127.0.0.1:9180" in policy_lines
    policy_env.write_text("\n".join(
        f"PODBGP_POLICY_HTTP_LISTEN={policy_listen}"
        if line.startswith("#PODBGP_POLICY_HTTP_LISTEN=") else line
        for line in policy_lines) + "\n")
    policy_env.chmod(0o600)
    tls = tmp_path / "tls"
    tls.mkdir()
    mounts = []
    for key, secret in (("ETCD_CA_CERT_FILE", "etcd-ca"), ("ETCD_CERT_FILE", "etcd-cert"),
                        ("ETCD_KEY_FILE", "etcd-key")):
        path = tls / secret
        path.write_bytes(image_lab.secret[secret])
        path.chmod(0o600)  # root-owned and private, as the example asks
        mounts += ["-v", f"{path}:{tls_paths[key]}:ro"]
    name = f"podbgp-systemd-{uuid.uuid4().hex[:8]}"
    argv = ["run", "-d", "--name", name, "--systemd=always", "--network",
            f"ns:/run/netns/{node.ns}", "--health-interval", "disable", "--hostname", node.name,
            "--cap-add", "SYS_ADMIN", "--cap-add", "MKNOD", "--cap-add", "SYS_RESOURCE",
            "--cap-add", "NET_ADMIN",
            *(arg for unit in ("podbgp.service", "podbgp-policy.service") for arg in (
                "-v", f"{REPO / 'deploy/systemd' / unit}:/etc/systemd/system/{unit}:ro")),
            "-v", f"{env_file}:/etc/podbgp/podbgp.env:ro",
            "-v", f"{policy_env}:/etc/podbgp/podbgp-policy.env:ro", *mounts, SYSTEMD_IMAGE]

    def sh(command: str, check: bool = True) -> str:
        return podman("exec", name, "sh", "-c", command, check=check, timeout=150).stdout.strip()

    def show(*props: str, unit: str = "podbgp") -> dict[str, str]:
        out = sh("systemctl show " + " ".join(f"-p {p}" for p in props) + f" {unit}")
        return dict(line.split("=", 1) for line in out.splitlines())

    def sandbox(pid: str) -> dict[str, str]:
        status = sh(f"grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/{pid}/status")
        return dict(line.split(":\t") for line in status.splitlines())

    with started(podman, argv, name):
        try:
            lab.wait_for(lambda: sh("systemctl is-system-running", check=False)
                         in ("running", "degraded"), 60, "systemd in the container")
            t0 = time.monotonic()
            sh("systemctl start podbgp")  # Type=notify: returns after READY=1
            REPORT["systemd_start_s"] = round(time.monotonic() - t0, 2)
            first = show("ActiveState", "MainPID")
            assert first["ActiveState"] == "active"
            fields = sandbox(first["MainPID"])
            assert int(fields["CapEff"], 16) == int(fields["CapBnd"], 16) == (1 << 12) | (1 << 10)
            assert fields["NoNewPrivs"] == "1" and fields["Seccomp"] == "2"
            wait_routed(image_lab, node.name, block, podman, name)

            # reload = SIGHUP: same process, the session does not flap.
            sh("systemctl reload podbgp")
            time.sleep(2)
            assert show("MainPID", "ActiveState") == first
            _, metrics = http_get(node.ns, f"http://{node.ip}:9179/metrics")
            assert 'podbgp_bgp_session_flaps_total{peer="10.99.0.101"} 0.0' in metrics

            # kill -9: Restart=on-failure starts it again; KillMode=mixed has removed
            # the old ExaBGP; the routes never left the kernel.
            old_exabgp = sh("pgrep -f 'exabgp' || true").split()
            assert old_exabgp
            sh("systemctl kill -s SIGKILL --kill-whom=main podbgp")
            assert TOR_PREFIX in kernel_routes(node.ns, "proto", "201")
            lab.wait_for(lambda: show("NRestarts", "ActiveState") == {
                "NRestarts": "1", "ActiveState": "active"}, 60, "systemd to restart bgpd")
            assert not set(old_exabgp) & set(sh("pgrep -f exabgp || true").split())
            assert show("MainPID")["MainPID"] != first["MainPID"]
            wait_routed(image_lab, node.name, block, podman, name)

            # stop: SIGTERM to bgpd, exit 0, routes stay.
            t0 = time.monotonic()
            sh("systemctl stop podbgp")
            REPORT["systemd_stop_s"] = round(time.monotonic() - t0, 2)
            assert show("ActiveState", "Result", "ExecMainStatus") == {
                "ActiveState": "inactive", "Result": "success", "ExecMainStatus": "0"}
            routes = kernel_routes(node.ns, "proto", "201")
            assert TOR_PREFIX in routes and routes.get(block, {}).get("type") == "blackhole"

            # podbgp-policy.service (Type=notify: start returns once its table holds the
            # datastore's policy) under the same sandbox settings: NET_ADMIN only, and nft
            # (a child) works under its seccomp filter and MemoryDenyWriteExecute.
            t0 = time.monotonic()
            sh("systemctl start podbgp-policy")
            REPORT["systemd_policy_start_s"] = round(time.monotonic() - t0, 2)
            policy = show("ActiveState", "MainPID", unit="podbgp-policy")
            assert policy["ActiveState"] == "active"
            fields = sandbox(policy["MainPID"])
            assert int(fields["CapEff"], 16) == int(fields["CapBnd"], 16) == 1 << 12
            assert fields["NoNewPrivs"] == "1" and fields["Seccomp"] == "2"
            assert "table inet podbgp-policy" in sh("nft list tables")
            code, body = http_get(node.ns, f"http://{policy_listen}/readyz")
            assert code == 200, body
            # stop: exit 0; the table stays (pods stay policed while the agent is down).
            sh("systemctl stop podbgp-policy")
            assert show("ActiveState", "Result", "ExecMainStatus", unit="podbgp-policy") == {
                "ActiveState": "inactive", "Result": "success", "ExecMainStatus": "0"}
            assert "table inet podbgp-policy" in sh("nft list tables")
        except BaseException:
            print(sh("journalctl -u podbgp -u podbgp-policy --no-pager | tail -60",
                     check=False))
            raise
