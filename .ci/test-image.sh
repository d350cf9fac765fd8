#!/usr/bin/env bash
# The CPU test image that tests/host/test_containers.py runs `kit run` in, built without any registry:
#   1. kit-test/debian:bookworm: a Debian 12 minbase rootfs with Python 3.11 from debootstrap, `docker import`ed;
#   2. kit-test/kit-cpu:latest: tests/image/Dockerfile on it (torch CPU wheel, env/requirements-dev.txt,
#      DeepSpeed, the kit from this working tree).
# Rerun after changing kit/ or cases/: only the last layer is rebuilt. Needs root (debootstrap) and a Docker
# engine (.ci/services.sh). Writes KIT_TEST_KIT_IMAGE to $KIT_SERVICES_ENV.
set -euo pipefail
cd "$(dirname "$0")/.."
BASE="${KIT_TEST_BASE_IMAGE:-kit-test/debian:bookworm}"
IMAGE="${KIT_TEST_KIT_IMAGE:-kit-test/kit-cpu:latest}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
ENV_FILE="${KIT_SERVICES_ENV:-/tmp/kit-services.env}"
PYTHON="${PYTHON:-python3}"
say() { echo "test-image: $*" >&2; }
die() { echo "test-image: error: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (debootstrap needs it): sudo $0"
timeout 10 docker info >/dev/null 2>&1 || die "no Docker engine answers: run .ci/services.sh first"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

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

# The build context: CA bundle, the torch CPU wheel for CPython 3.11, and the tracked + untracked sources.
ctx="$work/ctx"
mkdir -p "$ctx/wheels" "$ctx/src"
ca="${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}"
cp "$ca" "$ctx/ca.crt"
torch="$(grep -E '^TORCH +\?= ' Makefile | sed 's/.*?= *//')"
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 \
  --platform manylinux_2_28_x86_64 -d "$ctx/wheels" "$torch" || die "cannot get the $torch wheel for CPython 3.11"
git ls-files -co --exclude-standard -- pyproject.toml README.md kit cases env/requirements-dev.txt \
  | tar -T - -c | tar -C "$ctx/src" -x
say "building $IMAGE (log: /tmp/kit-test-image.log)"
docker build --network host -f tests/image/Dockerfile -t "$IMAGE" \
  --build-arg BASE_IMAGE="$BASE" --build-arg KIT_VERSION="$(sed -n 's/^__version__ = "\(.*\)"/\1/p' kit/__init__.py)" \
  "$ctx" >/tmp/kit-test-image.log 2>&1 || { tail -n 30 /tmp/kit-test-image.log >&2; die "docker build failed"; }
say "built $IMAGE"
if [ -f "$ENV_FILE" ]; then
  grep -v '^export KIT_TEST_KIT_IMAGE=' "$ENV_FILE" >"$ENV_FILE.tmp" || true
  echo "export KIT_TEST_KIT_IMAGE='$IMAGE'" >>"$ENV_FILE.tmp"
  mv "$ENV_FILE.tmp" "$ENV_FILE"
fi
