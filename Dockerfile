# syntax=docker/dockerfile:1
# podbgp container image: bgpd, bgpctl and the CNI plugins on a slim Python base.
#
#   scripts/build-image.sh        (make image: podman/buildah, base from Debian's archive)
#   docker build -t podbgp:0.1.0 .
#   docker run --rm --network host --cap-drop ALL --cap-add NET_ADMIN \
#     --cap-add NET_BIND_SERVICE -e ETCD_ENDPOINTS=http://127.0.0.1:2379 podbgp:0.1.0
#
# Pinned by tag (Python 3.11, Debian 12). Pin by digest too
# (python:3.11.13-slim-bookworm@sha256:...) where your registry policy
# requires it; the builder and runtime stages must use the same base.
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

# ---------------------------------------------------------------- builder
# Builds podbgp's wheel and collects wheels for every pinned dependency.
# Everything needed to build stays in this stage.
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY deploy/requirements.lock /src/deploy/requirements.lock
# Dependencies first: this layer is reused until the lock changes.
RUN pip wheel --wheel-dir /wheels --prefer-binary --no-deps \
      -r deploy/requirements.lock
# The whole build context: .dockerignore keeps it to the packaging files and
# the packages setup.cfg installs, so a new package needs no edit here.
COPY . /src/
RUN pip wheel --wheel-dir /wheels --no-deps . \
 && ls /wheels

# ---------------------------------------------------------------- forwarder
# podbgp-cni/podbgp-ipam's compiled forwarder to the node's agent (cni/forward.c,
# libc only). Linked statically: podbgp-install-cni puts it on the node, which
# may have any libc. The compiler stays in this stage.
FROM ${PYTHON_IMAGE} AS forwarder
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
COPY cni/forward.c /src/forward.c
RUN cc -Wall -Wextra -O2 -static -o /podbgp-cni-forward /src/forward.c

# ---------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="podbgp" \
      org.opencontainers.image.description="BGP routing daemon for container and Kubernetes pod networks" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PODBGP_HTTP_LISTEN=127.0.0.1:9179
# iproute2: `ip route show proto ...` when debugging inside the pod.
# tini: PID 1 that forwards SIGTERM to bgpd only (like systemd KillMode=mixed:
# bgpd stops its ExaBGP child itself, gracefully) and reaps orphans, e.g. an
# ExaBGP relay left behind when bgpd kills a stuck ExaBGP.
RUN apt-get update \
 && apt-get install -y --no-install-recommends iproute2 nftables tini \
 && rm -rf /var/lib/apt/lists/*
# Install only from the builder's wheels (no index, no compiler here), with
# the lock as constraints so nothing resolves to an untested version; then
# drop pip/setuptools/wheel, which the daemon never needs.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    --mount=type=bind,source=deploy/requirements.lock,target=/tmp/requirements.lock \
    pip install --no-index --find-links /wheels \
      -c /tmp/requirements.lock -r /tmp/requirements.lock podbgp \
 && pip check \
 && pip uninstall -y pip setuptools wheel
# Two stdlib-only helpers: the HEALTHCHECK probe, and the DaemonSet init
# container's installer of the CNI plugins onto the node (deploy/README.md),
COPY deploy/docker/healthcheck.py /usr/local/bin/podbgp-healthcheck
COPY deploy/docker/install-cni.py /usr/local/bin/podbgp-install-cni
# The forwarder podbgp-install-cni installs as podbgp-cni and podbgp-ipam.
COPY --from=forwarder /podbgp-cni-forward /usr/local/lib/podbgp/podbgp-cni-forward
RUN chmod 0755 /usr/local/bin/podbgp-healthcheck /usr/local/bin/podbgp-install-cni
# Root, on purpose and visibly: bgpd needs CAP_NET_ADMIN (routes over
# rtnetlink) and ExaBGP CAP_NET_BIND_SERVICE (port 179). Container runtimes
# give capabilities to a non-root user only as file capabilities or ambient
# capabilities, which Kubernetes cannot set; run with --cap-drop ALL plus
# those two (the DaemonSet does) so root holds nothing else.
USER 0:0
WORKDIR /var/lib/podbgp
# 179: BGP (with --network host this is the node's port). 9179: HTTP.
EXPOSE 179/tcp 9179/tcp
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["/usr/local/bin/python", "/usr/local/bin/podbgp-healthcheck"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/tini", "--", "bgpd"]
