#!/usr/bin/env bash
# A real Slurm cluster on loopback for the tests of `kit run --launcher slurm` and `kit check-host --launcher
# slurm`: munged, one slurmctld and two slurmd (nodes kit1 and kit2, both on this host, told apart by their
# port and `slurmd -N NAME`), partition `kit` (the default), no accounting. Called by .ci/services.sh; can be
# run alone. Idempotent: a rerun reuses a cluster that answers with the same configuration (a changed one
# restarts the daemons, which ends running jobs). Run it as root:
#
#   sudo .ci/slurm.sh && . /tmp/kit-services.env && sinfo
#
# - Its own slurm.conf and (empty) plugstack.conf live in $KIT_SLURM_DIR (/var/lib/kit-slurm),
#   with the state, spool, pid and log files; /etc/slurm is never read or written (clients find the
#   configuration through SLURM_CONF).
# - The munge key is the system's (/etc/munge/munge.key, created when missing); a munged that answers is reused.
# - proctrack/linuxproc and task/none: no cgroups are needed (a container rarely lets slurmd create them).
#   With task/none a task is not bound to its allocated cores, so one task per node may start two CPU ranks
#   (torchrun) that use both cores; each node declares what `slurmd -C` reports, or it would be drained.
# - Both nodes declare this machine's cores, so the cluster offers twice the cores there are: fine for tests,
#   which need two nodes' worth of ranks, not two nodes' worth of speed.
# - Appends SLURM_CONF, KIT_TEST_SLURM_PARTITION and KIT_TEST_SLURM_NODES to $KIT_SERVICES_ENV
#   (/tmp/kit-services.env), replacing the lines of an earlier run.
set -euo pipefail

# Not under /var/lib/kit-services (mode 700 for sshd): every user's srun and sbatch read slurm.conf.
DIR="${KIT_SLURM_DIR:-/var/lib/kit-slurm}"
ENV_FILE="${KIT_SERVICES_ENV:-/tmp/kit-services.env}"
PARTITION=kit
NODES=(kit1 kit2)
CONF="$DIR/slurm.conf"
LOG="$DIR/log"
export SLURM_CONF="$CONF"

say() { echo "slurm: $*" >&2; }
die() { echo "slurm: error: $*" >&2; exit 1; }
tail_logs() {
  for f in "$@"; do
    [ -f "$f" ] && { echo "--- last lines of $f:" >&2; tail -n 25 "$f" >&2; }
  done
  return 0
}
all_logs() {
  local files=("$LOG/slurmctld.log")
  for n in "${NODES[@]}"; do files+=("$LOG/slurmd-$n.log"); done
  tail_logs "${files[@]}"
}

[ "$(id -u)" = 0 ] || die "run as root (it starts munged, slurmctld and slurmd as root): sudo $0"

# --- packages --------------------------------------------------------------------------------------------
missing=()
command -v munged >/dev/null || missing+=(munge)
command -v slurmctld >/dev/null || missing+=(slurmctld)
command -v slurmd >/dev/null || missing+=(slurmd)
{ command -v srun >/dev/null && command -v sbatch >/dev/null && command -v sinfo >/dev/null; } \
  || missing+=(slurm-client)
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- munge -----------------------------------------------------------------------------------------------
munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }
if munge_ok; then
  say "munged answers; reusing it"
else
  if [ ! -s /etc/munge/munge.key ]; then
    say "creating /etc/munge/munge.key"
    install -d -o munge -g munge -m 700 /etc/munge
    mungekey --create --keyfile=/etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
  fi
  install -d -o munge -g munge -m 755 /run/munge
  install -d -o munge -g munge -m 700 /var/lib/munge /var/log/munge
  # A pid file left by a munged that died makes the next one refuse to start.
  if [ -f /run/munge/munged.pid ] && ! kill -0 "$(cat /run/munge/munged.pid)" 2>/dev/null; then
    rm -f /run/munge/munged.pid /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock
  fi
  say "starting munged"
  runuser -u munge -- /usr/sbin/munged || { tail_logs /var/log/munge/munged.log; die "munged did not start"; }
  for _ in $(seq 50); do munge_ok && break; sleep 0.1; done
  munge_ok || { tail_logs /var/log/munge/munged.log; die "munged started but \`munge -n | unmunge\` fails"; }
