"""EtcdDatastore over TLS with client certificates (a throwaway CA made with openssl)."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from config.datastore import DatastoreUnavailable
from config.etcd_store import EtcdDatastore
from config.keys import resource_key
from config.parse import parse_resource
from tests.conftest import EtcdServer, free_ports, require_binary

pytestmark = pytest.mark.etcd


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(d: Path, ips: tuple[str, ...] = ("127.0.0.1",)) -> None:
    """A throwaway CA, a server certificate for ``ips``, a client certificate."""
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca",
            "-keyout", "ca.key", "-out", "ca.crt", cwd=d)
    (d / "san.ext").write_text("subjectAltName=" + ",".join(f"IP:{ip}" for ip in ips) + "\n")
    for name in ("server", "client"):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                "-CAcreateserial", "-days", "1", "-extfile", "san.ext", "-out", f"{name}.crt",
                cwd=d)


@dataclass
class TLSEtcd(EtcdServer):
    pki: Path | None = None

    @property
    def endpoint(self) -> str:
        return f"https://{self.host}:{self.client_port}"

    def _cmd(self) -> list[str]:
        p = self.pki
        return [*super()._cmd(), "--cert-file", str(p / "server.crt"),
                "--key-file", str(p / "server.key"), "--trusted-ca-file", str(p / "ca.crt"),
                "--client-cert-auth"]

    def _healthy(self) -> bool:
        p = self.pki
        r = subprocess.run(["curl", "-s", "-m", "1", "--cacert", str(p / "ca.crt"),
                            "--cert", str(p / "client.crt"), "--key", str(p / "client.key"),
                            f"{self.endpoint}/health"], capture_output=True, text=True)
        return '"health":"true"' in r.stdout


@pytest.fixture
def tls_etcd(tmp_path):
    require_binary("etcd")
    require_binary("openssl")
    pki = tmp_path / "pki"
    pki.mkdir()
    make_pki(pki)
    client, peer = free_ports(2)
    server = TLSEtcd(tmp_path / "etcd-data", client, peer, pki=pki)
    server.start()
    try:
        yield server
    finally:
        server.stop(sig_kill=True)


async def test_tls_with_client_certificate(tls_etcd):
    p = tls_etcd.pki
    store = EtcdDatastore(tls_etcd.endpoint, ca=str(p / "ca.crt"), cert=str(p / "client.crt"),
                          key=str(p / "client.key"))
    try:
        pool = parse_resource({"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
                               "metadata": {"name": "p1"}, "spec": {"cidr": "10.1.0.0/16"}})
        await store.create(pool)
        await store.start()
        assert await store.wait_loaded(10)
        assert set(store.snapshot.ippools) == {"p1"}
        assert store.connected
    finally:
        await store.close()
    raw = subprocess.run(
        ["etcdctl", f"--endpoints={tls_etcd.endpoint}", f"--cacert={p / 'ca.crt'}",
         f"--cert={p / 'client.crt'}", f"--key={p / 'client.key'}", "get",
         "--print-value-only", resource_key("IPPool", "p1")],
        capture_output=True, text=True, check=True, env={"ETCDCTL_API": "3"}).stdout
    assert json.loads(raw)["spec"]["cidr"] == "10.1.0.0/16"


async def test_tls_without_client_certificate_is_refused(tls_etcd):
    store = EtcdDatastore(tls_etcd.endpoint, ca=str(tls_etcd.pki / "ca.crt"))
    try:
        with pytest.raises(DatastoreUnavailable, match="cannot reach etcd"):
            await store.list("ippools")
    finally:
        await store.close()
