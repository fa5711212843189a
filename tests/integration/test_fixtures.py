"""The fixtures themselves: a real etcd answers, a namespace is isolated and removed."""

import subprocess

from tests.conftest import EtcdServer


def test_etcd_fixture_serves_reads_and_writes(etcd: EtcdServer) -> None:
    etcd.etcdctl("put", "/calico/x", "1")
    assert etcd.etcdctl("get", "/calico/x", "--print-value-only").strip() == "1"


def test_netns_fixture_is_isolated_and_removed(netns_factory) -> None:
    ns = netns_factory()
    links = subprocess.run(["ip", "-n", ns, "-o", "link"], capture_output=True, text=True).stdout
    assert [ln.split(":")[1].strip() for ln in links.splitlines()] == ["lo"]
    assert ns in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
