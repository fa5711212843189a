#!/usr/bin/env bash
# Builds podbgp's container image with nothing but Debian's archive and PyPI.
#
#   scripts/build-image.sh [--export FILE] [--force] [--rebuild-base] [--no-smoke]
#                          [--extra CONTAINERFILE=TAG ...]
#   eval "$(scripts/build-image.sh --env)"     # then podman/buildah use the same store
#
# 1. The base: Docker Hub's python:3.11-slim-bookworm cannot be pulled here, so
#    an image in its layout is made from Debian bookworm with mmdebstrap
#    (python3.11 + a venv at /usr/local, so python and pip are where the
#    official image has them; debuerreotype's slim apt/dpkg settings) and
#    imported as localhost/podbgp-base/python:3.11-slim-bookworm. Rebuilt only
#    when missing or when its recipe (below) changes.
# 2. podbgp:<version> from the project's Dockerfile, unchanged, with
#    --build-arg PYTHON_IMAGE=<that base>. --format docker keeps HEALTHCHECK
#    (OCI drops it); no --layers (buildah 1.28 served stale stages).
# 3. A smoke test: every console script of the package runs in the image,
#    with --network none and every capability dropped.
# 4. --export FILE: `podman save --format docker-archive` (keeps HEALTHCHECK),
#    loadable with `docker load` / `podman load`.
# 5. --extra CONTAINERFILE=TAG: an image built FROM podbgp's (build-arg
#    PODBGP_IMAGE), e.g. tests/image/systemd.Containerfile; reused while the
#    podbgp image and the file are unchanged.
#
# Host state: nothing outside $PODBGP_IMAGE_DIR (default .cache/image) is
# written. podman/buildah run with a private containers.conf, storage.conf
# and registries.conf from that directory; the build uses --network host and
# containers run with --network none, so podman never creates its bridge
# network, iptables chains or touches net.ipv4.ip_forward. Image writes
# (import, build, save) run in a private mount namespace where /var/lib is
# read-only, because containers/image in podman 4.3 would otherwise create
# /var/lib/containers/cache. The script checks all of this before and after
# and fails if anything changed.
#
# pip inside the build uses the host's pip configuration and CA bundle
# (bind-mounted read-only into RUN steps, never into the image), so a
# TLS-intercepting proxy or a local index that works for `make deps` works
# for the image too.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
IMAGE_DIR=${PODBGP_IMAGE_DIR:-$REPO/.cache/image}
SUITE=bookworm
MIRROR=${PODBGP_DEBIAN_MIRROR:-}            # empty: deb.debian.org + updates + security
BASE_REPO=localhost/podbgp-base/python
BASE_TAG=$BASE_REPO:3.11-slim-$SUITE
IMAGE_REPO=localhost/podbgp

die() { echo "build-image: $*" >&2; exit 1; }
log() { echo "build-image: $*" >&2; }

