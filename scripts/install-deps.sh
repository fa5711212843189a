#!/usr/bin/env bash
# Installs what podbgp's demo, tests and benchmarks need on a fresh Debian
# machine (run as root): Debian packages, BIRD 1.6 unpacked beside BIRD 2, and
# a virtualenv with podbgp installed in editable mode. Idempotent and quick
# when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PKGS=(etcd-server etcd-client bird2 frr gobgpd containernetworking-plugins iproute2 nftables curl procps psmisc python3-venv systemd
      # The overlay/NAT tests, demo and bench: captures (tcpdump), throughput (iperf3).
      tcpdump iperf3
      # The container image (scripts/build-image.sh, tests/image): runc, not
      # crun (crun 1.8.1 refuses this host's hybrid cgroups); openssl for the
      # tests' throwaway etcd CA.
      podman buildah mmdebstrap runc openssl
      # bench/policy.py and its smoke test: pod-to-pod throughput, and the
      # connection rate (wrk, a new TCP connection per request, against nginx run
      # by the bench itself in a pod namespace; policy-rc.d below keeps the
      # package from starting nginx's own service).
      iperf3 wrk nginx
      # The CNI plugins' compiled forwarder (cni/forward.c, built below): gcc and
      # libc's headers (a Recommends of gcc, which --no-install-recommends skips).
      gcc libc6-dev)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "install-deps: need root to install: ${missing[*]}" >&2; exit 1
  fi
  echo "install-deps: apt-get install ${missing[*]}"
  apt-get update -qq
  # policy-rc.d keeps package scripts from starting etcd/frr services on a
  # machine that has an init system: tests start their own on free ports.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  rm -f /usr/sbin/policy-rc.d
fi

# BIRD 1.6 (what Calico ships) conflicts with bird2 in apt: unpack it beside.
BIRD1_DIR=${BIRD1_DIR:-.cache/bird1}
if [[ ! -x $BIRD1_DIR/usr/sbin/bird ]]; then
  mkdir -p "$BIRD1_DIR"
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get download -qq bird >/dev/null 2>&1) || { apt-get update -qq && (cd "$tmp" && apt-get download -qq bird); }
  dpkg -x "$tmp"/bird_*.deb "$BIRD1_DIR"
  rm -rf "$tmp"
fi

PY=${PYTHON:-python3}
if [[ ! -x $VENV/bin/python ]]; then
  "$PY" -m venv "$VENV"
fi
stamp=$VENV/.podbgp-installed
if [[ ! -f $stamp || setup.cfg -nt $stamp || pyproject.toml -nt $stamp \
      || deploy/requirements.lock -nt $stamp ]]; then
  "$VENV/bin/pip" install -q --upgrade pip >/dev/null
  # The runtime dependencies are installed at exactly the versions the container
  # image ships (deploy/requirements.lock), so tests run what users run.
  "$VENV/bin/pip" install -q -c deploy/requirements.lock -e '.[test,bench]'
  touch "$stamp"
fi

# podbgp-cni/podbgp-ipam as a compiled forwarder to the node's agent (cni/forward.c;
# the lab and `make demo` use it when built). Rebuilt when the source changed.
"$VENV/bin/python" -m cni.forward --build --if-stale --if-cc >/dev/null
