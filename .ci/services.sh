#!/usr/bin/env bash
# The real services that tests/host/test_docker_checks.py and test_remote_checks.py run against: a Docker
# engine, a tiny local test image, and an sshd on loopback with host-key checking kept ON.
# Idempotent (a rerun reuses what answers), for CI and for developers; run it as root:
#
#   sudo .ci/services.sh && . /tmp/kit-services.env && make test
#
# - apt-get installs only what is missing (docker.io, openssh-server, openssh-client, busybox-static, chromium).
# - dockerd starts in the background when no engine answers (log: /tmp/dockerd.log): with the overlay2 storage
#   driver where the kernel mounts overlayfs (a container then starts in a second instead of copying the 2.3 GB test
#   image), else with vfs. KIT_DOCKER_STORAGE=vfs forces vfs.
# - kit-test/busybox:latest is built with `docker import` from /bin/busybox and a few applet links
#   (no registry is needed: none is reachable on CI).
# - sshd listens on 127.0.0.1 only, on a spare port from 2222, with its own host key and config in
#   $KIT_SERVICES_DIR (the system's sshd config is not touched); root may log in with one dedicated key only.
#   known_hosts is written from the host key itself, then checked against what the server presents.
# - The variables the tests need are printed and written to $KIT_SERVICES_ENV (/tmp/kit-services.env).
set -euo pipefail

DIR="${KIT_SERVICES_DIR:-/var/lib/kit-services}"   # not under /tmp: sshd's StrictModes refuses world-writable parents
ENV_FILE="${KIT_SERVICES_ENV:-/tmp/kit-services.env}"
IMAGE="${KIT_TEST_DOCKER_IMAGE:-kit-test/busybox:latest}"
PORT="${KIT_SSH_PORT:-2222}"
DOCKER_LOG=/tmp/dockerd.log

