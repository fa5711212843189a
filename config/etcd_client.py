"""One etcd client for podbgp: endpoint parsing and TLS on top of aetcd.

Owned by config/; used by the etcd datastore (daemon, bgpctl) and by ipam/
(the CNI plugin, bgpctl ipam). aetcd 1.0.0 only opens plaintext channels, so
``EtcdClient`` opens a secure one when given credentials.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import aetcd
import grpc
from aetcd import rpc


class EtcdClient(aetcd.Client):
    """aetcd.Client with TLS: aetcd 1.0.0 only opens insecure channels."""

    def __init__(self, host: str, port: int, credentials: grpc.ChannelCredentials | None,
                 **kw: Any) -> None:
        super().__init__(host=host, port=port, **kw)
        self._credentials = credentials

    async def connect(self) -> None:
        if self._connected.is_set():
            return
        target = f"{self._host}:{self._port}"
        opts = list(self._options.items())
        if self._credentials is not None:
            self.channel = rpc.secure_channel(target, self._credentials, options=opts)
        else:
            self.channel = rpc.insecure_channel(target, options=opts)
        self.kvstub = rpc.KVStub(self.channel)
        self.clusterstub = rpc.ClusterStub(self.channel)
        self.leasestub = rpc.LeaseStub(self.channel)
        self.maintenancestub = rpc.MaintenanceStub(self.channel)
        self.watchstub = rpc.WatchStub(self.channel)
        from aetcd import watcher as _watcher

        self._watcher = _watcher.Watcher(self.watchstub, timeout=self._timeout)
        self._connected.set()


def parse_endpoints(endpoints: str | Sequence[str]) -> list[tuple[str, int, bool]]:
    """``"http://a:2379,https://b:2379"`` -> [(host, port, tls)]; raises ValueError."""
    if isinstance(endpoints, str):
        endpoints = [e for e in endpoints.split(",")]
    out = []
    for raw in endpoints:
        ep = raw.strip()
        if not ep:
            continue
        if "://" not in ep:
            ep = "http://" + ep
        parts = urlsplit(ep)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"etcd endpoint {raw!r}: expected http(s)://HOST:PORT")
        try:
            port = parts.port or 2379
        except ValueError:
            raise ValueError(f"etcd endpoint {raw!r}: bad port") from None
        out.append((parts.hostname, port, parts.scheme == "https"))
    if not out:
        raise ValueError("no etcd endpoints given")
    return out


def read_credentials(ca: str | None, cert: str | None, key: str | None
                     ) -> grpc.ChannelCredentials:
    """TLS credentials from PEM files; OSError names the file that cannot be read."""

    def read(path: str | None, what: str) -> bytes | None:
        if not path:
            return None
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError as e:
            raise OSError(e.errno, f"etcd {what} {path}: {e.strerror}") from None

    return grpc.ssl_channel_credentials(
        root_certificates=read(ca, "CA file"), private_key=read(key, "key file"),
        certificate_chain=read(cert, "certificate file"))
