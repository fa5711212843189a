"""Connecting to etcd for IPAM (the CNI plugin, bgpctl ipam, tests).

Owned by ipam/. The client itself (TLS from Calico's ``etcd_ca_cert_file``/
``etcd_cert_file``/``etcd_key_file``, endpoint parsing) is config's
``EtcdClient``; this adds the settings with their environment fallbacks.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping

import aetcd

from config.etcd_client import EtcdClient, parse_endpoints, read_credentials

__all__ = ["CHECK_KEY", "DEFAULT_ENDPOINTS", "EtcdSettings", "connect", "parse_endpoints"]

DEFAULT_ENDPOINTS = "http://127.0.0.1:2379"
# Read to prove an endpoint answers (aetcd connects lazily); cni.warm reads it too.
CHECK_KEY = b"/calico/ipam/v2/config"


class EtcdSettings:
    """Endpoints and TLS files, with Calico's environment variables as fallback."""

    def __init__(self, endpoints: str | None = None, ca: str | None = None,
                 cert: str | None = None, key: str | None = None,
                 env: Mapping[str, str] = os.environ) -> None:
        self.endpoints = endpoints or env.get("ETCD_ENDPOINTS") or DEFAULT_ENDPOINTS
        self.ca = ca or env.get("ETCD_CA_CERT_FILE") or None
        self.cert = cert or env.get("ETCD_CERT_FILE") or None
        self.key = key or env.get("ETCD_KEY_FILE") or None


async def connect(settings: EtcdSettings, timeout: float = 10.0) -> aetcd.Client:
    """A connected client to the first endpoint that answers.

    Raises ValueError for bad settings, ConnectionError when no endpoint answers.
    """
    endpoints = parse_endpoints(settings.endpoints)
    creds = None
    if settings.ca or settings.cert or any(tls for _, _, tls in endpoints):
        try:
            creds = read_credentials(settings.ca, settings.cert, settings.key)
        except OSError as exc:
            raise ValueError(exc.strerror) from None
    errors = []
    for host, port, tls in endpoints:
        scheme = "https" if tls else "http"
        # A channel of its own (not gRPC's process-wide subchannel pool): in the CNI agent
        # a new client made right after etcd came back would otherwise share the old
        # channels' subchannel, still in its reconnect backoff, and fail for seconds.
        client = EtcdClient(host, port, creds, timeout=timeout,
                            options={"grpc.use_local_subchannel_pool": 1})
        try:
            # A cheap read proves the endpoint answers; aetcd connects lazily.
            await asyncio.wait_for(client.get(CHECK_KEY), timeout)
            return client
        except (TimeoutError, aetcd.exceptions.ClientError, OSError) as exc:
            errors.append(f"{scheme}://{host}:{port}: {exc or type(exc).__name__}")
            await client.close()
    raise ConnectionError("no etcd endpoint answered: " + "; ".join(errors))
