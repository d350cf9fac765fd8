#!/usr/bin/env bash
# The CPU test image that tests/host/test_containers.py runs `kit run` in, built without any registry:
#   1. kit-test/debian:bookworm: a Debian 12 minbase rootfs with Python 3.11 from debootstrap, `docker import`ed;
#   2. kit-test/kit-cpu-deps:<key>: tests/image/deps.sh run in a container of (1) and committed (torch CPU wheel,
#      env/requirements-dev.txt, DeepSpeed); <key> hashes its inputs, so it is rebuilt only when they change;
#   3. kit-test/kit-cpu:latest: tests/image/kit.sh on (2), committed (the kit from this working tree).
# Each step is one committed layer rather than a Dockerfile's many: the engine here stores images with the vfs
# driver, where every layer is a full copy of the file system (a 9-layer Dockerfile build of this image took
# 13 GB, and every rebuild left 5 GB of dangling layers). Superseded images are removed; the whole takes ~5.5 GB.
# Rerun after changing kit/ or cases/: only (3) is rebuilt. Needs root (debootstrap) and a Docker engine
# (.ci/services.sh). Writes KIT_TEST_KIT_IMAGE to $KIT_SERVICES_ENV.
set -euo pipefail
cd "$(dirname "$0")/.."
BASE="${KIT_TEST_BASE_IMAGE:-kit-test/debian:bookworm}"
IMAGE="${KIT_TEST_KIT_IMAGE:-kit-test/kit-cpu:latest}"
DEPS_REPO="${IMAGE%%:*}-deps"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
ENV_FILE="${KIT_SERVICES_ENV:-/tmp/kit-services.env}"
PYTHON="${PYTHON:-python3}"
LOG=/tmp/kit-test-image.log
say() { echo "test-image: $*" >&2; }
die() { echo "test-image: error: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (debootstrap needs it): sudo $0"
timeout 10 docker info >/dev/null 2>&1 || die "no Docker engine answers: run .ci/services.sh first"

work="$(mktemp -d)"
box=""
cleanup() { [ -z "$box" ] || docker rm -f "$box" >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT

if docker image inspect "$BASE" >/dev/null 2>&1; then
  say "base $BASE present"
else
  command -v debootstrap >/dev/null || {
    say "installing debootstrap"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null \
      || { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; }
  }
  say "debootstrap bookworm (minbase + python3) from $MIRROR"
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$work/rootfs" "$MIRROR" \
    >"$work/debootstrap.log" 2>&1 || { tail -n 20 "$work/debootstrap.log" >&2; die "debootstrap failed"; }
  rm -rf "$work/rootfs/var/cache/apt/archives/"*.deb "$work/rootfs/var/lib/apt/lists/"*
  tar -C "$work/rootfs" -c . | docker import \
    -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' -c 'CMD ["/bin/bash"]' - "$BASE" >/dev/null
  rm -rf "$work/rootfs"
  say "imported $BASE"
fi

# commit_step IMAGE TAG SCRIPT CONTEXT [--change ...]: run SCRIPT (bash) in a container of IMAGE with CONTEXT
# mounted read-only at /ctx and host networking (apt and pip), then commit the container as TAG.
commit_step() {
  local from="$1" tag="$2" script="$3" ctx="$4"; shift 4
  box="kit-test-image-$$"
  docker rm -f "$box" >/dev/null 2>&1 || true
  if ! docker run --name "$box" --network host -v "$ctx:/ctx:ro" -v "$PWD/$script:/ctx-step.sh:ro" \
        "$from" bash /ctx-step.sh >>"$LOG" 2>&1; then
    tail -n 30 "$LOG" >&2
    die "$script failed in a container of $from (log: $LOG)"
  fi
  docker commit "$@" "$box" "$tag" >/dev/null
  docker rm -f "$box" >/dev/null
  box=""
}

# The context: CA bundle, the torch CPU wheel for CPython 3.11, the dev requirements, the tracked + untracked sources.
ctx="$work/ctx"
mkdir -p "$ctx/wheels" "$ctx/src"
ca="${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}"
cp "$ca" "$ctx/ca.crt"
cp env/requirements-dev.txt "$ctx/requirements-dev.txt"
torch="$(grep -E '^TORCH +\?= ' Makefile | sed 's/.*?= *//')"
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 \
  --platform manylinux_2_28_x86_64 -d "$ctx/wheels" "$torch" || die "cannot get the $torch wheel for CPython 3.11"
git ls-files -co --exclude-standard -- pyproject.toml README.md kit cases env/requirements-dev.txt \
  | tar -T - -c | tar -C "$ctx/src" -x
: >"$LOG"

base_id="$(docker image inspect -f '{{.Id}}' "$BASE")"
deps_key="$({ echo "$base_id"; ls "$ctx/wheels"; cat tests/image/deps.sh env/requirements-dev.txt; } | sha256sum | cut -c1-16)"
DEPS="$DEPS_REPO:$deps_key"
if docker image inspect "$DEPS" >/dev/null 2>&1; then
  say "deps image $DEPS present"
else
  # Superseded images first: on vfs each costs a full copy of the file system.
  docker image rm -f "$IMAGE" >/dev/null 2>&1 || true
  for old in $(docker image ls --format '{{.Repository}}:{{.Tag}}' "$DEPS_REPO"); do
    docker image rm -f "$old" >/dev/null 2>&1 || true
  done
  say "building $DEPS: torch, requirements-dev, DeepSpeed (log: $LOG; ~6 min)"
  commit_step "$BASE" "$DEPS" tests/image/deps.sh "$ctx"
fi

deps_id="$(docker image inspect -f '{{.Id}}' "$DEPS")"
# The image carries the current stack's labels (env/stacks.toml; what `kit build --stack current` sets), so that
# kit.stacks.image_stack() reads it as that stack: it holds the current library set of env/requirements-dev.txt
# (CPU torch, no CUDA and no liger-kernel: Triton needs a GPU), so its "lock" sha256 is that file's sha256.
dev_sha="$(sha256sum env/requirements-dev.txt | cut -d' ' -f1)"
stack_labels="kit.build.stack=current kit.build.lock-sha256=$dev_sha kit.build.variant=cpu"
src_key="$({ echo "$deps_id"; echo "$stack_labels"; cat tests/image/kit.sh; (cd "$ctx/src" && find . -type f | LC_ALL=C sort | xargs sha256sum); } \
  | sha256sum | cut -c1-16)"
if [ "$(docker image inspect -f '{{index .Config.Labels "kit.test.key"}}' "$IMAGE" 2>/dev/null)" = "$src_key" ]; then
  say "$IMAGE is up to date with this working tree"
else
  old_id="$(docker image inspect -f '{{.Id}}' "$IMAGE" 2>/dev/null || true)"
  say "building $IMAGE: the kit from this working tree"
  version="$(sed -n 's/^__version__ = "\(.*\)"/\1/p' kit/__init__.py)"
  commit_step "$DEPS" "$IMAGE" tests/image/kit.sh "$ctx" \
    --change 'ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_CERT=/opt/kit/ca.crt PYTHONUNBUFFERED=1' \
    --change 'ENV VIRTUAL_ENV=/opt/kit/venv' \
    --change 'ENV PATH=/opt/kit/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change "LABEL org.opencontainers.image.title=\"kit (CPU test image)\" org.opencontainers.image.base.name=$BASE" \
    --change "LABEL kit.version=$version kit.cuda=cpu kit.test.key=$src_key $stack_labels" \
    --change 'WORKDIR /workspace' --change 'CMD ["/bin/bash"]'
  [ -z "$old_id" ] || docker image rm -f "$old_id" >/dev/null 2>&1 || true
fi
docker image prune -f >/dev/null   # dangling layers of anything superseded
say "built $IMAGE ($(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.1f GB", $1/1e9}'))"
if [ -f "$ENV_FILE" ]; then
  grep -v '^export KIT_TEST_KIT_IMAGE=' "$ENV_FILE" >"$ENV_FILE.tmp" || true
  echo "export KIT_TEST_KIT_IMAGE='$IMAGE'" >>"$ENV_FILE.tmp"
  mv "$ENV_FILE.tmp" "$ENV_FILE"
fi
