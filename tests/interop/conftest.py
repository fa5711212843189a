"""Interop helpers: real BGP daemons (BIRD 2, BIRD 1.6, FRR, GoBGP) as peers of podbgp.

Owned by tests/interop/. Every peer runs inside an external namespace of a
``lab.harness.Lab`` (``lab.add_external`` + ``lab.spawn_in``), so the lab ends
it by PID and removes its namespace on ``down()`` even when a test fails.
Each peer class offers the same small surface the tests use:

    established() -> bool            the peer itself says Established (to podbgp)
    table() -> set[str]              IPv4 prefixes in its BGP table learned from podbgp
    kernel() -> set[str]             IPv4 prefixes it installed in its kernel
    announce(prefix) / withdraw(prefix)   originate or stop originating a prefix
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from lab.harness import Lab, Node, run
from tests.conftest import REPO, require, require_binary, require_root
from tests.helpers.wait import until_sync

BIRD1_DIR = REPO / ".cache" / "bird1" / "usr" / "sbin"
FRR_DIR = Path("/usr/lib/frr")
POOL = "10.244.0.0/16"
NODE_AS = 64512
_PREFIX_RE = re.compile(r"^\s*(\d+\.\d+\.\d+\.\d+/\d+)\b")


# ------------------------------------------------------------------ config helpers


def pool_yaml(cidr: str = POOL, block_size: int = 26) -> str:
    return json.dumps({"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
                       "metadata": {"name": "pool1"},
                       "spec": {"cidr": cidr, "blockSize": block_size, "ipipMode": "Never",
                                "vxlanMode": "Never", "natOutgoing": False}})


def bgpconf_yaml(mesh: bool = True, asn: int = NODE_AS) -> str:
    return json.dumps({"apiVersion": "projectcalico.org/v3", "kind": "BGPConfiguration",
                       "metadata": {"name": "default"},
                       "spec": {"nodeToNodeMeshEnabled": mesh, "asNumber": asn,
                                "logSeverityScreen": "Info"}})


def peer_yaml(name: str, **spec) -> str:
    return json.dumps({"apiVersion": "projectcalico.org/v3", "kind": "BGPPeer",
                       "metadata": {"name": name}, "spec": spec})


def etcdctl(lab: Lab, *args: str) -> str:
    env = {**os.environ, "ETCDCTL_API": "3"}
    return run(require_binary("etcdctl"), "--endpoints=http://127.0.0.1:2379", *args,
               ns=lab.etcd_ns, env=env).stdout


def _affinity_key(node: str, cidr: str) -> str:
    return f"/calico/ipam/v2/host/{node}/ipv4/block/{cidr.replace('/', '-')}"


def add_affinity(lab: Lab, node: str, cidr: str) -> None:
    """A confirmed BlockAffinity (what Calico IPAM writes when a node claims a block)."""
    etcdctl(lab, "put", _affinity_key(node, cidr), json.dumps({"state": "confirmed",
                                                                "deleted": False}))


def del_affinity(lab: Lab, node: str, cidr: str) -> None:
    etcdctl(lab, "del", _affinity_key(node, cidr))


def metric(lab: Lab, node: str, name: str, **labels: str) -> float:
    """One sample of /metrics (0.0 when absent)."""
    code, body = lab.http_get(node, "/metrics")
    assert code == 200, f"/metrics on {node}: {code}"
    for line in body.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            return float(value)
    return 0.0


def peer_state(lab: Lab, node: str, address: str) -> str | None:
    for p in lab.status(node)["peers"]:
        if p["address"] == address:
            return p["state"]
    return None


def kernel(lab: Lab, node: str) -> set[str]:
    """podbgp's own routes (proto 201) in a node's kernel."""
    return lab.route_prefixes(node, "201")


def ns_prefixes(ns: str, proto: str | None = None) -> set[str]:
    args = ["ip", "-j", "route", "show"] + (["proto", proto] if proto else [])
    out = run(*args, ns=ns).stdout
    return {r["dst"] for r in json.loads(out or "[]") if r.get("dst") != "default"}


def wait(lab: Lab, pred, what: str, timeout: float = 30.0, node: str | None = None):
    """``tests.helpers.wait.until_sync`` with interop's habits: 50 ms polls, errors
    from a CLI not answering yet retried, the daemon's log tail on failure."""
    detail = (lambda: f"--- {node} log tail ---\n{lab.daemon_log(node, 30)}") if node else None
    return until_sync(pred, timeout, what, interval=0.05, retry=(Exception,), detail=detail)