say() { echo "services: $*" >&2; }
die() { echo "services: error: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (it installs packages and starts dockerd and sshd): sudo $0"

# --- packages: one apt-get update, only when something is missing ----------------------------------------
missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
[ -x /usr/sbin/sshd ] || missing+=(openssh-server)
{ command -v ssh >/dev/null && command -v ssh-keygen >/dev/null && command -v ssh-keyscan >/dev/null; } \
  || missing+=(openssh-client)
dpkg -s busybox-static >/dev/null 2>&1 || [ -x /bin/busybox ] || missing+=(busybox-static)
command -v docker-compose >/dev/null || missing+=(docker-compose)   # validates docker-compose.yml in tests
[ -x /usr/bin/chromium ] || missing+=(chromium)   # opens kit compare's html page in tests/host/test_compare.py
command -v munged >/dev/null || missing+=(munge)   # the Slurm test cluster of .ci/slurm.sh
command -v slurmctld >/dev/null || missing+=(slurmctld)
command -v slurmd >/dev/null || missing+=(slurmd)
command -v sbatch >/dev/null || missing+=(slurm-client)
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- Docker engine ---------------------------------------------------------------------------------------
engine_up() { timeout 10 docker info >/dev/null 2>&1; }
if engine_up; then
  say "docker engine answers; reusing it"
else
  if [ -f /var/run/docker.pid ] && ! kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; then
    rm -f /var/run/docker.pid   # a stale pid file from a dead dockerd stops a new one from starting
  fi
  start_dockerd() {
    say "starting dockerd --storage-driver=$1 (log: $DOCKER_LOG)"
    nohup dockerd --storage-driver="$1" >"$DOCKER_LOG" 2>&1 &
    for _ in $(seq 60); do engine_up && return 0; sleep 1; done
    return 1
  }
  overlay_mounts() {  # the kernel mounts an overlayfs on this file system: overlay2 works here
    local d; d="$(mktemp -d)"; mkdir -p "$d/l" "$d/u" "$d/w" "$d/m"
    if mount -t overlay overlay -o "lowerdir=$d/l,upperdir=$d/u,workdir=$d/w" "$d/m" 2>/dev/null; then
      umount "$d/m"; rm -rf "$d"; return 0
    fi
    rm -rf "$d"; return 1
  }
  driver="${KIT_DOCKER_STORAGE:-overlay2}"
  if [ "$driver" = overlay2 ] && ! overlay_mounts; then
    say "this kernel or file system mounts no overlayfs: vfs instead of overlay2"; driver=vfs
  fi
  if ! start_dockerd "$driver"; then
    if [ "$driver" != vfs ]; then
      say "dockerd did not come up with $driver (see $DOCKER_LOG); trying vfs"
      pkill -x dockerd || true; sleep 3; rm -f /var/run/docker.pid
      start_dockerd vfs || { tail -n 20 "$DOCKER_LOG" >&2; die "dockerd did not answer within 60 s; see $DOCKER_LOG"; }
    else
      tail -n 20 "$DOCKER_LOG" >&2; die "dockerd did not answer within 60 s; see $DOCKER_LOG"
    fi
  fi
fi

# --- the test image --------------------------------------------------------------------------------------
if docker image inspect "$IMAGE" >/dev/null 2>&1; then
  say "image $IMAGE present"
else
  say "building $IMAGE from /bin/busybox"
  rootfs="$(mktemp -d)"
  trap 'rm -rf "$rootfs"' EXIT
  mkdir -p "$rootfs/bin" "$rootfs/tmp"
  cp /bin/busybox "$rootfs/bin/busybox"
  for applet in sh ls cat echo sleep true false env; do ln -s busybox "$rootfs/bin/$applet"; done
  tar -C "$rootfs" -c . | docker import \
    -c 'ENV PATH=/bin' -c 'CMD ["/bin/sh"]' - "$IMAGE" >/dev/null
  rm -rf "$rootfs"
  trap - EXIT
fi

# --- sshd on loopback ------------------------------------------------------------------------------------
install -d -m 700 "$DIR"
[ -f "$DIR/ssh_host_ed25519_key" ] || ssh-keygen -q -t ed25519 -N '' -C kit-test-host -f "$DIR/ssh_host_ed25519_key"
[ -f "$DIR/id_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C kit-test-client -f "$DIR/id_ed25519"
install -m 600 "$DIR/id_ed25519.pub" "$DIR/authorized_keys"

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
sshd_alive() { [ -f "$DIR/sshd.pid" ] && kill -0 "$(cat "$DIR/sshd.pid")" 2>/dev/null; }

if sshd_alive && [ -f "$DIR/port" ]; then
  PORT="$(cat "$DIR/port")"
  say "sshd already running on 127.0.0.1:$PORT"
else
  for _ in $(seq 20); do port_busy "$PORT" || break; PORT=$((PORT + 1)); done
  port_busy "$PORT" && die "no spare port found from ${KIT_SSH_PORT:-2222} to $PORT on 127.0.0.1"
  cat >"$DIR/sshd_config" <<EOF
# kit's test sshd: loopback only, root by one key, nothing else. The system's sshd config is not used.
Port $PORT
ListenAddress 127.0.0.1
HostKey $DIR/ssh_host_ed25519_key
PidFile $DIR/sshd.pid
AuthorizedKeysFile $DIR/authorized_keys
PermitRootLogin prohibit-password
AllowUsers root
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PrintMotd no
X11Forwarding no
AllowTcpForwarding no
AcceptEnv LANG LC_*
EOF
  mkdir -p /run/sshd   # sshd's privilege-separation directory
  /usr/sbin/sshd -t -f "$DIR/sshd_config" || die "sshd rejected $DIR/sshd_config"
  /usr/sbin/sshd -f "$DIR/sshd_config" -E "$DIR/sshd.log"
  echo "$PORT" >"$DIR/port"
  for _ in $(seq 50); do port_busy "$PORT" && break; sleep 0.1; done
  port_busy "$PORT" || die "sshd did not listen on 127.0.0.1:$PORT; see $DIR/sshd.log"
  say "sshd listening on 127.0.0.1:$PORT"
fi

# known_hosts from the key on disk (no trust on first use), then checked against what the server presents.
echo "[127.0.0.1]:$PORT $(cut -d' ' -f1,2 "$DIR/ssh_host_ed25519_key.pub")" >"$DIR/known_hosts"
presented="$(ssh-keyscan -T 5 -t ed25519 -p "$PORT" 127.0.0.1 2>/dev/null | cut -d' ' -f2,3)"
[ "$presented" = "$(cut -d' ' -f1,2 "$DIR/ssh_host_ed25519_key.pub")" ] \
  || die "the sshd on 127.0.0.1:$PORT presents another host key than $DIR/ssh_host_ed25519_key.pub; stop it and rerun"

SSH_OPTIONS="-o UserKnownHostsFile=$DIR/known_hosts -o IdentitiesOnly=yes -i $DIR/id_ed25519"
# shellcheck disable=SC2086
ssh -o BatchMode=yes -o StrictHostKeyChecking=yes -o ConnectTimeout=5 $SSH_OPTIONS -p "$PORT" root@127.0.0.1 true \
  || die "ssh root@127.0.0.1:$PORT with $DIR/id_ed25519 failed; see $DIR/sshd.log"

# --- the environment the tests read ----------------------------------------------------------------------
cat >"$ENV_FILE.tmp" <<EOF
export KIT_TEST_DOCKER_HOST='unix:///var/run/docker.sock'
export KIT_TEST_DOCKER_IMAGE='$IMAGE'
export KIT_TEST_SSH_HOST='root@127.0.0.1:$PORT'
export KIT_TEST_SSH_PORT='$PORT'
export KIT_TEST_SSH_KNOWN_HOSTS='$DIR/known_hosts'
export KIT_TEST_SSH_KEY='$DIR/id_ed25519'
export KIT_TEST_SSH_OPTIONS='$SSH_OPTIONS'
EOF
mv "$ENV_FILE.tmp" "$ENV_FILE"
# A Slurm cluster on loopback: it appends SLURM_CONF and KIT_TEST_SLURM_* to $ENV_FILE.
KIT_SERVICES_ENV="$ENV_FILE" bash "$(dirname "$0")/slurm.sh"
cat "$ENV_FILE"
say "ready (written to $ENV_FILE)"