fi

# --- ports -----------------------------------------------------------------------------------------------
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
ctld_pid="$DIR/slurmctld.pid"
slurmd_pid() { echo "$DIR/slurmd-$1.pid"; }
any_daemon_alive() {
  pid_alive "$ctld_pid" && return 0
  for n in "${NODES[@]}"; do pid_alive "$(slurmd_pid "$n")" && return 0; done
  return 1
}

install -d -m 755 "$DIR" "$DIR/state" "$LOG"
for n in "${NODES[@]}"; do install -d -m 755 "$DIR/spool/$n"; done

# The ports of a running cluster are kept; a fresh one takes free ports from 6817 (Slurm's default).
if [ -f "$DIR/ports" ] && any_daemon_alive; then
  read -r -a PORTS <"$DIR/ports"
else
  PORTS=()
  p="${KIT_SLURM_PORT:-6817}"
  while [ ${#PORTS[@]} -lt $((1 + ${#NODES[@]})) ]; do
    [ "$p" -lt "$(( ${KIT_SLURM_PORT:-6817} + 100 ))" ] || die "no ${#NODES[@]}+1 free ports from ${KIT_SLURM_PORT:-6817}"
    port_busy "$p" || PORTS+=("$p")
    p=$((p + 1))
  done
fi

# --- configuration ---------------------------------------------------------------------------------------
# What this host's slurmd detects (CPUs, sockets, cores, threads): a node that declares more is drained.
HW=()
for word in $(slurmd -C 2>/dev/null | head -n1); do
  case "$word" in CPUs=*|Boards=*|SocketsPerBoard=*|CoresPerSocket=*|ThreadsPerCore=*) HW+=("$word") ;; esac
done
[ ${#HW[@]} -eq 5 ] || die "could not read this host's CPUs from \`slurmd -C\`: $(slurmd -C 2>&1 | head -n1)"
HOST="$(hostname -s)"

new="$DIR/slurm.conf.new"
{
  cat <<EOF
# kit's test cluster (.ci/slurm.sh): one controller and ${#NODES[@]} slurmd on this host, on loopback. Generated; edits are lost.
ClusterName=kit
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=${PORTS[0]}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
PlugStackConfig=$DIR/plugstack.conf
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$ctld_pid
SlurmdPidFile=$DIR/slurmd-%n.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
# A finished job stays visible to \`scontrol show job\` for 10 minutes.
MinJobAge=600
KillWait=30
ReturnToService=2
InactiveLimit=0
SlurmctldTimeout=60
SlurmdTimeout=120
EOF
  for i in "${!NODES[@]}"; do
    echo "NodeName=${NODES[$i]} NodeAddr=127.0.0.1 NodeHostname=$HOST Port=${PORTS[$((i + 1))]} ${HW[*]} RealMemory=1024 State=UNKNOWN"
  done
  echo "PartitionName=$PARTITION Nodes=$(IFS=,; echo "${NODES[*]}") Default=YES MaxTime=INFINITE State=UP"
} >"$new"

changed=1
if [ -f "$CONF" ] && cmp -s "$new" "$CONF"; then changed=0; fi
mv "$new" "$CONF"
: >"$DIR/plugstack.conf"   # no SPANK plugins: /etc/slurm/plugstack.conf is not this cluster's

# --- daemons ---------------------------------------------------------------------------------------------
stop_pidfile() {
  local f="$1" pid
  pid_alive "$f" || { rm -f "$f"; return 0; }
  pid="$(cat "$f")"
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
  rm -f "$f"
}

ctl_answers() { timeout 10 scontrol ping 2>/dev/null | grep -q ' is UP'; }
started=0

if [ "$changed" = 1 ] && any_daemon_alive; then
  say "configuration changed: restarting the cluster"
  for n in "${NODES[@]}"; do stop_pidfile "$(slurmd_pid "$n")"; done
  stop_pidfile "$ctld_pid"
fi
echo "${PORTS[*]}" >"$DIR/ports"

if pid_alive "$ctld_pid" && ctl_answers; then
  say "slurmctld answers on 127.0.0.1:${PORTS[0]}; reusing it"
else
  stop_pidfile "$ctld_pid"
  started=1
  say "starting slurmctld on 127.0.0.1:${PORTS[0]} (log: $LOG/slurmctld.log)"
  slurmctld -f "$CONF" || { tail_logs "$LOG/slurmctld.log"; die "slurmctld did not start"; }
  for _ in $(seq 100); do ctl_answers && break; sleep 0.2; done
  ctl_answers || { tail_logs "$LOG/slurmctld.log"; die "slurmctld does not answer \`scontrol ping\` after 20 s"; }
fi

for i in "${!NODES[@]}"; do
  n="${NODES[$i]}"
  if pid_alive "$(slurmd_pid "$n")"; then
    continue
  fi
  started=1
  say "starting slurmd -N $n on port ${PORTS[$((i + 1))]} (log: $LOG/slurmd-$n.log)"
  slurmd -f "$CONF" -N "$n" || { tail_logs "$LOG/slurmd-$n.log"; die "slurmd -N $n did not start"; }
done

# --- nodes idle ------------------------------------------------------------------------------------------
node_state() { sinfo -h -N -n "$1" -o '%T' 2>/dev/null | head -n1; }
deadline=$((SECONDS + 60))
while :; do
  ready=0
  for n in "${NODES[@]}"; do
    s="$(node_state "$n")"
    case "$s" in
      idle|mixed|allocated|completing) ready=$((ready + 1)) ;;
      drained|draining|down|down\*|drained\*|fail*)
        # ReturnToService=2 brings a node back once it registers; a reason from an earlier run may stay.
        scontrol update nodename="$n" state=resume 2>/dev/null || true ;;
    esac
  done
  [ "$ready" -eq ${#NODES[@]} ] && break
  if [ $SECONDS -ge $deadline ]; then
    sinfo -N -o '%N %T %E' >&2 || true
    all_logs
    die "the nodes are not idle after 60 s (see above and $LOG)"
  fi
  sleep 0.5
done
say "nodes up: $(sinfo -h -N -o '%N=%T' | tr '\n' ' ')"

# --- smoke job -------------------------------------------------------------------------------------------
# A cluster that was already up and is running someone's jobs has answered; its smoke job would only queue.
N=${#NODES[@]}
busy="$(sinfo -h -N -o '%N=%T' | grep -E '=(allocated|mixed|completing)' | tr '\n' ' ' || true)"
if [ "$started" = 0 ] && [ -n "$busy" ]; then
  say "nodes running jobs (${busy% }): the cluster answers, no smoke job"
else
  out="$(timeout 60 srun -p "$PARTITION" -N"$N" -n"$N" --ntasks-per-node=1 -t 1 \
    bash -c 'echo "$SLURMD_NODENAME $SLURM_NODEID $SLURM_PROCID"' 2>&1)" \
    || { echo "$out" >&2; all_logs; die "the smoke job \`srun -N$N\` failed or hung for 60 s"; }
  names="$(awk '{print $1}' <<<"$out" | sort -u | wc -l)"
  [ "$names" -eq "$N" ] || { echo "$out" >&2; die "the smoke job ran on $names node(s), not $N"; }
  say "smoke job ran one task on each of ${NODES[*]}"
fi

# --- environment -----------------------------------------------------------------------------------------
touch "$ENV_FILE"
grep -vE '^export (SLURM_CONF|KIT_TEST_SLURM_PARTITION|KIT_TEST_SLURM_NODES)=' "$ENV_FILE" >"$ENV_FILE.tmp" || true
cat >>"$ENV_FILE.tmp" <<EOF
export SLURM_CONF='$CONF'
export KIT_TEST_SLURM_PARTITION='$PARTITION'
export KIT_TEST_SLURM_NODES='$N'
EOF
mv "$ENV_FILE.tmp" "$ENV_FILE"
say "ready: SLURM_CONF=$CONF partition $PARTITION, $N nodes (written to $ENV_FILE)"
