#!/usr/bin/env bash
# N processes on this machine through the explicit TEAL_* variables read by teal_jax/parallel/distributed.py: CPU
# processes for testing the multi-host code paths, or one process per GPU (TEAL_PER_PROCESS_GPU=1: process i drives
# local GPU i through jax.distributed's local_device_ids).
#   launch/local_multiprocess.sh [--dry-run] 2 configs/lm/tiny.py:synthetic /tmp/run --config.train.steps=20
#   TEAL_PER_PROCESS_GPU=1 launch/local_multiprocess.sh 8 configs/lm/tinyllama_1b.py runs/1b --config.mesh.shape='(1,-1,1)'
# --dry-run prints each process's exact command (shell-quoted) and runs nothing.
# TEAL_PID_FILE=path: "<process id> <pid>" of each started process, one a line (to signal one of them, e.g. a test
# preempting one worker). A SIGTERM/SIGINT to this script is passed on to every process.
set -euo pipefail
dry=0
if [[ "${1:-}" == "--dry-run" ]]; then dry=1; shift; fi
if (($# < 3)); then
  echo "usage: $0 [--dry-run] N CONFIG WORKDIR [--config.overrides ...]" >&2
  exit 2
fi
n=$1; config=$2; workdir=$3; shift 3
port=${TEAL_PORT:-12355}
python=${PYTHON:-python3}
pids=()
if [[ -n "${TEAL_PID_FILE:-}" ]] && ((!dry)); then : >"$TEAL_PID_FILE"; fi
for ((i = 0; i < n; i++)); do
  cmd=(env "TEAL_COORDINATOR=127.0.0.1:$port" "TEAL_NUM_PROCESSES=$n" "TEAL_PROCESS_ID=$i")
  if [[ -n "${TEAL_PER_PROCESS_GPU:-}" ]]; then cmd+=("TEAL_LOCAL_DEVICE_IDS=$i"); fi
  cmd+=("$python" -m teal_jax.main "--config=$config" "--workdir=$workdir" "$@")
  if ((dry)); then
    printf '%q ' "${cmd[@]}"; echo
  else
    "${cmd[@]}" &
    pids+=($!)
    if [[ -n "${TEAL_PID_FILE:-}" ]]; then echo "$i $!" >>"$TEAL_PID_FILE"; fi
  fi
done
((dry)) && exit 0
trap 'kill -TERM "${pids[@]}" 2>/dev/null || true' TERM INT
status=0
for pid in "${pids[@]}"; do
  rc=0
  wait "$pid" || rc=$?
  while kill -0 "$pid" 2>/dev/null; do # the wait was cut short by a signal passed on above
    rc=0
    wait "$pid" || rc=$?
  done
  if ((rc)); then status=$rc; fi
done
exit $status