def start_lab(lab: Lab, nodes: list[str], *extra: str, mesh: bool = True,
              labels: dict[str, dict] | None = None, cluster_ids: dict[str, str] | None = None,
              resources: list[str] = ()) -> None:
    """Pool + BGPConfiguration + resources, register the nodes, start their daemons."""
    lab.apply(pool_yaml())
    lab.apply(bgpconf_yaml(mesh=mesh))
    for doc in resources:
        lab.apply(doc)
    for name in nodes:
        lab.register_node(lab.nodes[name], labels=(labels or {}).get(name),
                          rr_cluster_id=(cluster_ids or {}).get(name))
    for name in nodes:
        lab.start_daemon(name, *extra)
    for name in nodes:
        wait(lab, lambda n=name: lab.ready(n), f"{name} ready", 30, node=name)


def require_interop_root() -> None:
    require_root()
    require(shutil.which("etcd") is not None, "needs etcd (etcd-server)")
    require(Path("/usr/lib/cni/bridge").exists(), "needs containernetworking-plugins")


# --------------------------------------------------------------------------- peers


class Peer:
    """A real BGP daemon in one lab external namespace."""

    kind = "?"

    def __init__(self, lab: Lab, ext: Node, asn: int, neighbors: list[tuple[str, int]]) -> None:
        self.lab, self.ext, self.asn, self.neighbors = lab, ext, asn, neighbors
        self.ip = ext.ip
        self.dir = lab.workdir / f"{self.kind}-{ext.name}"
        self.dir.mkdir(exist_ok=True)
        self.originated: list[str] = []
        self.proc: subprocess.Popen | None = None

    def kernel(self) -> set[str]:
        return ns_prefixes(self.ext.ns)

    def kernel_route(self, prefix: str) -> dict | None:
        out = run("ip", "-j", "route", "show", prefix, ns=self.ext.ns).stdout
        rs = json.loads(out or "[]")
        return rs[0] if rs else None

    def log_tail(self) -> str:
        p = self.lab.workdir / f"{self.kind}-{self.ext.name}.log"
        return p.read_text(errors="replace")[-3000:] if p.exists() else ""


class Bird(Peer):
    """BIRD 2 (``version=2``) or BIRD 1.6 (``version=1``).

    ``neighbors``: (address, asn) pairs; ``rr_clients``: reflect to them (BIRD as RR);
    ``password``: TCP MD5 on every session; ``graceful_restart``: GR on, long timers;
    ``kernel_export``: BGP-learned routes go to BIRD's kernel (proto bird).
    Originated prefixes are blackhole static routes, changed with ``birdc configure``.
    """

    def __init__(self, lab: Lab, ext: Node, asn: int, neighbors: list[tuple[str, int]], *,
                 version: int = 2, password: str | None = None, rr_client: bool = False,
                 rr_cluster_id: str | None = None, graceful_restart: bool = False,
                 kernel_export: bool = True, originate: list[str] = ()) -> None:
        self.kind = f"bird{version}"
        super().__init__(lab, ext, asn, neighbors)
        self.version = version
        if version == 1:
            require(BIRD1_DIR.joinpath("bird").exists(),
                    f"needs BIRD 1.6 unpacked at {BIRD1_DIR} (see docs/testing.md)")
            self.bird, self.birdc_bin = str(BIRD1_DIR / "bird"), str(BIRD1_DIR / "birdc")
        else:
            self.bird, self.birdc_bin = require_binary("bird"), require_binary("birdc")
        self.password, self.rr_client, self.rr_cluster_id = password, rr_client, rr_cluster_id
        self.graceful_restart, self.kernel_export = graceful_restart, kernel_export
        self.originated = list(originate)
        self.conf, self.sock = self.dir / "bird.conf", self.dir / "bird.ctl"
        self.write()
        self.proc = lab.spawn_in(ext.ns, [self.bird, "-f", "-c", str(self.conf), "-s",
                                          str(self.sock), "-P", str(self.dir / "bird.pid")],
                                 f"{self.kind}-{ext.name}.log")
        def up() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.kind} exited: {self.log_tail()}")
            return self.sock.exists() and "BIRD" in self.birdc("show", "status")

        wait(lab, up, f"{self.kind} control socket", 15)

    @staticmethod
    def proto_name(addr: str) -> str:
        return "p_" + addr.replace(".", "_")

    def write(self) -> None:
        statics = "\n".join(f"  route {p} blackhole;" for p in self.originated)
        kexp = "export where source = RTS_BGP;" if self.kernel_export else "export none;"
        opts = ["connect delay time 1;", "error wait time 1, 2;", "hold time 9;"]
        if self.password:
            opts.append(f'password "{self.password}";')
        if self.rr_client:
            opts.append("rr client;")
        if self.rr_cluster_id:
            opts.append(f"rr cluster id {self.rr_cluster_id};")
        if self.graceful_restart:
            opts += ["graceful restart on;", "graceful restart time 120;"]
        protos = []
        for addr, asn in self.neighbors:
            # iBGP is multihop in BIRD unless told otherwise; the lab is one segment,
            # so `direct` (next hops resolve on the link, no IGP needed).
            direct = ["direct;"] if asn == self.asn else []
            chan = ("ipv4 { import all; export all; };" if self.version == 2
                    else "import all; export all;")
            protos.append(f"protocol bgp {self.proto_name(addr)} {{\n"
                          f"  local {self.ip} as {self.asn};\n  neighbor {addr} as {asn};\n"
                          + "".join(f"  {o}\n" for o in opts + direct) + f"  {chan}\n}}\n")
        if self.version == 2:
            static = f"protocol static st {{\n  ipv4;\n{statics}\n}}\n"
            kern = f"protocol kernel {{\n  ipv4 {{ import none; {kexp} }};\n}}\n"
        else:
            static = f"protocol static st {{\n{statics}\n}}\n"
            kern = f"protocol kernel {{\n  import none; {kexp}\n}}\n"
        self.conf.write_text(f"router id {self.ip};\nprotocol device {{}}\n{static}{kern}"
                             + "".join(protos))

    def birdc(self, *args: str) -> str:
        r = subprocess.run([self.birdc_bin, "-s", str(self.sock), *args], capture_output=True,
                           text=True, timeout=10)
        return r.stdout

    def reconfigure(self) -> None:
        self.write()
        out = self.birdc("configure")
        assert "Reconfigured" in out or "Reconfiguration" in out, out

    def announce(self, prefix: str) -> None:
        self.originated.append(prefix)
        self.reconfigure()

    def withdraw(self, prefix: str) -> None:
        self.originated.remove(prefix)
        self.reconfigure()

    def established(self, addr: str | None = None) -> bool:
        addr = addr or self.neighbors[0][0]
        return "Established" in self.birdc("show", "protocols", self.proto_name(addr))

    def table(self, addr: str | None = None) -> set[str]:
        """Prefixes BIRD learned from the BGP session with ``addr`` (default: first)."""
        out = self.birdc("show", "route", "protocol", self.proto_name(addr or
                                                                      self.neighbors[0][0]))
        return {m.group(1) for line in out.splitlines() if (m := _PREFIX_RE.match(line))}

    def route_all(self, prefix: str) -> str:
        return self.birdc("show", "route", prefix, "all")


