"""podbgp-ipam driven by Debian's real CNI ``bridge`` plugin, pods in namespaces.

A "node" namespace holds etcd (on its own loopback) and the bridge; each "pod"
is a namespace the bridge plugin wires to it with a veth. Nothing is created
in the host namespace; the fixtures remove every namespace even on failure
(the veths and the bridge go with them).
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, EtcdServer, free_ports, require, require_root

pytestmark = [pytest.mark.root, pytest.mark.etcd]

CNI_DIR = Path("/usr/lib/cni")
POOL = "10.77.0.0/16"


def _script() -> Path:
    return Path(sys.executable).parent / "podbgp-ipam"


@pytest.fixture
def node(netns_factory, tmp_path):
    """(node namespace, etcd in it, CNI_PATH dir) with an IPPool stored."""
    require_root()
    require((CNI_DIR / "bridge").exists(), "needs containernetworking-plugins (/usr/lib/cni)")
    require(_script().exists(), "podbgp-ipam console script not installed in the venv")
    ns = netns_factory("pbn")
    client, peer = free_ports(2)
    server = EtcdServer(tmp_path / "etcd-data", client, peer, netns=ns)
    server.start()
    try:
        pool = {"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
                "metadata": {"name": "pool1"}, "spec": {"cidr": POOL, "blockSize": 26}}
        server.etcdctl("put", "/calico/resources/v3/projectcalico.org/ippools/pool1",
                       json.dumps(pool))
        cni_path = tmp_path / "cni"
        cni_path.mkdir()
        # The bridge plugin finds the IPAM plugin by name on CNI_PATH. A
        # wrapper (not a symlink) so PYTHONPATH points at this checkout.
        wrapper = cni_path / "podbgp-ipam"
        wrapper.write_text(f"#!/bin/sh\nPYTHONPATH={REPO} exec {_script()} \"$@\"\n")
        wrapper.chmod(0o755)
        yield ns, server, cni_path
    finally:
        server.stop(sig_kill=True)


def _conf(server: EtcdServer, bridge: str, **ipam) -> dict:
    return {
        "cniVersion": "1.0.0", "name": "podnet", "type": "bridge",
        "bridge": bridge, "isGateway": True,
        "etcd_endpoints": server.endpoint, "nodename": "node1",
        "ipam": {"type": "podbgp-ipam", "empty_block_release_seconds": 0,
                 "bridge_single_block": True,
                 "lock_file": str(Path(server.data_dir).parent / "ipam.lock"), **ipam},
    }


def _cni(node_ns: str, cni_path: Path, command: str, conf: dict, container: str,
         pod_ns: str | None, plugin: str = "bridge") -> subprocess.CompletedProcess:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": container,
        "CNI_NETNS": f"/var/run/netns/{pod_ns}" if pod_ns else "",
        "CNI_IFNAME": "eth0",
        "CNI_PATH": f"{cni_path}:{CNI_DIR}",
        "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={container}",
    }
    # Run the plugin inside the node namespace: the bridge lives there and
    # etcd listens on that namespace's loopback.
    return subprocess.run(["ip", "netns", "exec", node_ns, str(CNI_DIR / plugin)],
                          input=json.dumps(conf), capture_output=True, text=True, env=env,
                          timeout=60)


def _block(server: EtcdServer, cidr: str) -> dict:
    key = "/calico/ipam/v2/assignment/ipv4/block/" + cidr.replace("/", "-")
    out = server.etcdctl("get", key, "--print-value-only").strip()
    return json.loads(out) if out else {}


def _tcp_roundtrip(server_ns: str, client_ns: str, addr: str) -> str:
    port = free_ports(1)[0]
    srv = subprocess.Popen(
        ["ip", "netns", "exec", server_ns, sys.executable, "-c",
         "import socket,sys\n"
         "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
         f"s.bind(('{addr}', {port})); s.listen(1); print('ready', flush=True)\n"
         "c,_=s.accept(); c.sendall(b'pong:'+c.recv(64)); c.close()\n"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert srv.stdout.readline().strip() == "ready"
        out = subprocess.run(
            ["ip", "netns", "exec", client_ns, sys.executable, "-c",
             "import socket\n"
             f"c=socket.create_connection(('{addr}', {port}), timeout=5)\n"
             "c.sendall(b'ping'); print(c.recv(64).decode())\n"],
            capture_output=True, text=True, timeout=20)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()
    finally:
        srv.kill()
        srv.wait(5)


def test_bridge_two_pods_get_block_addresses_and_talk(node, netns_factory):
    node_ns, server, cni_path = node
    bridge = "pbbr" + os.urandom(3).hex()
    conf = _conf(server, bridge)
    pods = [netns_factory("pbp"), netns_factory("pbp")]
    results = []
    for i, pod in enumerate(pods):
        r = _cni(node_ns, cni_path, "ADD", conf, f"c{i}", pod)
        assert r.returncode == 0, f"ADD failed: {r.stdout} {r.stderr}"
        results.append(json.loads(r.stdout))

    addrs = [ipaddress.ip_interface(res["ips"][0]["address"]) for res in results]
    assert addrs[0] != addrs[1]
    block = addrs[0].network
    assert block.prefixlen == 26 and block.subnet_of(ipaddress.ip_network(POOL))
    assert addrs[1].network == block, "second pod must come from the node's block"
    gateway = block.network_address + 1
    assert all(res["ips"][0]["gateway"] == str(gateway) for res in results)
    assert gateway not in [a.ip for a in addrs] and block.network_address not in [
        a.ip for a in addrs]

    # The block is affine to node1 and confirmed, in Calico's layout.
    aff_key = "/calico/ipam/v2/host/node1/ipv4/block/" + str(block).replace("/", "-")
    aff = server.etcdctl("get", aff_key, "--print-value-only")
    assert json.loads(aff) == {"state": "confirmed", "deleted": False}
    stored = _block(server, str(block))
    assert stored["affinity"] == "host:node1"
    attrs = {a["handle_id"]: a["secondary"] for a in stored["attributes"]}
    assert attrs["podnet.c0"] == {"node": "node1", "namespace": "default", "pod": "c0"}

    # The addresses really are on the pods' eth0, and the pods talk TCP.
    shown = subprocess.run(["ip", "-n", pods[1], "-j", "addr", "show", "eth0"],
                           capture_output=True, text=True, check=True).stdout
    assert str(addrs[1].ip) in shown
    assert _tcp_roundtrip(pods[1], pods[0], str(addrs[1].ip)) == "pong:ping"

    # CHECK agrees; a repeated ADD (same container) gives the same address.
    chk_conf = {**conf, "prevResult": results[0]}
    r = _ipam(node_ns, cni_path, "CHECK", chk_conf, "c0")
    assert r.returncode == 0, r.stdout + r.stderr
    again = _ipam(node_ns, cni_path, "ADD", conf, "c0")
    assert json.loads(again.stdout)["ips"][0]["address"] == str(addrs[0])

    # DEL frees the address in the stored block; DEL again is a no-op success.
    r = _cni(node_ns, cni_path, "DEL", conf, "c1", pods[1])
    assert r.returncode == 0, r.stdout + r.stderr
    ordinal = int(addrs[1].ip) - int(block.network_address)
    stored = _block(server, str(block))
    assert stored["allocations"][ordinal] is None and ordinal in stored["unallocated"]
    r = _ipam(node_ns, cni_path, "DEL", conf, "c1")
    assert r.returncode == 0 and r.stdout == "", r.stdout + r.stderr

    # Deleting the last pod empties the block; with grace 0 it is given back.
    r = _cni(node_ns, cni_path, "DEL", conf, "c0", pods[0])
    assert r.returncode == 0, r.stdout + r.stderr
    assert _block(server, str(block)) == {}
    left = server.etcdctl("get", "/calico/ipam/v2/", "--prefix", "--keys-only").split()
    assert left == [], f"IPAM keys left behind: {left}"


def _ipam(node_ns: str, cni_path: Path, command: str, conf: dict, container: str
          ) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CNI_COMMAND": command,
           "CNI_CONTAINERID": container, "CNI_NETNS": "", "CNI_IFNAME": "eth0",
           "CNI_PATH": str(cni_path)}
    return subprocess.run(["ip", "netns", "exec", node_ns, str(cni_path / "podbgp-ipam")],
                          input=json.dumps(conf), capture_output=True, text=True, env=env,
                          timeout=60)


def test_bad_network_config_gets_cni_error(node, netns_factory):
    node_ns, server, cni_path = node
    pod = netns_factory("pbp")
    conf = _conf(server, "pbbr" + os.urandom(3).hex(), assign_ipv4="maybe")
    r = _cni(node_ns, cni_path, "ADD", conf, "bad0", pod)
    assert r.returncode != 0
    err = json.loads(r.stdout)
    assert err["code"] == 7 and "assign_ipv4" in err["msg"], err
    # Nothing was allocated for the failed container.
    assert server.etcdctl("get", "/calico/ipam/v2/handle/", "--prefix", "--keys-only") == ""

    # A pool that does not exist is a config error too, naming the pool.
    conf = _conf(server, "pbbr" + os.urandom(3).hex(), ipv4_pools=["nope"])
    r = _ipam(node_ns, cni_path, "ADD", conf, "bad1")
    err = json.loads(r.stdout)
    assert r.returncode == 1 and err["code"] == 7 and "'nope'" in err["msg"], err

    # etcd unreachable: "try again later".
    conf = {**_conf(server, "x"), "etcd_endpoints": f"http://127.0.0.1:{free_ports(1)[0]}"}
    r = _ipam(node_ns, cni_path, "ADD", conf, "bad2")
    err = json.loads(r.stdout)
    assert r.returncode == 1 and err["code"] == 11, err
    assert "\n" not in r.stderr.strip() and "Traceback" not in r.stderr


def test_version_lists_supported(node):
    node_ns, _server, cni_path = node
    r = _ipam(node_ns, cni_path, "VERSION", {"cniVersion": "0.4.0"}, "x")
    out = json.loads(r.stdout)
    assert r.returncode == 0 and out["cniVersion"] == "0.4.0"
    assert {"0.3.1", "0.4.0", "1.0.0"} <= set(out["supportedVersions"])


def test_bridge_without_single_block_is_refused_at_the_first_add(node, netns_factory):
    """The bridge keeps one IPv4 gateway (docs/testing.md, "CNI plugins"): podbgp-ipam's
    per-block gateways would break pod 62. Refused at the first ADD, naming podbgp-cni;
    nothing allocated."""
    node_ns, server, cni_path = node
    conf = _conf(server, "pbbr" + os.urandom(3).hex())
    del conf["ipam"]["bridge_single_block"]
    r = _cni(node_ns, cni_path, "ADD", conf, "first0", netns_factory("pbp"))
    err = json.loads(r.stdout)
    assert r.returncode != 0 and err["code"] == 7, err
    assert "podbgp-cni" in err["msg"] and "second" in err["msg"]
    assert server.etcdctl("get", "/calico/ipam/v2/", "--prefix", "--keys-only") == ""


def test_single_block_bridge_says_so_when_the_block_is_full(node, netns_factory):
    """With bridge_single_block a node holds one block: the ADD after the last free
    address fails with code 100 and says why and what to use (not the bridge's
    "already has an IP address" at the next block)."""
    node_ns, server, cni_path = node
    small = {"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
             "metadata": {"name": "small"}, "spec": {"cidr": "10.78.0.0/24", "blockSize": 29}}
    server.etcdctl("put", "/calico/resources/v3/projectcalico.org/ippools/small",
                   json.dumps(small))
    conf = _conf(server, "pbbr" + os.urandom(3).hex(), ipv4_pools=["small"])
    # A /29 under a bridge: network, gateway and broadcast reserved, 5 pods fit.
    for i in range(5):
        r = _cni(node_ns, cni_path, "ADD", conf, f"s{i}", netns_factory("pbp"))
        assert r.returncode == 0, r.stdout + r.stderr
    r = _cni(node_ns, cni_path, "ADD", conf, "s5", netns_factory("pbp"))
    err = json.loads(r.stdout)
    assert r.returncode != 0 and err["code"] == 100, err
    assert "bridge_single_block" in err["msg"] and "podbgp-cni" in err["msg"]
    blocks = server.etcdctl("get", "/calico/ipam/v2/assignment/", "--prefix",
                            "--keys-only").split()
    assert len(blocks) == 1
