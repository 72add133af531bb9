#!/usr/bin/env bash
# Stop the single-node SLURM started by slurm-up.sh (jobs, slurmd, slurmctld, munged). Idempotent.
set -uo pipefail

SCRATCH="${EDOWN_SLURM_DIR:-/tmp/edown-slurm}"

command -v scancel >/dev/null 2>&1 && scancel --user=root >/dev/null 2>&1

stop() {  # stop NAME PIDFILE
  local name=$1 pidfile=$2
  if [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null; then
    for _ in $(seq 1 20); do pgrep -x "$name" >/dev/null || return 0; sleep 0.25; done
  fi
  pkill -x "$name" 2>/dev/null
  for _ in $(seq 1 20); do pgrep -x "$name" >/dev/null || return 0; sleep 0.25; done
  pkill -9 -x "$name" 2>/dev/null
  return 0
}

stop slurmd "$SCRATCH/run/slurmd.pid"
stop slurmctld "$SCRATCH/run/slurmctld.pid"
stop munged /run/munge/munged.pid
echo "SLURM stopped"
