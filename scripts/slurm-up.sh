#!/usr/bin/env bash
# Start a real single-node SLURM (munged + slurmctld + slurmd) on this machine, for the dask-slurm tests.
# Debian 12, root, no systemd: every setting below was a real failure first (see the SLURM notes).
# Idempotent: a running, idle cluster is left alone. Prints "SLURM ready: partition=edown".
#
# What it does to the machine (`slurm-up.sh --plan` prints it without doing anything, and exits 1 with
# the reason when it cannot be done here): installs slurmctld, slurmd, slurm-client and munge with apt-get
# when they are missing (EDOWN_NO_APT=1 forbids that); writes /etc/slurm/slurm.conf and cgroup.conf (never
# over a slurm.conf it did not write) and /etc/munge/munge.key when missing; keeps state and logs in
# $EDOWN_SLURM_DIR (/tmp/edown-slurm); starts munged, slurmctld and slurmd and leaves them running.
# scripts/slurm-down.sh stops them.
set -euo pipefail

SCRATCH="${EDOWN_SLURM_DIR:-/tmp/edown-slurm}"
PARTITION="${EDOWN_SLURM_PARTITION:-edown}"
CONF_DIR=/etc/slurm
PACKAGES="slurmctld slurmd slurm-client munge"
# Marks the slurm.conf this script writes, so that it never overwrites one an administrator wrote.
CONF_MARK="ClusterName=edown"

log_tail() {
  for f in "$SCRATCH"/log/slurmctld.log "$SCRATCH"/log/slurmd.log; do
    [ -f "$f" ] && { echo "--- $f" >&2; tail -n 30 "$f" >&2; }
  done
}
fail() { echo "slurm-up: $*" >&2; log_tail; exit 1; }

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local seconds=$1 what=$2; shift 2
  for _ in $(seq 1 $((seconds * 2))); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.5
  done
  fail "timed out waiting for $what"
}

node_state() { sinfo -h -n localhost -o %T 2>/dev/null | head -n1; }

wait_idle() {  # the node is idle (resumed if it came back down), or fail
  for _ in $(seq 1 120); do
    case "$(node_state)" in
      idle*|mixed*|allocated*) return 0 ;;
      down*|drain*|fail*) scontrol update nodename=localhost state=resume >/dev/null 2>&1 || true ;;
    esac
    sleep 0.5
  done
  fail "node localhost is '$(node_state)', not idle"
}

slurm_running() { command -v scontrol >/dev/null 2>&1 && scontrol ping 2>/dev/null | grep -qw UP; }

installed() {
  local cmd
  for cmd in slurmctld slurmd sinfo srun scontrol munge; do
    command -v "$cmd" >/dev/null 2>&1 || return 1
  done
  [ -x /usr/sbin/munged ]
}

plan() {  # what a start would do here, one line each; status 1 (and the reason) when it cannot be done
  if slurm_running; then
    echo "SLURM is already running here: nothing to install, write or start"
    return 0
  fi
  if [ "$(id -u)" != 0 ]; then
    echo "cannot start SLURM here: it needs root (it writes /etc/slurm and /etc/munge and runs the daemons as root), this is uid $(id -u)"
    return 1
  fi
  if ! installed; then
    if [ "${EDOWN_NO_APT:-0}" = 1 ]; then
      echo "cannot start SLURM here: it is not installed ($PACKAGES) and EDOWN_NO_APT=1 forbids apt-get"
      return 1
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
      echo "cannot start SLURM here: it is not installed and there is no apt-get (install $PACKAGES, or set EDOWN_SKIP_SLURM=1)"
      return 1
    fi
    echo "install with apt-get: $PACKAGES"
  fi
  if [ -e "$CONF_DIR/slurm.conf" ] && ! grep -qx "$CONF_MARK" "$CONF_DIR/slurm.conf"; then
    echo "cannot start SLURM here: $CONF_DIR/slurm.conf exists and was not written by this script; it is left alone"
    return 1
  fi
  echo "write $CONF_DIR/slurm.conf, $CONF_DIR/cgroup.conf and (if missing) /etc/munge/munge.key; state and logs in $SCRATCH"
  echo "start munged, slurmctld and slurmd, left running; stop them with scripts/slurm-down.sh"
}

