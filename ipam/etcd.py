"""Connecting to etcd for IPAM (the CNI plugin, bgpctl ipam, tests).

Owned by ipam/. aetcd's Client only opens plaintext channels; etcd with TLS
(Calico's ``etcd_ca_cert_file``/``etcd_cert_file``/``etcd_key_file``) needs a
secure gRPC channel, so ``TLSClient`` overrides the one method that opens it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from urllib.parse import urlsplit

import aetcd
import grpc

__all__ = ["DEFAULT_ENDPOINTS", "EtcdSettings", "TLSClient", "connect", "parse_endpoints"]

DEFAULT_ENDPOINTS = "http://127.0.0.1:2379"


class EtcdSettings:
    """Endpoints and TLS files, with Calico's environment variables as fallback."""

    def __init__(self, endpoints: str | None = None, ca: str | None = None,
                 cert: str | None = None, key: str | None = None,
                 env: Mapping[str, str] = os.environ) -> None:
        self.endpoints = endpoints or env.get("ETCD_ENDPOINTS") or DEFAULT_ENDPOINTS
        self.ca = ca or env.get("ETCD_CA_CERT_FILE") or None
        self.cert = cert or env.get("ETCD_CERT_FILE") or None
        self.key = key or env.get("ETCD_KEY_FILE") or None


def parse_endpoints(text: str) -> list[tuple[str, str, int]]:
    """``http://a:2379,https://b:2379`` -> [(scheme, host, port)]; ValueError names the bad one."""
    out = []
    for item in (p.strip() for p in text.split(",")):
        if not item:
            continue
        url = urlsplit(item if "://" in item else f"http://{item}")
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"etcd endpoint {item!r}: expected http(s)://HOST:PORT")
        try:
            port = url.port or 2379
        except ValueError:
            raise ValueError(f"etcd endpoint {item!r}: bad port") from None
        out.append((url.scheme, url.hostname, port))
    if not out:
        raise ValueError(f"etcd endpoints {text!r}: no endpoint given")
    return out


class TLSClient(aetcd.Client):
    """aetcd.Client over a TLS channel (client certificate optional)."""

    def __init__(self, host: str, port: int, credentials: grpc.ChannelCredentials,
                 **kwargs) -> None:
        super().__init__(host=host, port=port, **kwargs)
        self._credentials = credentials

    async def connect(self) -> None:
        if self._connected.is_set():
            return
        orig = aetcd.rpc.insecure_channel

        def secure(target, options=None):
            return aetcd.rpc.secure_channel(target, self._credentials, options=options)

        # aetcd builds its stubs right after opening the channel; swapping the
        # factory for the duration of connect() reuses all of that unchanged.
        aetcd.rpc.insecure_channel = secure
        try:
            await super().connect()
        finally:
            aetcd.rpc.insecure_channel = orig


def _read(path: str | None, what: str) -> bytes | None:
    if not path:
        return None
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise ValueError(f"{what} {path!r}: {exc.strerror}") from None


async def connect(settings: EtcdSettings, timeout: float = 10.0) -> aetcd.Client:
    """A connected client to the first endpoint that answers.

    Raises ValueError for bad settings, ConnectionError when no endpoint answers.
    """
    endpoints = parse_endpoints(settings.endpoints)
    creds = None
    if settings.ca or settings.cert or any(s == "https" for s, _, _ in endpoints):
        creds = grpc.ssl_channel_credentials(
            root_certificates=_read(settings.ca, "etcd CA file"),
            private_key=_read(settings.key, "etcd key file"),
            certificate_chain=_read(settings.cert, "etcd certificate file"),
        )
    errors = []
    for scheme, host, port in endpoints:
        client: aetcd.Client
        if creds is not None:
            client = TLSClient(host, port, creds, timeout=timeout)
        else:
            client = aetcd.Client(host=host, port=port, timeout=timeout)
        try:
            # A cheap read proves the endpoint answers; aetcd connects lazily.
            await asyncio.wait_for(client.get(b"/calico/ipam/v2/config"), timeout)
            return client
        except (TimeoutError, aetcd.exceptions.ClientError, OSError) as exc:
            errors.append(f"{scheme}://{host}:{port}: {exc or type(exc).__name__}")
            await client.close()
    raise ConnectionError("no etcd endpoint answered: " + "; ".join(errors))
