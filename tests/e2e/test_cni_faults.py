"""podbgp-cni under bad input and failures: error object, exit code, nothing left behind.

One lab node (its namespace, etcd on the lab segment, no bgpd) and the
plugin run in-process (no agent), as a runtime executes it. After each
failed ADD the node must hold no pod interface and no host route, etcd no
IPAM handle and no WorkloadEndpoint: SPEC.md section 4 ("If, on ADD, a
delegated plugin fails, the upper plugin should execute again with DEL") and
the issue's "a failed ADD rolls back veth, routes, address and endpoint".
DEL is best effort and succeeds for what is already gone (SPEC.md "DEL").
"""

from __future__ import annotations

import json

import pytest

from tests.e2e.conftest import _lab_module, pool_yaml

pytestmark = [pytest.mark.root, pytest.mark.etcd]


@pytest.fixture(scope="module")
def lab():
    harness = _lab_module()
    lab = harness.Lab(nodes=1, cni_agent=False,
                      ipam_options={"empty_block_release_seconds": 0})
    with lab:
        lab.apply(pool_yaml())
        yield lab


def etcdctl(lab, *args: str) -> str:
    from lab.harness import run

    return run("etcdctl", "--endpoints", "http://127.0.0.1:2379", *args, ns=lab.etcd_ns).stdout


def left_behind(lab) -> dict:
    from lab.harness import run

    node = lab.nodes["node1"]
    links = [x["ifname"] for x in json.loads(run("ip", "-j", "link", ns=node.ns).stdout)
             if x["ifname"].startswith("cali")]
    return {
        "links": links,
        "routes": [r["dst"] for r in lab.routes("node1", "boot")],
        "handles": etcdctl(lab, "get", "--prefix", "/calico/ipam/v2/handle/", "--keys-only")
        .split(),
        "weps": etcdctl(lab, "get", "--prefix",
                        "/calico/resources/v3/projectcalico.org/workloadendpoints/",
                        "--keys-only").split(),
    }


NOTHING = {"links": [], "routes": [], "handles": [], "weps": []}


def add(lab, pod_ns: str | None, cid: str, conf: dict | None = None, env: dict | None = None,
        command: str = "ADD"):
    node = lab.nodes["node1"]
    e = lab.cni_env(node, command, pod_ns, cid, pod_ns or "ghost")
    e.update(env or {})
    r = lab.cni_call(node, command, pod_ns, cid, pod_ns or "ghost",
                     conf=conf or lab.cni_conf(node), env=e)
    out = json.loads(r.stdout) if r.stdout.strip() else {}
    return r, out


def assert_error(r, out, code: int, words: str) -> None:
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert out.get("code") == code, out
    assert words in out["msg"], out
    assert set(out) <= {"cniVersion", "code", "msg", "details"}
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("podbgp-cni: ") and "Traceback" not in r.stderr


def test_bad_netns_is_refused_before_anything_is_made(lab):
    r, out = add(lab, None, "badns", env={"CNI_NETNS": "/var/run/netns/pbc-missing-ns"})
    assert_error(r, out, 4, "CNI_NETNS")
    assert left_behind(lab) == NOTHING


def test_missing_ipam_plugin(lab):
    pod_ns = lab._add_ns(f"{lab.nodes['node1'].ns}noipam")
    conf = lab.cni_conf(lab.nodes["node1"])
    conf["ipam"] = {"type": "no-such-ipam-plugin"}
    r, out = add(lab, pod_ns, "noipam", conf=conf)
    assert_error(r, out, 103, "'no-such-ipam-plugin' not found in CNI_PATH")
    assert left_behind(lab) == NOTHING


def test_ipam_failure_code_is_passed_on(lab):
    pod_ns = lab._add_ns(f"{lab.nodes['node1'].ns}nopool")
    conf = lab.cni_conf(lab.nodes["node1"])
    conf["ipam"] = {**conf["ipam"], "ipv4_pools": ["no-such-pool"]}
    r, out = add(lab, pod_ns, "nopool", conf=conf)
    assert_error(r, out, 7, "'no-such-pool'")
    assert left_behind(lab) == NOTHING


def test_dataplane_failure_after_ipam_rolls_ipam_back(lab):
    """An interface named eth0 already in the pod (SPEC: the plugin MUST return an error):
    found only after IPAM assigned the address, which is then released."""
    from lab.harness import run

    pod_ns = lab._add_ns(f"{lab.nodes['node1'].ns}taken")
    run("ip", "-n", pod_ns, "link", "add", "eth0", "type", "veth", "peer", "name", "x0")
    r, out = add(lab, pod_ns, "taken")
    assert_error(r, out, 102, "already exists in the container")
    assert left_behind(lab) == NOTHING
    blocks = json.loads(etcdctl(lab, "get", "--prefix", "/calico/ipam/v2/assignment/",
                                "-w", "json")).get("kvs") or []
    assert blocks == []  # released, and (grace 0) the emptied block with it


def test_etcd_unreachable_add_is_try_again_and_status_not_available(lab):
    pod_ns = lab._add_ns(f"{lab.nodes['node1'].ns}noetcd")
    lab.stop_etcd()
    try:
        r, out = add(lab, pod_ns, "noetcd")
        assert_error(r, out, 11, "etcd is unreachable")
        conf = {**lab.cni_conf(lab.nodes["node1"]), "cniVersion": "1.1.0"}
        r, out = add(lab, None, "st", conf=conf, command="STATUS")
        assert_error(r, out, 50, "etcd is unreachable")
    finally:
        lab.start_etcd()
    from lab.harness import run

    assert run("ip", "-n", pod_ns, "link", "show", "eth0", check=False).returncode != 0
    assert left_behind(lab) == NOTHING
    conf = {**lab.cni_conf(lab.nodes["node1"]), "cniVersion": "1.1.0"}
    r, out = add(lab, None, "st", conf=conf, command="STATUS")
    assert r.returncode == 0 and r.stdout == "", r.stdout + r.stderr