if [ "${1:-}" = "--plan" ]; then
  plan
  exit $?
fi
if ! reason=$(plan); then
  echo "slurm-up: $reason" >&2
  exit 1
fi

if slurm_running; then
  wait_idle
  echo "SLURM ready: partition=$PARTITION (already running)"
  exit 0
fi

if ! installed; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # shellcheck disable=SC2086  # a list of package names
  apt-get install -y -qq --no-install-recommends $PACKAGES >/dev/null
fi

mkdir -p "$SCRATCH"/{state,spool,log,run}

# --- munge: no systemd, so create its run directory and start it as the munge user.
install -d -o munge -g munge -m 0755 /run/munge
if [ ! -s /etc/munge/munge.key ]; then
  dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key
if ! pgrep -x munged >/dev/null; then
  runuser -u munge -- /usr/sbin/munged
fi
wait_for 10 "munge" sh -c 'munge -n | unmunge'

# --- slurm.conf
read -r CPUS REALMEM < <(slurmd -C | awk '/^NodeName/ {for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }; print v["CPUs"], v["RealMemory"]}')
# Declare more CPUs than the box has (config_overrides) so several one-core jobs can share 2 cores.
VCPUS=$(( CPUS < 4 ? 4 : CPUS ))
cat >"$CONF_DIR/slurm.conf" <<EOF
$CONF_MARK
SlurmctldHost=localhost(127.0.0.1)
# Run everything as root: there is no slurm user setup on a CI machine.
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# No cgroups or systemd in the container: track processes by parent pid, no task containment.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Without it a job that asks no --mem takes the whole node.
DefMemPerCPU=512
# slurmctld complains when it cannot find a mailer.
MailProg=/bin/true
# A node that comes back is usable again without an admin.
ReturnToService=2
SlurmdParameters=config_overrides
StateSaveLocation=$SCRATCH/state
SlurmdSpoolDir=$SCRATCH/spool
SlurmctldPidFile=$SCRATCH/run/slurmctld.pid
SlurmdPidFile=$SCRATCH/run/slurmd.pid
SlurmctldLogFile=$SCRATCH/log/slurmctld.log
SlurmdLogFile=$SCRATCH/log/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$VCPUS RealMemory=$REALMEM State=UNKNOWN
PartitionName=$PARTITION Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF

# --- cgroup: slurmd always loads a cgroup plugin and dies without a usable cgroup fs; v1's init is a
# no-op on 22.05/23.11, and 24.05+ can disable it outright.
VERSION=$(slurmctld -V | awk '{print $2}')
MAJOR=${VERSION%%.*}
REST=${VERSION#*.}
MINOR=${REST%%.*}
if [ "$MAJOR" -gt 24 ] || { [ "$MAJOR" -eq 24 ] && [ "$MINOR" -ge 5 ]; }; then
  echo "CgroupPlugin=disabled" >"$CONF_DIR/cgroup.conf"
else
  echo "CgroupPlugin=cgroup/v1" >"$CONF_DIR/cgroup.conf"
fi

# --- daemons
if ! pgrep -x slurmctld >/dev/null; then
  slurmctld -i
fi
wait_for 60 "slurmctld" sh -c 'scontrol ping | grep -q UP'
if ! pgrep -x slurmd >/dev/null; then
  slurmd -N localhost
fi
wait_idle

timeout 60 srun -p "$PARTITION" -N1 -n1 true || fail "srun could not run a job"
echo "SLURM ready: partition=$PARTITION (Slurm $VERSION)"