EXPORT=""
REBUILD_BASE=0
FORCE=0
SMOKE=1
PRINT_ENV=0
EXTRAS=()
while (($#)); do
  case $1 in
    --export) [[ $# -ge 2 ]] || die "--export needs a FILE"; EXPORT=$2; shift 2 ;;
    --export=*) EXPORT=${1#--export=}; shift ;;
    --rebuild-base) REBUILD_BASE=1; FORCE=1; shift ;;
    --force) FORCE=1; shift ;;
    --no-smoke) SMOKE=0; shift ;;
    --env) PRINT_ENV=1; shift ;;
    --extra) [[ $# -ge 2 && $2 == *=* ]] || die "--extra needs CONTAINERFILE=TAG"; EXTRAS+=("$2"); shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed 's/^# \{0,1\}//;/^set -euo/d'; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done

# The package's version, from setup.cfg's `version = attr: MODULE.__version__`
# (no module path hard-coded here).
VERSION=$(cd "$REPO" && python3 - <<'EOF'
import ast, configparser, pathlib
cfg = configparser.ConfigParser(); cfg.read("setup.cfg")
spec = cfg["metadata"]["version"].strip()
if not spec.startswith("attr:"):
    print(spec); raise SystemExit
module, _, attr = spec[5:].strip().rpartition(".")
path = pathlib.Path(*module.split("."))
path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
for node in ast.parse(path.read_text()).body:
    if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == attr for t in node.targets):
        print(ast.literal_eval(node.value)); break
else:
    raise SystemExit(f"no {attr} in {path}")
EOF
) || die "cannot read the package version from setup.cfg"
IMAGE_TAG=$IMAGE_REPO:$VERSION

CONF=$IMAGE_DIR/conf
export CONTAINERS_CONF=$CONF/containers.conf
export CONTAINERS_STORAGE_CONF=$CONF/storage.conf
export CONTAINERS_REGISTRIES_CONF=$CONF/registries.conf
export TMPDIR=$IMAGE_DIR/tmp

if ((PRINT_ENV)); then
  for v in CONTAINERS_CONF CONTAINERS_STORAGE_CONF CONTAINERS_REGISTRIES_CONF TMPDIR; do
    printf 'export %s=%q\n' "$v" "${!v}"
  done
  printf 'export PODBGP_IMAGE=%q PODBGP_BASE_IMAGE=%q\n' "$IMAGE_TAG" "$BASE_TAG"
  exit 0
fi

# ------------------------------------------------------------ preconditions
[[ $(id -u) -eq 0 ]] || die "needs root (podman/buildah store and mmdebstrap run as root here)"
missing=()
for tool in podman buildah mmdebstrap runc unshare; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
((${#missing[@]} == 0)) || die "missing ${missing[*]}: run \`make deps\` (scripts/install-deps.sh installs podman buildah mmdebstrap runc)"

mkdir -p "$CONF" "$IMAGE_DIR"/{storage,run,tmp,base,logs}
LOG=$IMAGE_DIR/logs/build.log
: >"$LOG"
exec 9>"$IMAGE_DIR/build.lock"
flock 9   # one build per store at a time (parallel `make test`/`make image`)

# ------------------------------------------------------- private podman config
# runc: crun 1.8.1 refuses this host's hybrid cgroups. Ulimits: podman asks
# for 1048576 open files and processes, more than root may raise here; use the
# hard limits this process has (nproc also capped at kernel.pid_max, which
# podman 4.3 applies to its own children).
nofile=$(ulimit -Hn); [[ $nofile == unlimited ]] && nofile=1048576
nproc=$(ulimit -Hu); [[ $nproc == unlimited ]] && nproc=1048576
pid_max=$(cat /proc/sys/kernel/pid_max)
((nproc > pid_max)) && nproc=$pid_max
write_if_changed() {  # FILE, content on stdin
  local new; new=$(cat)
  [[ -f $1 && $(cat "$1") == "$new" ]] || printf '%s\n' "$new" >"$1"
}
write_if_changed "$CONTAINERS_CONF" <<EOF
# Written by scripts/build-image.sh: podman/buildah for podbgp's image only.
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]
# No podman-managed network by default: build steps use --network host,
# containers a namespace the caller made (--network ns:/run/netns/NAME).
netns = "none"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$IMAGE_DIR/run/events.log"
tmp_dir = "$IMAGE_DIR/run/libpod"
static_dir = "$IMAGE_DIR/storage/libpod"
volume_path = "$IMAGE_DIR/storage/volumes"

[network]
network_backend = "cni"
network_config_dir = "$CONF/net.d"
default_network = "podbgp-unused"
EOF
write_if_changed "$CONTAINERS_STORAGE_CONF" <<EOF
# Written by scripts/build-image.sh.
[storage]
driver = "overlay"
graphroot = "$IMAGE_DIR/storage"
runroot = "$IMAGE_DIR/run/storage"
EOF
write_if_changed "$CONTAINERS_REGISTRIES_CONF" <<EOF
# Written by scripts/build-image.sh: no registry at all; every image is local.
unqualified-search-registries = []
EOF

# ------------------------------------------------------------- host state
host_state() {
  echo "ip_forward=$(cat /proc/sys/net/ipv4/ip_forward)"
  ip -o link show | awk -F': ' '{print $2}' | sed 's/@.*//' | grep -E '^(cni-podman|podman|veth)' | sort || true
  if command -v iptables-save >/dev/null; then
    iptables-save 2>/dev/null | grep -E '^(\*|:)' | awk '{print $1}' | sort || true
  fi
  if command -v nft >/dev/null; then nft list tables 2>/dev/null | sort || true; fi
  for d in /var/lib/containers /run/containers /run/libpod /var/lib/cni /run/cni; do
    [[ -e $d ]] && echo "exists $d"
  done
  ls /etc/cni/net.d 2>/dev/null | sed 's/^/cni-conf /' || true
  ls -d /sys/fs/cgroup/*/libpod_parent 2>/dev/null || true
}
# podman (cgroupfs manager) makes a libpod_parent cgroup per controller for
# its containers and leaves it behind, empty. Remove empty ones (rmdir of a
# cgroup that still has processes fails, so a running container keeps its).
remove_podman_cgroups() {
  local c
  for c in /sys/fs/cgroup/*/libpod_parent; do
    [[ -d $c ]] && find "$c" -depth -type d -exec rmdir {} \; 2>/dev/null
  done
  return 0
}
remove_podman_cgroups
BEFORE=$(host_state)
check_host_state() {
  local after
  remove_podman_cgroups
  after=$(host_state)
  if [[ $after != "$BEFORE" ]]; then
    diff <(echo "$BEFORE") <(echo "$after") >&2 || true
    die "host state changed during the build (see diff above)"
  fi
}

# podman/buildah commands that write images: /var/lib read-only in a private
# mount namespace (see the header).
isolated() {
  unshare --mount --propagation private -- \
    sh -c 'mount --bind -o ro /var/lib /var/lib && exec "$@"' sh "$@"
}

image_exists() { podman image exists "$1" 2>/dev/null; }
label_of() { podman image inspect --format "{{ index .Labels \"$2\" }}" "$1" 2>/dev/null || true; }

# -------------------------------------------------------------------- base
# The recipe; its hash is stored as a label so a changed recipe rebuilds.
BASE_PKGS=python3.11,python3.11-venv,ca-certificates,netbase,tzdata
# debuerreotype's "slim" settings (what Docker's debian:*-slim and hence
# python:*-slim carry): no docs/man/locales from later installs, no apt
# caches or .debs left behind, no translations; dpkg's force-unsafe-io
# (debuerreotype scripts/debuerreotype-minimizing-config, commit 027b65f,
# "docker-apt-speedup": no fsync per unpacked file, which also makes this
# bootstrap and every later `apt-get install` in an image build faster).
# Not copied: its /usr/sbin/policy-rc.d (mmdebstrap removes the one it uses
# while bootstrapping; nothing in podbgp's images starts a service on install).
DPKG_OPTS=(
  'force-unsafe-io'
  'path-exclude=/usr/share/man/*' 'path-exclude=/usr/share/groff/*'
  'path-exclude=/usr/share/info/*' 'path-exclude=/usr/share/locale/*'
  'path-exclude=/usr/share/lintian/*' 'path-exclude=/usr/share/linda/*'
  'path-exclude=/usr/share/doc/*' 'path-include=/usr/share/doc/*/copyright'
)
APT_OPTS=(
  'Acquire::Languages "none"' 'Acquire::GzipIndexes "true"'
  'Apt::AutoRemove::SuggestsImportant "false"'
  'Dir::Cache::pkgcache ""' 'Dir::Cache::srcpkgcache ""'
  'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; }'
  'APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; }'
)
CHANGES=(
  'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin'
  'ENV LANG=C.UTF-8'
  'CMD ["python3"]'
)
RECIPE=$(printf '%s\n' "$SUITE" "$MIRROR" "$BASE_PKGS" "${DPKG_OPTS[@]}" "${APT_OPTS[@]}" "${CHANGES[@]}" venv=/usr/local v1 | sha256sum | cut -c1-16)

build_base() {
  local tar=$IMAGE_DIR/base/base.tar start=$SECONDS mirror_url
  mirror_url=${MIRROR:-http://deb.debian.org/debian}
  curl -fsS -m 20 -o /dev/null "$mirror_url/dists/$SUITE/Release" \
    || die "cannot reach the Debian archive at $mirror_url (set PODBGP_DEBIAN_MIRROR to a reachable mirror)"
  local args=(--variant=apt --include="$BASE_PKGS"
              --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr
              --customize-hook='chroot "$1" python3.11 -m venv /usr/local'
              --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin "$1"/var/log/apt/* "$1"/var/log/dpkg.log "$1"/var/log/alternatives.log')
  local o
  for o in "${DPKG_OPTS[@]}"; do args+=(--dpkgopt="$o"); done
  for o in "${APT_OPTS[@]}"; do args+=(--aptopt="$o"); done
  log "base: mmdebstrap $SUITE ($BASE_PKGS)"
  rm -f "$tar"
  # shellcheck disable=SC2086
  mmdebstrap "${args[@]}" "$SUITE" "$tar" $MIRROR >>"$LOG" 2>&1 \
    || { tail -20 "$LOG" >&2; die "mmdebstrap failed (log: $LOG)"; }
  local changes=(--change "LABEL org.podbgp.base-recipe=$RECIPE")
  for o in "${CHANGES[@]}"; do changes+=(--change "$o"); done
  isolated podman import "${changes[@]}" "$tar" "$BASE_TAG" >>"$LOG" 2>&1 \
    || { tail -20 "$LOG" >&2; die "podman import failed (log: $LOG)"; }
  rm -f "$tar"
  log "base: $BASE_TAG built in $((SECONDS - start)) s"
}

T0=$SECONDS
if ((REBUILD_BASE)) || ! image_exists "$BASE_TAG" || [[ $(label_of "$BASE_TAG" org.podbgp.base-recipe) != "$RECIPE" ]]; then
  build_base
else
  log "base: $BASE_TAG cached (recipe $RECIPE)"
fi

# ------------------------------------------------------------------- image
# The host's pip settings and CA bundle, for the RUN steps only.
mounts=()
ca=${PIP_CERT:-${REQUESTS_CA_BUNDLE:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}}
[[ -f $ca ]] && mounts+=(-v "$ca:/etc/ssl/certs/ca-certificates.crt:ro")
if [[ -f /etc/pip.conf ]]; then
  mounts+=(-v /etc/pip.conf:/etc/pip.conf:ro)
  # Local find-links / file:// indexes named there, read-only.
  for p in $(grep -oE '(file://)?/[^ ]+' /etc/pip.conf | sed 's#^file://##' | sort -u); do
    d=$p; [[ -d $d ]] || d=$(dirname "$p")
    while [[ $d != / && ! -d $d ]]; do d=$(dirname "$d"); done
    [[ $d != / && $d != /etc* ]] && mounts+=(-v "$d:$d:ro")
  done
fi
# The build context's digest (scripts/image_context.py: every file
# .dockerignore lets in) plus the base's ID: an image built from exactly this
# is reused unless --force.
CONTEXT=$(python3 "$REPO/scripts/image_context.py" \
          "$(podman image inspect --format '{{.Id}}' "$BASE_TAG")" "$(<"$0")")
if ((!FORCE)) && image_exists "$IMAGE_TAG" \
   && [[ $(label_of "$IMAGE_TAG" org.podbgp.context) == "$CONTEXT" ]]; then
  log "image: $IMAGE_TAG is up to date (context $CONTEXT; --force rebuilds)"
  BUILD_S=0
else
start=$SECONDS
log "image: building $IMAGE_TAG from Dockerfile (base $BASE_TAG)"
(cd "$REPO" && isolated buildah bud --pull=never --format docker --network host \
   "${mounts[@]}" --build-arg "PYTHON_IMAGE=$BASE_TAG" \
   --label "org.opencontainers.image.version=$VERSION" \
   --label "org.opencontainers.image.revision=$(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo unknown)" \
   --label "org.podbgp.context=$CONTEXT" -t "$IMAGE_TAG" .) >>"$LOG" 2>&1 \
  || { tail -30 "$LOG" >&2; die "buildah bud failed (log: $LOG)"; }
BUILD_S=$((SECONDS - start))
# A rebuild leaves the previous image untagged: drop those (this store only).
podman image prune -f >>"$LOG" 2>&1 || true
fi

# ------------------------------------------------------------------- smoke
if ((SMOKE)); then
  hc=$(podman image inspect --format '{{json .HealthCheck}}' "$IMAGE_TAG" 2>/dev/null || true)
  [[ $hc == *podbgp-healthcheck* ]] || die "smoke: $IMAGE_TAG has no HEALTHCHECK (got: $hc)"
  # Every console script of the installed distribution starts without network
  # or capabilities: `--help` exits 0, and a CNI plugin (which ignores argv)
  # answers CNI_COMMAND=VERSION.
  out=$(podman run --rm --network none --no-healthcheck --cap-drop ALL --read-only --entrypoint python \
        "$IMAGE_TAG" -c '
import importlib.metadata as md, shutil, subprocess, sys
eps = [e.name for e in md.distribution("podbgp").entry_points if e.group == "console_scripts"]
bad = []
for name in eps:
    path = shutil.which(name)
    r = subprocess.run([path, "--help"], capture_output=True, text=True,
                       env={"PATH": "/usr/local/bin:/usr/bin:/bin", "CNI_COMMAND": "VERSION"}) if path else None
    if r is None or r.returncode != 0:
        why = r.stderr.strip().splitlines()[-1:] if r else "not on PATH"
        bad.append(f"{name}: {why}")
print(" ".join(eps))
sys.exit("; ".join(bad) if bad else 0)' 2>&1) || die "smoke: console scripts failed: $out"
  ver=$(podman run --rm --network none --no-healthcheck --cap-drop ALL "$IMAGE_TAG" --version 2>&1) \
    || die "smoke: bgpd --version failed: $ver"
  [[ $ver == *"$VERSION"* ]] || die "smoke: bgpd --version said '$ver', expected $VERSION"
  log "smoke: ok ($out; $ver)"
fi

for extra in "${EXTRAS[@]}"; do
  file=${extra%%=*} tag=${extra#*=}
  [[ -f $file ]] || die "--extra: no file $file"
  from=$(podman image inspect --format '{{.Id}}' "$IMAGE_TAG")
  key=$( (echo "$from"; cat "$file") | sha256sum | cut -c1-24)
  if ((!FORCE)) && image_exists "$tag" && [[ $(label_of "$tag" org.podbgp.context) == "$key" ]]; then
    log "extra: $tag is up to date"
    continue
  fi
  start=$SECONDS
  isolated buildah bud --pull=never --format docker --network host "${mounts[@]}" \
    --build-arg "PODBGP_IMAGE=$IMAGE_TAG" --label "org.podbgp.context=$key" -t "$tag" \
    -f "$file" "$(dirname "$file")" >>"$LOG" 2>&1 \
    || { tail -30 "$LOG" >&2; die "buildah bud of $file failed (log: $LOG)"; }
  podman image prune -f >>"$LOG" 2>&1 || true
  log "extra: $tag built from $file in $((SECONDS - start)) s"
done

if [[ -n $EXPORT ]]; then
  mkdir -p "$(dirname "$EXPORT")"
  rm -f "$EXPORT"
  isolated podman save --format docker-archive -o "$EXPORT" "$IMAGE_TAG" >>"$LOG" 2>&1 \
    || { tail -10 "$LOG" >&2; die "podman save failed (log: $LOG)"; }
  log "exported $EXPORT ($(du -h "$EXPORT" | cut -f1))"
fi

check_host_state
size=$(podman image inspect --format '{{.Size}}' "$IMAGE_TAG")
log "done: $IMAGE_TAG $((size / 1000000)) MB, image build ${BUILD_S} s, total $((SECONDS - T0)) s; store $IMAGE_DIR"
echo "$IMAGE_TAG"