def test_del_of_unknown_container_succeeds_also_twice(lab):
    for _ in range(2):
        r, out = add(lab, None, "neverseen", command="DEL")
        assert r.returncode == 0 and out == {}, r.stdout + r.stderr
    pod_ns = lab._add_ns(f"{lab.nodes['node1'].ns}gone")
    r, out = add(lab, pod_ns, "gone", command="DEL")
    assert r.returncode == 0, r.stdout + r.stderr


def test_add_retry_check_and_del(lab):
    """A retried ADD returns the same result and leaks nothing; CHECK passes, then names
    what is broken; DEL cleans up and may be repeated."""
    from lab.harness import run

    p = lab.add_pod("node1", "chk", labels={"app": "x"})
    conf = lab.cni_conf(lab.nodes["node1"], {"app": "x"})
    r, out = add(lab, p.ns, p.container_id, conf=conf)
    assert r.returncode == 0 and out == p.result
    state = left_behind(lab)
    assert len(state["links"]) == len(state["routes"]) == len(state["handles"]) == 1
    assert len(state["weps"]) == 1
    check = {**conf, "prevResult": p.result}
    r, out = add(lab, p.ns, p.container_id, conf=check, command="CHECK")
    assert r.returncode == 0 and r.stdout == "", r.stdout + r.stderr
    run("ip", "-n", lab.nodes["node1"].ns, "route", "del", f"{p.ip}/32")
    r, out = add(lab, p.ns, p.container_id, conf=check, command="CHECK")
    assert_error(r, out, 101, f"host route {p.ip}/32")
    lab.del_pod("node1", "chk")
    assert left_behind(lab) == NOTHING
    r, out = add(lab, p.ns, p.container_id, command="DEL")
    assert r.returncode == 0


def test_new_sandbox_of_a_pod_survives_the_old_ones_late_del(lab):
    """Kubelet may start a pod's new sandbox before the old one's DEL arrives: same pod
    name, so the same WorkloadEndpoint and host interface name. The new ADD replaces the
    old interface; the old container's DEL then removes only what is still its own (its
    IPAM handle), not the new endpoint (Calico's containerID rule in k8s.go)."""
    node = lab.nodes["node1"]
    old_ns, new_ns = lab._add_ns(f"{node.ns}sb1"), lab._add_ns(f"{node.ns}sb2")
    conf = lab.cni_conf(node)
    pod = "web-0"
    for ns, cid in ((old_ns, "sandbox1"), (new_ns, "sandbox2")):
        r = lab.cni_call(node, "ADD", ns, cid, pod, conf=conf)
        assert r.returncode == 0, r.stdout + r.stderr
    new_ip = json.loads(r.stdout)["ips"][0]["address"].split("/")[0]
    r = lab.cni_call(node, "DEL", old_ns, "sandbox1", pod, conf=conf)
    assert r.returncode == 0, r.stdout + r.stderr
    state = left_behind(lab)
    assert state["routes"] == [new_ip] and len(state["links"]) == 1
    assert state["handles"] == ["/calico/ipam/v2/handle/podnet.sandbox2"]
    wep = json.loads(etcdctl(lab, "get", state["weps"][0], "--print-value-only"))
    assert wep["spec"]["containerID"] == "sandbox2"
    r = lab.cni_call(node, "DEL", new_ns, "sandbox2", pod, conf=conf)
    assert r.returncode == 0
    assert left_behind(lab) == NOTHING


def test_gc_removes_what_no_valid_attachment_holds(lab):
    """CNI 1.1.0 GC (SPEC.md "GC"): endpoints and IPAM handles of attachments that are not
    in cni.dev/valid-attachments go (the plugin may assume their namespaces are gone);
    the valid ones stay; GC is forwarded to the IPAM plugin."""
    from lab.harness import _del_ns

    node = lab.nodes["node1"]
    keep = lab.add_pod("node1", "gckeep")
    gone = lab.add_pod("node1", "gcgone")
    _del_ns(gone.ns)  # the runtime lost the sandbox without a DEL
    conf = {**lab.cni_conf(node), "cniVersion": "1.1.0",
            "cni.dev/valid-attachments": [{"containerID": keep.container_id,
                                           "ifname": "eth0"}]}
    env = {**lab.cni_env(node, "GC", None, "", ""), "CNI_CONTAINERID": ""}
    r = lab.cni_call(node, "GC", None, "", "", conf=conf, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    state = left_behind(lab)
    assert state["handles"] == [f"/calico/ipam/v2/handle/podnet.{keep.container_id}"]
    assert [k.rsplit("/", 1)[1] for k in state["weps"]] == [f"node1-k8s-{keep.ns}-eth0"]
    assert state["routes"] == [keep.ip]
    node.pods.pop("gcgone")
    lab.namespaces.remove(gone.ns)
    lab.del_pod("node1", "gckeep")
    assert left_behind(lab) == NOTHING
    bad = {**conf, "cni.dev/valid-attachments": "all"}
    r = lab.cni_call(node, "GC", None, "", "", conf=bad, env=env)
    assert r.returncode == 1 and json.loads(r.stdout)["code"] == 7