class Frr(Peer):
    """FRR 8 (zebra + bgpd as user frr) with its own run dir (frr must traverse it)."""

    kind = "frr"

    def __init__(self, lab: Lab, ext: Node, asn: int, neighbors: list[tuple[str, int]],
                 originate: list[str] = ()) -> None:
        require(FRR_DIR.joinpath("bgpd").exists(), "needs FRR (/usr/lib/frr)")
        super().__init__(lab, ext, asn, neighbors)
        # The lab workdir is 0700 root; FRR drops to user frr, so it gets its own
        # world-traversable dir, removed by the fixture that made the peer.
        self.run_dir = Path(tempfile.mkdtemp(prefix="podbgp-frr-"))
        self.zebra: subprocess.Popen | None = None
        try:
            self._start(originate)
        except BaseException:
            self.cleanup()
            raise

    def _start(self, originate: list[str]) -> None:
        lab, ext, asn, neighbors = self.lab, self.ext, self.asn, self.neighbors
        os.chmod(self.run_dir, 0o755)
        shutil.chown(self.run_dir, "frr", "frr")
        self.originated = list(originate)
        zconf, bconf = self.run_dir / "zebra.conf", self.run_dir / "bgpd.conf"
        zconf.write_text("hostname zebra\n")
        nbrs = "".join(f" neighbor {a} remote-as {asn_}\n neighbor {a} timers connect 1\n"
                       f" neighbor {a} timers 3 9\n" for a, asn_ in neighbors)
        nets = "".join(f"  network {p}\n" for p in self.originated)
        bconf.write_text(
            f"hostname bgpd\nrouter bgp {asn}\n bgp router-id {self.ip}\n"
            " no bgp ebgp-requires-policy\n no bgp network import-check\n"
            f"{nbrs} address-family ipv4 unicast\n{nets} exit-address-family\n")
        for f in (zconf, bconf):
            shutil.chown(f, "frr", "frr")
        zs = str(self.run_dir / "zserv.api")
        common = ["--vty_socket", str(self.run_dir), "-z", zs]
        self.zebra = lab.spawn_in(ext.ns, [str(FRR_DIR / "zebra"), "-f", str(zconf), "-i",
                                           str(self.run_dir / "zebra.pid"), *common],
                                  f"frr-{ext.name}-zebra.log")
        wait(lab, lambda: Path(zs).exists(), "FRR zebra socket")
        self.proc = lab.spawn_in(ext.ns, [str(FRR_DIR / "bgpd"), "-f", str(bconf), "-i",
                                          str(self.run_dir / "bgpd.pid"), *common],
                                 f"frr-{ext.name}.log")
        wait(lab, lambda: "BGP router identifier" in self.vtysh("show bgp summary"),
             "FRR bgpd up")

    def vtysh(self, *cmds: str) -> str:
        args = ["vtysh", "--vty_socket", str(self.run_dir)]
        for c in cmds:
            args += ["-c", c]
        r = run(*args, ns=self.ext.ns, check=False)
        return r.stdout

    def _af(self, line: str) -> None:
        self.vtysh("configure terminal", f"router bgp {self.asn}", "address-family ipv4 unicast",
                   line)

    def announce(self, prefix: str) -> None:
        self.originated.append(prefix)
        self._af(f"network {prefix}")

    def withdraw(self, prefix: str) -> None:
        self.originated.remove(prefix)
        self._af(f"no network {prefix}")

    def established(self, addr: str | None = None) -> bool:
        addr = addr or self.neighbors[0][0]
        try:
            s = json.loads(self.vtysh("show bgp ipv4 unicast summary json"))
        except ValueError:
            return False
        return s.get("peers", {}).get(addr, {}).get("state") == "Established"

    def table(self, addr: str | None = None) -> set[str]:
        addr = addr or self.neighbors[0][0]
        try:
            t = json.loads(self.vtysh("show bgp ipv4 unicast json"))
        except ValueError:
            return set()
        out = set()
        for prefix, paths in t.get("routes", {}).items():
            for p in paths:
                if p.get("peerId") == addr:
                    out.add(prefix)
        return out

    def cleanup(self) -> None:
        for proc in (self.proc, self.zebra):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(5)
        shutil.rmtree(self.run_dir, ignore_errors=True)


class GoBgp(Peer):
    """GoBGP 3 (gobgpd); installs nothing in the kernel, so only its RIB is checked."""

    kind = "gobgp"

    def __init__(self, lab: Lab, ext: Node, asn: int, neighbors: list[tuple[str, int]],
                 originate: list[str] = ()) -> None:
        self.gobgpd, self.gobgp = require_binary("gobgpd"), require_binary("gobgp")
        super().__init__(lab, ext, asn, neighbors)
        self.sock = self.dir / "gobgp.sock"
        conf = self.dir / "gobgpd.toml"
        nbrs = "".join(
            f'[[neighbors]]\n  [neighbors.config]\n    neighbor-address = "{a}"\n'
            f"    peer-as = {asn_}\n  [neighbors.timers.config]\n    connect-retry = 1\n"
            "    hold-time = 9\n    keepalive-interval = 3\n"
            '  [[neighbors.afi-safis]]\n    [neighbors.afi-safis.config]\n'
            '      afi-safi-name = "ipv4-unicast"\n'
            for a, asn_ in neighbors)
        conf.write_text(f'[global.config]\n  as = {asn}\n  router-id = "{self.ip}"\n'
                        f'  local-address-list = ["{self.ip}"]\n\n{nbrs}')
        self.proc = lab.spawn_in(ext.ns, [self.gobgpd, "-f", str(conf), "--api-hosts",
                                          f"unix://{self.sock}", "-p"],
                                 f"gobgp-{ext.name}.log")
        wait(lab, lambda: self.sock.exists() and self.cli("global").returncode == 0,
             "gobgpd API")
        for p in originate:
            self.announce(p)

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return run(self.gobgp, "--target", f"unix://{self.sock}", *args, ns=self.ext.ns,
                   check=False)

    def announce(self, prefix: str) -> None:
        r = self.cli("global", "rib", "add", "-a", "ipv4", prefix)
        assert r.returncode == 0, r.stderr
        self.originated.append(prefix)

    def withdraw(self, prefix: str) -> None:
        r = self.cli("global", "rib", "del", "-a", "ipv4", prefix)
        assert r.returncode == 0, r.stderr
        self.originated.remove(prefix)

    def established(self, addr: str | None = None) -> bool:
        addr = addr or self.neighbors[0][0]
        r = self.cli("neighbor", "-j")
        try:
            for n in json.loads(r.stdout or "[]"):
                if n.get("conf", {}).get("neighbor_address") == addr:
                    return n.get("state", {}).get("session_state") in (6, "established",
                                                                        "ESTABLISHED")
        except ValueError:
            return False
        return False

    def table(self, addr: str | None = None) -> set[str]:
        """Prefixes in GoBGP's global RIB whose path came from ``addr``."""
        addr = addr or self.neighbors[0][0]
        r = self.cli("global", "rib", "-a", "ipv4", "-j")
        try:
            rib = json.loads(r.stdout or "{}")
        except ValueError:
            return set()
        return {p for p, paths in rib.items()
                if any(x.get("neighbor-ip") == addr for x in paths)}

    def kernel(self) -> set[str]:
        return set()
